package identity

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Operator is the operator of a matchExpressions requirement.
type Operator string

// The operators of Kubernetes label selectors.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one matchExpressions entry.
type Requirement struct {
	Key      string   `json:"key"`
	Operator Operator `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Selector is a Kubernetes-style label selector. Keys may carry a source
// ("k8s:app"), which restricts them to labels of that source; a key without
// one ("app") matches that key from any source. All of matchLabels and
// matchExpressions must hold; the empty selector matches every label set.
//
// With several sources carrying the same key, In and a matchLabels entry
// hold when any of those labels has an allowed value, and NotIn is exactly
// the negation of In (none of them has a listed value), as DoesNotExist is
// of Exists.
type Selector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []Requirement     `json:"matchExpressions,omitempty"`
}

// SplitSelectorKey splits "source:key" into its parts; a key without a
// known-looking source prefix returns an empty source.
func SplitSelectorKey(k string) (source, key string) {
	if i := strings.IndexByte(k, ':'); i >= 0 {
		return k[:i], k[i+1:]
	}
	return "", k
}

func validateSelectorKey(k string) error {
	src, key := SplitSelectorKey(k)
	if src == "" && strings.Contains(k, ":") {
		return fmt.Errorf("key %q: empty source before ':'", k)
	}
	if src != "" && !IsKnownSource(src) {
		return fmt.Errorf("key %q: unknown source %q (use one of %s, or no source to match any)", k, src, strings.Join(knownSources, ", "))
	}
	return validateKey(src, key)
}

// Validate checks keys, values and operators and says which entry is wrong.
func (s Selector) Validate() error {
	for _, k := range sortedKeys(s.MatchLabels) {
		if err := validateSelectorKey(k); err != nil {
			return fmt.Errorf("%w: matchLabels: %v", ErrInvalidSelector, err)
		}
		if err := ValidateValue(s.MatchLabels[k]); err != nil {
			return fmt.Errorf("%w: matchLabels %q: %v", ErrInvalidSelector, k, err)
		}
	}
	for i, r := range s.MatchExpressions {
		if err := r.validate(); err != nil {
			return fmt.Errorf("%w: matchExpressions[%d]: %v", ErrInvalidSelector, i, err)
		}
	}
	return nil
}

func (r Requirement) validate() error {
	if err := validateSelectorKey(r.Key); err != nil {
		return err
	}
	switch r.Operator {
	case OpIn, OpNotIn:
		if len(r.Values) == 0 {
			return fmt.Errorf("key %q: operator %s needs at least one value", r.Key, r.Operator)
		}
		for _, v := range r.Values {
			if err := ValidateValue(v); err != nil {
				return fmt.Errorf("key %q: %v", r.Key, err)
			}
		}
	case OpExists, OpDoesNotExist:
		if len(r.Values) != 0 {
			return fmt.Errorf("key %q: operator %s takes no values (remove values)", r.Key, r.Operator)
		}
	case "":
		return fmt.Errorf("key %q: missing operator (use In, NotIn, Exists or DoesNotExist)", r.Key)
	default:
		return fmt.Errorf("key %q: unknown operator %q (use In, NotIn, Exists or DoesNotExist)", r.Key, r.Operator)
	}
	return nil
}

// IsEmpty reports whether the selector has no requirement, i.e. matches
// every label set.
func (s Selector) IsEmpty() bool { return len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0 }

// Matches reports whether the label set satisfies every requirement. The
// selector is assumed valid; an invalid one matches nothing it cannot parse.
func (s Selector) Matches(l Labels) bool {
	for k, v := range s.MatchLabels {
		if !anyValue(l, k, func(x string) bool { return x == v }) {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		if !r.Matches(l) {
			return false
		}
	}
	return true
}

// Matches reports whether the label set satisfies the requirement.
func (r Requirement) Matches(l Labels) bool {
	switch r.Operator {
	case OpIn:
		return anyValue(l, r.Key, func(x string) bool { return slices.Contains(r.Values, x) })
	case OpNotIn:
		return !anyValue(l, r.Key, func(x string) bool { return slices.Contains(r.Values, x) })
	case OpExists:
		return anyValue(l, r.Key, func(string) bool { return true })
	case OpDoesNotExist:
		return !anyValue(l, r.Key, func(string) bool { return true })
	}
	return false
}

// anyValue reports whether a label matching the selector key k has a
// value for which ok holds.
func anyValue(l Labels, k string, ok func(string) bool) bool {
	src, key := SplitSelectorKey(k)
	for _, x := range l {
		if x.Key == key && (src == "" || x.Source == src) && ok(x.Value) {
			return true
		}
	}
	return false
}

// String is a canonical, human-readable form ("app=web,tier in (a,b)");
// equal selectors print the same, so it can key a cache.
func (s Selector) String() string {
	parts := make([]string, 0, len(s.MatchLabels)+len(s.MatchExpressions))
	for _, k := range sortedKeys(s.MatchLabels) {
		parts = append(parts, k+"="+s.MatchLabels[k])
	}
	exprs := make([]string, 0, len(s.MatchExpressions))
	for _, r := range s.MatchExpressions {
		exprs = append(exprs, r.String())
	}
	sort.Strings(exprs)
	parts = append(parts, exprs...)
	if len(parts) == 0 {
		return "{}"
	}
	return strings.Join(parts, ",")
}

// String prints the requirement as in kubectl: "tier in (a,b)", "!env".
func (r Requirement) String() string {
	vals := slices.Clone(r.Values)
	sort.Strings(vals)
	switch r.Operator {
	case OpIn:
		return r.Key + " in (" + strings.Join(vals, ",") + ")"
	case OpNotIn:
		return r.Key + " notin (" + strings.Join(vals, ",") + ")"
	case OpExists:
		return r.Key
	case OpDoesNotExist:
		return "!" + r.Key
	}
	return r.Key + " " + string(r.Operator) + " (" + strings.Join(vals, ",") + ")"
}

// UnmarshalJSON decodes strictly (unknown fields are errors) and validates.
func (s *Selector) UnmarshalJSON(b []byte) error {
	type plain Selector
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSelector, err)
	}
	sel := Selector(p)
	if err := sel.Validate(); err != nil {
		return err
	}
	*s = sel
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
