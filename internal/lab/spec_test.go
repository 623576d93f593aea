package lab

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestParseSpecFile(t *testing.T) {
	data, err := os.ReadFile("testdata/three-sites.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ParseSpec(data, "three-sites.yaml")
	if err != nil {
		t.Fatalf("parsing the example topology: %v", err)
	}
	want := &Spec{Name: "demo", Sites: []SiteSpec{
		{Name: "east", NATKind: NATNone, Nodes: []NodeSpec{
			{Name: "east-1", Workloads: []WorkloadSpec{{Name: "east-1-web"}}},
			{Name: "east-2", Workloads: []WorkloadSpec{{Name: "east-2-db"}}},
		}},
		{Name: "west", NATKind: NATNone, Nodes: []NodeSpec{{Name: "west-1", Workloads: []WorkloadSpec{{Name: "west-1-web"}}}}},
		{Name: "home", NATKind: NATEIM, NAT: true, Nodes: []NodeSpec{{Name: "laptop", Workloads: []WorkloadSpec{{Name: "laptop-app"}}}}},
	}}
	if !reflect.DeepEqual(spec, want) {
		t.Fatalf("parsed %+v, want %+v", spec, want)
	}
}

func TestParseSpecNATKindsFile(t *testing.T) {
	data, err := os.ReadFile("testdata/nat-kinds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ParseSpec(data, "nat-kinds.yaml")
	if err != nil {
		t.Fatalf("parsing the example topology: %v", err)
	}
	var got []string
	for _, s := range spec.Sites {
		got = append(got, s.Name+"="+string(s.Kind()))
	}
	if want := "cloud=none home1=eim home2=eim hotel1=symmetric hotel2=symmetric"; strings.Join(got, " ") != want {
		t.Errorf("NAT kinds %s, want %s", strings.Join(got, " "), want)
	}
}

func TestParseSpecJSON(t *testing.T) {
	spec, err := ParseSpec([]byte(`{"name":"j","sites":[{"name":"a","nat":true,"nodes":[{"name":"a1"}]}]}`), "x.json")
	if err != nil {
		t.Fatal(err)
	}
	if !spec.Sites[0].NAT || spec.Sites[0].NATKind != NATEIM || spec.Sites[0].Nodes[0].Name != "a1" {
		t.Fatalf("parsed %+v", spec)
	}
}

// Every spelling of the nat field gives its kind, and both fields agree.
func TestParseSpecNATKinds(t *testing.T) {
	for _, tt := range []struct {
		nat  string // the field's YAML, "" for none
		kind NATKind
	}{
		{"", NATNone},
		{"nat: false", NATNone},
		{"nat: none", NATNone},
		{"nat: true", NATEIM},
		{"nat: eim", NATEIM},
		{`nat: "eim"`, NATEIM},
		{"nat: symmetric", NATSymmetric},
		{"nat: null", NATNone},
	} {
		doc := "name: x\nsites:\n  - name: a\n    " + tt.nat + "\n    nodes: [{name: a1}]\n"
		spec, err := ParseSpec([]byte(doc), "k.yaml")
		if err != nil {
			t.Errorf("%q: %v", tt.nat, err)
			continue
		}
		site := spec.Sites[0]
		if site.NATKind != tt.kind || site.Kind() != tt.kind || site.NAT != (tt.kind != NATNone) {
			t.Errorf("%q: NATKind %q NAT %t, want %q", tt.nat, site.NATKind, site.NAT, tt.kind)
		}
		if r := layout(spec, nil).Router("a"); r.NATKind != tt.kind || r.NAT != (tt.kind != NATNone) {
			t.Errorf("%q: router %+v, want kind %q", tt.nat, r, tt.kind)
		}
	}
}

// A spec written in Go: NAT alone is EIM, NATKind alone is the kind; a
// kind that does not exist or contradicts NAT is refused, naming the site.
func TestSpecNATKindInCode(t *testing.T) {
	site := func(s SiteSpec) *Spec {
		s.Name, s.Nodes = "a", []NodeSpec{{Name: "a1"}}
		return &Spec{Name: "x", Sites: []SiteSpec{{Name: "pub", Nodes: []NodeSpec{{Name: "p1"}}}, s}}
	}
	for _, tt := range []struct {
		site SiteSpec
		kind NATKind
	}{
		{SiteSpec{}, NATNone},
		{SiteSpec{NAT: true}, NATEIM},
		{SiteSpec{NATKind: NATSymmetric}, NATSymmetric},
		{SiteSpec{NAT: true, NATKind: NATSymmetric}, NATSymmetric},
		{SiteSpec{NATKind: NATNone}, NATNone},
	} {
		spec := site(tt.site)
		if err := spec.Validate(); err != nil {
			t.Errorf("%+v: %v", tt.site, err)
			continue
		}
		l := layout(spec, nil)
		if r, n := l.Router("a"), l.Node("a1"); r.NATKind != tt.kind || n.NATKind != tt.kind || r.NAT != (tt.kind != NATNone) || n.NAT != r.NAT {
			t.Errorf("%+v: router %+v node %+v, want kind %s", tt.site, r, n, tt.kind)
		}
		if c := spec.clone().Sites[1]; c.NATKind != tt.kind || c.NAT != (tt.kind != NATNone) {
			t.Errorf("%+v: the copy Up keeps is %+v", tt.site, c)
		}
	}
	for _, tt := range []struct {
		site SiteSpec
		want string
	}{
		{SiteSpec{NATKind: "cone"}, `sites[1].nat: "cone" is not a NAT kind: use eim, symmetric, true (the same as eim), or false or none (a public site)`},
		{SiteSpec{NATKind: "EIM"}, `"EIM" is not a NAT kind`},
		{SiteSpec{NAT: true, NATKind: NATNone}, `sites[1].nat: NAT is true but NATKind is "none"`},
	} {
		err := site(tt.site).Validate()
		if !errors.Is(err, ErrInvalidSpec) || err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v, want %q", tt.site, err, tt.want)
		}
	}
}

// The state file holds the spec as JSON: the kind is written by name and
// read back, and a state file from before NAT kinds (nat: true) still
// loads.
func TestSpecJSON(t *testing.T) {
	spec := Generate("j", 3, 1, true)
	spec.Sites[1].NATKind, spec.Sites[1].NAT = NATSymmetric, true
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`{"name":"site1","nodes":`, `{"name":"site2","nat":"symmetric","nodes":`, `{"name":"site3","nat":"eim","nodes":`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("JSON %s lacks %s", data, want)
		}
	}
	var back Spec
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, spec) {
		t.Errorf("JSON round trip:\n%+v\n%+v", &back, spec)
	}
	var old Spec
	if err := json.Unmarshal([]byte(`{"name":"o","sites":[{"name":"a","nat":true,"nodes":[{"name":"a1"}]},{"name":"b","nodes":[{"name":"b1"}]}]}`), &old); err != nil {
		t.Fatal(err)
	}
	if old.Sites[0].Kind() != NATEIM || !old.Sites[0].NAT || old.Sites[1].Kind() != NATNone || old.Sites[1].NAT {
		t.Errorf("an old state file's spec: %+v", old)
	}
	if err := json.Unmarshal([]byte(`{"name":"o","sites":[{"name":"a","nat":"cone","nodes":[]}]}`), &old); err == nil || !strings.Contains(err.Error(), `site "a": nat: "cone" is not a NAT kind`) {
		t.Errorf("a bad kind in JSON: %v", err)
	}
}

