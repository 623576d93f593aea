package policy

import (
	"testing"

	"github.com/weftmesh/weft/identity"
)

// The identities of the test mesh. Names are used in the cases.
var testPeers = map[string]struct {
	id     identity.NumericIdentity
	labels identity.Labels
}{
	// Allocated numbers carry their cluster (c1 is cluster 1, c2 cluster 2).
	"web":     {1<<16 | 256, identity.MustLabels("vm:app=web", "mesh:cluster=c1")},
	"db":      {1<<16 | 257, identity.MustLabels("k8s:app=db", "k8s:env=prod", "mesh:cluster=c1")},
	"api":     {2<<16 | 256, identity.MustLabels("vm:app=api", "vm:tier=back", "mesh:cluster=c2")},
	"cache":   {2<<16 | 257, identity.MustLabels("k8s:app=cache", "k8s:env=dev", "mesh:cluster=c2")},
	"host":    {identity.IdentityHost, identity.MustLabels("reserved:host")},
	"world":   {identity.IdentityWorld, identity.MustLabels("reserved:world")},
	"remote":  {identity.IdentityRemoteNode, identity.MustLabels("reserved:remote-node")},
	"health":  {identity.IdentityHealth, identity.MustLabels("reserved:health")},
	"lab16":   {identity.CIDRIdentityBase, identity.MustLabels("cidr:198.18.0.0/16", "reserved:world")},
	"lab24":   {identity.CIDRIdentityBase + 1, identity.MustLabels("cidr:198.18.5.0/24", "reserved:world")},
	"docnet":  {identity.CIDRIdentityBase + 2, identity.MustLabels("cidr:203.0.113.0/24", "reserved:world")},
	"v6doc":   {identity.CIDRIdentityBase + 3, identity.MustLabels("cidr:2001:db8::/32", "reserved:world")},
	"nolabel": {1<<16 | 258, identity.Labels{}},
}

func testIdentities() map[identity.NumericIdentity]identity.Labels {
	m := map[identity.NumericIdentity]identity.Labels{}
	for _, p := range testPeers {
		m[p.id] = p.labels
	}
	return m
}

type check struct {
	dir   Direction
	peer  string
	proto uint8
	port  uint16
	want  Verdict
}

func in(peer string, proto uint8, port uint16, want Verdict) check {
	return check{Ingress, peer, proto, port, want}
}

func eg(peer string, proto uint8, port uint16, want Verdict) check {
	return check{Egress, peer, proto, port, want}
}

const (
	tcp  = IPProtoTCP
	udp  = IPProtoUDP
	sctp = IPProtoSCTP
	icmp = IPProtoICMP
)

const hdr = "apiVersion: weft.dev/v1\nkind: Policy\n"

