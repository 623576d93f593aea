package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

// The mesh of the truth tables, after the upstream Kubernetes netpol e2e
// suite: namespaces x, y, z (labelled ns=<name> and, as the API server
// does, kubernetes.io/metadata.name=<name>), each with pods a, b, c
// (labelled pod=<name>). Every pod serves named ports serve-80-tcp,
// serve-81-tcp, serve-80-udp, serve-81-udp, serve-80-sctp and http, which
// is 80 except on x/b, where it is 8080. All pods run on the node under
// test, as does a VM labelled like a pod (vm:pod=b). The host is that
// node, remote the other nodes; world, ext and ext2 are addresses outside
// the mesh; inblock is an address in the pods' range that nothing has.
type endpoint struct {
	name    string // "x/a", "vm", "world", ...
	ns, pod string // for pods
	addr    netip.Addr
	labels  identity.Labels
	id      identity.NumericIdentity // fixed for mesh endpoints; looked up otherwise
	local   bool
	ports   []policy.NamedPort
}

var (
	testNamespaces = []string{"x", "y", "z"}
	testPods       = []string{"a", "b", "c"}
)

func testEndpoints() []*endpoint {
	var out []*endpoint
	next := identity.MinAllocated
	for i, ns := range testNamespaces {
		for j, pod := range testPods {
			ls := identity.MustLabels("k8s:pod="+pod,
				"k8s:"+identity.K8sNamespaceKey+"="+ns,
				"k8s:"+identity.K8sNamespaceLabelPrefix+"ns="+ns,
				"k8s:"+identity.K8sNamespaceLabelPrefix+"kubernetes.io/metadata.name="+ns,
				"mesh:kind="+identity.KindPod, "mesh:cluster=c1")
			http := uint16(80)
			if ns == "x" && pod == "b" {
				http = 8080
			}
			out = append(out, &endpoint{
				name: ns + "/" + pod, ns: ns, pod: pod, labels: ls, id: next, local: true,
				addr: netip.AddrFrom4([4]byte{100, 64, byte(1 + i), byte(1 + j)}),
				ports: []policy.NamedPort{
					{Name: "serve-80-tcp", Protocol: policy.ProtoTCP, Port: 80},
					{Name: "serve-81-tcp", Protocol: policy.ProtoTCP, Port: 81},
					{Name: "serve-80-udp", Protocol: policy.ProtoUDP, Port: 80},
					{Name: "serve-81-udp", Protocol: policy.ProtoUDP, Port: 81},
					{Name: "serve-80-sctp", Protocol: policy.ProtoSCTP, Port: 80},
					{Name: "http", Protocol: policy.ProtoTCP, Port: http},
				},
			})
			next++
		}
	}
	out = append(out,
		&endpoint{name: "vm", labels: identity.MustLabels("vm:pod=b", "vm:app=web", "mesh:kind=vm", "mesh:cluster=c1"), id: next, local: true,
			addr: netip.MustParseAddr("100.64.100.1"), ports: []policy.NamedPort{{Name: "http", Protocol: policy.ProtoTCP, Port: 80}}},
		&endpoint{name: "host", id: identity.IdentityHost, addr: netip.MustParseAddr("198.18.0.1")},
		&endpoint{name: "remote", id: identity.IdentityRemoteNode, addr: netip.MustParseAddr("198.18.0.2")},
		&endpoint{name: "world", addr: netip.MustParseAddr("198.51.100.7")},
		&endpoint{name: "ext", addr: netip.MustParseAddr("192.0.2.10")},
		&endpoint{name: "ext2", addr: netip.MustParseAddr("192.0.2.200")},
		&endpoint{name: "inblock", addr: netip.MustParseAddr("100.64.200.9")},
	)
	return out
}

func (e *endpoint) isPod() bool { return e.pod != "" }

// mesh is the compiled state of one case: a compiler holding the
// translated policies, every identity, every local endpoint with its named
// ports, and the address → identity map the datapath's ipcache would hold.
type mesh struct {
	c        *policy.Compiler
	eps      []*endpoint
	ipcache  map[netip.Prefix]identity.NumericIdentity
	policies []*policy.Policy
}

