package identity

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestSelectorMatches(t *testing.T) {
	web := MustLabels("vm:app=web", "vm:tier=front", "mesh:cluster=c1")
	k8sDB := MustLabels("k8s:app=db", "k8s:env=prod", "mesh:cluster=c1")
	both := MustLabels("k8s:app=api", "vm:app=web")
	cases := []struct {
		name string
		sel  string // YAML
		in   Labels
		want bool
	}{
		{"empty selects all", `{}`, web, true},
		{"empty selects empty set", `{}`, Labels{}, true},
		{"matchLabels any source", `{matchLabels: {app: web}}`, web, true},
		{"matchLabels wrong value", `{matchLabels: {app: db}}`, web, false},
		{"matchLabels missing key", `{matchLabels: {env: prod}}`, web, false},
		{"matchLabels source restricts", `{matchLabels: {"k8s:app": web}}`, web, false},
		{"matchLabels source matches", `{matchLabels: {"k8s:app": db}}`, k8sDB, true},
		{"matchLabels all must hold", `{matchLabels: {app: web, tier: back}}`, web, false},
		{"two sources either value", `{matchLabels: {app: api}}`, both, true},
		{"In hit", `{matchExpressions: [{key: app, operator: In, values: [db, web]}]}`, web, true},
		{"In miss", `{matchExpressions: [{key: app, operator: In, values: [db]}]}`, web, false},
		{"In missing key", `{matchExpressions: [{key: env, operator: In, values: [prod]}]}`, web, false},
		{"NotIn hit", `{matchExpressions: [{key: app, operator: NotIn, values: [db]}]}`, web, true},
		{"NotIn miss", `{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}`, web, false},
		{"NotIn missing key matches", `{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}`, web, true},
		{"NotIn negates In over sources", `{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}`, both, false},
		{"NotIn with source", `{matchExpressions: [{key: "k8s:app", operator: NotIn, values: [web]}]}`, both, true},
		{"Exists", `{matchExpressions: [{key: tier, operator: Exists}]}`, web, true},
		{"Exists miss", `{matchExpressions: [{key: env, operator: Exists}]}`, web, false},
		{"Exists with source", `{matchExpressions: [{key: "k8s:tier", operator: Exists}]}`, web, false},
		{"DoesNotExist", `{matchExpressions: [{key: env, operator: DoesNotExist}]}`, web, true},
		{"DoesNotExist miss", `{matchExpressions: [{key: env, operator: DoesNotExist}]}`, k8sDB, false},
		{"labels and expressions", `{matchLabels: {"mesh:cluster": c1}, matchExpressions: [{key: env, operator: In, values: [prod]}]}`, k8sDB, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSelectorYAML([]byte(tc.sel))
			if err != nil {
				t.Fatalf("ParseSelectorYAML(%s): %v", tc.sel, err)
			}
			if got := s.Matches(tc.in); got != tc.want {
				t.Fatalf("%s matches %v = %v, want %v", s, tc.in, got, tc.want)
			}
			// JSON is the other way selectors arrive (etcd, the API).
			b, _ := json.Marshal(s)
			var j Selector
			if err := json.Unmarshal(b, &j); err != nil || j.String() != s.String() || j.Matches(tc.in) != tc.want {
				t.Fatalf("JSON round trip of %s: %s, %v", s, b, err)
			}
		})
	}
}

