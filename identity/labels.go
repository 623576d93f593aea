// Package identity holds what a workload is, as the policy engine sees it:
// labels (canonical `source:key=value` strings), label selectors, and the
// numeric identities the datapath carries. It is pure Go: the etcd-backed
// allocator that hands out numbers lives in identity/allocator, and the
// compiler that turns selectors into datapath entries lives in policy.
//
// Labels follow the Kubernetes label rules so that pod labels can be
// imported unchanged; the source (`vm`, `k8s`, `mesh`, and the internal
// `reserved` and `cidr`) says where a label came from, so that a VM cannot
// pretend to carry a Kubernetes namespace label. In a selector, a key
// without a source matches that key from any source.
package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weftmesh/weft/internal/names"
)

// Label sources. A label's source tells where it came from; a selector can
// name one to trust only labels of that origin.
const (
	SourceVM       = "vm"       // labels of a VM, from `meshctl join --labels` or the agent config
	SourceK8s      = "k8s"      // labels of a Kubernetes pod, namespace or node
	SourceMesh     = "mesh"     // labels Weft sets itself (mesh:cluster, mesh:kind)
	SourceReserved = "reserved" // labels of the reserved identities (reserved:host, ...)
	SourceCIDR     = "cidr"     // a CIDR prefix as a label key (cidr:198.18.0.0/16)
)

var knownSources = []string{SourceCIDR, SourceK8s, SourceMesh, SourceReserved, SourceVM}

// Sentinel errors; every error returned by this package wraps one of them
// (or a *SelectorError), so callers can tell bad input from other failures.
var (
	ErrInvalidLabel    = errors.New("identity: invalid label")
	ErrInvalidSelector = errors.New("identity: invalid selector")
	ErrDuplicateKey    = errors.New("identity: duplicate label key")
)

// Label is one `source:key=value` label. The zero Label is invalid.
type Label struct {
	Source string
	Key    string
	Value  string
}

// String returns the canonical form `source:key=value`, or `source:key`
// when the value is empty (CIDR and reserved labels have no value).
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// Validate checks the source, key and value against the label rules.
func (l Label) Validate() error {
	if !IsKnownSource(l.Source) {
		return fmt.Errorf("%w %q: unknown source %q (use one of %s)", ErrInvalidLabel, l.String(), l.Source, strings.Join(knownSources, ", "))
	}
	if err := validateKey(l.Source, l.Key); err != nil {
		return fmt.Errorf("%w %q: %v", ErrInvalidLabel, l.String(), err)
	}
	if err := ValidateValue(l.Value); err != nil {
		return fmt.Errorf("%w %q: %v", ErrInvalidLabel, l.String(), err)
	}
	return nil
}

// MarshalText encodes the canonical form, so labels are JSON strings.
func (l Label) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses a canonical label; the source is required.
func (l *Label) UnmarshalText(b []byte) error {
	p, err := ParseLabel(string(b), "")
	if err != nil {
		return err
	}
	*l = p
	return nil
}

// IsKnownSource reports whether s is a label source Weft knows.
func IsKnownSource(s string) bool { return slices.Contains(knownSources, s) }

// ParseLabel parses "key=value", "key" (empty value) or "source:key=value".
// Without a source the label gets defaultSource; an empty defaultSource
// makes the source mandatory (canonical forms read back from storage).
func ParseLabel(s, defaultSource string) (Label, error) {
	if s == "" {
		return Label{}, fmt.Errorf("%w: empty label (write key=value, e.g. app=web)", ErrInvalidLabel)
	}
	if defaultSource != "" && !IsKnownSource(defaultSource) {
		return Label{}, fmt.Errorf("%w %q: unknown default source %q (use one of %s)", ErrInvalidLabel, s, defaultSource, strings.Join(knownSources, ", "))
	}
	source, rest, ok := splitSource(s)
	if !ok {
		if defaultSource == "" {
			return Label{}, fmt.Errorf("%w %q: missing source (write source:key=value with a source among %s)", ErrInvalidLabel, s, strings.Join(knownSources, ", "))
		}
		source, rest = defaultSource, s
	}
	// An IPv6 CIDR key contains ':' but never '=', so cutting at '=' is safe.
	key, value, _ := strings.Cut(rest, "=")
	l := Label{Source: source, Key: key, Value: value}
	if err := l.Validate(); err != nil {
		return Label{}, err
	}
	return l, nil
}

