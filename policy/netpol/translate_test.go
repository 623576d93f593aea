package netpol

import (
	"errors"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

func decode(t *testing.T, doc string) *networkingv1.NetworkPolicy {
	t.Helper()
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
		t.Fatalf("decoding: %v\n%s", err, doc)
	}
	return &np
}

func TestNames(t *testing.T) {
	if got := Name("x", "allow-web"); got != "netpol:x/allow-web" {
		t.Fatalf("Name = %q", got)
	}
	if got := WeftPolicyName("db"); got != "weftpolicy:db" {
		t.Fatalf("WeftPolicyName = %q", got)
	}
	// Distinct objects never share a name, and no name is one a stored
	// policy may have.
	seen := map[string]string{}
	for _, o := range []struct{ what, name string }{
		{"netpol x/a", Name("x", "a")},
		{"netpol x/a.b", Name("x", "a.b")},
		{"netpol x.a/b", Name("x.a", "b")}, // not a valid namespace, but still distinct
		{"netpol y/a", Name("y", "a")},
		{"weftpolicy a", WeftPolicyName("a")},
		{"weftpolicy x", WeftPolicyName("x")},
	} {
		if prev, dup := seen[o.name]; dup {
			t.Errorf("%s and %s are both %q", prev, o.what, o.name)
		}
		seen[o.name] = o.what
		if policy.ValidateName(o.name) == nil {
			t.Errorf("%s: %q is a valid stored policy name", o.what, o.name)
		}
	}
}

