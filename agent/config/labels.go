package config

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/weftmesh/weft/identity"
)

// ValidateLabels checks configuration labels (key or source:key -> value;
// no source means vm:, and only vm: and k8s: are a user's to give), and
// that no label is given twice under two spellings (app and vm:app).
func ValidateLabels(labels map[string]string) error {
	_, err := identity.ParseUserLabelMap(labels)
	return err
}

// ParseLabels parses the command-line form "k=v,k2=v2" (also "vm:k=v")
// into configuration labels, keys as written, and validates them. An empty
// string is no labels.
func ParseLabels(s string) (map[string]string, error) {
	m, err := identity.SplitLabelList(s)
	if err != nil {
		return nil, err
	}
	if err := ValidateLabels(m); err != nil {
		return nil, err
	}
	return m, nil
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
