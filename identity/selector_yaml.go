package identity

import (
	"errors"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// PositionError is an error at a line and column of a YAML document.
type PositionError struct {
	Line, Column int
	Err          error
}

func (e *PositionError) Error() string {
	return fmt.Sprintf("line %d column %d: %v", e.Line, e.Column, e.Err)
}

func (e *PositionError) Unwrap() error { return e.Err }

func posErr(n *yaml.Node, format string, args ...any) error {
	return &PositionError{Line: n.Line, Column: n.Column, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalidSelector}, args...)...)}
}

// ParseSelectorYAML parses one selector written in YAML (or JSON, which is
// YAML): unknown fields, values that are not strings and invalid keys are
// errors carrying their line.
func ParseSelectorYAML(data []byte) (Selector, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Selector{}, fmt.Errorf("%w: %v", ErrInvalidSelector, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return Selector{}, fmt.Errorf("%w: empty document (write {} to select everything)", ErrInvalidSelector)
	}
	return SelectorFromNode(doc.Content[0])
}

// SelectorFromNode decodes a selector from a YAML mapping node, strictly.
// Errors are *PositionError (wrapping ErrInvalidSelector).
func SelectorFromNode(n *yaml.Node) (Selector, error) {
	n = resolveAlias(n)
	if n.Kind != yaml.MappingNode {
		return Selector{}, posErr(n, "a selector is a mapping with matchLabels and/or matchExpressions, not %s", describe(n))
	}
	var s Selector
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		if seen[k.Value] {
			return Selector{}, posErr(k, "field %q given twice", k.Value)
		}
		seen[k.Value] = true
		switch k.Value {
		case "matchLabels":
			m, err := stringMap(v)
			if err != nil {
				return Selector{}, err
			}
			s.MatchLabels = m
		case "matchExpressions":
			if v.Kind != yaml.SequenceNode {
				return Selector{}, posErr(v, "matchExpressions must be a list, not %s", describe(v))
			}
			s.MatchExpressions = make([]Requirement, 0, len(v.Content))
			for _, e := range v.Content {
				r, err := requirementFromNode(resolveAlias(e))
				if err != nil {
					return Selector{}, err
				}
				s.MatchExpressions = append(s.MatchExpressions, r)
			}
		default:
			return Selector{}, posErr(k, "unknown field %q in selector (use matchLabels, matchExpressions)", k.Value)
		}
	}
	// Validate each part where it was written, so the line is the right one.
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		switch k.Value {
		case "matchLabels":
			for j := 0; j+1 < len(v.Content); j += 2 {
				lk, lv := v.Content[j], v.Content[j+1]
				if err := validateSelectorKey(lk.Value); err != nil {
					return Selector{}, posErr(lk, "matchLabels: %v", err)
				}
				if err := ValidateValue(lv.Value); err != nil {
					return Selector{}, posErr(lv, "matchLabels %q: %v", lk.Value, err)
				}
			}
		case "matchExpressions":
			for j, e := range v.Content {
				if err := s.MatchExpressions[j].validate(); err != nil {
					return Selector{}, posErr(e, "matchExpressions[%d]: %v", j, err)
				}
			}
		}
	}
	return s, nil
}

func requirementFromNode(n *yaml.Node) (Requirement, error) {
	if n.Kind != yaml.MappingNode {
		return Requirement{}, posErr(n, "a matchExpressions entry is a mapping {key, operator, values}, not %s", describe(n))
	}
	var r Requirement
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		if seen[k.Value] {
			return Requirement{}, posErr(k, "field %q given twice", k.Value)
		}
		seen[k.Value] = true
		switch k.Value {
		case "key":
			s, err := StringScalar(v, "key")
			if err != nil {
				return Requirement{}, err
			}
			r.Key = s
		case "operator":
			s, err := StringScalar(v, "operator")
			if err != nil {
				return Requirement{}, err
			}
			r.Operator = Operator(s)
		case "values":
			if v.Kind != yaml.SequenceNode {
				return Requirement{}, posErr(v, "values must be a list of strings, not %s", describe(v))
			}
			r.Values = make([]string, 0, len(v.Content))
			for _, e := range v.Content {
				s, err := StringScalar(resolveAlias(e), "value")
				if err != nil {
					return Requirement{}, err
				}
				r.Values = append(r.Values, s)
			}
		default:
			return Requirement{}, posErr(k, "unknown field %q in matchExpressions entry (use key, operator, values)", k.Value)
		}
	}
	if !seen["key"] {
		return Requirement{}, posErr(n, "matchExpressions entry without key")
	}
	return r, nil
}

func stringMap(n *yaml.Node) (map[string]string, error) {
	if n.Kind != yaml.MappingNode {
		return nil, posErr(n, "matchLabels must be a mapping of key: value, not %s", describe(n))
	}
	m := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		key, err := StringScalar(k, "label key")
		if err != nil {
			return nil, err
		}
		if _, dup := m[key]; dup {
			return nil, posErr(k, "label key %q given twice", key)
		}
		val, err := StringScalar(v, fmt.Sprintf("value of %q", key))
		if err != nil {
			return nil, err
		}
		m[key] = val
	}
	return m, nil
}

// yaml11Bools are the words YAML 1.1 parsers (and so many tools) read as
// booleans: written unquoted as label values they are a trap.
var yaml11Bools = map[string]bool{
	"y": true, "Y": true, "yes": true, "Yes": true, "YES": true,
	"n": true, "N": true, "no": true, "No": true, "NO": true,
	"true": true, "True": true, "TRUE": true, "false": true, "False": true, "FALSE": true,
	"on": true, "On": true, "ON": true, "off": true, "Off": true, "OFF": true,
}

// StringScalar returns the text of a scalar that must be a string. An
// unquoted boolean, number or null is refused with a hint to quote it,
// because label values are strings and `y` silently becoming true (or
// `010` becoming 8) would select something else than the author meant.
func StringScalar(n *yaml.Node, what string) (string, error) {
	n = resolveAlias(n)
	if n.Kind != yaml.ScalarNode {
		return "", posErr(n, "%s must be a string, not %s", what, describe(n))
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return n.Value, nil
	}
	tag := n.ShortTag()
	if tag == "!!bool" || (tag == "!!str" && yaml11Bools[n.Value]) {
		return "", posErr(n, "%s %s is read as a boolean by YAML: quote it (\"%s\") to mean the string", what, n.Value, n.Value)
	}
	if tag == "!!int" || tag == "!!float" {
		return "", posErr(n, "%s %s is a number: quote it (\"%s\"); label values are strings", what, n.Value, n.Value)
	}
	if tag == "!!null" {
		return "", posErr(n, "%s is empty (null): write \"\" for an empty string", what)
	}
	if tag != "!!str" {
		return "", posErr(n, "%s has type %s: write a quoted string", what, tag)
	}
	return n.Value, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return fmt.Sprintf("the %s %q", strings.TrimPrefix(n.ShortTag(), "!!"), n.Value)
	}
	return "an unexpected node"
}

// IsPositionError reports whether err carries a YAML position, and returns it.
func IsPositionError(err error) (*PositionError, bool) {
	var pe *PositionError
	ok := errors.As(err, &pe)
	return pe, ok
}