func TestTranslateShape(t *testing.T) {
	p, err := Translate(decode(t, `
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: a}}
          podSelector: {matchLabels: {app: web}}
        - ipBlock: {cidr: 203.0.113.9/24, except: [203.0.113.128/25]}
      ports: [{port: 5432}, {port: metrics, protocol: UDP}, {protocol: SCTP}, {port: 30000, endPort: 30000}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "netpol:prod/db" || p.Description != "NetworkPolicy prod/db" {
		t.Fatalf("name %q, description %q", p.Name, p.Description)
	}
	if got, want := p.EndpointSelector.String(), "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod"; got != want {
		t.Fatalf("endpointSelector %s, want %s", got, want)
	}
	if p.Egress != nil {
		t.Fatalf("egress isolated without Egress in policyTypes: %+v", p.Egress)
	}
	if len(p.Ingress) != 2 {
		t.Fatalf("ingress = %+v, want the rule and the node's", p.Ingress)
	}
	r := p.Ingress[0]
	if got, want := r.Peers[0].Selector.String(), "k8s:app=web,k8s:io.kubernetes.namespace.labels.team=a,k8s:io.kubernetes.pod.namespace"; got != want {
		t.Fatalf("peer 0 %s, want %s", got, want)
	}
	if r.Peers[1].Kind != policy.PeerCIDR || r.Peers[1].CIDR.String() != "203.0.113.0/24" || r.Peers[1].Except[0].String() != "203.0.113.128/25" {
		t.Fatalf("peer 1 %+v: an ipBlock with host bits is its network, as in Kubernetes", r.Peers[1])
	}
	want := []policy.PortRule{{Protocol: policy.ProtoTCP, Port: 5432}, {Protocol: policy.ProtoUDP, Name: "metrics"}, {Protocol: policy.ProtoSCTP}, {Protocol: policy.ProtoTCP, Port: 30000}}
	for i, pr := range want {
		if r.Ports[i] != pr {
			t.Fatalf("port %d = %+v, want %+v", i, r.Ports[i], pr)
		}
	}
	host := p.Ingress[1]
	if len(host.Peers) != 1 || host.Peers[0].Kind != policy.PeerEntities || host.Peers[0].Entities[0] != policy.EntityHost || host.Ports != nil {
		t.Fatalf("last ingress rule %+v, want the node's", host)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestTranslateErrors(t *testing.T) {
	long := strings.Repeat("k", 33)
	for _, tc := range []struct {
		name string
		doc  string
		kind error
		want string
	}{
		{"no namespace", `{metadata: {name: a}, spec: {podSelector: {}}}`, ErrInvalid, "metadata: namespace and name must be set"},
		{"ipBlock with a selector", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}}`,
			ErrInvalid, "spec.ingress[0].from[0]: ipBlock may not be combined"},
		{"empty peer", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, egress: [{to: [{}]}]}}`, ErrInvalid, "spec.egress[0].to[0]: a peer needs"},
		{"bad cidr", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}}`, ErrInvalid, "spec.ingress[0].from[0].ipBlock.cidr"},
		{"except outside", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{}, {from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]}}`,
			ErrInvalid, "spec.ingress[1].from[0].ipBlock.except[0]: 10.0.0.0/8 is not strictly inside"},
		{"except other family", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ["2001:db8::/64"]}}]}]}}`,
			ErrInvalid, "not strictly inside"},
		{"mapped address", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: "::ffff:10.0.0.0/104"}}]}]}}`, ErrInvalid, "IPv4-mapped"},
		{"unknown policy type", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, policyTypes: [Ingres]}}`, ErrInvalid, `spec.policyTypes[0]: unknown policy type "Ingres"`},
		{"unknown protocol", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}}`, ErrInvalid, `spec.ingress[0].ports[0].protocol: unknown protocol "ICMP"`},
		{"port zero", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}}`, ErrInvalid, "spec.ingress[0].ports[0].port: 0 is not a port"},
		{"endPort below port", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}}`, ErrInvalid, "spec.ingress[0].ports[0].endPort: 80 is not a port between port 90"},
		{"endPort without port", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{ports: [{endPort: 80}]}]}}`, ErrInvalid, "endPort needs port"},
		{"endPort with a named port", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}}`, ErrInvalid, `endPort needs a numeric port, not the named port "http"`},
		{"bad port name", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, egress: [{ports: [{port: Http}]}]}}`, ErrInvalid, `spec.egress[0].ports[0].port: "Http" is not a port name`},
		{"bad selector value", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchLabels: {app: "a b"}}}}`, ErrInvalid, "spec.podSelector.matchLabels"},
		{"bad selector operator", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchExpressions: [{key: app, operator: Is}]}}}`, ErrInvalid, `spec.podSelector.matchExpressions[0]: unknown operator "Is"`},
		{"In without values", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchExpressions: [{key: app, operator: In}]}}}`, ErrInvalid, "needs at least one value"},
		{"reserved pod label key", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {io.kubernetes.pod.namespace: "y"}}}]}]}}`,
			ErrUnsupported, `spec.ingress[0].from[0].podSelector.matchLabels: label key "io.kubernetes.pod.namespace" is reserved in Weft`},
		{"reserved namespace label key", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchExpressions: [{key: io.kubernetes.namespace.labels.team, operator: Exists}]}}}`,
			ErrUnsupported, "is reserved in Weft"},
		{"namespace label key too long for a pod label", `{metadata: {name: a, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {` + long + `: v}}}]}]}}`,
			ErrUnsupported, `spec.ingress[0].from[0].namespaceSelector.matchLabels: namespace label key "` + long + `" cannot be carried by pods`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Translate(decode(t, tc.doc))
			if err == nil {
				t.Fatalf("translated to %+v, want an error", p)
			}
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "NetworkPolicy x/a") && tc.name != "no namespace" {
				t.Fatalf("error:\n  %v\nwant %v naming NetworkPolicy x/a and containing %q", err, tc.kind, tc.want)
			}
		})
	}
	if _, err := Translate(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Translate(nil) = %v", err)
	}
}

// TestTranslateSelectsOnlyPods checks the selectors themselves: a VM or a
// pod of another namespace with the same labels is never selected.
func TestTranslateSelectsOnlyPods(t *testing.T) {
	p, err := Translate(decode(t, `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {}}]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	pod := identity.MustLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=x")
	for _, tc := range []struct {
		labels identity.Labels
		want   bool
	}{
		{pod, true},
		{identity.MustLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=y"), false},
		{identity.MustLabels("vm:app=web", "mesh:kind=vm"), false},
		{identity.MustLabels("vm:app=web", "vm:io.kubernetes.pod.namespace=x"), false},
	} {
		if got := p.EndpointSelector.Matches(tc.labels); got != tc.want {
			t.Errorf("endpointSelector on %v: %v, want %v", tc.labels, got, tc.want)
		}
	}
	peer := p.Ingress[0].Peers[0].Selector
	if !peer.Matches(identity.MustLabels("k8s:io.kubernetes.pod.namespace=z")) || peer.Matches(identity.MustLabels("vm:app=web")) {
		t.Errorf("namespaceSelector {} = %s: want every pod and no VM", peer)
	}
}
