package config

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

var (
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
)

// Sources a user may give a label; `mesh:` labels are set by Weft itself
// (mesh:cluster, mesh:kind) and cannot be claimed.
var userSources = map[string]bool{"vm": true, "k8s": true}

// ValidateLabels checks label keys (with an optional vm: or k8s: source)
// and values.
func ValidateLabels(labels map[string]string) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := validateLabel(k, labels[k]); err != nil {
			return err
		}
	}
	return nil
}

func validateLabel(k, v string) error {
	key := k
	if src, rest, ok := strings.Cut(k, ":"); ok {
		if src == "mesh" {
			return fmt.Errorf("label %q: the mesh: source is reserved for labels Weft sets itself", k)
		}
		if !userSources[src] {
			return fmt.Errorf("label %q: unknown source %q (use vm: or k8s:, or no source)", k, src)
		}
		key = rest
	}
	if !labelKeyRE.MatchString(key) {
		return fmt.Errorf("label key %q is invalid: 1-253 letters, digits, '.', '_', '/', '-', starting and ending with a letter or digit", k)
	}
	if !labelValueRE.MatchString(v) {
		return fmt.Errorf("label %s=%q: the value is invalid: up to 63 letters, digits, '.', '_', '-', starting and ending with a letter or digit", k, v)
	}
	return nil
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
		if err := validateLabel(k, v); err != nil {
			return nil, err
		}
		out[k] = v
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
