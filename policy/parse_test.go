package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftmesh/weft/identity"
)

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name    string
		doc     string // after hdr unless it starts with "!"
		line    int
		wantErr string
	}{
		{"unknown top field", "metadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}\nstatus: {}", 5, `unknown field "status"`},
		{"unknown spec field", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingres: []", 6, `unknown field "ingres"`},
		{"unquoted boolean label value", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from:\n        - matchLabels: {debug: y}", 8, `quote it ("y")`},
		{"number label value", "metadata: {name: a}\nspec:\n  endpointSelector: {matchLabels: {v: 2}}\n  ingress: []", 5, "is a number"},
		{"bad selector operator", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{matchExpressions: [{key: a, operator: Is, values: [b]}]}]", 7, `unknown operator "Is"`},
		{"port out of range", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: 70000}]", 7, "out of range"},
		{"port zero", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: 0}]", 7, "out of range"},
		{"bad port name", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: HTTP}]", 7, `"HTTP" is not a port name: character 'H' is not allowed`},
		{"port name with --", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: a--b}]", 7, `contains "--"`},
		{"port name too long", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: abcdefghijklmnop}]", 7, "16 characters long"},
		{"quoted port number", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: \"80\"}]", 7, `port "80" must be a number between 1 and 65535, unquoted`},
		{"endPort with a named port", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: http, endPort: 90}]", 7, "a named port (http) is one port"},
		{"ICMP with a named port", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: ping, protocol: ICMP}]", 7, "ICMP has no ports"},
		{"endPort below port", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: 90, endPort: 80}]", 7, "below port"},
		{"endPort without port", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{endPort: 80}]", 7, "endPort needs port"},
		{"lower-case protocol", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{port: 80, protocol: tcp}]", 7, "write it in capitals (TCP)"},
		{"unknown protocol", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{protocol: GRE}]", 7, `unknown protocol "GRE"`},
		{"ICMP with port", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - ports: [{protocol: ICMP, port: 8}]", 7, "ICMP has no ports"},
		{"bad CIDR", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{cidr: 10.0.0.0/33}]", 7, "not a CIDR prefix"},
		{"CIDR with host bits", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{cidr: 10.1.2.3/8}]", 7, "write 10.0.0.0/8"},
		{"address not prefix", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{cidr: 10.1.2.3}]", 7, "write 10.1.2.3/32"},
		{"except outside cidr", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]", 7, "not strictly inside"},
		{"except without cidr", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{except: [11.0.0.0/16]}]", 7, "except needs cidr"},
		{"mixed peer", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{entities: [world], matchLabels: {a: b}}]", 7, "mixes"},
		{"unknown entity", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - from: [{entities: [cluster]}]", 7, `unknown entity "cluster"`},
		{"to in ingress", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:\n    - to: [{}]", 7, `unknown field "to"`},
		{"null section", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress:", 6, "write `ingress: []`"},
		{"missing endpointSelector", "metadata: {name: a}\nspec:\n  ingress: []", 5, "endpointSelector is missing"},
		{"no sections", "metadata: {name: a}\nspec:\n  endpointSelector: {}", 5, "would do nothing"},
		{"bad name", "metadata: {name: My_Policy}\nspec: {endpointSelector: {}, ingress: []}", 3, "not allowed"},
		{"missing name", "metadata: {}\nspec: {endpointSelector: {}, ingress: []}", 3, "metadata.name is missing"},
		{"wrong apiVersion", "!apiVersion: v1\nkind: Policy\nmetadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}", 1, "not supported"},
		{"wrong kind", "!apiVersion: weft.dev/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}", 2, "not a policy"},
		{"missing kind", "!apiVersion: weft.dev/v1\nmetadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}", 1, "missing kind"},
		{"not a mapping", "!- a\n- b", 1, "must be a mapping"},
		{"syntax error", "metadata: {name: a\nspec: {}", 2, "YAML syntax"},
		{"duplicate field", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: []\n  ingress: []", 7, "given twice"},
		{"rule not a mapping", "metadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [web]", 6, "must be a mapping"},
		{"second document bad", "metadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}\n---\n" + hdr + "metadata: {name: b}\nspec: {endpointSelector: {}, egress: [{to: [{entities: [wrld]}]}]}", 9, `unknown entity "wrld"`},
		{"duplicate names", "metadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}\n---\n" + hdr + "metadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}", 6, "also defined on line 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := hdr + tc.doc
			if strings.HasPrefix(tc.doc, "!") {
				doc = tc.doc[1:]
			}
			ps, err := Parse("policies.yaml", []byte(doc))
			if err == nil {
				t.Fatalf("accepted %d policies, want error %q", len(ps), tc.wantErr)
			}
			if ps != nil {
				t.Fatalf("returned policies with an error: invalid input must be refused whole")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			want := fmt.Sprintf("policies.yaml:%d:", tc.line)
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error:\n  %v\nwant it to contain %q and %q", err, want, tc.wantErr)
			}
		})
	}
}

func TestParseSections(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(hdr+`metadata: {name: a, description: "isolate"}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: []
  egressDeny:
    - to: [{cidr: 198.18.0.0/16, except: [198.18.1.0/24]}, {entities: [world, world]}]
      ports: [{port: 1000, endPort: 1000, protocol: UDP}]
---
# an empty document is skipped
---
`+hdr+`metadata: {name: b}
spec:
  endpointSelector: {}
  egress: [{}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("got %d policies, want 2", len(ps))
	}
	a, b := ps[0], ps[1]
	if a.Ingress == nil || len(a.Ingress) != 0 || a.Egress != nil || a.IngressDeny != nil {
		t.Fatalf("ingress: [] must stay present and empty, absent sections nil: %+v", a)
	}
	if a.Description != "isolate" || a.Line != 1 || a.File != "p.yaml" || b.Line != 13 {
		t.Fatalf("metadata/positions: %+v / line %d", a, b.Line)
	}
	r := a.EgressDeny[0]
	if r.Peers[0].CIDR != netip.MustParsePrefix("198.18.0.0/16") || len(r.Peers[0].Except) != 1 || len(r.Peers[1].Entities) != 1 {
		t.Fatalf("peers: %+v", r.Peers)
	}
	if r.Ports[0] != (PortRule{Protocol: ProtoUDP, Port: 1000}) {
		t.Fatalf("a range of one port is a port: %+v", r.Ports[0])
	}
	if len(b.Egress) != 1 || b.Egress[0].Peers != nil || b.Egress[0].Ports != nil {
		t.Fatalf("rule {}: %+v", b.Egress)
	}
	if got := ReferencedCIDRs(ps); len(got) != 2 || got[0].String() != "198.18.0.0/16" || got[1].String() != "198.18.1.0/24" {
		t.Fatalf("ReferencedCIDRs = %v", got)
	}
	if _, err := ParseOne("x", []byte(hdr+"metadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}\n---\n"+hdr+"metadata: {name: b}\nspec: {endpointSelector: {}, ingress: []}")); err == nil {
		t.Fatal("ParseOne accepted two documents")
	}
}

func TestValidateInCode(t *testing.T) {
	good := &Policy{Name: "a", Ingress: []Rule{}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []*Policy{
		nil,
		{Name: "", Ingress: []Rule{}},
		{Name: "a"},
		{Name: "a", Ingress: []Rule{{Ports: []PortRule{{Protocol: "tcp"}}}}},
		{Name: "a", Ingress: []Rule{{Ports: []PortRule{{Protocol: ProtoTCP, EndPort: 5}}}}},
		{Name: "a", Ingress: []Rule{{Peers: []Peer{{Kind: PeerCIDR, CIDR: netip.MustParsePrefix("10.1.0.0/16"), Except: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}}}},
		{Name: "a", Ingress: []Rule{{Peers: []Peer{{Kind: PeerEntities}}}}},
		{Name: "a", EndpointSelector: identity.Selector{MatchLabels: map[string]string{"a": "b c"}}, Ingress: []Rule{}},
	}
	for i, p := range bad {
		if err := p.Validate(); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("case %d: Validate() = %v", i, err)
		}
	}
	c := NewCompiler(nil)
	if _, err := c.UpsertPolicy(bad[2]); err == nil {
		t.Fatal("compiler accepted an invalid policy")
	}
	if len(c.Policies()) != 0 {
		t.Fatal("an invalid policy changed the compiler")
	}
	if _, err := c.DeletePolicy("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeletePolicy(unknown) = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(hdr + "metadata: {name: db}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n    - from: [{matchLabels: {app: web}}]\n      ports: [{port: 5432, protocol: TCP}]\n  ingressDeny:\n    - from: [{entities: [world]}]\n")
	f.Add(hdr + "metadata: {name: c}\nspec: {endpointSelector: {}, egress: [{to: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}], ports: [{port: 1, endPort: 1023, protocol: ANY}]}]}")
	f.Add(hdr + "metadata: {name: a}\nspec: {endpointSelector: {}, ingress: []}\n---\n" + hdr + "metadata: {name: b}\nspec: {endpointSelector: {}, egressDeny: [{}]}")
	f.Add(hdr + "metadata: {name: n1}\nspec: {endpointSelector: {}, ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}], egress: [{ports: [{port: http, protocol: ANY}]}]}")
	f.Add("&a [*a]")
	ids := testIdentities()
	local := identity.MustLabels("vm:app=db")
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := Parse("fuzz.yaml", []byte(s))
		if err != nil {
			if ps != nil || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v with %d policies, or not wrapping ErrInvalid", err, len(ps))
			}
			return
		}
		for _, p := range ps {
			if err := p.Validate(); err != nil {
				t.Fatalf("parsed policy does not validate: %v", err)
			}
			// What apply stores (the document's text and first line)
			// parses back to the same policy at the same lines.
			back, err := ParseSource("fuzz.yaml", p.SourceLine, []byte(p.Source))
			if err != nil {
				t.Fatalf("policy %s: its source does not parse back: %v\n%s", p.Name, err, p.Source)
			}
			if back.Name != p.Name || back.Line != p.Line {
				t.Fatalf("policy %s (line %d) parses back as %s (line %d)", p.Name, p.Line, back.Name, back.Line)
			}
		}
		ep, err := Compile(ps, ids, local)
		if err != nil {
			t.Fatalf("compile of parsed policies: %v", err)
		}
		for _, peer := range testPeers {
			for _, port := range []uint16{0, 22, 80, 1023, 5432} {
				got := ep.Verdict(Ingress, peer.id, IPProtoTCP, port)
				if tr := Trace(ps, peer.labels, local, port, IPProtoTCP); tr.Ingress.Verdict != got {
					t.Fatalf("trace says %s, datapath %s for %v port %d", tr.Ingress.Verdict, got, peer.labels, port)
				}
			}
		}
	})
}
