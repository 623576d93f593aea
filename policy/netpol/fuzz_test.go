package netpol

import (
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

// choices turns fuzz bytes into decisions; when the bytes run out every
// decision is 0, so every input is a finite object.
type choices struct{ b []byte }

func (c *choices) n(max int) int {
	if len(c.b) == 0 || max <= 1 {
		return 0
	}
	v := int(c.b[0]) % max
	c.b = c.b[1:]
	return v
}

func (c *choices) pick(ss ...string) string { return ss[c.n(len(ss))] }

// pickOr picks from good, and one time in 16 from bad.
func (c *choices) pickOr(good, bad []string) string {
	if c.n(16) == 0 {
		return c.pick(bad...)
	}
	return c.pick(good...)
}

// Mostly valid parts, with a few a real object cannot have, so that both
// the translation and its errors are exercised.
var (
	fuzzKeys      = []string{"app", "pod", "ns", "team", "example.com/tier", "kubernetes.io/metadata.name"}
	fuzzBadKeys   = []string{"io.kubernetes.pod.namespace", "io.kubernetes.namespace.labels.a", "Bad Key", "a-very-long-namespace-label-key-x"}
	fuzzValues    = []string{"a", "b", "web", "", "x", "y"}
	fuzzBadValues = []string{"bad value", "-a"}
	fuzzCIDRs     = []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/24", "10.1.2.0/25", "0.0.0.0/0", "192.0.2.0/24", "2001:db8::/32", "2001:db8:1::/48", "::/0"}
	fuzzBadCIDRs  = []string{"300.0.0.0/8", "10.0.0.1", "::ffff:10.0.0.0/104"}
	fuzzProtos    = []string{"TCP", "UDP", "SCTP"}
	fuzzBadProtos = []string{"ICMP", "tcp"}
	fuzzNames     = []string{"http", "serve-80-tcp", "dns"}
	fuzzBadNames  = []string{"HTTP", "a--b", "8080"}
	fuzzOps       = []string{"In", "NotIn", "Exists", "DoesNotExist"}
)

func (c *choices) selector() metav1.LabelSelector {
	var ls metav1.LabelSelector
	for range c.n(3) {
		if ls.MatchLabels == nil {
			ls.MatchLabels = map[string]string{}
		}
		ls.MatchLabels[c.pickOr(fuzzKeys, fuzzBadKeys)] = c.pickOr(fuzzValues, fuzzBadValues)
	}
	for range c.n(3) {
		r := metav1.LabelSelectorRequirement{Key: c.pickOr(fuzzKeys, fuzzBadKeys), Operator: metav1.LabelSelectorOperator(c.pickOr(fuzzOps, []string{"Is"}))}
		// Values as the API requires them (some for In/NotIn, none for
		// the others), with a few mistakes.
		n := c.n(3)
		if r.Operator == metav1.LabelSelectorOpIn || r.Operator == metav1.LabelSelectorOpNotIn {
			n++
		}
		if r.Operator == metav1.LabelSelectorOpExists || r.Operator == metav1.LabelSelectorOpDoesNotExist {
			n = 0
		}
		if c.n(16) == 0 {
			n = 1 - min(n, 1)
		}
		for range n {
			r.Values = append(r.Values, c.pickOr(fuzzValues, fuzzBadValues))
		}
		ls.MatchExpressions = append(ls.MatchExpressions, r)
	}
	return ls
}

func (c *choices) peer() networkingv1.NetworkPolicyPeer {
	var p networkingv1.NetworkPolicyPeer
	switch c.n(5) {
	case 0:
		s := c.selector()
		p.PodSelector = &s
	case 1:
		s := c.selector()
		p.NamespaceSelector = &s
	case 2:
		s, n := c.selector(), c.selector()
		p.PodSelector, p.NamespaceSelector = &s, &n
	case 3:
		b := networkingv1.IPBlock{CIDR: c.pickOr(fuzzCIDRs, fuzzBadCIDRs)}
		for range c.n(3) {
			b.Except = append(b.Except, c.pickOr(fuzzCIDRs, fuzzBadCIDRs))
		}
		p.IPBlock = &b
		if c.n(16) == 0 {
			s := c.selector()
			p.PodSelector = &s
		}
	}
	return p
}

func (c *choices) port() networkingv1.NetworkPolicyPort {
	var p networkingv1.NetworkPolicyPort
	if c.n(2) == 0 {
		pr := corev1.Protocol(c.pickOr(fuzzProtos, fuzzBadProtos))
		p.Protocol = &pr
	}
	switch c.n(4) {
	case 1:
		v := intstr.FromInt32(int32(1 + c.n(256)*256))
		if c.n(16) == 0 {
			v = intstr.FromInt32([]int32{0, 70000, -1}[c.n(3)])
		}
		p.Port = &v
		if c.n(2) == 0 {
			e := v.IntVal + int32(c.n(64))
			if c.n(16) == 0 {
				e = v.IntVal - 1
			}
			p.EndPort = &e
		}
	case 2:
		v := intstr.FromString(c.pickOr(fuzzNames, fuzzBadNames))
		p.Port = &v
		if c.n(16) == 0 {
			e := int32(80)
			p.EndPort = &e
		}
	case 3:
		e := int32(80)
		p.EndPort = &e
	}
	return p
}

func (c *choices) networkPolicy() *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: c.pickOr([]string{"x", "y", "kube-system"}, []string{"", "X"}), Name: c.pickOr([]string{"a", "allow-web", "p.1"}, []string{""})},
	}
	np.Spec.PodSelector = c.selector()
	for range c.n(3) {
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyType(c.pickOr([]string{"Ingress", "Egress"}, []string{"Both"})))
	}
	for range c.n(3) {
		var r networkingv1.NetworkPolicyIngressRule
		for range c.n(3) {
			r.From = append(r.From, c.peer())
		}
		for range c.n(3) {
			r.Ports = append(r.Ports, c.port())
		}
		np.Spec.Ingress = append(np.Spec.Ingress, r)
	}
	for range c.n(3) {
		var r networkingv1.NetworkPolicyEgressRule
		for range c.n(3) {
			r.To = append(r.To, c.peer())
		}
		for range c.n(3) {
			r.Ports = append(r.Ports, c.port())
		}
		np.Spec.Egress = append(np.Spec.Egress, r)
	}
	return np
}