// TestSemantics checks each behaviour twice: through the compiled entries
// evaluated as the datapath does (EndpointPolicy.Verdict), and through
// Trace. Both must give the expected verdict.
func TestSemantics(t *testing.T) {
	cases := []struct {
		name   string
		yaml   string
		local  string // labels of the local endpoint, "vm" default source
		checks []check
	}{
		{"no policy: ingress open", "", "app=db", []check{in("web", tcp, 80, Allow), in("world", udp, 53, Allow)}},
		{"no policy: egress open", "", "app=db", []check{eg("world", tcp, 443, Allow)}},
		{"deny-all ingress with ingress: []", `
metadata: {name: deny-all}
spec: {endpointSelector: {}, ingress: []}`, "app=db", []check{in("web", tcp, 80, Deny), in("host", tcp, 22, Deny), in("world", tcp, 80, Deny)}},
		{"ingress: [] leaves egress open", `
metadata: {name: deny-all}
spec: {endpointSelector: {}, ingress: []}`, "app=db", []check{eg("world", tcp, 443, Allow), eg("web", udp, 53, Allow)}},
		{"allow from a selector", `
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]`, "k8s:app=db", []check{in("web", tcp, 5432, Allow), in("web", udp, 9, Allow), in("api", tcp, 5432, Deny), in("world", tcp, 5432, Deny)}},
		{"allow on a port only", `
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]`, "app=db", []check{in("web", tcp, 5432, Allow), in("web", tcp, 5433, Deny), in("web", udp, 5432, Deny)}},
		{"port without protocol means TCP", `
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: 80}]}]`, "app=db", []check{in("web", tcp, 80, Allow), in("web", udp, 80, Deny), in("web", sctp, 80, Deny)}},
		{"UDP port", `
metadata: {name: dns}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: 53, protocol: UDP}]}]`, "app=db", []check{in("world", udp, 53, Allow), in("world", tcp, 53, Deny)}},
		{"SCTP port", `
metadata: {name: s}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: 3868, protocol: SCTP}]}]`, "app=db", []check{in("web", sctp, 3868, Allow), in("web", tcp, 3868, Deny)}},
		{"port range with endPort", `
metadata: {name: r}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: 1000, endPort: 1999}]}]`, "app=db", []check{
			in("web", tcp, 999, Deny), in("web", tcp, 1000, Allow), in("web", tcp, 1500, Allow), in("web", tcp, 1999, Allow), in("web", tcp, 2000, Deny), in("web", tcp, 1023, Allow), in("web", tcp, 1024, Allow)}},
		{"port entry without port covers the protocol", `
metadata: {name: u}
spec:
  endpointSelector: {}
  ingress: [{ports: [{protocol: UDP}]}]`, "app=db", []check{in("web", udp, 1, Allow), in("web", udp, 65535, Allow), in("web", tcp, 80, Deny)}},
		{"ANY protocol with a port", `
metadata: {name: a}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: 8080, protocol: ANY}]}]`, "app=db", []check{in("web", tcp, 8080, Allow), in("web", udp, 8080, Allow), in("web", sctp, 8080, Allow), in("web", tcp, 8081, Deny)}},
		{"ICMP", `
metadata: {name: ping}
spec:
  endpointSelector: {}
  ingress: [{ports: [{protocol: ICMP}]}]`, "app=db", []check{in("world", icmp, 0, Allow), in("world", IPProtoICMPv6, 0, Allow), in("world", tcp, 0, Deny)}},
		{"multiple ports in a rule", `
metadata: {name: m}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: 80}, {port: 443}]}]`, "app=db", []check{in("web", tcp, 80, Allow), in("web", tcp, 443, Allow), in("web", tcp, 8080, Deny)}},
		{"several policies add up", `
metadata: {name: a}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{matchLabels: {app: web}}]}]
---
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{matchLabels: {app: api}}], ports: [{port: 9000}]}]`, "app=db", []check{in("web", tcp, 1, Allow), in("api", tcp, 9000, Allow), in("api", tcp, 9001, Deny), in("cache", tcp, 9000, Deny)}},
		{"ingress: [] plus an allow elsewhere is the union", `
metadata: {name: a}
spec: {endpointSelector: {}, ingress: []}
---
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{matchLabels: {app: web}}]}]`, "app=db", []check{in("web", tcp, 80, Allow), in("api", tcp, 80, Deny)}},
		{"policy selecting others has no effect", `
metadata: {name: other}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: []
  egress: []`, "app=db", []check{in("world", tcp, 80, Allow), eg("world", tcp, 80, Allow)}},
		{"egress denied by default once selected", `
metadata: {name: e}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress: [{to: [{matchLabels: {app: cache}}]}]`, "app=db", []check{eg("cache", tcp, 6379, Allow), eg("web", tcp, 80, Deny), eg("world", tcp, 443, Deny), in("world", tcp, 80, Allow)}},
		{"egress allow on a port", `
metadata: {name: e}
spec:
  endpointSelector: {}
  egress: [{to: [{matchLabels: {app: db}}], ports: [{port: 5432}]}]`, "app=web", []check{eg("db", tcp, 5432, Allow), eg("db", tcp, 22, Deny)}},
		{"empty endpointSelector selects every endpoint", `
metadata: {name: all}
spec: {endpointSelector: {}, ingress: []}`, "", []check{in("web", tcp, 80, Deny)}},
		{"rule {} allows every peer on every port", `
metadata: {name: open}
spec: {endpointSelector: {}, ingress: [{}]}`, "app=db", []check{in("world", tcp, 1, Allow), in("host", udp, 9, Allow), in("lab24", sctp, 5, Allow), in("web", icmp, 0, Allow)}},
		{"peer {} is every mesh endpoint", `
metadata: {name: mesh-only}
spec: {endpointSelector: {}, ingress: [{from: [{}]}]}`, "app=db", []check{in("web", tcp, 80, Allow), in("cache", udp, 1, Allow), in("nolabel", tcp, 1, Allow)}},
		{"peer {} is not the world nor infrastructure", `
metadata: {name: mesh-only}
spec: {endpointSelector: {}, ingress: [{from: [{}]}]}`, "app=db", []check{in("world", tcp, 80, Deny), in("lab16", tcp, 80, Deny), in("host", tcp, 80, Deny), in("remote", tcp, 80, Deny)}},
		{"matchExpressions In", `
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchExpressions: [{key: app, operator: In, values: [web, api]}]}]}]`, "app=db", []check{in("web", tcp, 1, Allow), in("api", tcp, 1, Allow), in("cache", tcp, 1, Deny)}},
		{"matchExpressions NotIn (a missing key matches)", `
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}]}]`, "app=db", []check{in("db", tcp, 1, Deny), in("cache", tcp, 1, Allow), in("web", tcp, 1, Allow), in("world", tcp, 1, Deny)}},
		{"matchExpressions Exists", `
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchExpressions: [{key: env, operator: Exists}]}]}]`, "app=db", []check{in("db", tcp, 1, Allow), in("cache", tcp, 1, Allow), in("web", tcp, 1, Deny)}},
		{"matchExpressions DoesNotExist", `
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchExpressions: [{key: env, operator: DoesNotExist}]}]}]`, "app=db", []check{in("db", tcp, 1, Deny), in("web", tcp, 1, Allow), in("api", tcp, 1, Allow)}},
		{"a source-qualified key matches only that source", `
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {"k8s:app": web}}]}]`, "app=db", []check{in("web", tcp, 1, Deny)}},
		{"a key without source matches any source", `
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}, {matchLabels: {app: db}}]}]`, "app=db", []check{in("web", tcp, 1, Allow), in("db", tcp, 1, Allow)}},
		{"endpointSelector with a source", `
metadata: {name: x}
spec:
  endpointSelector: {matchLabels: {"k8s:app": db}}
  ingress: []`, "vm:app=db", []check{in("web", tcp, 1, Allow)}},
		{"CIDR peer allows identities inside it", `
metadata: {name: c}
spec:
  endpointSelector: {}
  ingress: [{from: [{cidr: 198.18.0.0/15}]}]`, "app=db", []check{in("lab16", tcp, 1, Allow), in("lab24", tcp, 1, Allow), in("docnet", tcp, 1, Deny), in("world", tcp, 1, Deny)}},
		{"CIDR with except", `
metadata: {name: c}
spec:
  endpointSelector: {}
  ingress: [{from: [{cidr: 198.18.0.0/16, except: [198.18.5.0/24]}]}]`, "app=db", []check{in("lab16", tcp, 1, Allow), in("lab24", tcp, 1, Deny)}},
		{"CIDR peer is not a mesh endpoint", `
metadata: {name: c}
spec:
  endpointSelector: {}
  ingress: [{from: [{cidr: 0.0.0.0/0}]}]`, "app=db", []check{in("web", tcp, 1, Deny), in("host", tcp, 1, Deny), in("world", tcp, 1, Allow), in("docnet", tcp, 1, Allow), in("v6doc", tcp, 1, Deny)}},
		{"egress to an IPv6 CIDR", `
metadata: {name: c}
spec:
  endpointSelector: {}
  egress: [{to: [{cidr: "2001:db8::/32"}], ports: [{port: 443}]}]`, "app=web", []check{eg("v6doc", tcp, 443, Allow), eg("v6doc", tcp, 80, Deny), eg("docnet", tcp, 443, Deny)}},
		{"deny beats allow", `
metadata: {name: d}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}]}]
  ingressDeny: [{from: [{matchLabels: {app: web}}], ports: [{port: 22}]}]`, "app=db", []check{in("web", tcp, 22, Deny), in("web", tcp, 80, Allow)}},
		{"deny in another policy beats allow", `
metadata: {name: a}
spec:
  endpointSelector: {}
  ingress: [{}]
---
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: z}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingressDeny: [{from: [{entities: [world]}]}]`, "app=db", []check{in("world", tcp, 80, Deny), in("lab16", tcp, 80, Deny), in("web", tcp, 80, Allow)}},
		{"deny range beats an allowed port inside it", `
metadata: {name: d}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: 80}, {port: 2000}]}]
  ingressDeny: [{from: [{matchLabels: {app: web}}], ports: [{port: 1, endPort: 1023}]}]`, "app=db", []check{in("web", tcp, 80, Deny), in("web", tcp, 2000, Allow), in("web", tcp, 1024, Deny)}},
		{"deny for any peer beats an allow for one", `
metadata: {name: d}
spec:
  endpointSelector: {}
  ingress: [{from: [{matchLabels: {app: web}}], ports: [{port: 23}]}]
  ingressDeny: [{ports: [{port: 23}]}]`, "app=db", []check{in("web", tcp, 23, Deny), in("web", tcp, 24, Deny)}},
		{"deny-only policy does not isolate", `
metadata: {name: d}
spec:
  endpointSelector: {}
  ingressDeny: [{from: [{matchLabels: {app: api}}]}]
  egressDeny: [{to: [{entities: [world]}], ports: [{port: 25}]}]`, "app=db", []check{in("api", tcp, 80, Deny), in("web", tcp, 80, Allow), in("world", udp, 1, Allow), eg("world", tcp, 25, Deny), eg("world", tcp, 443, Allow)}},
		{"egressDeny with ports under an allow-all egress", `
metadata: {name: d}
spec:
  endpointSelector: {}
  egress: [{}]
  egressDeny: [{to: [{matchLabels: {app: db}}], ports: [{port: 5432}]}]`, "app=web", []check{eg("db", tcp, 5432, Deny), eg("db", tcp, 5433, Allow), eg("world", tcp, 5432, Allow)}},
		{"entity world covers world and CIDR identities", `
metadata: {name: w}
spec:
  endpointSelector: {}
  ingress: [{from: [{entities: [world]}]}]`, "app=db", []check{in("world", tcp, 1, Allow), in("lab16", tcp, 1, Allow), in("web", tcp, 1, Deny), in("host", tcp, 1, Deny), in("remote", tcp, 1, Deny)}},
		{"entity host", `
metadata: {name: h}
spec:
  endpointSelector: {}
  ingress: [{from: [{entities: [host]}]}]`, "app=db", []check{in("host", tcp, 1, Allow), in("remote", tcp, 1, Deny), in("web", tcp, 1, Deny)}},
		{"entity remote-node", `
metadata: {name: r}
spec:
  endpointSelector: {}
  ingress: [{from: [{entities: [remote-node]}]}]`, "app=db", []check{in("remote", tcp, 1, Allow), in("host", tcp, 1, Deny), in("world", tcp, 1, Deny)}},
		{"entity mesh", `
metadata: {name: m}
spec:
  endpointSelector: {}
  ingress: [{from: [{entities: [mesh]}]}]`, "app=db", []check{in("web", tcp, 1, Allow), in("host", tcp, 1, Allow), in("remote", tcp, 1, Allow), in("health", tcp, 1, Allow), in("world", tcp, 1, Deny), in("lab24", tcp, 1, Deny)}},
		{"entity all", `
metadata: {name: a}
spec:
  endpointSelector: {}
  ingress: [{from: [{entities: [all]}], ports: [{port: 443}]}]`, "app=db", []check{in("world", tcp, 443, Allow), in("web", tcp, 443, Allow), in("lab16", tcp, 443, Allow), in("web", tcp, 80, Deny)}},
		{"several entities in one peer", `
metadata: {name: a}
spec:
  endpointSelector: {}
  egress: [{to: [{entities: [host, remote-node]}]}]`, "app=web", []check{eg("host", tcp, 1, Allow), eg("remote", tcp, 1, Allow), eg("db", tcp, 1, Deny)}},
		{"deny world on ingress while mesh is allowed", `
metadata: {name: a}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{entities: [all]}]}]
  ingressDeny: [{from: [{entities: [world]}]}]`, "app=db", []check{in("world", tcp, 1, Deny), in("docnet", tcp, 1, Deny), in("web", tcp, 1, Allow), in("host", tcp, 1, Allow)}},
		{"deny with except keeps the hole open", `
metadata: {name: a}
spec:
  endpointSelector: {}
  ingressDeny: [{from: [{cidr: 198.18.0.0/16, except: [198.18.5.0/24]}]}]`, "app=db", []check{in("lab16", tcp, 1, Deny), in("lab24", tcp, 1, Allow)}},
		{"wide allow with a narrow deny", `
metadata: {name: a}
spec:
  endpointSelector: {}
  ingress: [{ports: [{port: 1, endPort: 65535, protocol: ANY}]}]
  ingressDeny: [{ports: [{port: 8080, protocol: TCP}]}]`, "app=db", []check{in("web", tcp, 8080, Deny), in("web", udp, 8080, Allow), in("web", tcp, 8079, Allow), in("web", tcp, 65535, Allow)}},
	}
	if len(cases) < 40 {
		t.Fatalf("only %d cases", len(cases))
	}
	ids := testIdentities()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ps []*Policy
			if tc.yaml != "" {
				var err error
				ps, err = Parse(tc.name, []byte(hdr+tc.yaml))
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
			}
			local, err := identity.ParseLabelList(tc.local, "vm")
			if err != nil {
				t.Fatal(err)
			}
			ep, err := Compile(ps, ids, local)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.checks {
				peer, ok := testPeers[c.peer]
				if !ok {
					t.Fatalf("unknown peer %q", c.peer)
				}
				if got := ep.Verdict(c.dir, peer.id, c.proto, c.port); got != c.want {
					t.Errorf("datapath %s %s proto %d port %d: %s, want %s (entries %v)", c.dir, c.peer, c.proto, c.port, got, c.want, ep.Entries)
				}
				var tr TraceResult
				var dt DirectionTrace
				if c.dir == Ingress {
					tr = Trace(ps, peer.labels, local, c.port, c.proto)
					dt = tr.Ingress
				} else {
					tr = Trace(ps, local, peer.labels, c.port, c.proto)
					dt = tr.Egress
				}
				if dt.Verdict != c.want {
					t.Errorf("trace %s %s proto %d port %d: %s, want %s\n%s", c.dir, c.peer, c.proto, c.port, dt.Verdict, c.want, tr)
				}
			}
		})
	}
}
