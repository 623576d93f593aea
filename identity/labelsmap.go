package identity

import (
	"fmt"
	"slices"
	"strings"
)

// Labels travel in three forms, and this file converts between them:
//
//   - canonical strings, `source:key=value` ([]string in kvstore records,
//     Label.String, Labels.Strings);
//   - Labels, the validated, sorted set the allocator and the policy
//     engine work on;
//   - the map form, key or source:key -> value, which configuration files,
//     command-line flags (as the list "k=v,k2=v2"), the local API and join
//     tokens carry, because that is what a person writes.
//
// The map form is the only one whose keys may lack a source: a parser
// gives them a default. What this package formats always has sources, so
// Labels -> map -> Labels and strings -> map -> Labels are exact.

// userSources are the sources a user may give a label. mesh:, reserved:
// and cidr: labels are facts Weft vouches for (mesh:cluster, mesh:kind),
// so a node or a workload cannot claim them.
var userSources = []string{SourceK8s, SourceVM}

// ParseLabelMap parses the map form: each key is "key" or "source:key"
// (a key without a source gets defaultSource; "" makes sources
// mandatory), each value is the label's value. Keys are read in sorted
// order, so the error for a map with several bad labels is always the same
// one. A label given under two spellings with two values (app and vm:app)
// is ErrDuplicateKey.
func ParseLabelMap(m map[string]string, defaultSource string) (Labels, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	ls := make([]Label, 0, len(keys))
	for _, k := range keys {
		v := m[k]
		switch {
		case k == "":
			return nil, plainErrorf(ErrInvalidLabel, "label =%s has an empty key (write key=value, e.g. app=web)", v)
		case strings.Contains(k, "="):
			return nil, plainErrorf(ErrInvalidLabel, "label key %q contains '=' (write key=value, e.g. app=web)", k)
		}
		l, err := ParseLabel(k+"="+v, defaultSource)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	out, err := NewLabels(ls...)
	if err != nil {
		return nil, fmt.Errorf("labels %s: %w", FormatLabelMap(m), err)
	}
	return out, nil
}

// ParseUserLabelMap parses labels a person gives (the agent configuration,
// `--labels`, a join request, a token, the local API): ParseLabelMap with
// the default source vm, refusing the sources only Weft may set.
func ParseUserLabelMap(m map[string]string) (Labels, error) {
	ls, err := ParseLabelMap(m, SourceVM)
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		if !slices.Contains(userSources, l.Source) {
			return nil, plainErrorf(ErrInvalidLabel, "label %q: the %s: source is reserved for labels Weft sets itself (use vm:, k8s: or no source)", l.Source+":"+l.Key, l.Source)
		}
		if IsK8sNamespaceLabel(l) {
			return nil, plainErrorf(ErrInvalidLabel, "label %q: the pod namespace keys are set by Weft from a pod's namespace; a machine or workload cannot claim one", l.Source+":"+l.Key)
		}
	}
	return ls, nil
}

// Map returns the map form of the set, every key with its source
// ("vm:app" -> "web"); nil for no labels, so a JSON field with omitempty
// stays out. ParseLabelMap(l.Map(), "") is l.
func (l Labels) Map() map[string]string {
	if len(l) == 0 {
		return nil
	}
	m := make(map[string]string, len(l))
	for _, x := range l {
		m[x.Source+":"+x.Key] = x.Value
	}
	return m
}

// LabelMap returns the map form of canonical label strings, such as a
// record's, without parsing them: "vm:app=web" becomes "vm:app" -> "web"
// and a label without a value ("cidr:10.0.0.0/8") maps to "". The strings
// were checked when they were stored; it is the same map as
// Labels.Map of the parsed set, and nil for none.
func LabelMap(canonical []string) map[string]string {
	if len(canonical) == 0 {
		return nil
	}
	m := make(map[string]string, len(canonical))
	for _, s := range canonical {
		// Keys never contain '=' (an IPv6 CIDR key has ':' only), so the
		// first '=' ends the key.
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return m
}

// FormatLabelMap renders the map form as the command-line list
// "k=v,k2=v2", sorted by key, keys as they are written (app stays app);
// "" for no labels. SplitLabelList reads it back.
func FormatLabelMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// SplitLabelList reads the command-line list "k=v,k2=v2" (also "vm:k=v";
// blanks around items are ignored) into the map form, keys as written. It
// checks the list's syntax only, not the labels: ParseLabelMap or
// ParseUserLabelMap does. An empty string is no labels (an empty, non-nil
// map). A key given twice is an error: which value was meant is not ours
// to guess.
func SplitLabelList(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, plainErrorf(ErrInvalidLabel, "label %q is not key=value (example app=web,tier=front)", item)
		}
		if _, dup := out[k]; dup {
			return nil, plainErrorf(ErrDuplicateKey, "label %q is given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// plainError wraps a sentinel without repeating its text: these messages
// reach people through flags and configuration files ("--labels: label
// \"app\" is not key=value"), where "identity: invalid label" would be
// noise, while callers can still test errors.Is.
type plainError struct {
	msg string
	err error
}

func plainErrorf(sentinel error, format string, args ...any) error {
	return &plainError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

func (e *plainError) Error() string { return e.msg }
func (e *plainError) Unwrap() error { return e.err }
