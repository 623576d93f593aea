package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/weftmesh/weft/identity"
)

// RuleRef names a rule: policy, section, index, and where it was written.
type RuleRef struct {
	Policy  string
	Section string // ingress, egress, ingressDeny, egressDeny
	Index   int
	File    string
	Line    int
}

func (r RuleRef) String() string {
	s := ruleName(r.Policy, r.Section, r.Index)
	if r.File != "" && r.Line > 0 {
		s += fmt.Sprintf(" (%s:%d)", r.File, r.Line)
	}
	return s
}

// DirectionTrace explains the verdict of one direction.
type DirectionTrace struct {
	Enforced bool     // a policy with this direction's allow section selects the endpoint
	Verdict  Verdict  // of this direction alone
	Rule     *RuleRef // the deciding rule; nil when the default decided
	// NamedPort is the destination's named port through which the deciding
	// rule's port entry matched (`port: http`); nil when a number did.
	NamedPort *NamedPort
	Reason    string // one sentence for a human
}

// TraceResult is the answer to "would from reach to on this port?": the
// sender's egress and the receiver's ingress must both allow.
type TraceResult struct {
	Verdict Verdict
	Egress  DirectionTrace
	Ingress DirectionTrace
}

func (t TraceResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "verdict: %s\n", t.Verdict)
	for _, d := range []struct {
		name string
		dt   DirectionTrace
	}{{"egress", t.Egress}, {"ingress", t.Ingress}} {
		fmt.Fprintf(&b, "  %s: %s — %s", d.name, d.dt.Verdict, d.dt.Reason)
		if d.dt.Rule != nil {
			fmt.Fprintf(&b, " [%s]", d.dt.Rule)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Trace decides, from the policies alone, whether traffic from one label
// set to another on a protocol (IANA number) and port is allowed, and which
// policy and rule decided. It follows the same matching as compilation, so
// the datapath gives the same answer. Reserved and CIDR label sets
// (`reserved:world`, `cidr:...`) stand for the peers that carry them; they
// are never local endpoints, so their side of the trace is open. ICMP
// carries no port: port is ignored for ICMP.
//
// Protocol IPProtoAny (port ignored) asks about every protocol and port at
// once: an allow rule decides only if it covers them all, and a deny rule
// that names any of them denies (part of the traffic would be dropped).
//
// Named port entries match nothing here: TraceNamedPorts takes the
// destination's named ports.
func Trace(ps []*Policy, from, to identity.Labels, port uint16, proto uint8) TraceResult {
	return TraceNamedPorts(ps, from, to, nil, port, proto)
}

// TraceNamedPorts is Trace with the destination's named ports (toPorts).
// Both directions resolve a port name against the destination, as
// Kubernetes does: the sender's egress against the peer it sends to, the
// receiver's ingress against itself.
func TraceNamedPorts(ps []*Policy, from, to identity.Labels, toPorts []NamedPort, port uint16, proto uint8) TraceResult {
	if proto == IPProtoICMP || proto == IPProtoICMPv6 || proto == IPProtoAny {
		port = 0
	}
	sorted := slices.Clone(ps)
	slices.SortFunc(sorted, func(a, b *Policy) int { return strings.Compare(a.Name, b.Name) })
	fr, tr := newRecord(0, from), newRecord(0, to)
	t := TraceResult{
		Egress:  traceDirection(sorted, Egress, fr, tr, toPorts, port, proto),
		Ingress: traceDirection(sorted, Ingress, tr, fr, toPorts, port, proto),
	}
	t.Verdict = Allow
	if t.Egress.Verdict == Deny || t.Ingress.Verdict == Deny {
		t.Verdict = Deny
	}
	return t
}

// Trace runs TraceNamedPorts over the compiler's current policies. The
// destination's named ports are those known for its labels: the named
// ports of the identity with exactly those labels (SetIdentityNamedPorts)
// and of the local endpoints with them (SetEndpointNamedPorts). Where
// endpoints with one label set name ports differently, the datapath
// resolves ingress per endpoint and the trace answers for their union.
func (c *Compiler) Trace(from, to identity.Labels, port uint16, proto uint8) TraceResult {
	return TraceNamedPorts(c.Policies(), from, to, c.namedPortsOf(to), port, proto)
}

// namedPortsOf returns the named ports known for a label set.
func (c *Compiler) namedPortsOf(l identity.Labels) []NamedPort {
	var out []NamedPort
	for id, nps := range c.identityPorts {
		if r, ok := c.ids[id]; ok && r.labels.Equal(l) {
			out = append(out, nps...)
		}
	}
	for key, nps := range c.endpointPorts {
		if x, ok := c.locals[key]; ok && x.labels.Equal(l) {
			out = append(out, nps...)
		}
	}
	slices.SortFunc(out, compareNamedPort)
	return slices.Compact(out)
}

func traceDirection(ps []*Policy, dir Direction, self, peer *idRecord, toPorts []NamedPort, port uint16, proto uint8) DirectionTrace {
	if self.class != classEndpoint {
		return DirectionTrace{Verdict: Allow, Reason: fmt.Sprintf("%s is not a mesh endpoint: no %s policy applies", labelsOrNone(self.labels), dir)}
	}
	allowSec, denySec := "ingress", "ingressDeny"
	if dir == Egress {
		allowSec, denySec = "egress", "egressDeny"
	}
	var selected []*Policy
	var isolating []string
	for _, p := range ps {
		if p.EndpointSelector.Matches(self.labels) {
			selected = append(selected, p)
			if rulesOf(p, allowSec) != nil {
				isolating = append(isolating, p.Name)
			}
		}
	}
	for _, p := range selected {
		if ref, np := firstMatch(p, denySec, peer, toPorts, port, proto); ref != nil {
			reason := "denied by a deny rule (deny wins over allow)"
			if proto == IPProtoAny {
				reason = "a deny rule covers some of its protocols or ports (deny wins over allow)"
			}
			return DirectionTrace{Enforced: len(isolating) > 0, Verdict: Deny, Rule: ref, NamedPort: np, Reason: reason + namedReason(np)}
		}
	}
	if len(isolating) == 0 {
		return DirectionTrace{Verdict: Allow, Reason: fmt.Sprintf("no policy with an %s section selects %s: open by default", allowSec, labelsOrNone(self.labels))}
	}
	for _, p := range selected {
		if ref, np := firstMatch(p, allowSec, peer, toPorts, port, proto); ref != nil {
			return DirectionTrace{Enforced: true, Verdict: Allow, Rule: ref, NamedPort: np, Reason: "allowed by a rule" + namedReason(np)}
		}
	}
	what := "it"
	if proto == IPProtoAny {
		what = "every protocol and port"
	}
	return DirectionTrace{Enforced: true, Verdict: Deny, Reason: fmt.Sprintf("no rule allows %s; %s is isolated by %s", what, dir, strings.Join(isolating, ", "))}
}

func namedReason(np *NamedPort) string {
	if np == nil {
		return ""
	}
	return fmt.Sprintf(" (port name %q is %d/%s on the destination)", np.Name, np.Port, np.Protocol)
}

func firstMatch(p *Policy, sec string, peer *idRecord, toPorts []NamedPort, port uint16, proto uint8) (*RuleRef, *NamedPort) {
	for i, r := range rulesOf(p, sec) {
		if ok, np := ruleMatches(r, peer, toPorts, port, proto, strings.HasSuffix(sec, "Deny")); ok {
			return &RuleRef{Policy: p.Name, Section: sec, Index: i, File: p.File, Line: r.Line}, np
		}
	}
	return nil, nil
}

// ruleMatches reports whether a rule covers the traffic and, when a named
// entry (and no numeric one) made it, the destination port it named.
func ruleMatches(r Rule, peer *idRecord, toPorts []NamedPort, port uint16, proto uint8, deny bool) (bool, *NamedPort) {
	peerOK := len(r.Peers) == 0
	for _, p := range r.Peers {
		for _, m := range matchersOf(p) {
			if m.matches(peer) {
				peerOK = true
			}
		}
	}
	if !peerOK {
		return false, nil
	}
	if len(r.Ports) == 0 {
		return true, nil
	}
	var named *NamedPort
	for _, pr := range r.Ports {
		if pr.Name == "" {
			// A numeric entry names some port of some protocol, which is
			// enough for a deny of "every protocol and port".
			if pr.matches(proto, port) || (proto == IPProtoAny && deny) {
				return true, nil
			}
			continue
		}
		for _, np := range pr.resolveNamed(toPorts) {
			// A named port is one port: it never covers every protocol
			// and port, though a deny of it denies part of them.
			if named == nil && ((proto == IPProtoAny && deny) || (np.Port == port && containsProto(np.Protocol.numbers(), proto))) {
				named = &np
			}
		}
	}
	return named != nil, named
}

func rulesOf(p *Policy, sec string) []Rule {
	switch sec {
	case "ingress":
		return p.Ingress
	case "egress":
		return p.Egress
	case "ingressDeny":
		return p.IngressDeny
	}
	return p.EgressDeny
}

func labelsOrNone(l identity.Labels) string {
	if len(l) == 0 {
		return "the endpoint without labels"
	}
	return l.String()
}