func TestSelectorInvalid(t *testing.T) {
	cases := []struct{ name, sel, wantErr string }{
		{"unknown field", "matchLabel: {app: web}", `unknown field "matchLabel"`},
		{"unquoted boolean y", "matchLabels:\n  debug: y", `quote it ("y")`},
		{"unquoted true", "matchLabels: {debug: true}", "boolean"},
		{"unquoted number", "matchLabels: {version: 2}", "is a number"},
		{"null value", "matchLabels: {app: }", "null"},
		{"bad value", "matchLabels: {app: 'we b'}", "not allowed"},
		{"bad key", "matchLabels: {'a b': web}", "not allowed"},
		{"unknown source", "matchLabels: {'aws:app': web}", "unknown source"},
		{"list not map", "matchLabels: [app]", "must be a mapping"},
		{"scalar selector", "web", "a selector is a mapping"},
		{"unknown operator", "matchExpressions: [{key: app, operator: Equals, values: [a]}]", `unknown operator "Equals"`},
		{"missing operator", "matchExpressions: [{key: app}]", "missing operator"},
		{"In without values", "matchExpressions: [{key: app, operator: In}]", "at least one value"},
		{"Exists with values", "matchExpressions: [{key: app, operator: Exists, values: [a]}]", "takes no values"},
		{"expression without key", "matchExpressions: [{operator: Exists}]", "without key"},
		{"unknown expression field", "matchExpressions: [{key: a, operator: Exists, value: x}]", `unknown field "value"`},
		{"duplicate field", "matchLabels: {a: b}\nmatchLabels: {c: d}", "given twice"},
		{"empty document", "", "empty document"},
		{"syntax error", "matchLabels: {a: b", "did not find"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSelectorYAML([]byte(tc.sel))
			if err == nil {
				t.Fatalf("ParseSelectorYAML(%q) = %v, want error containing %q", tc.sel, s, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidSelector) {
				t.Fatalf("error %q, want one containing %q wrapping ErrInvalidSelector", err, tc.wantErr)
			}
		})
	}
}

func TestSelectorErrorLine(t *testing.T) {
	_, err := ParseSelectorYAML([]byte("matchLabels:\n  app: web\n  debug: y\n"))
	pe, ok := IsPositionError(err)
	if !ok || pe.Line != 3 {
		t.Fatalf("error %v: want a position error on line 3", err)
	}
}

func TestSelectorJSONStrict(t *testing.T) {
	for _, bad := range []string{`{"matchLabel":{"a":"b"}}`, `{"matchLabels":{"a":true}}`, `{"matchExpressions":[{"key":"a","operator":"In"}]}`} {
		var s Selector
		if err := json.Unmarshal([]byte(bad), &s); err == nil {
			t.Errorf("json.Unmarshal(%s) accepted %v", bad, s)
		}
	}
}

func TestSelectorString(t *testing.T) {
	a, err := ParseSelectorYAML([]byte(`{matchLabels: {b: "1", a: x}, matchExpressions: [{key: t, operator: NotIn, values: [z, w]}, {key: e, operator: DoesNotExist}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.String(), "a=x,b=1,!e,t notin (w,z)"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if (Selector{}).String() != "{}" || !(Selector{}).IsEmpty() || a.IsEmpty() {
		t.Fatal("empty selector helpers are wrong")
	}
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{`{}`, `{matchLabels: {app: web}}`, "matchExpressions:\n- {key: a, operator: In, values: [b]}", `{matchLabels: {"k8s:a": y}}`, `[1, 2]`, `&a {matchLabels: *a}`} {
		f.Add(s)
	}
	probe := MustLabels("vm:app=web", "k8s:a=b")
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelectorYAML([]byte(s))
		if err != nil {
			if !errors.Is(err, ErrInvalidSelector) {
				t.Fatalf("error %v does not wrap ErrInvalidSelector", err)
			}
			return
		}
		if err := sel.Validate(); err != nil {
			t.Fatalf("parsed selector %v does not validate: %v", sel, err)
		}
		b, err := json.Marshal(sel)
		if err != nil {
			t.Fatal(err)
		}
		var j Selector
		if err := json.Unmarshal(b, &j); err != nil {
			t.Fatalf("JSON of a valid selector %s does not decode: %v", b, err)
		}
		if j.Matches(probe) != sel.Matches(probe) {
			t.Fatalf("JSON round trip changed matching of %s", b)
		}
	})
}
