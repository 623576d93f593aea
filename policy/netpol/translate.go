package netpol

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

// Sentinel errors: every error of Translate wraps one of them.
var (
	// ErrInvalid is an object the Kubernetes API would not hold (a peer
	// with ipBlock and a selector, an unknown policy type, a bad CIDR...).
	ErrInvalid = errors.New("netpol: invalid NetworkPolicy")
	// ErrUnsupported is a valid object that Weft cannot express.
	ErrUnsupported = errors.New("netpol: NetworkPolicy not expressible in Weft")
)

// The origins of imported policy names (policy.ImportedName).
const (
	OriginNetworkPolicy = "netpol"
	OriginWeftPolicy    = "weftpolicy"
)

// Name is the name of the Weft policy translated from the NetworkPolicy
// namespace/name: netpol:<namespace>/<name>.
func Name(namespace, name string) string {
	return policy.ImportedName(OriginNetworkPolicy, namespace, name)
}

// The label keys a translated selector uses, all of the k8s source.
var (
	keyNamespace = identity.SourceK8s + ":" + identity.K8sNamespaceKey
)

// Translate turns a NetworkPolicy into the Weft policy with its exact
// semantics (see the package documentation). The object must carry its
// namespace and name. The result validates (policy.Policy.Validate).
func Translate(np *networkingv1.NetworkPolicy) (*policy.Policy, error) {
	if np == nil {
		return nil, fmt.Errorf("%w: nil NetworkPolicy", ErrInvalid)
	}
	t := &translator{ns: np.Namespace, name: np.Name}
	if np.Namespace == "" || np.Name == "" {
		return nil, t.errorf(ErrInvalid, "metadata", "namespace and name must be set (got namespace %q, name %q)", np.Namespace, np.Name)
	}
	p := &policy.Policy{
		Name:        Name(np.Namespace, np.Name),
		Description: fmt.Sprintf("NetworkPolicy %s/%s", np.Namespace, np.Name),
	}
	if err := policy.ValidateImportedName(p.Name); err != nil {
		return nil, t.errorf(ErrInvalid, "metadata", "%v", err)
	}
	sel, err := t.podSelector(np.Spec.PodSelector, "spec.podSelector")
	if err != nil {
		return nil, err
	}
	p.EndpointSelector = sel

	ingress, egress, err := t.policyTypes(np)
	if err != nil {
		return nil, err
	}
	// Kubernetes: "traffic to and from the node where a Pod is running is
	// always allowed". The rule comes after the object's own so that
	// ingress[i] in a trace is spec.ingress[i].
	host := policy.Rule{Peers: []policy.Peer{{Kind: policy.PeerEntities, Entities: []policy.Entity{policy.EntityHost}}}}
	if ingress {
		p.Ingress = make([]policy.Rule, 0, len(np.Spec.Ingress)+1)
		for i, r := range np.Spec.Ingress {
			rule, err := t.rule(r.From, r.Ports, fmt.Sprintf("spec.ingress[%d]", i), "from")
			if err != nil {
				return nil, err
			}
			p.Ingress = append(p.Ingress, rule)
		}
		p.Ingress = append(p.Ingress, host)
	}
	if egress {
		p.Egress = make([]policy.Rule, 0, len(np.Spec.Egress)+1)
		for i, r := range np.Spec.Egress {
			rule, err := t.rule(r.To, r.Ports, fmt.Sprintf("spec.egress[%d]", i), "to")
			if err != nil {
				return nil, err
			}
			p.Egress = append(p.Egress, rule)
		}
		p.Egress = append(p.Egress, host)
	}
	if err := p.Validate(); err != nil {
		// Every part was checked where it was built; this is a bug here.
		return nil, t.errorf(ErrUnsupported, "spec", "the translation does not validate: %v", err)
	}
	return p, nil
}

// translator builds the errors of one object.
type translator struct{ ns, name string }

func (t *translator) errorf(kind error, field, format string, args ...any) error {
	return fmt.Errorf("%w: NetworkPolicy %s/%s: %s: %s", kind, t.ns, t.name, field, fmt.Sprintf(format, args...))
}

