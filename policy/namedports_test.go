package policy

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/weftmesh/weft/identity"
)

func TestValidatePortName(t *testing.T) {
	for _, tc := range []struct {
		name string
		why  string // "" = valid
	}{
		{"http", ""},
		{"serve-80-tcp", ""},
		{"a", ""},
		{"abcdefghijklmno", ""}, // 15
		{"h2c", ""},
		{"", "empty"},
		{"abcdefghijklmnop", "16 characters"},
		{"-http", "starts or ends"},
		{"http-", "starts or ends"},
		{"a--b", `"--"`},
		{"8080", "no letter"},
		{"HTTP", "'H'"},
		{"my_port", "'_'"},
		{"dns.udp", "'.'"},
	} {
		err := ValidatePortName(tc.name)
		if (err == nil) != (tc.why == "") || (err != nil && !strings.Contains(err.Error(), tc.why)) {
			t.Errorf("ValidatePortName(%q) = %v, want %q", tc.name, err, tc.why)
		}
	}
}

func TestParseNamedPorts(t *testing.T) {
	p, err := ParseOne("p.yaml", []byte(hdr+`metadata: {name: a}
spec:
  endpointSelector: {}
  ingress:
    - ports: [{port: http}, {port: dns, protocol: UDP}, {port: "metrics", protocol: ANY}, {port: 22}]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []PortRule{{Protocol: ProtoTCP, Name: "http"}, {Protocol: ProtoUDP, Name: "dns"}, {Protocol: ProtoANY, Name: "metrics"}, {Protocol: ProtoTCP, Port: 22}}
	if got := p.Ingress[0].Ports; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ports = %+v, want %+v", got, want)
	}
	for _, bad := range []PortRule{
		{Protocol: ProtoTCP, Name: "http", Port: 80},
		{Protocol: ProtoTCP, Name: "Http"},
		{Protocol: ProtoICMP, Name: "ping"},
	} {
		q := &Policy{Name: "a", Ingress: []Rule{{Ports: []PortRule{bad}}}}
		if err := q.Validate(); err == nil {
			t.Errorf("Validate accepted %+v", bad)
		}
	}
}

// The local endpoint of the named-port cases and the named ports of it
// and of the test peers.
var (
	namedLocal      = identity.MustLabels("vm:app=db")
	namedLocalPorts = []NamedPort{{"http", ProtoTCP, 8080}, {"dns", ProtoUDP, 53}, {"metrics", ProtoTCP, 9090}}
	namedPeerPorts  = map[string][]NamedPort{
		"web": {{"http", ProtoTCP, 80}},
		// Two endpoints of one identity name http differently: the union.
		"api":  {{"http", ProtoTCP, 8000}, {"http", ProtoTCP, 8001}},
		"host": {{"http", ProtoTCP, 80}}, // ignored by selectors, seen by a rule without peers
	}
)

// namedCompiler compiles ps for namedLocal with the named ports set, in
// the given order relative to adding the endpoint (the result must not
// depend on it).
func namedCompiler(t *testing.T, ps []*Policy, portsFirst bool) EndpointPolicy {
	t.Helper()
	c := NewCompiler(testIdentities())
	if _, err := c.ReplacePolicies(ps); err != nil {
		t.Fatal(err)
	}
	var ep EndpointPolicy
	setPorts := func() {
		for _, name := range []string{"web", "api", "host"} {
			d, err := c.SetIdentityNamedPorts(testPeers[name].id, namedPeerPorts[name])
			if err != nil {
				t.Fatal(err)
			}
			if delta, ok := d["db"]; ok {
				ep.Apply(delta)
			}
		}
		d, err := c.SetEndpointNamedPorts("db", namedLocalPorts)
		if err != nil {
			t.Fatal(err)
		}
		if delta, ok := d["db"]; ok {
			ep.Apply(delta)
		}
	}
	if portsFirst {
		setPorts()
		ep = c.AddEndpoint("db", namedLocal).Clone()
	} else {
		ep = c.AddEndpoint("db", namedLocal).Clone()
		setPorts()
	}
	if fresh, _ := c.EndpointPolicy("db"); !fresh.Equal(ep) {
		t.Fatalf("deltas applied = %v, compiler holds %v", ep.Entries, fresh.Entries)
	}
	return ep
}

// TestNamedPortSemantics checks Kubernetes' resolution of port names:
// ingress against the local (destination) endpoint, egress against the
// peer (destination), protocol included, unresolvable names matching
// nothing; through the datapath entries and through the trace.
func TestNamedPortSemantics(t *testing.T) {
	cases := []struct {
		name   string
		yaml   string
		checks []check
	}{
		{"ingress resolves against the local endpoint", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: http}]}]`, []check{
			in("web", tcp, 8080, Allow), in("web", tcp, 80, Deny), in("web", udp, 8080, Deny), in("api", tcp, 8080, Deny)}},
		{"the protocol must match the named port's", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: dns}]}, {ports: [{port: metrics, protocol: UDP}]}]`, []check{
			in("web", udp, 53, Deny), in("web", tcp, 53, Deny), in("web", tcp, 9090, Deny), in("web", udp, 9090, Deny)}},
		{"a named UDP port", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: dns, protocol: UDP}]}]`, []check{in("world", udp, 53, Allow), in("world", tcp, 53, Deny)}},
		{"ANY takes the named port's protocol", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: dns, protocol: ANY}]}]`, []check{in("web", udp, 53, Allow), in("web", tcp, 53, Deny), in("web", sctp, 53, Deny)}},
		{"an unresolvable name matches nothing but still isolates", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: nope}]}]`, []check{in("web", tcp, 8080, Deny), in("world", udp, 53, Deny), eg("web", tcp, 80, Allow)}},
		{"named and numeric entries in one rule", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: http}, {port: 22}]}]`, []check{
			in("web", tcp, 8080, Allow), in("web", tcp, 22, Allow), in("web", tcp, 23, Deny)}},
		{"a rule without from and a named port admits every peer on it", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: http}]}]`, []check{in("world", tcp, 8080, Allow), in("host", tcp, 8080, Allow), in("world", tcp, 80, Deny)}},
		{"egress resolves against the peer", `
metadata: {name: np}
spec:
  endpointSelector: {}
  egress: [{to: [{matchLabels: {app: web}}, {matchLabels: {app: api}}, {matchLabels: {app: cache}}], ports: [{port: http}]}]`, []check{
			eg("web", tcp, 80, Allow), eg("web", tcp, 8080, Deny), eg("api", tcp, 8000, Allow), eg("api", tcp, 8001, Allow),
			eg("api", tcp, 80, Deny), eg("cache", tcp, 80, Deny), eg("cache", tcp, 8080, Deny)}},
		{"egress without to and a named port reaches every peer that has it", `
metadata: {name: np}
spec:
  endpointSelector: {}
  egress: [{ports: [{port: http}]}]`, []check{
			eg("web", tcp, 80, Allow), eg("api", tcp, 8001, Allow), eg("host", tcp, 80, Allow), eg("world", tcp, 80, Deny), eg("cache", tcp, 80, Deny), eg("web", tcp, 8000, Deny)}},
		{"ingressDeny of a named port", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{}]
  ingressDeny: [{ports: [{port: metrics}]}]`, []check{in("web", tcp, 9090, Deny), in("world", tcp, 9090, Deny), in("web", tcp, 8080, Allow)}},
		{"egressDeny of a named port toward any peer", `
