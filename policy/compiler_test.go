package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/weftmesh/weft/identity"
)

func TestPortPrefixes(t *testing.T) {
	cases := []struct {
		lo, hi uint16
		want   []portPrefix
	}{
		{80, 80, []portPrefix{{80, 16}}},
		{0, 65535, []portPrefix{{0, 0}}},
		{1, 65535, nil}, // checked by coverage below
		{1024, 2047, []portPrefix{{1024, 6}}},
		{1000, 1999, nil},
		{65535, 65535, []portPrefix{{65535, 16}}},
	}
	for _, tc := range cases {
		got := portPrefixes(tc.lo, tc.hi)
		if tc.want != nil && !slices.Equal(got, tc.want) {
			t.Errorf("portPrefixes(%d, %d) = %v, want %v", tc.lo, tc.hi, got, tc.want)
		}
		// Every port in range is covered exactly once, none outside.
		for p := 0; p <= 65535; p++ {
			n := 0
			for _, pp := range got {
				if (Key{Port: pp.port, PortPrefixLen: pp.plen}).covers(uint16(p)) {
					n++
				}
			}
			inRange := p >= int(tc.lo) && p <= int(tc.hi)
			if (inRange && n != 1) || (!inRange && n != 0) {
				t.Fatalf("portPrefixes(%d, %d): port %d covered %d times", tc.lo, tc.hi, p, n)
			}
		}
	}
}

// TestDenyRewriteUnderLPM checks the entries themselves: an allowed port
// inside a denied range of the same identity and protocol is written as
// Deny, since the datapath would otherwise pick the longer Allow.
func TestDenyRewriteUnderLPM(t *testing.T) {
	ps, err := Parse("t", []byte(hdr+`metadata: {name: d}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: 80}, {port: 8080}]}]
  ingressDeny: [{from: [{matchLabels: {app: web}}], ports: [{port: 0x40, endPort: 0x7f}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	ep, err := Compile(ps, testIdentities(), identity.MustLabels("vm:app=db"))
	if err != nil {
		t.Fatal(err)
	}
	web := testPeers["web"].id
	want := map[Key]Verdict{
		{Ingress, web, IPProtoTCP, 0x40, 10}: Deny,
		{Ingress, web, IPProtoTCP, 80, 16}:   Deny,
		{Ingress, web, IPProtoTCP, 8080, 16}: Allow,
	}
	if !ep.IngressEnforced || ep.EgressEnforced || !maps.Equal(ep.Entries, want) {
		t.Fatalf("entries = %v (ingress %v egress %v), want %v", ep.Entries, ep.IngressEnforced, ep.EgressEnforced, want)
	}
}

// TestDeltaMinimal checks that a new identity touches only its own entries
// and an unrelated policy change touches nothing.
func TestDeltaMinimal(t *testing.T) {
	ps, err := Parse("t", []byte(hdr+`metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: 5432}]}]