// splitSource splits "source:rest" when the text before the first ':' is
// a known source. Kubernetes keys cannot contain ':', so anything else with
// a ':' is a label with an unknown source, reported as such by Validate.
func splitSource(s string) (source, rest string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return "", s, false
	}
	// "a=b:c" has its ':' in the value: no source was given.
	if eq := strings.IndexByte(s, '='); eq >= 0 && eq < i {
		return "", s, false
	}
	return s[:i], s[i+1:], true
}

// ParseLabels parses each string with ParseLabel and returns the sorted set.
func ParseLabels(ss []string, defaultSource string) (Labels, error) {
	ls := make([]Label, 0, len(ss))
	for _, s := range ss {
		l, err := ParseLabel(strings.TrimSpace(s), defaultSource)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return NewLabels(ls...)
}

// ParseLabelList parses a comma-separated list such as "app=web,tier=db"
// (the form of `meshctl join --labels`). An empty string is no labels.
func ParseLabelList(s, defaultSource string) (Labels, error) {
	if strings.TrimSpace(s) == "" {
		return Labels{}, nil
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if strings.TrimSpace(p) == "" {
			return nil, fmt.Errorf("%w: empty item %d in label list %q (separate labels with single commas)", ErrInvalidLabel, i+1, s)
		}
	}
	return ParseLabels(parts, defaultSource)
}

// Labels is a set of labels, sorted by source then key, with at most one
// value per source:key. Build it with NewLabels or the Parse functions so
// that the invariant holds; the canonical string and hash depend on it.
type Labels []Label

// NewLabels validates, sorts and deduplicates ls. The same label twice is
// kept once; one source:key with two values is an error.
func NewLabels(ls ...Label) (Labels, error) {
	out := make(Labels, 0, len(ls))
	for _, l := range ls {
		if err := l.Validate(); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	slices.SortFunc(out, compareLabel)
	dedup := out[:0]
	for i, l := range out {
		if i > 0 && l.Source == out[i-1].Source && l.Key == out[i-1].Key {
			if l.Value != out[i-1].Value {
				return nil, fmt.Errorf("%w %s:%s: values %q and %q (give each key one value)", ErrDuplicateKey, l.Source, l.Key, out[i-1].Value, l.Value)
			}
			continue
		}
		dedup = append(dedup, l)
	}
	return dedup, nil
}

// MustLabels is NewLabels for constants and tests: it panics on error.
func MustLabels(ss ...string) Labels {
	l, err := ParseLabels(ss, "")
	if err != nil {
		panic(err)
	}
	return l
}

func compareLabel(a, b Label) int {
	if c := strings.Compare(a.Source, b.Source); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}

// String is the canonical form: the labels' canonical strings, sorted,
// joined by commas. Equal sets have equal strings.
func (l Labels) String() string {
	var b strings.Builder
	for i, x := range l {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(x.String())
	}
	return b.String()
}

// Strings returns the canonical string of each label, in order.
func (l Labels) Strings() []string {
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = x.String()
	}
	return out
}

// Hash is the hex SHA-256 of the canonical form: the key under which the
// allocator stores the set's number.
func (l Labels) Hash() string {
	sum := sha256.Sum256([]byte(l.String()))
	return hex.EncodeToString(sum[:])
}

// Get returns the value of key. A key with a source ("k8s:app") matches
// only that source; without one ("app") the first label with that key in
// canonical order (cidr, k8s, mesh, reserved, vm) answers.
func (l Labels) Get(key string) (string, bool) {
	src, k := SplitSelectorKey(key)
	for _, x := range l {
		if x.Key == k && (src == "" || x.Source == src) {
			return x.Value, true
		}
	}
	return "", false
}

// Has reports whether the exact label (source, key and value) is in the set.
func (l Labels) Has(x Label) bool {
	i, ok := slices.BinarySearchFunc(l, x, compareLabel)
	return ok && l[i].Value == x.Value
}

// Equal reports whether both sets hold the same labels.
func (l Labels) Equal(o Labels) bool { return slices.Equal(l, o) }

// With returns a new set with the given labels added; a label replaces an
// existing one with the same source:key.
func (l Labels) With(add ...Label) (Labels, error) {
	out := make([]Label, 0, len(l)+len(add))
	for _, x := range l {
		if !slices.ContainsFunc(add, func(a Label) bool { return a.Source == x.Source && a.Key == x.Key }) {
			out = append(out, x)
		}
	}
	out = append(out, add...)
	return NewLabels(out...)
}

// MarshalJSON encodes the set as a JSON array of canonical strings.
func (l Labels) MarshalJSON() ([]byte, error) {
	if l == nil {
		return []byte("[]"), nil
	}
	return json.Marshal(l.Strings())
}

// UnmarshalJSON decodes a JSON array of canonical strings (sources
// required) and enforces the set's invariants.
func (l *Labels) UnmarshalJSON(b []byte) error {
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return fmt.Errorf("%w: labels must be a JSON array of \"source:key=value\" strings: %v", ErrInvalidLabel, err)
	}
	p, err := ParseLabels(ss, "")
	if err != nil {
		return err
	}
	*l = p
	return nil
}