// policyTypes says which directions the policy isolates, defaulting as
// the API server does.
func (t *translator) policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool, err error) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0, nil
	}
	for i, pt := range np.Spec.PolicyTypes {
		switch pt {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			return false, false, t.errorf(ErrInvalid, fmt.Sprintf("spec.policyTypes[%d]", i), "unknown policy type %q (use Ingress or Egress)", pt)
		}
	}
	return ingress, egress, nil
}

func (t *translator) rule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, field, peerField string) (policy.Rule, error) {
	var r policy.Rule
	// No peers (nil or empty) is every peer in both models.
	for j, peer := range peers {
		p, err := t.peer(peer, fmt.Sprintf("%s.%s[%d]", field, peerField, j))
		if err != nil {
			return policy.Rule{}, err
		}
		r.Peers = append(r.Peers, p)
	}
	for j, port := range ports {
		pr, err := t.port(port, fmt.Sprintf("%s.ports[%d]", field, j))
		if err != nil {
			return policy.Rule{}, err
		}
		r.Ports = append(r.Ports, pr)
	}
	return r, nil
}

func (t *translator) peer(peer networkingv1.NetworkPolicyPeer, field string) (policy.Peer, error) {
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return policy.Peer{}, t.errorf(ErrInvalid, field, "ipBlock may not be combined with podSelector or namespaceSelector (write them as separate peers)")
		}
		return t.ipBlock(*peer.IPBlock, field+".ipBlock")
	}
	var sel identity.Selector
	switch {
	case peer.PodSelector == nil && peer.NamespaceSelector == nil:
		return policy.Peer{}, t.errorf(ErrInvalid, field, "a peer needs podSelector, namespaceSelector or ipBlock")
	case peer.NamespaceSelector == nil:
		// The pods of the policy's own namespace.
		s, err := t.podSelector(*peer.PodSelector, field+".podSelector")
		if err != nil {
			return policy.Peer{}, err
		}
		sel = s
	default:
		s, err := t.namespaceSelector(*peer.NamespaceSelector, field+".namespaceSelector")
		if err != nil {
			return policy.Peer{}, err
		}
		sel = s
		if peer.PodSelector != nil {
			ps, err := t.labelSelector(*peer.PodSelector, field+".podSelector", podKey)
			if err != nil {
				return policy.Peer{}, err
			}
			sel = merge(sel, ps)
		}
	}
	if err := sel.Validate(); err != nil {
		return policy.Peer{}, t.errorf(ErrUnsupported, field, "%v", err)
	}
	return policy.Peer{Kind: policy.PeerSelector, Selector: sel}, nil
}

// podSelector is a pod selector confined to the policy's namespace.
func (t *translator) podSelector(ls metav1.LabelSelector, field string) (identity.Selector, error) {
	sel, err := t.labelSelector(ls, field, podKey)
	if err != nil {
		return identity.Selector{}, err
	}
	sel = merge(sel, identity.Selector{MatchLabels: map[string]string{keyNamespace: t.ns}})
	if err := sel.Validate(); err != nil {
		return identity.Selector{}, t.errorf(ErrUnsupported, field, "%v", err)
	}
	return sel, nil
}

// namespaceSelector selects every pod of the matching namespaces: their
// namespace labels as the pods carry them, and a namespace at all (which
// only pods have).
func (t *translator) namespaceSelector(ls metav1.LabelSelector, field string) (identity.Selector, error) {
	sel, err := t.labelSelector(ls, field, namespaceKey)
	if err != nil {
		return identity.Selector{}, err
	}
	return merge(sel, identity.Selector{MatchExpressions: []identity.Requirement{{Key: keyNamespace, Operator: identity.OpExists}}}), nil
}

// A keyMapper turns a Kubernetes label key into a Weft selector key, or
// says why Weft cannot select on it.
type keyMapper func(key string) (string, error)

// podKey maps a pod label key. The namespace keys the agent sets are
// refused: a selector on them would select something else than in
// Kubernetes, where they are ordinary (and unlikely) pod labels.
func podKey(key string) (string, error) {
	if key == identity.K8sNamespaceKey || strings.HasPrefix(key, identity.K8sNamespaceLabelPrefix) {
		return "", fmt.Errorf("label key %q is reserved in Weft for the pod's namespace and its labels (use namespaceSelector)", key)
	}
	if err := identity.ValidateKey(key); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return identity.SourceK8s + ":" + key, nil
}

