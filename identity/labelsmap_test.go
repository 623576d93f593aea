package identity

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestParseLabelMap(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   map[string]string
		def  string
		want string // canonical form; "" with wantErr ""  means no labels
		// wantErr is part of the error, which wraps sentinel.
		wantErr  string
		sentinel error
	}{
		{name: "nil", in: nil, def: SourceVM, want: ""},
		{name: "default source", in: map[string]string{"app": "web", "k8s:team": "net"}, def: SourceVM, want: "k8s:team=net,vm:app=web"},
		{name: "explicit sources only", in: map[string]string{"vm:app": "web", "cidr:10.0.0.0/8": ""}, def: "", want: "cidr:10.0.0.0/8,vm:app=web"},
		{name: "empty value", in: map[string]string{"canary": ""}, def: SourceVM, want: "vm:canary"},
		{name: "same label, two spellings", in: map[string]string{"app": "web", "vm:app": "web"}, def: SourceVM, want: "vm:app=web"},
		{name: "two values for one label", in: map[string]string{"app": "a", "vm:app": "b"}, def: SourceVM, wantErr: `labels app=a,vm:app=b: identity: duplicate label key vm:app: values "a" and "b"`, sentinel: ErrDuplicateKey},
		{name: "empty key", in: map[string]string{"": "x"}, def: SourceVM, wantErr: "label =x has an empty key", sentinel: ErrInvalidLabel},
		{name: "= in key", in: map[string]string{"a=b": "c"}, def: SourceVM, wantErr: `label key "a=b" contains '='`, sentinel: ErrInvalidLabel},
		{name: "missing source", in: map[string]string{"app": "web"}, def: "", wantErr: "missing source", sentinel: ErrInvalidLabel},
		{name: "bad value", in: map[string]string{"app": "we b"}, def: SourceVM, wantErr: "not allowed", sentinel: ErrInvalidLabel},
		// Sorted keys: the first bad one in order is reported, every time.
		{name: "first error in key order", in: map[string]string{"z z": "1", "a a": "1", "m m": "1"}, def: SourceVM, wantErr: `"vm:a a=1"`, sentinel: ErrInvalidLabel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLabelMap(tc.in, tc.def)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, tc.sentinel) {
					t.Fatalf("got %v, %v; want an error containing %q wrapping %v", got, err, tc.wantErr, tc.sentinel)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestParseUserLabelMap(t *testing.T) {
	got, err := ParseUserLabelMap(map[string]string{"app": "web", "k8s:team": "net", "vm:zone": "a"})
	if err != nil || got.String() != "k8s:team=net,vm:app=web,vm:zone=a" {
		t.Fatalf("got %q, %v", got, err)
	}
	for _, key := range []string{"mesh:cluster", "reserved:host", "cidr:10.0.0.0/8"} {
		_, err := ParseUserLabelMap(map[string]string{key: ""})
		src, _, _ := strings.Cut(key, ":")
		want := `label "` + key + `": the ` + src + `: source is reserved for labels Weft sets itself (use vm:, k8s: or no source)`
		if !errors.Is(err, ErrInvalidLabel) || err.Error() != want {
			t.Errorf("%s: got %v, want %q", key, err, want)
		}
	}
}

func TestSplitLabelList(t *testing.T) {
	for in, want := range map[string]map[string]string{
		"":                         {},
		"  ":                       {},
		"app=web":                  {"app": "web"},
		" tier=db , vm:app=x ":     {"tier": "db", "vm:app": "x"},
		"empty=,k8s:io.x/y=z":      {"empty": "", "k8s:io.x/y": "z"},
		"app=web,vm:app=different": {"app": "web", "vm:app": "different"}, // syntax only: ParseLabelMap decides
	} {
		got, err := SplitLabelList(in)
		if err != nil || got == nil || !maps.Equal(got, want) {
			t.Errorf("SplitLabelList(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]struct {
		msg      string
		sentinel error
	}{
		"app":            {`label "app" is not key=value (example app=web,tier=front)`, ErrInvalidLabel},
		"=x":             {`label "=x" is not key=value`, ErrInvalidLabel},
		"app=web,":       {`label "" is not key=value`, ErrInvalidLabel},
		"app=web,app=db": {`label "app" is given twice`, ErrDuplicateKey},
	} {
		_, err := SplitLabelList(in)
		if err == nil || !strings.Contains(err.Error(), want.msg) || !errors.Is(err, want.sentinel) {
			t.Errorf("SplitLabelList(%q) = %v, want %q wrapping %v", in, err, want.msg, want.sentinel)
		}
	}
}

// The forms convert into each other without loss: what the package
// formats always carries sources, so parsing it back is exact.
func TestLabelFormsRoundTrip(t *testing.T) {
	for _, canonical := range []string{
		"",
		"vm:app=web",
		"k8s:app=web,k8s:io.kubernetes.pod.namespace=default,mesh:cluster=east,vm:app=db",
		"cidr:10.0.0.0/8,cidr:2001:db8::/32,reserved:host",
		"k8s:example.com/team=a-b_c.d,vm:canary",
	} {
		var ls Labels
		if canonical != "" {
			ls = MustLabels(strings.Split(canonical, ",")...)
		}
		m := ls.Map()
		if len(ls) == 0 && m != nil {
			t.Errorf("Map of no labels = %v, want nil (omitempty)", m)
		}
		if lm := LabelMap(ls.Strings()); !maps.Equal(lm, m) {
			t.Errorf("%q: LabelMap(strings) = %v, Labels.Map() = %v", canonical, lm, m)
		}
		back, err := ParseLabelMap(m, "")
		if err != nil || !back.Equal(ls) {
			t.Errorf("%q: map %v parsed back to %q, %v", canonical, m, back, err)
		}
		list := FormatLabelMap(m)
		split, err := SplitLabelList(list)
		if err != nil || !maps.Equal(split, m) && len(m) != 0 {
			t.Errorf("%q: list %q split to %v, %v; want %v", canonical, list, split, err, m)
		}
	}
	// Keys as written survive the list form too (app stays app).
	if got := FormatLabelMap(map[string]string{"vm:zone": "a", "app": "db"}); got != "app=db,vm:zone=a" {
		t.Errorf("FormatLabelMap = %q", got)
	}
}

// FuzzLabelList: a list that splits and parses formats back (through the
// map form) to the same label set.
func FuzzLabelList(f *testing.F) {
	for _, s := range []string{"", "app=web", " tier=db , app=x ", "vm:zone=a,k8s:team=net", "empty=", "app=x,vm:app=x", "mesh:cluster=x", "=x", "cidr:10.0.0.0/8="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := SplitLabelList(s)
		if err != nil {
			return
		}
		ls, err := ParseLabelMap(m, SourceVM)
		if err != nil {
			return
		}
		again, err := SplitLabelList(FormatLabelMap(ls.Map()))
		if err != nil {
			t.Fatalf("%q: the formatted %q does not split: %v", s, FormatLabelMap(ls.Map()), err)
		}
		back, err := ParseLabelMap(again, "")
		if err != nil || !back.Equal(ls) {
			t.Fatalf("%q: round trip changed %q to %q (%v)", s, ls, back, err)
		}
	})
}