// newMesh builds the mesh the way the agent does: CIDR identities for the
// prefixes the policies reference, /32s of the mesh endpoints, named ports
// of each local endpoint and of each identity (the union of its
// endpoints'). upsertLast adds the policies one by one after everything
// else instead of before (the result must be the same).
func newMesh(t *testing.T, ps []*policy.Policy, upsertLast bool) *mesh {
	t.Helper()
	m := &mesh{eps: testEndpoints(), ipcache: map[netip.Prefix]identity.NumericIdentity{}, policies: ps}
	ids := identity.ReservedIdentities()
	for _, e := range m.eps {
		if e.labels != nil {
			ids[e.id] = e.labels
		}
		if e.id != 0 {
			m.ipcache[netip.PrefixFrom(e.addr, 32)] = e.id
		}
	}
	for i, p := range policy.ReferencedCIDRs(ps) {
		n := identity.CIDRIdentityBase + identity.NumericIdentity(i)
		ids[n] = identity.MustLabels("cidr:"+p.String(), "reserved:world")
		if _, taken := m.ipcache[p]; !taken {
			m.ipcache[p] = n
		}
	}
	for _, e := range m.eps {
		if e.id == 0 {
			e.id = m.lookup(e.addr)
		}
	}
	m.c = policy.NewCompiler(ids)
	if !upsertLast {
		if _, err := m.c.ReplacePolicies(ps); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range m.eps {
		if !e.local {
			continue
		}
		m.c.AddEndpoint(e.name, e.labels)
		if _, err := m.c.SetEndpointNamedPorts(e.name, e.ports); err != nil {
			t.Fatal(err)
		}
		if _, err := m.c.SetIdentityNamedPorts(e.id, e.ports); err != nil {
			t.Fatal(err)
		}
	}
	if upsertLast {
		for _, p := range ps {
			if _, err := m.c.UpsertPolicy(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	return m
}

// lookup is the ipcache: longest prefix wins, world when none covers.
func (m *mesh) lookup(a netip.Addr) identity.NumericIdentity {
	best, id := -1, identity.IdentityWorld
	for p, n := range m.ipcache {
		if p.Contains(a) && p.Bits() > best {
			best, id = p.Bits(), n
		}
	}
	return id
}

// verdict is what a connection from src to dst sees: src's egress (if src
// is a local endpoint) and dst's ingress (if dst is) must both allow.
func (m *mesh) verdict(t *testing.T, src, dst *endpoint, proto uint8, port uint16) bool {
	t.Helper()
	ok := true
	if src.local {
		ep, _ := m.c.EndpointPolicy(src.name)
		ok = ep.Verdict(policy.Egress, dst.id, proto, port) == policy.Allow
	}
	if dst.local {
		ep, _ := m.c.EndpointPolicy(dst.name)
		ok = ok && ep.Verdict(policy.Ingress, src.id, proto, port) == policy.Allow
	}
	return ok
}

// probe is one protocol and port to try between every pair, and which
// pairs it must connect.
type probe struct {
	proto uint8
	port  uint16
	want  func(src, dst *endpoint) bool
}

func tcp(port uint16, want func(src, dst *endpoint) bool) probe {
	return probe{policy.IPProtoTCP, port, want}
}
func udp(port uint16, want func(src, dst *endpoint) bool) probe {
	return probe{policy.IPProtoUDP, port, want}
}
func sctp(port uint16, want func(src, dst *endpoint) bool) probe {
	return probe{policy.IPProtoSCTP, port, want}
}

// Predicates for the expectations.
func all(*endpoint, *endpoint) bool        { return true }
func inNS(e *endpoint, ns ...string) bool  { return e.isPod() && slices.Contains(ns, e.ns) }
func is(e *endpoint, names ...string) bool { return slices.Contains(names, e.name) }

// TestTruthTables translates NetworkPolicies written as a user writes
// them and checks, for every probe, the full matrix of which endpoint
// reaches which — through the compiled datapath entries, with the
// policies added before and after the endpoints, and through the trace.
func TestTruthTables(t *testing.T) {
	cases := []struct {
		name     string
		policies []string // NetworkPolicy YAML
		probes   []probe
	}{
		{"no policy: everything connects", nil, []probe{tcp(80, all), udp(81, all)}},
		{"default-deny ingress in x", []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") })}},
		{"default-deny ingress by an empty ingress list, policyTypes defaulted", []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, ingress: []}`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") })}},
		{"default-deny egress in x", []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(s, "x") }), udp(53, func(s, d *endpoint) bool { return !inNS(s, "x") })}},
		{"default-deny both directions", []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(s, "x") && !inNS(d, "x") })}},
		{"allow from the same namespace", []string{`
metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || inNS(s, "x") })}},
		{"a peer podSelector alone is the policy's namespace, and only pods", []string{`
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || is(s, "x/b") })}},
		{"a namespaceSelector alone is every pod of those namespaces", []string{`
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || inNS(s, "y") })}},
		{"namespaceSelector by kubernetes.io/metadata.name", []string{`
metadata: {name: a-from-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || inNS(s, "z") })}},
		{"namespaceSelector {} is every pod, not the VM, nodes or world", []string{`
metadata: {name: a-from-pods, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || s.isPod() || is(s, "host") })}},
		{"namespaceSelector and podSelector in one peer: both", []string{`
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ["y", z]}]}
          podSelector: {matchLabels: {pod: a}}`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || is(s, "y/a", "z/a", "host") })}},
		{"namespaceSelector and podSelector as two peers: either", []string{`
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: "y"}}
        - podSelector: {matchLabels: {pod: b}}`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || inNS(s, "y") || is(s, "x/b", "host") })}},
		{"namespaceSelector NotIn", []string{`
metadata: {name: not-x, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || inNS(s, "y", "z") || is(s, "host") })}},
		{"podSelector matchExpressions DoesNotExist and Exists", []string{`
metadata: {name: exprs, namespace: "y"}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: app, operator: DoesNotExist}]}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(d, "y") || is(s, "y/a", "y/c", "host") })}},
		{"a rule without from admits every peer, the world included", []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}`, `