// validateKey applies the Kubernetes label-key rules, except for CIDR
// labels whose key is a canonical prefix.
func validateKey(source, key string) error {
	if source == SourceCIDR {
		p, err := netip.ParsePrefix(key)
		if err != nil {
			return fmt.Errorf("key %q is not a CIDR prefix: %v", key, err)
		}
		if p.Masked() != p {
			return fmt.Errorf("key %q has host bits set (write %s)", key, p.Masked())
		}
		return nil
	}
	return ValidateKey(key)
}

// ValidateKey checks a Kubernetes label key: an optional DNS-subdomain
// prefix of at most 253 characters and a '/', then a name of at most 63
// characters of [A-Za-z0-9._-] that begins and ends with an alphanumeric.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	prefix, name, hasPrefix := strings.Cut(key, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	if hasPrefix {
		if prefix == "" {
			return fmt.Errorf("key %q: empty prefix before '/'", key)
		}
		if len(prefix) > 253 {
			return fmt.Errorf("key %q: prefix longer than 253 characters", key)
		}
		if why := names.CheckDNSSubdomain(prefix); why != "" {
			return fmt.Errorf("key %q: prefix %q is not a DNS subdomain: %s", key, prefix, why)
		}
	}
	if name == "" {
		return fmt.Errorf("key %q: empty name", key)
	}
	if err := validateName(name); err != nil {
		return fmt.Errorf("key %q: %v", key, err)
	}
	return nil
}

// ValidateValue checks a Kubernetes label value: empty, or at most 63
// characters of [A-Za-z0-9._-] beginning and ending with an alphanumeric.
func ValidateValue(v string) error {
	if v == "" {
		return nil
	}
	if err := validateName(v); err != nil {
		return fmt.Errorf("value %q: %v", v, err)
	}
	return nil
}

func validateName(s string) error {
	if len(s) > 63 {
		return fmt.Errorf("longer than 63 characters (%d)", len(s))
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return errors.New("must begin and end with a letter or digit")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("character %q not allowed (use letters, digits, '-', '_', '.')", c)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
