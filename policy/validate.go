package policy

import (
	"fmt"
	"net/netip"
	"slices"
)

// Validate checks a policy built in code (Parse already checks what it
// returns): the same rules as the parser, minus positions.
func (p *Policy) Validate() error {
	if p == nil {
		return fmt.Errorf("%w: nil policy", ErrInvalid)
	}
	if err := validatePolicyName(p.Name); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := p.EndpointSelector.Validate(); err != nil {
		return fmt.Errorf("%w: policy %q: endpointSelector: %w", ErrInvalid, p.Name, err)
	}
	if p.Ingress == nil && p.Egress == nil && p.IngressDeny == nil && p.EgressDeny == nil {
		return fmt.Errorf("%w: policy %q has no ingress, egress, ingressDeny or egressDeny section", ErrInvalid, p.Name)
	}
	for _, s := range []struct {
		name  string
		rules []Rule
	}{{"ingress", p.Ingress}, {"egress", p.Egress}, {"ingressDeny", p.IngressDeny}, {"egressDeny", p.EgressDeny}} {
		for i, r := range s.rules {
			if err := r.validate(); err != nil {
				return fmt.Errorf("%w: policy %q: %s[%d]: %v", ErrInvalid, p.Name, s.name, i, err)
			}
		}
	}
	return nil
}

func (r Rule) validate() error {
	for i, peer := range r.Peers {
		if err := peer.validate(); err != nil {
			return fmt.Errorf("peer %d: %w", i, err)
		}
	}
	for i, pr := range r.Ports {
		if err := pr.validate(); err != nil {
			return fmt.Errorf("ports[%d]: %w", i, err)
		}
	}
	return nil
}

func (p Peer) validate() error {
	switch p.Kind {
	case PeerSelector:
		if len(p.Entities) > 0 || p.CIDR.IsValid() || len(p.Except) > 0 {
			return fmt.Errorf("a selector peer has entities or a cidr set")
		}
		return p.Selector.Validate()
	case PeerEntities:
		if !p.Selector.IsEmpty() || p.CIDR.IsValid() || len(p.Except) > 0 {
			return fmt.Errorf("an entities peer has a selector or a cidr set")
		}
		if len(p.Entities) == 0 {
			return fmt.Errorf("entities is empty (use %s)", entityList())
		}
		for _, e := range p.Entities {
			if !slices.Contains(entities, e) {
				return fmt.Errorf("unknown entity %q (use %s)", e, entityList())
			}
		}
		return nil
	case PeerCIDR:
		if !p.Selector.IsEmpty() || len(p.Entities) > 0 {
			return fmt.Errorf("a cidr peer has a selector or entities set")
		}
		if err := validPrefix(p.CIDR); err != nil {
			return err
		}
		for _, e := range p.Except {
			if err := validPrefix(e); err != nil {
				return err
			}
			if err := checkExcept(p.CIDR, e); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown peer kind %d", p.Kind)
}

func validPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("cidr is not a valid prefix")
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("cidr %s: write IPv4 prefixes in dotted form", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("cidr %s has host bits set: write %s", p, p.Masked())
	}
	return nil
}

func (pr PortRule) validate() error {
	switch pr.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP, ProtoANY:
	default:
		return fmt.Errorf("unknown protocol %q (use TCP, UDP, SCTP, ICMP or ANY)", pr.Protocol)
	}
	if pr.Protocol == ProtoICMP && (pr.Port != 0 || pr.EndPort != 0 || pr.Name != "") {
		return fmt.Errorf("ICMP has no ports")
	}
	if pr.Name != "" {
		if pr.Port != 0 || pr.EndPort != 0 {
			return fmt.Errorf("named port %q has a port number too: give either a name or a number", pr.Name)
		}
		return ValidatePortName(pr.Name)
	}
	if pr.EndPort != 0 {
		if pr.Port == 0 {
			return fmt.Errorf("endPort needs port")
		}
		if pr.EndPort < pr.Port {
			return fmt.Errorf("endPort %d is below port %d", pr.EndPort, pr.Port)
		}
	}
	return nil
}

// ReferencedCIDRs lists every prefix the policies name (cidr and except),
// sorted and without duplicates: the agent gives each one a local CIDR
// identity (labels `cidr:<prefix>` plus world's) and an ipcache entry, so
// that longest-prefix matching in the ipcache lands on the right one.
func ReferencedCIDRs(ps []*Policy) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		for _, rs := range [][]Rule{p.Ingress, p.Egress, p.IngressDeny, p.EgressDeny} {
			for _, r := range rs {
				for _, peer := range r.Peers {
					if peer.Kind == PeerCIDR {
						out = append(out, peer.CIDR)
						out = append(out, peer.Except...)
					}
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}