// FuzzTranslate: any object either is refused with an error that wraps
// ErrInvalid or ErrUnsupported and names it, or becomes a policy that
// validates, has the object's name, and compiles.
func FuzzTranslate(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Add([]byte{1, 1, 0, 1, 2, 1, 3, 1, 1, 1, 2, 2, 1, 0, 2, 1, 3, 3, 1, 2, 0, 1})
	f.Add([]byte{2, 0, 0, 0, 0, 2, 1, 0, 1, 3, 2, 4, 1, 0, 0, 2, 1, 1, 1, 1, 2, 2, 2})
	ids := identity.ReservedIdentities()
	for _, e := range testEndpoints() {
		if e.labels != nil {
			ids[e.id] = e.labels
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &choices{b: data}
		np := c.networkPolicy()
		p, err := Translate(np)
		if err != nil {
			if p != nil || !(errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnsupported)) {
				t.Fatalf("error %v with policy %v, or wrapping neither sentinel", err, p)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("translation does not validate: %v\n%+v", err, np)
		}
		if p.Name != Name(np.Namespace, np.Name) {
			t.Fatalf("name %q for %s/%s", p.Name, np.Namespace, np.Name)
		}
		comp := policy.NewCompiler(ids)
		if _, err := comp.ReplacePolicies([]*policy.Policy{p}); err != nil {
			t.Fatalf("compile: %v", err)
		}
		for _, e := range testEndpoints() {
			if e.local {
				comp.AddEndpoint(e.name, e.labels)
				if _, err := comp.SetEndpointNamedPorts(e.name, e.ports); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
