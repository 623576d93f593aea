package identity

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseLabel(t *testing.T) {
	cases := []struct {
		name, in, def string
		want          Label
		wantErr       string // substring of the error; "" means success
	}{
		{name: "default source", in: "app=web", def: "vm", want: Label{"vm", "app", "web"}},
		{name: "explicit source", in: "k8s:app=web", def: "vm", want: Label{"k8s", "app", "web"}},
		{name: "no value", in: "k8s:canary", def: "vm", want: Label{"k8s", "canary", ""}},
		{name: "empty value with =", in: "vm:canary=", def: "", want: Label{"vm", "canary", ""}},
		{name: "prefixed key", in: "example.com/team=a-b_c.d", def: "k8s", want: Label{"k8s", "example.com/team", "a-b_c.d"}},
		{name: "dotted k8s key", in: "k8s:io.kubernetes.pod.namespace=default", def: "", want: Label{"k8s", "io.kubernetes.pod.namespace", "default"}},
		{name: "cidr v4", in: "cidr:198.18.0.0/16", def: "", want: Label{"cidr", "198.18.0.0/16", ""}},
		{name: "cidr v6", in: "cidr:2001:db8::/32", def: "", want: Label{"cidr", "2001:db8::/32", ""}},
		{name: "reserved", in: "reserved:host", def: "", want: Label{"reserved", "host", ""}},
		{name: "colon in value without source", in: "a=b:c", def: "vm", wantErr: "character ':'"},
		{name: "empty", in: "", def: "vm", wantErr: "empty label"},
		{name: "missing source", in: "app=web", def: "", wantErr: "missing source"},
		{name: "unknown source", in: "aws:app=web", def: "vm", wantErr: `unknown source "aws"`},
		{name: "unknown default source", in: "app=web", def: "gcp", wantErr: "unknown default source"},
		{name: "empty key", in: "=web", def: "vm", wantErr: "empty key"},
		{name: "bad key char", in: "a pp=web", def: "vm", wantErr: "not allowed"},
		{name: "key starts with dash", in: "-app=web", def: "vm", wantErr: "begin and end"},
		{name: "key too long", in: strings.Repeat("a", 64) + "=x", def: "vm", wantErr: "longer than 63"},
		{name: "value too long", in: "app=" + strings.Repeat("v", 64), def: "vm", wantErr: "longer than 63"},
		{name: "value bad char", in: "app=we/b", def: "vm", wantErr: "not allowed"},
		{name: "value ends with dot", in: "app=web.", def: "vm", wantErr: "begin and end"},
		{name: "upper-case prefix", in: "Example.com/app=web", def: "vm", wantErr: "DNS subdomain"},
		{name: "empty prefix", in: "/app=web", def: "vm", wantErr: "empty prefix"},
		{name: "empty name after prefix", in: "example.com/=web", def: "vm", wantErr: "empty name"},
		{name: "cidr host bits", in: "cidr:198.18.0.1/16", def: "", wantErr: "host bits"},
		{name: "cidr not a prefix", in: "cidr:web", def: "", wantErr: "not a CIDR"},
		{name: "empty source", in: ":app=web", def: "vm", wantErr: "unknown source"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLabel(tc.in, tc.def)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseLabel(%q) = %v, want error containing %q", tc.in, got, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidLabel) {
					t.Fatalf("ParseLabel(%q) error %q, want one containing %q wrapping ErrInvalidLabel", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLabel(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("ParseLabel(%q) = %#v, want %#v", tc.in, got, tc.want)
			}
			back, err := ParseLabel(got.String(), "")
			if err != nil || back != got {
				t.Fatalf("canonical form %q does not parse back: %v, %v", got.String(), back, err)
			}
		})
	}
}