// Every bad spec is refused with the file, the path of the offending field
// and what is wrong with it.
func TestParseSpecErrors(t *testing.T) {
	const okSite = "  - name: a\n    nodes: [{name: a1}]\n"
	tests := []struct {
		name, doc, field, problem string
	}{
		{"empty", "", "", "the spec is empty"},
		{"not yaml", "name: [x\n", "", "not valid YAML"},
		{"not a mapping", "- a\n- b\n", "", "must be a mapping"},
		{"unknown top field", "name: x\nsite: []\n", "site", "unknown field (the fields here are name, sites)"},
		{"missing name", "sites:\n" + okSite, "name", "missing"},
		{"name not string", "name: 12\nsites:\n" + okSite, "name", "must be a string, got the number 12"},
		{"name with dash", "name: my-lab\nsites:\n" + okSite, "name", `"my-lab" is not a valid lab name`},
		{"name uppercase", "name: Lab\nsites:\n" + okSite, "name", "not a valid lab name"},
		{"name too long", "name: abcdefghijklmnopq\nsites:\n" + okSite, "name", "1 to 16"},
		{"no sites", "name: x\n", "sites", "at least one site"},
		{"sites not list", "name: x\nsites: {a: 1}\n", "sites", "must be a list, got a mapping"},
		{"site not mapping", "name: x\nsites: [a]\n", "sites[0]", `must be a mapping with the fields name, nat, nodes, got the string "a"`},
		{"unknown site field", "name: x\nsites:\n  - name: a\n    natt: true\n    nodes: [{name: a1}]\n", "sites[0].natt", "unknown field"},
		{"nat not a kind", "name: x\nsites:\n  - name: a\n    nat: maybe\n    nodes: [{name: a1}]\n", "sites[0].nat", `"maybe" is not a NAT kind: use eim, symmetric, true (the same as eim), or false or none (a public site)`},
		{"nat kind in capitals", "name: x\nsites:\n  - name: a\n    nat: Symmetric\n    nodes: [{name: a1}]\n", "sites[0].nat", `"Symmetric" is not a NAT kind`},
		{"nat a number", "name: x\nsites:\n  - name: a\n    nat: 1\n    nodes: [{name: a1}]\n", "sites[0].nat", "must be eim, symmetric, true (the same as eim), or false or none (a public site), got the number 1"},
		{"nat a list", "name: x\nsites:\n  - name: b\n    nodes: [{name: b1}]\n  - name: a\n    nat: [eim]\n    nodes: [{name: a1}]\n", "sites[1].nat", "got a list"},
		{"site without name", "name: x\nsites:\n  - nodes: [{name: a1}]\n", "sites[0].name", "missing"},
		{"site name bad", "name: x\nsites:\n  - name: A_1\n    nodes: [{name: a1}]\n", "sites[0].name", `"A_1" is not a valid name`},
		{"site name too long for router", "name: x\nsites:\n  - name: abcdefghijklmnopqrstuvwxyz\n    nodes: [{name: a1}]\n", "sites[0].name", "1 to 25"},
		{"site without nodes", "name: x\nsites:\n  - name: a\n", "sites[0].nodes", `site "a" has no nodes`},
		{"node unknown field", "name: x\nsites:\n  - name: a\n    nodes: [{name: a1, ip: 1.2.3.4}]\n", "sites[0].nodes[0].ip", "unknown field (the fields here are name, workloads)"},
		{"node name missing", "name: x\nsites:\n" + okSite + "  - name: b\n    nodes: [{workloads: []}]\n", "sites[1].nodes[0].name", "missing"},
		{"node name trailing dash", "name: x\nsites:\n  - name: a\n    nodes: [{name: a1-}]\n", "sites[0].nodes[0].name", "not ending with a dash"},
		{"duplicate node", "name: x\nsites:\n" + okSite + "  - name: b\n    nodes: [{name: a1}]\n", "sites[1].nodes[0].name", `name "a1" is already used by sites[0].nodes[0].name`},
		{"node named like site", "name: x\nsites:\n  - name: a\n    nodes: [{name: a}]\n", "sites[0].nodes[0].name", `name "a" is already used by sites[0].name`},
		{"node named like router", "name: x\nsites:\n  - name: a\n    nodes: [{name: a-router}]\n", "sites[0].nodes[0].name", "already used by the router of sites[0]"},
		{"router named like node", "name: x\nsites:\n  - name: b\n    nodes: [{name: a-router}]\n  - name: a\n    nodes: [{name: a1}]\n", "sites[1].name", `would be named "a-router"`},
		{"node named internet", "name: x\nsites:\n  - name: a\n    nodes: [{name: internet}]\n", "sites[0].nodes[0].name", "the internet namespace"},
		{"workloads not list", "name: x\nsites:\n  - name: a\n    nodes: [{name: a1, workloads: 3}]\n", "sites[0].nodes[0].workloads", "must be a list, got the number 3"},
		{"workload unknown field", "name: x\nsites:\n  - name: a\n    nodes: [{name: a1, workloads: [{name: w, labels: {}}]}]\n", "sites[0].nodes[0].workloads[0].labels", "unknown field"},
		{"workload duplicate", "name: x\nsites:\n  - name: a\n    nodes: [{name: a1, workloads: [{name: w}, {name: w}]}]\n", "sites[0].nodes[0].workloads[1].name", `"w" is already used`},
		{"workload named like node", "name: x\nsites:\n  - name: a\n    nodes: [{name: a1, workloads: [{name: a1}]}]\n", "sites[0].nodes[0].workloads[0].name", "already used by sites[0].nodes[0].name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseSpec([]byte(tt.doc), "topo.yaml")
			if err == nil {
				t.Fatalf("accepted %+v", spec)
			}
			if !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("error %v does not wrap ErrInvalidSpec", err)
			}
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("error %v is not a *SpecError", err)
			}
			if se.File != "topo.yaml" || se.Field != tt.field || !strings.Contains(se.Problem, tt.problem) {
				t.Errorf("got file %q field %q problem %q\nwant file topo.yaml field %q problem containing %q", se.File, se.Field, se.Problem, tt.field, tt.problem)
			}
			if !strings.HasPrefix(err.Error(), "topo.yaml: ") {
				t.Errorf("message %q does not start with the file", err)
			}
		})
	}
}