// namespaceKey maps a namespace label key to the pod label that carries it.
func namespaceKey(key string) (string, error) {
	if err := identity.ValidateKey(key); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	k := identity.K8sNamespaceLabelPrefix + key
	if err := identity.ValidateKey(k); err != nil {
		// The agent leaves such a namespace label off its pods: a selector
		// on it would never (or always) match.
		return "", fmt.Errorf("namespace label key %q cannot be carried by pods as %q (%v): use a shorter key or one with a prefix (example.com/%s)", key, k, err, key)
	}
	return identity.SourceK8s + ":" + k, nil
}

func (t *translator) labelSelector(ls metav1.LabelSelector, field string, mapKey keyMapper) (identity.Selector, error) {
	var sel identity.Selector
	fail := func(where string, err error) error {
		kind := ErrUnsupported
		if errors.Is(err, ErrInvalid) {
			kind = ErrInvalid
		}
		return t.errorf(kind, field+"."+where, "%s", strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
	}
	for k, v := range ls.MatchLabels {
		key, err := mapKey(k)
		if err != nil {
			return identity.Selector{}, fail("matchLabels", err)
		}
		if err := identity.ValidateValue(v); err != nil {
			return identity.Selector{}, fail("matchLabels", fmt.Errorf("%w: key %q: %v", ErrInvalid, k, err))
		}
		if sel.MatchLabels == nil {
			sel.MatchLabels = map[string]string{}
		}
		sel.MatchLabels[key] = v
	}
	for i, e := range ls.MatchExpressions {
		where := fmt.Sprintf("matchExpressions[%d]", i)
		key, err := mapKey(e.Key)
		if err != nil {
			return identity.Selector{}, fail(where, err)
		}
		var op identity.Operator
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			op = identity.OpIn
		case metav1.LabelSelectorOpNotIn:
			op = identity.OpNotIn
		case metav1.LabelSelectorOpExists:
			op = identity.OpExists
		case metav1.LabelSelectorOpDoesNotExist:
			op = identity.OpDoesNotExist
		default:
			return identity.Selector{}, fail(where, fmt.Errorf("%w: unknown operator %q (In, NotIn, Exists, DoesNotExist)", ErrInvalid, e.Operator))
		}
		req := identity.Requirement{Key: key, Operator: op}
		if len(e.Values) > 0 {
			req.Values = append([]string(nil), e.Values...)
		}
		if err := (identity.Selector{MatchExpressions: []identity.Requirement{req}}).Validate(); err != nil {
			return identity.Selector{}, fail(where, fmt.Errorf("%w: %v", ErrInvalid, err))
		}
		sel.MatchExpressions = append(sel.MatchExpressions, req)
	}
	return sel, nil
}

// merge is the conjunction of two selectors whose matchLabels keys are
// disjoint (pod keys, namespace keys and the namespace key are).
func merge(a, b identity.Selector) identity.Selector {
	out := identity.Selector{}
	for _, s := range []identity.Selector{a, b} {
		for k, v := range s.MatchLabels {
			if out.MatchLabels == nil {
				out.MatchLabels = map[string]string{}
			}
			out.MatchLabels[k] = v
		}
		out.MatchExpressions = append(out.MatchExpressions, s.MatchExpressions...)
	}
	return out
}

func (t *translator) ipBlock(b networkingv1.IPBlock, field string) (policy.Peer, error) {
	cidr, err := parseCIDR(b.CIDR)
	if err != nil {
		return policy.Peer{}, t.errorf(ErrInvalid, field+".cidr", "%v", err)
	}
	p := policy.Peer{Kind: policy.PeerCIDR, CIDR: cidr}
	for i, e := range b.Except {
		where := fmt.Sprintf("%s.except[%d]", field, i)
		ex, err := parseCIDR(e)
		if err != nil {
			return policy.Peer{}, t.errorf(ErrInvalid, where, "%v", err)
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			return policy.Peer{}, t.errorf(ErrInvalid, where, "%s is not strictly inside cidr %s", ex, cidr)
		}
		p.Except = append(p.Except, ex)
	}
	return p, nil
}

