package names

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", MaxLen)
	for _, tc := range []struct {
		name string
		ok   bool
		// why is part of the error; suggest the name it proposes ("" none).
		why, suggest string
	}{
		{name: "a", ok: true},
		{name: "vm-1", ok: true},
		{name: "db.east", ok: true},
		{name: "ip-10-0-0-1.ec2.internal", ok: true},
		{name: "0", ok: true},
		{name: long, ok: true},
		{name: "", why: "it is empty"},
		{name: long + "b", why: "64 characters long, 1 more", suggest: long},
		{name: "Web_1", why: "upper-case 'W' at position 1", suggest: "web-1"},
		{name: "web_1", why: "character '_' at position 4", suggest: "web-1"},
		{name: "web 1", why: "character ' ' at position 4", suggest: "web-1"},
		{name: "east/../x", why: "character '/' at position 5", suggest: "east.x"},
		{name: "zürich", why: "character 'ü' at position 2", suggest: "z-rich"},
		{name: "-web", why: "does not start and end with a letter or digit", suggest: "web"},
		{name: "web-", why: "does not start and end with a letter or digit", suggest: "web"},
		{name: ".web", why: "empty part", suggest: "web"},
		{name: "db..east", why: "empty part", suggest: "db.east"},
		{name: "db.-east", why: `part "-east" does not start and end`, suggest: "db.east"},
		{name: "db-.east", why: `part "db-" does not start and end`, suggest: "db.east"},
		{name: "---", why: "does not start and end"},
	} {
		err := Validate("node", tc.name)
		if tc.ok {
			if err != nil {
				t.Errorf("%q: %v", tc.name, err)
			}
			if !Valid(tc.name) || Suggest(tc.name) != "" {
				t.Errorf("%q: Valid or Suggest disagree with Validate", tc.name)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q: accepted", tc.name)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, `"`) || !strings.Contains(msg, "is not a valid node name: ") || !strings.Contains(msg, tc.why) || !strings.Contains(msg, Rule) {
			t.Errorf("%q: the error must name the kind, say what is wrong (%q) and give the rule: %s", tc.name, tc.why, msg)
		}
		if got := Suggest(tc.name); got != tc.suggest {
			t.Errorf("Suggest(%q) = %q, want %q", tc.name, got, tc.suggest)
		}
		if tc.suggest != "" && !strings.HasSuffix(msg, `("`+tc.suggest+`" would do)`) {
			t.Errorf("%q: the error should propose %q: %s", tc.name, tc.suggest, msg)
		}
		if Valid(tc.name) {
			t.Errorf("%q: Valid disagrees with Validate", tc.name)
		}
	}
}

// A label-key prefix is a DNS subdomain of up to 253 characters: the same
// check without the name's length bound.
func TestCheckDNSSubdomain(t *testing.T) {
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + ".example.com"
	for s, ok := range map[string]bool{
		"example.com": true, long: true, "a": true,
		"": false, "Example.com": false, "a..b": false, "a.-b": false, strings.Repeat("a", 64) + ".com": false,
	} {
		if got := CheckDNSSubdomain(s) == ""; got != ok {
			t.Errorf("CheckDNSSubdomain(%q) = %q, want ok=%v", s, CheckDNSSubdomain(s), ok)
		}
	}
}

func FuzzSuggest(f *testing.F) {
	for _, s := range []string{"Web_1", "db..east", "-x-", "zürich", strings.Repeat("ab.", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got := Suggest(s); got != "" && !Valid(got) {
			t.Fatalf("Suggest(%q) = %q, which is not valid: %v", s, got, Validate("x", got))
		}
	})
}