func TestSpecLimits(t *testing.T) {
	tests := []struct {
		spec  *Spec
		field string
		text  string
	}{
		{Generate("x", 0, 1, false), "sites", "at least one site"},
		{Generate("x", MaxSites+1, 1, false), "sites", "at most 64"},
		{Generate("x", 1, 0, false), "sites[0].nodes", "no nodes"},
		{Generate("x", 1, MaxNodesPerSite+1, false), "sites[0].nodes", "at most 200 per site"},
		{Generate("x", 8, 150, false), "sites", "1209 namespaces, at most 1024"},
	}
	for _, tt := range tests {
		err := tt.spec.Validate()
		var se *SpecError
		if !errors.As(err, &se) || se.Field != tt.field || !strings.Contains(se.Problem, tt.text) {
			t.Errorf("%d sites: got %v, want field %s: ...%s...", len(tt.spec.Sites), err, tt.field, tt.text)
		}
	}
	s := Generate("x", 1, 1, false)
	s.AddWorkloads(MaxWorkloadsPerNode + 1)
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "sites[0].nodes[0].workloads: 65 workloads") {
		t.Errorf("too many workloads: got %v", err)
	}
}

func TestGenerate(t *testing.T) {
	s := Generate("g", 3, 2, true)
	s.AddWorkloads(2)
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, site := range s.Sites {
		for _, n := range site.Nodes {
			got = append(got, n.Name)
			for _, w := range n.Workloads {
				got = append(got, w.Name)
			}
		}
	}
	want := "site1-n1 site1-n1-w1 site1-n1-w2 site1-n2 site1-n2-w1 site1-n2-w2 site2-n1 site2-n1-w1 site2-n1-w2 site2-n2 site2-n2-w1 site2-n2-w2 site3-n1 site3-n1-w1 site3-n1-w2 site3-n2 site3-n2-w1 site3-n2-w2"
	if strings.Join(got, " ") != want {
		t.Errorf("names %s\nwant %s", strings.Join(got, " "), want)
	}
	if s.Sites[0].NAT || s.Sites[1].NAT || !s.Sites[2].NAT || s.Sites[0].Kind() != NATNone || s.Sites[2].Kind() != NATEIM {
		t.Errorf("only the last site should be NAT'd, EIM: %+v", s.Sites)
	}
}