metadata: {name: np}
spec:
  endpointSelector: {}
  egress: [{}]
  egressDeny: [{ports: [{port: http}]}]`, []check{eg("web", tcp, 80, Deny), eg("web", tcp, 81, Allow), eg("api", tcp, 8000, Deny), eg("world", tcp, 80, Allow), eg("cache", tcp, 80, Allow)}},
		{"a deny of a named port inside an allowed range", `
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: 8000, endPort: 8999}]}]
  ingressDeny: [{from: [{matchLabels: {app: web}}], ports: [{port: http}]}]`, []check{in("web", tcp, 8080, Deny), in("web", tcp, 8081, Allow), in("api", tcp, 8080, Allow)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse(tc.name, []byte(hdr+tc.yaml))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			ep := namedCompiler(t, ps, true)
			if late := namedCompiler(t, ps, false); !late.Equal(ep) {
				t.Fatalf("ports set after the endpoint: %v, before: %v", late.Entries, ep.Entries)
			}
			for _, c := range tc.checks {
				peer := testPeers[c.peer]
				if got := ep.Verdict(c.dir, peer.id, c.proto, c.port); got != c.want {
					t.Errorf("datapath %s %s proto %d port %d: %s, want %s (entries %v)", c.dir, c.peer, c.proto, c.port, got, c.want, ep.Entries)
				}
				var dt DirectionTrace
				if c.dir == Ingress {
					dt = TraceNamedPorts(ps, peer.labels, namedLocal, namedLocalPorts, c.port, c.proto).Ingress
				} else {
					dt = TraceNamedPorts(ps, namedLocal, peer.labels, namedPeerPorts[c.peer], c.port, c.proto).Egress
				}
				if dt.Verdict != c.want {
					t.Errorf("trace %s %s proto %d port %d: %s, want %s (%s)", c.dir, c.peer, c.proto, c.port, dt.Verdict, c.want, dt.Reason)
				}
			}
		})
	}
}

// TestTraceNamesTheResolvedPort checks what `policy trace` shows when a
// named port decided.
func TestTraceNamesTheResolvedPort(t *testing.T) {
	ps, err := Parse("n.yaml", []byte(hdr+`metadata: {name: np}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 22}, {port: http}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCompiler(testIdentities())
	if _, err := c.ReplacePolicies(ps); err != nil {
		t.Fatal(err)
	}
	c.AddEndpoint("db", namedLocal)
	if _, err := c.SetEndpointNamedPorts("db", namedLocalPorts); err != nil {
		t.Fatal(err)
	}
	tr := c.Trace(testPeers["web"].labels, namedLocal, 8080, IPProtoTCP)
	if tr.Verdict != Allow || tr.Ingress.NamedPort == nil || *tr.Ingress.NamedPort != (NamedPort{"http", ProtoTCP, 8080}) {
		t.Fatalf("trace of the named port: %+v", tr.Ingress)
	}
	if want := `allowed by a rule (port name "http" is 8080/TCP on the destination)`; tr.Ingress.Reason != want {
		t.Fatalf("reason %q, want %q", tr.Ingress.Reason, want)
	}
	if tr := c.Trace(testPeers["web"].labels, namedLocal, 22, IPProtoTCP); tr.Ingress.NamedPort != nil || tr.Ingress.Reason != "allowed by a rule" {
		t.Fatalf("a numeric match names a port: %+v", tr.Ingress)
	}
	// Without the endpoint's named ports the name resolves to nothing.
	if tr := Trace(ps, testPeers["web"].labels, namedLocal, 8080, IPProtoTCP); tr.Verdict != Deny {
		t.Fatalf("Trace without named ports: %s", tr)
	}
}

