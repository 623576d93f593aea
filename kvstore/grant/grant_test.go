package grant

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	ps, err := Parse([]string{"app=web", " app=worker", "k8s:tier=*", "*"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"app=web", "app=worker", "k8s:tier=*", "*"}
	for i, s := range Strings(ps) {
		if s != want[i] {
			t.Errorf("pattern %d = %q, want %q", i, s, want[i])
		}
	}
	for _, bad := range []string{"", "app", "app=", "=web", ":app=web", "mesh:cluster=x", "reserved:host=", "reserved:host=x", "app=w*b", "a b=c", "app=web,app=db", "*=x"} {
		if _, err := Parse([]string{bad}); !errors.Is(err, ErrInvalidPattern) {
			t.Errorf("Parse(%q) = %v, want ErrInvalidPattern", bad, err)
		}
	}
}

func TestAllows(t *testing.T) {
	web, _ := Parse([]string{"app=web", "app=worker", "k8s:tier=*"})
	any, _ := Parse([]string{"*"})
	cases := []struct {
		name   string
		ps     []Pattern
		labels []string
		ok     bool
	}{
		{"granted value", web, []string{"vm:app=web", "mesh:cluster=east", "mesh:kind=vm"}, true},
		{"other granted value", web, []string{"k8s:app=worker"}, true},
		{"any value of a source-bound key", web, []string{"k8s:tier=db"}, true},
		{"source-bound key from another source", web, []string{"vm:tier=db"}, false},
		{"value not granted", web, []string{"vm:app=db"}, false},
		{"one label outside", web, []string{"vm:app=web", "vm:role=admin"}, false},
		{"another cluster", web, []string{"vm:app=web", "mesh:cluster=west"}, false},
		{"unknown mesh label", web, []string{"mesh:owner=x"}, false},
		{"reserved", any, []string{"reserved:host="}, false},
		{"anything", any, []string{"vm:app=db", "k8s:x=y"}, true},
		{"no patterns, no user label", nil, []string{"vm:app=web"}, false},
		{"no patterns, mesh labels only", nil, []string{"mesh:cluster=east"}, true},
		{"not a label", any, []string{"garbage"}, false},
	}
	for _, c := range cases {
		err := Allows(c.ps, "east", c.labels)
		if (err == nil) != c.ok {
			t.Errorf("%s: Allows(%v) = %v, want ok=%v", c.name, c.labels, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s: %v does not wrap ErrNotAllowed", c.name, err)
		}
	}
}