metadata: {name: open-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || is(d, "x/a") })}},
		{"ipBlock with except", []string{`
metadata: {name: ext, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || is(s, "ext", "host") })}},
		{"an ipBlock over the pods' addresses matches no pod or VM, only outside addresses", []string{`
metadata: {name: pod-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 100.64.0.0/10}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || is(s, "inblock", "host") })}},
		{"egress to ipBlock 0.0.0.0/0 is the outside world", []string{`
metadata: {name: out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [192.0.2.0/24]}}]}]`},
			[]probe{tcp(443, func(s, d *endpoint) bool { return !is(s, "x/a") || is(d, "world", "inblock", "host") })}},
		{"a numeric port", []string{`
metadata: {name: p80, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}]`},
			[]probe{
				tcp(80, all),
				tcp(81, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
				udp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
			}},
		{"a port range with endPort", []string{`
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80, endPort: 81, protocol: TCP}]}]`},
			[]probe{
				tcp(79, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
				tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || s.isPod() || is(s, "host") }),
				tcp(81, func(s, d *endpoint) bool { return !inNS(d, "x") || s.isPod() || is(s, "host") }),
				tcp(82, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
			}},
		{"UDP, SCTP, and a protocol without a port", []string{`
metadata: {name: protos, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: UDP}, {protocol: SCTP}]}]`},
			[]probe{
				udp(80, all),
				udp(81, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
				tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
				sctp(9999, all),
			}},
		{"a named ingress port resolves against the destination pod", []string{`
metadata: {name: named, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: serve-81-tcp}, {port: http}]}]`},
			[]probe{
				tcp(81, func(s, d *endpoint) bool { return !inNS(d, "x") || s.isPod() || is(s, "host") }),
				tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || (s.isPod() && !is(d, "x/b")) || is(s, "host") }),
				tcp(8080, func(s, d *endpoint) bool { return !inNS(d, "x") || (s.isPod() && is(d, "x/b")) || is(s, "host") }),
				udp(81, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
			}},
		{"a named egress port resolves against the destination pod", []string{`
metadata: {name: named-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]`},
			[]probe{
				tcp(80, func(s, d *endpoint) bool { return !is(s, "x/a") || (d.isPod() && !is(d, "x/b")) || is(d, "vm", "host") }),
				tcp(8080, func(s, d *endpoint) bool { return !is(s, "x/a") || is(d, "x/b", "host") }),
			}},
		{"a named port of another protocol matches nothing", []string{`
metadata: {name: wrong-proto, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: serve-80-udp, protocol: TCP}, {port: no-such-port}]}]`},
			[]probe{
				tcp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
				udp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
			}},
		{"a named UDP port", []string{`
metadata: {name: named-udp, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]`},
			[]probe{
				udp(81, all),
				udp(80, func(s, d *endpoint) bool { return !inNS(d, "x") || is(s, "host") }),
			}},
		{"several policies are unioned", []string{`
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`, `
metadata: {name: from-z-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]`},
			[]probe{
				tcp(80, func(s, d *endpoint) bool { return !is(d, "x/a") || inNS(s, "y") || is(s, "z/a", "host") }),
				tcp(81, func(s, d *endpoint) bool { return !is(d, "x/a") || inNS(s, "y") || is(s, "host") }),
			}},
		{"ingress and egress together", []string{`
metadata: {name: both, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool {
				if inNS(s, "x") && !(inNS(d, "y") || is(d, "host")) {
					return false
				}
				return !inNS(d, "x") || inNS(s, "z") || is(s, "host")
			})}},
		{"egress allowed by the sender and denied by the receiver", []string{`
metadata: {name: to-y, namespace: x}
spec:
  podSelector: {}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]`, `
metadata: {name: deny, namespace: "y"}
spec: {podSelector: {}, ingress: []}`},
			[]probe{tcp(80, func(s, d *endpoint) bool {
				// x's policy also isolates x's ingress (policyTypes default).
				return !(inNS(s, "x") && !is(d, "host")) && !inNS(d, "x", "y")
			})}},
		{"policyTypes [Egress] ignores the ingress rules", []string{`
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]
  egress: [{}]`},
			[]probe{tcp(80, all)}},
		{"defaulted policyTypes: egress rules isolate egress, ingress always", []string{`
metadata: {name: to-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]`},
			[]probe{tcp(80, func(s, d *endpoint) bool {
				return (!is(s, "x/a") || is(d, "x/b", "host")) && (!is(d, "x/a") || is(s, "host"))
			})}},
		{"the node is reached and reaches its pods whatever the policy, other nodes are not", []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`},
			[]probe{tcp(10250, func(s, d *endpoint) bool {
				return (!inNS(s, "x") || is(d, "host")) && (!inNS(d, "x") || is(s, "host"))
			})}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ps []*policy.Policy
			for _, doc := range tc.policies {
				var np networkingv1.NetworkPolicy
				if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
					t.Fatalf("decoding the NetworkPolicy: %v\n%s", err, doc)
				}
				p, err := Translate(&np)
				if err != nil {
					t.Fatalf("Translate: %v", err)
				}
				ps = append(ps, p)
			}
			m := newMesh(t, ps, false)
			late := newMesh(t, ps, true)
			for _, pr := range tc.probes {
				checkMatrix(t, m, late, pr)
			}
		})
	}
}