// TestNamedPortDeltas checks incrementality: named ports change only the
// endpoints and identities they belong to, and only when a policy names
// a port.
func TestNamedPortDeltas(t *testing.T) {
	ps, err := Parse("d.yaml", []byte(hdr+`metadata: {name: in}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: http}]}]
---
`+hdr+`metadata: {name: out}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress: [{to: [{matchLabels: {app: web}}], ports: [{port: http}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCompiler(testIdentities())
	if _, err := c.ReplacePolicies(ps); err != nil {
		t.Fatal(err)
	}
	c.AddEndpoint("db", identity.MustLabels("vm:app=db"))
	c.AddEndpoint("api", identity.MustLabels("vm:app=api"))
	c.AddEndpoint("other", identity.MustLabels("vm:app=other"))
	web := testPeers["web"].id

	d, err := c.SetEndpointNamedPorts("db", []NamedPort{{"http", ProtoTCP, 8080}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Delta{"db": {IngressEnforced: true, Upsert: map[Key]Verdict{{Ingress, web, IPProtoTCP, 8080, 16}: Allow}}}
	if fmt.Sprint(d) != fmt.Sprint(want) {
		t.Fatalf("SetEndpointNamedPorts delta = %v, want %v", d, want)
	}
	if d, _ := c.SetEndpointNamedPorts("db", []NamedPort{{"http", ProtoTCP, 8080}, {"http", ProtoTCP, 8080}}); len(d) != 0 {
		t.Fatalf("the same ports again (a duplicate included) produced %v", d)
	}
	if d, _ := c.SetEndpointNamedPorts("other", []NamedPort{{"http", ProtoTCP, 1}}); len(d) != 0 {
		t.Fatalf("ports of an endpoint no policy with a named ingress port selects produced %v", d)
	}

	d, err = c.SetIdentityNamedPorts(web, []NamedPort{{"http", ProtoTCP, 80}})
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]Delta{"api": {EgressEnforced: true, Upsert: map[Key]Verdict{{Egress, web, IPProtoTCP, 80, 16}: Allow}}}
	if fmt.Sprint(d) != fmt.Sprint(want) {
		t.Fatalf("SetIdentityNamedPorts delta = %v, want %v", d, want)
	}
	d, _ = c.SetIdentityNamedPorts(web, []NamedPort{{"http", ProtoTCP, 81}})
	if got := d["api"]; len(d) != 1 || len(got.Upsert) != 1 || len(got.Delete) != 1 || got.Delete[0] != (Key{Egress, web, IPProtoTCP, 80, 16}) {
		t.Fatalf("renumbered named port: delta %v", d)
	}
	// An identity's ports outlive it: they count again once it is back.
	c.RemoveIdentity(web)
	d = c.AddIdentity(web, testPeers["web"].labels)
	if e := d["api"].Upsert; !maps.Equal(e, map[Key]Verdict{{Egress, web, IPProtoTCP, 81, 16}: Allow}) {
		t.Fatalf("identity back: delta %v", d)
	}
	// Dropping the policies that name ports makes named ports irrelevant.
	if _, err := c.DeletePolicy("out"); err != nil {
		t.Fatal(err)
	}
	if d, _ := c.SetIdentityNamedPorts(web, nil); len(d) != 0 {
		t.Fatalf("with no egress rule naming a port, identity ports produced %v", d)
	}
	// Removing an endpoint forgets its ports: added back, the name is unresolved.
	c.RemoveEndpoint("db")
	if ep := c.AddEndpoint("db", identity.MustLabels("vm:app=db")); len(ep.Entries) != 0 || !ep.IngressEnforced {
		t.Fatalf("endpoint re-added after removal kept its named ports: %v", ep)
	}

	for _, bad := range [][]NamedPort{{{"HTTP", ProtoTCP, 80}}, {{"http", ProtoICMP, 80}}, {{"http", ProtoTCP, 0}}, {{"http", ProtoANY, 80}}} {
		if _, err := c.SetEndpointNamedPorts("db", bad); err == nil {
			t.Errorf("SetEndpointNamedPorts accepted %v", bad)
		}
		if _, err := c.SetIdentityNamedPorts(web, bad); err == nil {
			t.Errorf("SetIdentityNamedPorts accepted %v", bad)
		}
	}
	if _, err := c.SetIdentityNamedPorts(identity.IdentityAny, []NamedPort{{"http", ProtoTCP, 80}}); err == nil {
		t.Error("SetIdentityNamedPorts accepted identity 0")
	}
}