func TestLabelsCanonical(t *testing.T) {
	a, err := ParseLabelList("tier=db, app=web,k8s:app=x", "vm")
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseLabels([]string{"k8s:app=x", "vm:app=web", "vm:tier=db", "app=web"}, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if want := "k8s:app=x,vm:app=web,vm:tier=db"; a.String() != want {
		t.Fatalf("String() = %q, want %q", a.String(), want)
	}
	if !a.Equal(b) || a.Hash() != b.Hash() {
		t.Fatalf("same set in another order differs: %v / %v", a, b)
	}
	if len(a.Hash()) != 64 {
		t.Fatalf("Hash() = %q, want 64 hex characters", a.Hash())
	}
	c, _ := ParseLabelList("app=web", "vm")
	if a.Equal(c) || a.Hash() == c.Hash() {
		t.Fatalf("different sets compare equal")
	}
	if v, ok := a.Get("app"); !ok || v != "x" {
		t.Fatalf(`Get("app") = %q, %v; want the first source in canonical order (k8s) "x"`, v, ok)
	}
	if v, ok := a.Get("vm:app"); !ok || v != "web" {
		t.Fatalf(`Get("vm:app") = %q, %v`, v, ok)
	}
	if _, ok := a.Get("mesh:app"); ok {
		t.Fatalf(`Get("mesh:app") found a label of another source`)
	}
	if !a.Has(Label{"vm", "tier", "db"}) || a.Has(Label{"vm", "tier", "web"}) {
		t.Fatalf("Has is wrong on %v", a)
	}
}

func TestLabelsErrors(t *testing.T) {
	cases := []struct{ name, in, wantErr string }{
		{"conflicting values", "app=web,app=db", "duplicate label key"},
		{"empty item", "app=web,,tier=db", "empty item 2"},
		{"trailing comma", "app=web,", "empty item 2"},
		{"bad label inside", "app=web,tier=d b", "not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := ParseLabelList(tc.in, "vm")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ParseLabelList(%q) = %v, %v; want error containing %q", tc.in, l, err, tc.wantErr)
			}
		})
	}
	if l, err := ParseLabelList("app=web,app=web", "vm"); err != nil || len(l) != 1 {
		t.Fatalf("the same label twice should be kept once: %v, %v", l, err)
	}
	if l, err := ParseLabelList("  ", "vm"); err != nil || len(l) != 0 {
		t.Fatalf("empty list: %v, %v", l, err)
	}
}

func TestLabelsJSON(t *testing.T) {
	l := MustLabels("vm:app=web", "mesh:cluster=c1")
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `["mesh:cluster=c1","vm:app=web"]` {
		t.Fatalf("JSON = %s", b)
	}
	var back Labels
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(l) {
		t.Fatalf("round trip: %v, %v", back, err)
	}
	for _, bad := range []string{`["app=web"]`, `{"app":"web"}`, `["vm:a=1","vm:a=2"]`} {
		var x Labels
		if err := json.Unmarshal([]byte(bad), &x); err == nil {
			t.Errorf("Unmarshal(%s) accepted %v", bad, x)
		}
	}
}

func TestLabelsWith(t *testing.T) {
	l := MustLabels("vm:app=web")
	m, err := l.With(Label{"mesh", "kind", "vm"}, Label{"vm", "app", "db"})
	if err != nil {
		t.Fatal(err)
	}
	if m.String() != "mesh:kind=vm,vm:app=db" || l.String() != "vm:app=web" {
		t.Fatalf("With = %v (original %v)", m, l)
	}
}

func TestReserved(t *testing.T) {
	for _, tc := range []struct {
		n    NumericIdentity
		name string
	}{{IdentityHost, "host"}, {IdentityWorld, "world"}, {IdentityRemoteNode, "remote-node"}, {IdentityHealth, "health"}} {
		if tc.n.String() != tc.name {
			t.Errorf("%d.String() = %q, want %q", uint32(tc.n), tc.n.String(), tc.name)
		}
		got, err := LookupReserved(tc.name)
		if err != nil || got != tc.n {
			t.Errorf("LookupReserved(%q) = %v, %v", tc.name, got, err)
		}
		l, ok := ReservedLabels(tc.n)
		if !ok || l.String() != "reserved:"+tc.name {
			t.Errorf("ReservedLabels(%v) = %v", tc.n, l)
		}
	}
	if NumericIdentity(300).String() != "300" || !IdentityRemoteNode.IsReserved() || MinAllocated.IsReserved() {
		t.Fatal("numeric identity helpers are wrong")
	}
	if _, err := LookupReserved("any"); err == nil {
		t.Fatal("any is not a reserved identity one can name")
	}
	if len(ReservedIdentities()) != 6 {
		t.Fatalf("ReservedIdentities() = %v", ReservedIdentities())
	}
}

func FuzzParseLabel(f *testing.F) {
	for _, s := range []string{"app=web", "k8s:app=web", "cidr:2001:db8::/32", "example.com/a=b", "a=b:c", ":", "vm:=", "reserved:host"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLabel(s, "vm")
		if err != nil {
			return
		}
		back, err := ParseLabel(l.String(), "")
		if err != nil || back != l {
			t.Fatalf("%q parsed to %#v whose canonical form %q does not round-trip: %v", s, l, l.String(), err)
		}
		ls, err := ParseLabelList(l.String(), "")
		if err != nil || len(ls) != 1 || ls[0] != l {
			// A canonical label with a comma would break the list form.
			t.Fatalf("canonical %q is not a one-item label list: %v, %v", l.String(), ls, err)
		}
	})
}