// checkMatrix compares one probe's matrix with the expectation, the
// incrementally built mesh with the other, and the trace with both; on a
// mismatch it prints the matrices as the upstream suite does.
func checkMatrix(t *testing.T, m, late *mesh, pr probe) {
	t.Helper()
	eps := m.eps
	bad := false
	var want, got strings.Builder
	header := fmt.Sprintf("%-8s", "from\\to")
	for _, d := range eps {
		header += fmt.Sprintf(" %-7s", d.name)
	}
	want.WriteString(header + "\n")
	got.WriteString(header + "\n")
	mark := func(b bool) string {
		if b {
			return "."
		}
		return "X"
	}
	for i, s := range eps {
		fmt.Fprintf(&want, "%-8s", s.name)
		fmt.Fprintf(&got, "%-8s", s.name)
		for j, d := range eps {
			w := pr.want(s, d)
			// The node and its pods always reach each other (Kubernetes).
			if (is(s, "host") && d.isPod()) || (s.isPod() && is(d, "host")) {
				w = true
			}
			g := m.verdict(t, s, d, pr.proto, pr.port)
			if g2 := late.verdict(t, late.eps[i], late.eps[j], pr.proto, pr.port); g2 != g {
				t.Errorf("proto %d port %d %s -> %s: %v with policies first, %v with policies last", pr.proto, pr.port, s.name, d.name, g, g2)
			}
			if s.labels != nil && d.labels != nil {
				tr := m.c.Trace(s.labels, d.labels, pr.port, pr.proto)
				if (tr.Verdict == policy.Allow) != g {
					t.Errorf("proto %d port %d %s -> %s: datapath %v, trace:\n%s", pr.proto, pr.port, s.name, d.name, g, tr)
				}
			}
			if w != g {
				bad = true
			}
			fmt.Fprintf(&want, " %-7s", mark(w))
			fmt.Fprintf(&got, " %-7s", mark(g))
		}
		want.WriteString("\n")
		got.WriteString("\n")
	}
	if bad {
		t.Errorf("proto %d port %d: reachability (. connects, X blocked)\nwant:\n%sgot:\n%s", pr.proto, pr.port, want.String(), got.String())
	}
}
