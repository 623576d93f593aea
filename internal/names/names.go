// Package names holds the one rule for the names Weft gives things:
// clusters, nodes, workloads and endpoints, policies and join tokens.
//
// A name is a DNS subdomain as RFC 1123 and Kubernetes define it
// (dot-separated parts of lower-case letters, digits and '-', each part
// starting and ending with a letter or digit) of at most 63 characters.
// Kubernetes allows node and pod names up to 253, but 63 is what every
// place a name flows into can hold: a cluster name is the value of the
// mesh:cluster label (label values are at most 63), a node name is a
// host name (at most 64 on Linux) and the kubernetes.io/hostname label,
// and names are parts of etcd keys (`nodes/<cluster>/<node>`),
// certificate subjects and bpffs directory names. Allowing more here would
// only move the refusal somewhere less clear.
//
// The package knows nothing of etcd or the kernel: kvstore, the agent's
// configuration, the join service and identity all use it.
package names

import (
	"fmt"
	"strings"
)

// MaxLen is the longest name.
const MaxLen = 63

// Rule says what a valid name is, for error messages and help texts.
const Rule = "1-63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, with a letter or digit on both sides of every '.'"

// Validate checks a name of the given kind ("cluster", "node", ...). The
// error says what is wrong, the rule, and a name that would do when one
// can be derived ("Web_1" -> "web-1").
func Validate(kind, name string) error {
	why := check(name)
	if why == "" {
		return nil
	}
	example := "such as vm-1 or db.east"
	if s := Suggest(name); s != "" {
		example = fmt.Sprintf("%q would do", s)
	}
	return fmt.Errorf("%q is not a valid %s name: %s; use %s (%s)", name, kind, why, Rule, example)
}

// Valid reports whether name follows the rule.
func Valid(name string) bool { return check(name) == "" }

func check(name string) string {
	switch {
	case name == "":
		return "it is empty"
	case len(name) > MaxLen:
		return fmt.Sprintf("it is %d characters long, %d more than allowed", len(name), len(name)-MaxLen)
	}
	if why := CheckDNSSubdomain(name); why != "" {
		return why
	}
	return ""
}

// CheckDNSSubdomain says what makes s not an RFC 1123 DNS subdomain, or
// returns "" when it is one. It does not bound the whole length: callers
// have their own (MaxLen for names, 253 for label key prefixes).
func CheckDNSSubdomain(s string) string {
	if s == "" {
		return "it is empty"
	}
	pos := 0
	for _, r := range s {
		pos++
		if r > 127 || !isLowerAlnum(byte(r)) && r != '-' && r != '.' {
			if r >= 'A' && r <= 'Z' {
				return fmt.Sprintf("upper-case %q at position %d is not allowed", r, pos)
			}
			return fmt.Sprintf("character %q at position %d is not allowed", r, pos)
		}
	}
	for i, part := range strings.Split(s, ".") {
		switch {
		case part == "":
			return "it has an empty part between dots, or starts or ends with a dot"
		case len(part) > 63:
			return fmt.Sprintf("its part %d (%q) is longer than 63 characters", i+1, part)
		case !isLowerAlnum(part[0]) || !isLowerAlnum(part[len(part)-1]):
			if strings.Contains(s, ".") {
				return fmt.Sprintf("its part %q does not start and end with a letter or digit", part)
			}
			return "it does not start and end with a letter or digit"
		}
	}
	return ""
}

// Suggest derives a valid name from s (lower-cased, other characters
// replaced by '-', trimmed to MaxLen), or returns "" when nothing
// sensible is left or s is valid already.
func Suggest(s string) string {
	if Valid(s) {
		return ""
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'A' && r <= 'Z':
			b.WriteRune(r + 'a' - 'A')
		case r < 128 && isLowerAlnum(byte(r)), r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	parts := strings.Split(b.String(), ".")
	kept := parts[:0]
	for _, p := range parts {
		if p = strings.Trim(p, "-"); p != "" {
			kept = append(kept, p)
		}
	}
	out := strings.Join(kept, ".")
	if len(out) > MaxLen {
		out = strings.TrimRight(out[:MaxLen], "-.")
	}
	if !Valid(out) {
		return ""
	}
	return out
}

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
