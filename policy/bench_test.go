package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftmesh/weft/identity"
)

const (
	benchIdentities = 10000
	benchPolicies   = 1000
	benchApps       = 200
)

// benchWorld is a mesh of 10,000 identities (200 apps, 3 environments, 4
// clusters, one pod label each, plus 50 CIDR identities) and 1,000
// policies: each selects one app, allows ingress from another app on a
// port, from prod endpoints of a cluster on a port range, egress to a third
// app and to a /24; every tenth also denies world, every hundredth applies
// to every endpoint.
func benchWorld() (map[identity.NumericIdentity]identity.Labels, []*Policy) {
	ids := identity.ReservedIdentities()
	envs := []string{"prod", "dev", "staging"}
	for i := range benchIdentities {
		ids[identity.MinAllocated+identity.NumericIdentity(i)] = identity.MustLabels(
			fmt.Sprintf("vm:app=app-%d", i%benchApps),
			"k8s:env="+envs[i%3],
			fmt.Sprintf("mesh:cluster=c%d", i%4),
			fmt.Sprintf("vm:pod=p-%d", i))
	}
	for i := range 50 {
		ids[identity.CIDRIdentityBase+identity.NumericIdentity(i)] = identity.MustLabels(fmt.Sprintf("cidr:198.18.%d.0/24", i), "reserved:world")
	}
	ps := make([]*Policy, 0, benchPolicies)
	for j := range benchPolicies {
		p := &Policy{
			Name:             fmt.Sprintf("policy-%d", j),
			EndpointSelector: identity.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", j%benchApps)}},
			Ingress: []Rule{
				{Peers: []Peer{{Kind: PeerSelector, Selector: identity.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (j+1)%benchApps)}}}},
					Ports: []PortRule{{Protocol: ProtoTCP, Port: uint16(8000 + j%50)}}},
				{Peers: []Peer{{Kind: PeerSelector, Selector: identity.Selector{
					MatchLabels:      map[string]string{"mesh:cluster": fmt.Sprintf("c%d", j%4)},
					MatchExpressions: []identity.Requirement{{Key: "env", Operator: identity.OpIn, Values: []string{"prod"}}, {Key: "app", Operator: identity.OpIn, Values: []string{fmt.Sprintf("app-%d", (j+2)%benchApps), fmt.Sprintf("app-%d", (j+3)%benchApps)}}},
				}}}, Ports: []PortRule{{Protocol: ProtoTCP, Port: 9000, EndPort: 9099}}},
			},
			Egress: []Rule{
				{Peers: []Peer{{Kind: PeerSelector, Selector: identity.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (j+7)%benchApps)}}}}},
				{Peers: []Peer{{Kind: PeerCIDR, CIDR: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", j%50))}}, Ports: []PortRule{{Protocol: ProtoTCP, Port: 443}}},
			},
		}
		if j%10 == 0 {
			p.IngressDeny = []Rule{{Peers: []Peer{{Kind: PeerEntities, Entities: []Entity{EntityWorld}}}}}
		}
		if j%100 == 0 {
			p.EndpointSelector = identity.Selector{}
			p.Ingress = append(p.Ingress, Rule{Peers: []Peer{{Kind: PeerSelector}}, Ports: []PortRule{{Protocol: ProtoTCP, Port: 9100}}})
		}
		ps = append(ps, p)
	}
	return ids, ps
}

var benchLocal = identity.MustLabels("vm:app=app-0", "k8s:env=prod", "mesh:cluster=c0", "vm:pod=local")

// BenchmarkCompileFull is a full compile: 1,000 policies and 10,000
// identities into one endpoint's entries, every selector evaluated.
func BenchmarkCompileFull(b *testing.B) {
	ids, ps := benchWorld()
	b.ResetTimer()
	var ep EndpointPolicy
	for b.Loop() {
		var err error
		ep, err = Compile(ps, ids, benchLocal)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(ep.Entries)), "entries")
}

