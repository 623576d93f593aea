// Package grant decides whether a node may publish an endpoint with a
// given label set: the label allow-list its join token granted
// (`meshctl token create --allow-labels app=web,app=worker`), stored by the
// join service at grants/<cluster>/<node> where nodes can read but not
// write it. Readers (the ipcache reconciler) refuse endpoint records whose
// labels fall outside the publishing node's grant, so a compromised node
// cannot claim an identity it was not given. Pure: no etcd, no kernel.
package grant

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNotAllowed is wrapped by every refusal of Allows.
var ErrNotAllowed = errors.New("grant: label not allowed for this node")

// ErrInvalidPattern is wrapped by Parse's refusals.
var ErrInvalidPattern = errors.New("grant: invalid label pattern")

// Any is the pattern that allows every label (a token made without
// --allow-labels grants it, as before grants existed).
const Any = "*"

// Pattern is one allowed label: Source empty matches any user source (vm,
// k8s), Value "*" any value.
type Pattern struct {
	Source, Key, Value string
}

func (p Pattern) String() string {
	if p.Key == Any {
		return Any
	}
	s := p.Key + "=" + p.Value
	if p.Source != "" {
		s = p.Source + ":" + s
	}
	return s
}

// Parse reads patterns: "*", "key=value", "key=*", "source:key=value".
// The mesh and reserved sources are never granted: Weft sets them itself.
func Parse(ss []string) ([]Pattern, error) {
	out := make([]Pattern, 0, len(ss))
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if s == Any {
			out = append(out, Pattern{Key: Any})
			continue
		}
		kv, value, ok := strings.Cut(s, "=")
		if !ok || value == "" || strings.ContainsAny(s, " \t\n\r\x00,") {
			return nil, fmt.Errorf("%w: %q: want key=value, key=* or source:key=value", ErrInvalidPattern, s)
		}
		src, key, hasSrc := strings.Cut(kv, ":")
		if !hasSrc {
			src, key = "", kv
		}
		if key == "" || key == Any || hasSrc && src == "" {
			return nil, fmt.Errorf("%w: %q: the key must be a label key", ErrInvalidPattern, s)
		}
		if src == "mesh" || src == "reserved" {
			return nil, fmt.Errorf("%w: %q: %s labels are set by Weft itself and cannot be granted", ErrInvalidPattern, s, src)
		}
		if strings.Contains(value, Any) && value != Any {
			return nil, fmt.Errorf("%w: %q: * stands for a whole value, not part of one", ErrInvalidPattern, s)
		}
		out = append(out, Pattern{Source: src, Key: key, Value: value})
	}
	return out, nil
}

// Strings is the stored form of patterns.
func Strings(ps []Pattern) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// Allows reports whether a node of cluster granted patterns may publish an
// endpoint with labels (canonical "source:key=value" strings). Every user
// label must match a pattern; of Weft's own labels, mesh:cluster must name
// the node's cluster and mesh:kind is free; reserved labels are never
// published by nodes. No pattern at all allows no user label.
func Allows(patterns []Pattern, cluster string, labels []string) error {
	for _, l := range labels {
		src, rest, ok := strings.Cut(l, ":")
		key, value, ok2 := strings.Cut(rest, "=")
		if !ok || !ok2 {
			return fmt.Errorf("%w: %q is not source:key=value", ErrNotAllowed, l)
		}
		switch src {
		case "mesh":
			if key == "cluster" && value != cluster {
				return fmt.Errorf("%w: %s claims another cluster than the node's (%s)", ErrNotAllowed, l, cluster)
			}
			if key != "cluster" && key != "kind" {
				return fmt.Errorf("%w: %s is not a label Weft sets", ErrNotAllowed, l)
			}
			continue
		case "reserved":
			return fmt.Errorf("%w: %s: reserved identities are not published by nodes", ErrNotAllowed, l)
		}
		if !matchAny(patterns, src, key, value) {
			return fmt.Errorf("%w: %s is outside the node's grant [%s]", ErrNotAllowed, l, strings.Join(Strings(patterns), ","))
		}
	}
	return nil
}

func matchAny(ps []Pattern, src, key, value string) bool {
	for _, p := range ps {
		if p.Key == Any {
			return true
		}
		if (p.Source == "" || p.Source == src) && p.Key == key && (p.Value == Any || p.Value == value) {
			return true
		}
	}
	return false
}