---
`+hdr+`metadata: {name: other}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress: []`))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCompiler(testIdentities())
	if _, err := c.ReplacePolicies(ps); err != nil {
		t.Fatal(err)
	}
	c.AddEndpoint("10.0.0.1", identity.MustLabels("vm:app=db"))
	c.AddEndpoint("10.0.0.2", identity.MustLabels("vm:app=api"))

	d := c.AddIdentity(300, identity.MustLabels("k8s:app=web", "k8s:pod=web-2"))
	want := map[string]Delta{"10.0.0.1": {IngressEnforced: true, Upsert: map[Key]Verdict{{Ingress, 300, IPProtoTCP, 5432, 16}: Allow}}}
	if fmt.Sprint(d) != fmt.Sprint(want) {
		t.Fatalf("AddIdentity delta = %v, want %v", d, want)
	}
	if d := c.AddIdentity(301, identity.MustLabels("k8s:app=cache")); len(d) != 0 {
		t.Fatalf("an identity no rule selects produced %v", d)
	}
	if d := c.AddIdentity(300, identity.MustLabels("k8s:app=web", "k8s:pod=web-2")); len(d) != 0 {
		t.Fatalf("re-adding an identity produced %v", d)
	}
	d = c.RemoveIdentity(300)
	if got := d["10.0.0.1"]; len(d) != 1 || len(got.Delete) != 1 || got.Delete[0] != (Key{Ingress, 300, IPProtoTCP, 5432, 16}) || len(got.Upsert) != 0 {
		t.Fatalf("RemoveIdentity delta = %v", d)
	}
	other := ps[1]
	other.Ingress = []Rule{{}}
	d, err = c.UpsertPolicy(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d["10.0.0.1"]; ok || len(d["10.0.0.2"].Upsert) != 1 {
		t.Fatalf("UpsertPolicy delta = %v: want only 10.0.0.2 to change", d)
	}
	d, _ = c.DeletePolicy("db")
	if got := d["10.0.0.1"]; got.IngressEnforced || len(got.Delete) != 1 {
		t.Fatalf("DeletePolicy delta = %v: want ingress open and the one entry gone", d)
	}
}

// TestIncrementalEqualsFullRecompute is the property test: random
// sequences of identity, policy and endpoint changes, with every delta
// applied to a copy of the datapath state, always equal a fresh Compile.
func TestIncrementalEqualsFullRecompute(t *testing.T) {
	seeds := 60
	steps := 150
	if testing.Short() {
		seeds = 10
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runProperty(t, rand.New(rand.NewPCG(uint64(seed), 42)), steps)
		})
	}
}

func runProperty(t *testing.T, rng *rand.Rand, steps int) {
	ids := identity.ReservedIdentities()
	c := NewCompiler(ids)
	policies := map[string]*Policy{}
	endpoints := map[string]identity.Labels{}
	state := map[string]EndpointPolicy{} // what the datapath holds
	endpointPorts := map[string][]NamedPort{}
	identityPorts := map[identity.NumericIdentity][]NamedPort{}

	apply := func(what string, ds map[string]Delta) {
		for key, d := range ds {
			for _, k := range d.Delete {
				if _, both := d.Upsert[k]; both {
					t.Fatalf("%s: key %v both upserted and deleted", what, k)
				}
				if _, had := state[key].Entries[k]; !had {
					t.Fatalf("%s: deletes %v which the endpoint does not have", what, k)
				}
			}
			for k, v := range d.Upsert {
				if old, had := state[key].Entries[k]; had && old == v {
					t.Fatalf("%s: upserts unchanged %v=%v (delta not minimal)", what, k, v)
				}
			}
			s := state[key].Clone()
			s.Apply(d)
			state[key] = s
		}
	}
	for step := range steps {
		var what string
		switch op := rng.IntN(12); {
		case op == 10:
			key := fmt.Sprintf("ep%d", rng.IntN(3))
			nps := randomNamedPorts(rng)
			what = fmt.Sprintf("endpoint %s named ports %v", key, nps)
			endpointPorts[key] = nps
			d, err := c.SetEndpointNamedPorts(key, nps)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if _, local := endpoints[key]; !local && len(d) > 0 {
				t.Fatalf("%s: delta %v for an endpoint not added", what, d)
			}
			apply(what, d)
		case op == 11:
			n := identity.NumericIdentity(256 + rng.IntN(40))
			nps := randomNamedPorts(rng)
			what = fmt.Sprintf("identity %d named ports %v", n, nps)
			identityPorts[n] = nps
			d, err := c.SetIdentityNamedPorts(n, nps)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			apply(what, d)
		case op < 3:
			n := identity.NumericIdentity(256 + rng.IntN(40))
			if rng.IntN(5) == 0 {
				n = identity.CIDRIdentityBase + identity.NumericIdentity(rng.IntN(6))
			}
			l := randomIdentityLabels(rng, n)
			what = fmt.Sprintf("add identity %d %v", n, l)
			ids[n] = l
			apply(what, c.AddIdentity(n, l))
		case op < 4:
			n := identity.NumericIdentity(256 + rng.IntN(40))
			what = fmt.Sprintf("remove identity %d", n)
			delete(ids, n)
			apply(what, c.RemoveIdentity(n))
		case op < 7:
			p := randomPolicy(rng)
			what = fmt.Sprintf("upsert policy %+v", p)
			policies[p.Name] = p
			d, err := c.UpsertPolicy(p)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			apply(what, d)
		case op < 8:
			name := fmt.Sprintf("p%d", rng.IntN(8))
			what = "delete policy " + name
			d, err := c.DeletePolicy(name)
			if _, had := policies[name]; had != (err == nil) {
				t.Fatalf("%s: err %v, policy existed %v", what, err, had)
			}
			delete(policies, name)
			apply(what, d)
		default:
			key := fmt.Sprintf("ep%d", rng.IntN(3))
			l := randomEndpointLabels(rng)
			what = fmt.Sprintf("endpoint %s = %v", key, l)
			endpoints[key] = l
			state[key] = c.AddEndpoint(key, l).Clone()
		}
		ps := slices.Collect(maps.Values(policies))
		for key, l := range endpoints {
			// The full recompute: a fresh compiler that knows the same
			// named ports (Compile alone knows none).
			fresh := NewCompiler(ids)
			if _, err := fresh.ReplacePolicies(ps); err != nil {
				t.Fatal(err)
			}
			for n, nps := range identityPorts {
				if _, err := fresh.SetIdentityNamedPorts(n, nps); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := fresh.SetEndpointNamedPorts(key, endpointPorts[key]); err != nil {
				t.Fatal(err)
			}
			want := fresh.AddEndpoint(key, l)
			if !state[key].Equal(want) {
				t.Fatalf("step %d (%s): endpoint %s: incremental state\n  %v %v %v\nfull recompute\n  %v %v %v", step, what, key,
					state[key].IngressEnforced, state[key].EgressEnforced, state[key].Entries, want.IngressEnforced, want.EgressEnforced, want.Entries)
			}
			// And the datapath's verdicts agree with Trace.
			for range 5 {
				peer := randomKnown(rng, ids)
				port := uint16(rng.IntN(12) * 100)
				proto := []uint8{IPProtoTCP, IPProtoUDP, IPProtoICMP}[rng.IntN(3)]
				if proto == IPProtoICMP {
					port = 0
				}
				got := want.Verdict(Ingress, peer, proto, port)
				if tr := TraceNamedPorts(ps, ids[peer], l, endpointPorts[key], port, proto); tr.Ingress.Verdict != got {
					t.Fatalf("step %d: ingress from %d %v proto %d port %d: datapath %s, trace %s", step, peer, ids[peer], proto, port, got, tr)
				}
				got = want.Verdict(Egress, peer, proto, port)
				if tr := TraceNamedPorts(ps, l, ids[peer], identityPorts[peer], port, proto); tr.Egress.Verdict != got {
					t.Fatalf("step %d: egress to %d %v proto %d port %d: datapath %s, trace %s", step, peer, ids[peer], proto, port, got, tr)
				}
			}
		}
	}
}

// propPortNames are the port names of the property test; "gone" is never
// given a number.
var propPortNames = []string{"http", "dns", "metrics", "gone"}

// randomNamedPorts numbers some of the names on the ports the property
// test probes (multiples of 100), sometimes one name twice (a union).
func randomNamedPorts(rng *rand.Rand) []NamedPort {
	var out []NamedPort
	for range rng.IntN(4) {
		out = append(out, NamedPort{
			Name:     propPortNames[rng.IntN(3)],
			Protocol: []Protocol{ProtoTCP, ProtoUDP, ProtoSCTP}[rng.IntN(3)],
			Port:     uint16(100 * (1 + rng.IntN(11))),
		})
	}
	return out
}

func randomKnown(rng *rand.Rand, ids map[identity.NumericIdentity]identity.Labels) identity.NumericIdentity {
	keys := slices.Sorted(maps.Keys(ids))
	return keys[rng.IntN(len(keys))]
}

var (
	propApps  = []string{"web", "db", "api"}
	propEnvs  = []string{"prod", "dev"}
	propCIDRs = []string{"198.18.0.0/16", "198.18.4.0/24", "198.18.4.0/26", "203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32"}
)

func randomIdentityLabels(rng *rand.Rand, n identity.NumericIdentity) identity.Labels {
	if n >= identity.CIDRIdentityBase {
		return identity.MustLabels("cidr:"+propCIDRs[rng.IntN(len(propCIDRs))], "reserved:world")
	}
	src := []string{"vm", "k8s"}[rng.IntN(2)]
	ss := []string{src + ":app=" + propApps[rng.IntN(3)]}
	if rng.IntN(2) == 0 {
		ss = append(ss, "k8s:env="+propEnvs[rng.IntN(2)])
	}
	return identity.MustLabels(ss...)
}

func randomEndpointLabels(rng *rand.Rand) identity.Labels {
	return identity.MustLabels("vm:app="+propApps[rng.IntN(3)], "k8s:env="+propEnvs[rng.IntN(2)])
}

func randomSelector(rng *rand.Rand) identity.Selector {
	switch rng.IntN(6) {
	case 0:
		return identity.Selector{}
	case 1:
		return identity.Selector{MatchLabels: map[string]string{"app": propApps[rng.IntN(3)]}}
	case 2:
		return identity.Selector{MatchLabels: map[string]string{"k8s:app": propApps[rng.IntN(3)]}}
	case 3:
		return identity.Selector{MatchExpressions: []identity.Requirement{{Key: "env", Operator: identity.OpNotIn, Values: []string{"prod"}}}}
	case 4:
		return identity.Selector{MatchExpressions: []identity.Requirement{{Key: "app", Operator: identity.OpIn, Values: []string{"web", "api"}}}}
	}
	return identity.Selector{MatchExpressions: []identity.Requirement{{Key: "env", Operator: identity.OpExists}}}
}

func randomRules(rng *rand.Rand) []Rule {
	if rng.IntN(4) == 0 {
		return nil
	}
	rules := []Rule{}
	for range rng.IntN(3) {
		var r Rule
		for range rng.IntN(3) {
			switch rng.IntN(4) {
			case 0, 1:
				r.Peers = append(r.Peers, Peer{Kind: PeerSelector, Selector: randomSelector(rng)})
			case 2:
				es := []Entity{entities[rng.IntN(len(entities))]}
				r.Peers = append(r.Peers, Peer{Kind: PeerEntities, Entities: es})
			default:
				p := Peer{Kind: PeerCIDR, CIDR: netip.MustParsePrefix([]string{"198.18.0.0/15", "198.18.0.0/16", "0.0.0.0/0", "2001:db8::/32"}[rng.IntN(4)])}
				if rng.IntN(2) == 0 && p.CIDR.Bits() == 16 {
					p.Except = []netip.Prefix{netip.MustParsePrefix("198.18.4.0/24")}
				}
				r.Peers = append(r.Peers, p)
			}
		}
		for range rng.IntN(3) {
			pr := PortRule{Protocol: []Protocol{ProtoTCP, ProtoUDP, ProtoANY, ProtoICMP}[rng.IntN(4)]}
			if pr.Protocol != ProtoICMP && rng.IntN(4) == 0 {
				pr.Name = propPortNames[rng.IntN(len(propPortNames))]
			} else if pr.Protocol != ProtoICMP && rng.IntN(4) != 0 {
				pr.Port = uint16(1 + rng.IntN(11)*100)
				if rng.IntN(2) == 0 {
					pr.EndPort = pr.Port + uint16(rng.IntN(600))
				}
			}
			r.Ports = append(r.Ports, pr)
		}
		rules = append(rules, r)
	}
	return rules
}

func randomPolicy(rng *rand.Rand) *Policy {
	for {
		p := &Policy{
			Name:             fmt.Sprintf("p%d", rng.IntN(8)),
			EndpointSelector: randomSelector(rng),
			Ingress:          randomRules(rng),
			Egress:           randomRules(rng),
			IngressDeny:      randomRules(rng),
			EgressDeny:       randomRules(rng),
		}
		if p.Validate() == nil {
			return p
		}
	}
}