// The addressing plan of docs/lab.md.
func TestLayout(t *testing.T) {
	s := Generate("g", 3, 2, true)
	s.AddWorkloads(1)
	l := layout(s, nil)
	if l.Internet() != "wl-g-internet" {
		t.Errorf("internet namespace %s", l.Internet())
	}
	r := l.Router("site3")
	if r == nil || r.Name != "site3-router" || r.Netns != "wl-g-site3-router" || !r.NAT || r.NATKind != NATEIM ||
		r.LAN != netip.MustParsePrefix("198.18.3.0/24") || r.LANAddr != netip.MustParseAddr("198.18.3.1") ||
		r.WANAddr != netip.MustParseAddr("198.19.0.4") {
		t.Errorf("router of site3: %+v", r)
	}
	n := l.Node("site2-n2")
	if n == nil || n.Netns != "wl-g-site2-n2" || n.Underlay != netip.MustParseAddr("198.18.2.11") ||
		n.Gateway != netip.MustParseAddr("198.18.2.1") || n.Iface != "eth0" || n.NAT {
		t.Errorf("node site2-n2: %+v", n)
	}
	if !l.Node("site3-n1").NAT {
		t.Error("a node of the NAT site is not marked NAT")
	}
	w := l.Workload("site2-n2-w1")
	if w == nil || w.Node != "site2-n2" || w.Netns != "wl-g-site2-n2-w1" || w.HostIface != "wl0" || w.Iface != "eth0" {
		t.Errorf("workload: %+v", w)
	}
	if got := len(l.Namespaces()); got != 1+3+6+6 {
		t.Errorf("%d namespaces, want 16", got)
	}
	for _, name := range []string{"site1-n1", "site1-n1-w1", "site1-router", "internet", "wl-g-site1-n2"} {
		if _, err := l.Resolve(name); err != nil {
			t.Errorf("Resolve(%s): %v", name, err)
		}
	}
	if _, err := l.Resolve("nope"); !errors.Is(err, ErrUnknownName) || !strings.Contains(err.Error(), "site1-n1") {
		t.Errorf("Resolve(nope): %v", err)
	}
	for _, ns := range l.Namespaces() {
		if labOfNetns(ns) != "g" {
			t.Errorf("labOfNetns(%s) = %s", ns, labOfNetns(ns))
		}
	}
}

// FuzzParseSpec: any input either fails with a SpecError or yields a valid
// spec that survives a YAML round trip unchanged.
func FuzzParseSpec(f *testing.F) {
	for _, file := range []string{"testdata/three-sites.yaml", "testdata/nat-kinds.yaml"} {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("name: x\nsites: [{name: a, nat: true, nodes: [{name: a1, workloads: [{name: w}]}]}]\n"))
	f.Add([]byte("name: x\nsites: [{name: a, nat: symmetric, nodes: [{name: a1}]}, {name: b, nat: none, nodes: [{name: b1}]}]\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("name: x\nsites:\n  - name: a\n    nodes: [{name: a}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ParseSpec(data, "f.yaml")
		if err != nil {
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("error is not a SpecError: %v", err)
			}
			return
		}
		if err := spec.Validate(); err != nil {
			t.Fatalf("ParseSpec accepted a spec Validate refuses: %v", err)
		}
		out, err := yaml.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseSpec(out, "again.yaml")
		if err != nil {
			t.Fatalf("re-parsing %s: %v", out, err)
		}
		if !reflect.DeepEqual(spec, again) {
			t.Fatalf("round trip changed the spec:\n%+v\n%+v", spec, again)
		}
	})
}
