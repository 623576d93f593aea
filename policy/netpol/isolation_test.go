package netpol

import (
	"testing"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

// A NetworkPolicy Weft cannot express fails closed: its pods are isolated
// in its directions, only their node reaches them, nothing else is allowed.
func TestIsolationFailsClosed(t *testing.T) {
	web := identity.MustLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=x")
	other := identity.MustLabels("k8s:app=db", "k8s:io.kubernetes.pod.namespace=x")
	peer := identity.NumericIdentity(300)
	ids := map[identity.NumericIdentity]identity.Labels{peer: identity.MustLabels("k8s:app=client", "k8s:io.kubernetes.pod.namespace=x")}
	for k, v := range identity.ReservedIdentities() {
		ids[k] = v
	}
	for _, tc := range []struct {
		name, doc       string
		isolates, spare identity.Labels // selected and not selected
		ingress, egress bool
	}{
		{"an ipBlock Weft refuses", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: "::ffff:10.0.0.0/104"}}]}]}}`, web, other, true, false},
		{"a reserved key in a peer, both directions", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress, Egress], egress: [{to: [{podSelector: {matchLabels: {io.kubernetes.pod.namespace: "y"}}}]}]}}`, web, other, true, true},
		{"a pod selector Weft refuses: the whole namespace", `{metadata: {name: a, namespace: x}, spec: {podSelector: {matchExpressions: [{key: io.kubernetes.namespace.labels.team, operator: Exists}]}}}`, other, nil, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			np := decode(t, tc.doc)
			if _, err := Translate(np); err == nil {
				t.Fatal("Translate accepted it; the case tests nothing")
			}
			p, err := Isolation(np)
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != Name("x", "a") {
				t.Errorf("name %q, want the policy's own %q", p.Name, Name("x", "a"))
			}
			ep, err := policy.Compile([]*policy.Policy{p}, ids, tc.isolates)
			if err != nil {
				t.Fatal(err)
			}
			if ep.IngressEnforced != tc.ingress || ep.EgressEnforced != tc.egress {
				t.Fatalf("enforced ingress %v egress %v, want %v %v", ep.IngressEnforced, ep.EgressEnforced, tc.ingress, tc.egress)
			}
			for k, v := range ep.Entries {
				if v == policy.Allow && k.Identity != identity.IdentityHost {
					t.Errorf("entry %v allows %v: only the node may reach an isolated pod", k, k.Identity)
				}
			}
			if tc.spare != nil {
				if sp, _ := policy.Compile([]*policy.Policy{p}, ids, tc.spare); sp.IngressEnforced || sp.EgressEnforced {
					t.Errorf("a pod the policy does not select is isolated")
				}
			}
		})
	}
}