// parseCIDR reads a CIDR as Kubernetes does (net.ParseCIDR): host bits
// are allowed and stand for the network ("10.0.0.1/8" is 10.0.0.0/8).
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix: write the IPv4 prefix", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q has a zone", s)
	}
	return p.Masked(), nil
}

func (t *translator) port(np networkingv1.NetworkPolicyPort, field string) (policy.PortRule, error) {
	pr := policy.PortRule{Protocol: policy.ProtoTCP}
	if np.Protocol != nil {
		switch *np.Protocol {
		case corev1.ProtocolTCP:
		case corev1.ProtocolUDP:
			pr.Protocol = policy.ProtoUDP
		case corev1.ProtocolSCTP:
			pr.Protocol = policy.ProtoSCTP
		default:
			return policy.PortRule{}, t.errorf(ErrInvalid, field+".protocol", "unknown protocol %q (TCP, UDP or SCTP)", *np.Protocol)
		}
	}
	if np.Port == nil {
		if np.EndPort != nil {
			return policy.PortRule{}, t.errorf(ErrInvalid, field+".endPort", "endPort needs port")
		}
		return pr, nil // every port of the protocol
	}
	if np.Port.Type == intstr.String {
		if err := policy.ValidatePortName(np.Port.StrVal); err != nil {
			return policy.PortRule{}, t.errorf(ErrInvalid, field+".port", "%v", err)
		}
		if np.EndPort != nil {
			return policy.PortRule{}, t.errorf(ErrInvalid, field+".endPort", "endPort needs a numeric port, not the named port %q", np.Port.StrVal)
		}
		pr.Name = np.Port.StrVal
		return pr, nil
	}
	if np.Port.IntVal < 1 || np.Port.IntVal > 65535 {
		return policy.PortRule{}, t.errorf(ErrInvalid, field+".port", "%d is not a port (1-65535)", np.Port.IntVal)
	}
	pr.Port = uint16(np.Port.IntVal)
	if np.EndPort != nil {
		end := *np.EndPort
		if end < np.Port.IntVal || end > 65535 {
			return policy.PortRule{}, t.errorf(ErrInvalid, field+".endPort", "%d is not a port between port %d and 65535", end, np.Port.IntVal)
		}
		if end != np.Port.IntVal {
			pr.EndPort = uint16(end)
		}
	}
	return pr, nil
}

// Isolation is what a NetworkPolicy that Translate refuses still means:
// the pods it selects are isolated in its directions (only their node
// reaches them), so a policy Weft cannot express fails closed rather than
// leaving its pods open. When even the pod selector cannot be translated,
// every pod of the policy's namespace is isolated: broader, never open.
// Its name is the policy's own (Name), so fixing the object replaces it.
func Isolation(np *networkingv1.NetworkPolicy) (*policy.Policy, error) {
	if np == nil || np.Namespace == "" || np.Name == "" {
		return nil, fmt.Errorf("%w: a NetworkPolicy without namespace and name", ErrInvalid)
	}
	t := &translator{ns: np.Namespace, name: np.Name}
	p := &policy.Policy{
		Name:        Name(np.Namespace, np.Name),
		Description: fmt.Sprintf("NetworkPolicy %s/%s (not translatable: its pods are isolated)", np.Namespace, np.Name),
	}
	sel, err := t.podSelector(np.Spec.PodSelector, "spec.podSelector")
	if err != nil {
		sel, err = t.podSelector(metav1.LabelSelector{}, "spec.podSelector")
		if err != nil {
			return nil, err
		}
	}
	p.EndpointSelector = sel
	ingress, egress, err := t.policyTypes(np)
	if err != nil {
		ingress, egress = true, true
	}
	host := policy.Rule{Peers: []policy.Peer{{Kind: policy.PeerEntities, Entities: []policy.Entity{policy.EntityHost}}}}
	if ingress {
		p.Ingress = []policy.Rule{host}
	}
	if egress {
		p.Egress = []policy.Rule{host}
	}
	if err := p.Validate(); err != nil {
		return nil, t.errorf(ErrUnsupported, "spec", "the isolation does not validate: %v", err)
	}
	return p, nil
}