// BenchmarkCompileFullTenEndpoints adds nine more local endpoints (other
// apps) to the same compiler, as on a busy node.
func BenchmarkCompileFullTenEndpoints(b *testing.B) {
	ids, ps := benchWorld()
	b.ResetTimer()
	for b.Loop() {
		c := NewCompiler(ids)
		if _, err := c.ReplacePolicies(ps); err != nil {
			b.Fatal(err)
		}
		for e := range 10 {
			c.AddEndpoint(fmt.Sprint(e), identity.MustLabels(fmt.Sprintf("vm:app=app-%d", e), "k8s:env=prod"))
		}
	}
}

// BenchmarkDeltaNewIdentity is the work for one new identity appearing in
// the mesh with 10 local endpoints: the delta of every endpoint.
func BenchmarkDeltaNewIdentity(b *testing.B) {
	ids, ps := benchWorld()
	c := NewCompiler(ids)
	if _, err := c.ReplacePolicies(ps); err != nil {
		b.Fatal(err)
	}
	for e := range 10 {
		c.AddEndpoint(fmt.Sprint(e), identity.MustLabels(fmt.Sprintf("vm:app=app-%d", e), "k8s:env=prod", "mesh:cluster=c0"))
	}
	labels := make([]identity.Labels, 1000)
	for i := range labels {
		// app-1 is allowed into app-0's endpoint: most deltas are not empty.
		labels[i] = identity.MustLabels(fmt.Sprintf("vm:app=app-%d", i%3), "k8s:env=prod", "mesh:cluster=c0", fmt.Sprintf("vm:pod=new-%d", i))
	}
	next := identity.NumericIdentity(1 << 20)
	changed := 0
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		d := c.AddIdentity(next, labels[i%len(labels)])
		changed += len(d)
		next++
	}
	b.ReportMetric(float64(changed)/float64(b.N), "endpoints-changed/op")
}

// BenchmarkDeltaPolicyUpsert is one changed policy with 10 local endpoints.
func BenchmarkDeltaPolicyUpsert(b *testing.B) {
	ids, ps := benchWorld()
	c := NewCompiler(ids)
	if _, err := c.ReplacePolicies(ps); err != nil {
		b.Fatal(err)
	}
	for e := range 10 {
		c.AddEndpoint(fmt.Sprint(e), identity.MustLabels(fmt.Sprintf("vm:app=app-%d", e), "k8s:env=prod"))
	}
	p := *ps[1]
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		p.Ingress = []Rule{{Ports: []PortRule{{Protocol: ProtoTCP, Port: uint16(1 + i%1000)}}}}
		q := p
		if _, err := c.UpsertPolicy(&q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDeltaIdentityNamedPorts is one peer identity's named ports
// changing (a pod of it restarted with another container port), with 10
// local endpoints and every tenth policy allowing egress to a named port.
func BenchmarkDeltaIdentityNamedPorts(b *testing.B) {
	ids, ps := benchWorld()
	for j, p := range ps {
		if j%10 == 0 {
			p.Egress = append(p.Egress, Rule{
				Peers: []Peer{{Kind: PeerSelector, Selector: identity.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (j+1)%benchApps)}}}},
				Ports: []PortRule{{Protocol: ProtoTCP, Name: "http"}},
			})
		}
	}
	c := NewCompiler(ids)
	if _, err := c.ReplacePolicies(ps); err != nil {
		b.Fatal(err)
	}
	for e := range 10 {
		c.AddEndpoint(fmt.Sprint(e), identity.MustLabels(fmt.Sprintf("vm:app=app-%d", e*10), "k8s:env=prod"))
	}
	// Identity 257 is app-1, the egress peer of app-0's endpoint.
	peer := identity.MinAllocated + 1
	changed := 0
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		d, err := c.SetIdentityNamedPorts(peer, []NamedPort{{Name: "http", Protocol: ProtoTCP, Port: uint16(8000 + i%2)}})
		if err != nil {
			b.Fatal(err)
		}
		changed += len(d)
	}
	b.ReportMetric(float64(changed)/float64(b.N), "endpoints-changed/op")
}
