package config

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/weftmesh/weft/identity"
)

// Sources a user may give a label; `mesh:` labels are set by Weft itself
// (mesh:cluster, mesh:kind) and `reserved:`/`cidr:` are internal, so a
// node cannot claim them.
var userSources = map[string]bool{identity.SourceVM: true, identity.SourceK8s: true}

// ValidateLabels checks label keys (with an optional vm: or k8s: source;
// none means vm:) and values, and that no label is given twice under two
// spellings (app and vm:app).
func ValidateLabels(labels map[string]string) error {
	_, err := ToIdentityLabels(labels)
	return err
}

// ToIdentityLabels turns configuration labels (key=value, key with an
// optional source) into canonical identity labels; a key without a source
// gets vm:.
func ToIdentityLabels(labels map[string]string) (identity.Labels, error) {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ls := make([]identity.Label, 0, len(keys))
	for _, k := range keys {
		l, err := parseUserLabel(k, labels[k])
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	out, err := identity.NewLabels(ls...)
	if err != nil {
		return nil, fmt.Errorf("labels %s: %w", FormatLabels(labels), err)
	}
	return out, nil
}

func parseUserLabel(k, v string) (identity.Label, error) {
	if k == "" {
		return identity.Label{}, fmt.Errorf("label =%s has an empty key", v)
	}
	l, err := identity.ParseLabel(k+"="+v, identity.SourceVM)
	if err != nil {
		return identity.Label{}, err
	}
	if !userSources[l.Source] {
		return identity.Label{}, fmt.Errorf("label %q: the %s: source is reserved for labels Weft sets itself (use vm:, k8s: or no source)", k, l.Source)
	}
	return l, nil
}

// ParseLabels parses the command-line form "k=v,k2=v2" (also "vm:k=v").
// An empty string is no labels. A key given twice is an error: which value
// was meant is not ours to guess.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q is not key=value (example app=web,tier=front)", item)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("label %q is given twice", k)
		}
		out[k] = v
	}
	if err := ValidateLabels(out); err != nil {
		return nil, err
	}
	return out, nil
}

// FormatLabels renders labels in the ParseLabels form, sorted by key.
func FormatLabels(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}

// Duration is a time.Duration written as "15s" in the configuration file.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string ("25s", "1m30s").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration must be a string such as \"15s\": %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (examples: 15s, 1m, 2h): %w", s, err)
	}
	*d = Duration(v)
	return nil
}
