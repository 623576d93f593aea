package policy

import (
	"fmt"
	"maps"
	"slices"

	"github.com/weftmesh/weft/identity"
)

// section is one rule list of a policy, with what it means in the datapath.
type section struct {
	name    string // ingress, egress, ingressDeny, egressDeny
	dir     Direction
	verdict Verdict
	rules   []crule
}

// crule is a rule ready for compilation.
type crule struct {
	index    int
	line     int
	any      bool // no peers, or entity all: identity 0
	matchers []*matcher
	ports    []portKey  // numeric entries (or every port); nil when all are named
	named    []PortRule // named entries, resolved per endpoint or per peer
	src      Rule
}

// portKey is one (protocol, port prefix) a rule expands to.
type portKey struct {
	proto uint8
	port  uint16
	plen  uint8
}

type cpolicy struct {
	p        *Policy
	sections []section
	// namedEgress counts egress and egressDeny rules with named ports:
	// only those make a peer identity's named ports matter.
	namedEgress int
}

// portKeys splits a rule's port entries into the keys of the numeric ones
// (every port for no entries at all) and the named ones, which only an
// endpoint's or a peer's named ports turn into keys.
func portKeys(ports []PortRule) ([]portKey, []PortRule) {
	if len(ports) == 0 {
		return []portKey{{}}, nil
	}
	var (
		out   []portKey
		named []PortRule
	)
	for _, pr := range ports {
		if pr.Name != "" {
			named = append(named, pr)
			continue
		}
		for _, proto := range pr.Protocol.numbers() {
			if pr.Port == 0 {
				out = append(out, portKey{proto: proto})
				continue
			}
			end := pr.EndPort
			if end == 0 {
				end = pr.Port
			}
			for _, pp := range portPrefixes(pr.Port, end) {
				out = append(out, portKey{proto: proto, port: pp.port, plen: pp.plen})
			}
		}
	}
	slices.SortFunc(out, func(a, b portKey) int {
		if a.proto != b.proto {
			return int(a.proto) - int(b.proto)
		}
		if a.port != b.port {
			return int(a.port) - int(b.port)
		}
		return int(a.plen) - int(b.plen)
	})
	return slices.Compact(out), named
}

// Compiler turns policies, the identities of the mesh and the local
// endpoints into datapath entries, and keeps what it needs to answer every
// later change with a minimal Delta per endpoint. It is not safe for
// concurrent use: the agent drives it from one reconciler.
type Compiler struct {
	policies  map[string]*cpolicy
	ids       map[identity.NumericIdentity]*idRecord
	endpoints map[identity.NumericIdentity]struct{} // class endpoint
	index     labelIndex
	matchers  map[string]*matcher
	locals    map[string]*local

	// Named ports, kept apart from the endpoints and identities they
	// belong to so that the agent may set them before or after those.
	endpointPorts map[string][]NamedPort                   // local endpoint key → its ports (ingress)
	identityPorts map[identity.NumericIdentity][]NamedPort // peer identity → its endpoints' ports (egress)
	namedEgress   int                                      // sum of the policies' namedEgress
}

// local is one local endpoint's compiled state.
type local struct {
	key      string
	labels   identity.Labels
	selected []*cpolicy // sorted by name
	ingress  bool       // enforced
	egress   bool
	entries  map[identity.NumericIdentity]map[Key]Verdict
}

// NewCompiler starts a compiler with a table of known identities (reserved
// ones included; entries for identity 0 are ignored).
func NewCompiler(ids map[identity.NumericIdentity]identity.Labels) *Compiler {
	c := &Compiler{
		policies:  map[string]*cpolicy{},
		ids:       map[identity.NumericIdentity]*idRecord{},
		endpoints: map[identity.NumericIdentity]struct{}{},
		index:     labelIndex{},
		matchers:  map[string]*matcher{},
		locals:    map[string]*local{},

		endpointPorts: map[string][]NamedPort{},
		identityPorts: map[identity.NumericIdentity][]NamedPort{},
	}
	for n, l := range ids {
		if n != identity.IdentityAny {
			c.putIdentity(newRecord(n, l))
		}
	}
	return c
}

func (c *Compiler) putIdentity(r *idRecord) {
	c.ids[r.id] = r
	if r.class == classEndpoint {
		c.endpoints[r.id] = struct{}{}
	}
	c.index.update(r, true)
}

func (c *Compiler) dropIdentity(r *idRecord) {
	delete(c.ids, r.id)
	delete(c.endpoints, r.id)
	c.index.update(r, false)
	for _, m := range c.matchers {
		delete(m.ids, r.id)
	}
}

// acquire returns the shared matcher for m, computing its identity set the
// first time it is used.
func (c *Compiler) acquire(m *matcher) *matcher {
	if have, ok := c.matchers[m.key]; ok {
		have.refs++
		return have
	}
	m.refs = 1
	m.ids = map[identity.NumericIdentity]struct{}{}
	if !m.wildcard() {
		c.fill(m)
	}
	c.matchers[m.key] = m
	return m
}

func (c *Compiler) fill(m *matcher) {
	if m.kind == PeerSelector {
		if cands, ok := c.index.candidates(m.sel); ok {
			for _, id := range cands {
				if m.matches(c.ids[id]) {
					m.ids[id] = struct{}{}
				}
			}
			return
		}
		for id := range c.endpoints {
			if m.matches(c.ids[id]) {
				m.ids[id] = struct{}{}
			}
		}
		return
	}
	for id, r := range c.ids {
		if m.matches(r) {
			m.ids[id] = struct{}{}
		}
	}
}

func (c *Compiler) release(m *matcher) {
	m.refs--
	if m.refs == 0 {
		delete(c.matchers, m.key)
	}
}

func (c *Compiler) compilePolicy(p *Policy) *cpolicy {
	cp := &cpolicy{p: p}
	add := func(name string, dir Direction, v Verdict, rules []Rule) {
		if rules == nil {
			return
		}
		s := section{name: name, dir: dir, verdict: v, rules: make([]crule, 0, len(rules))}
		for i, r := range rules {
			cr := crule{index: i, line: ruleLine(p, name, i), src: r}
			cr.ports, cr.named = portKeys(r.Ports)
			if dir == Egress && len(cr.named) > 0 {
				cp.namedEgress++
			}
			if len(r.Peers) == 0 {
				cr.any = true
			}
			for _, peer := range r.Peers {
				for _, m := range matchersOf(peer) {
					if m.wildcard() {
						cr.any = true
					}
					cr.matchers = append(cr.matchers, c.acquire(m))
				}
			}
			s.rules = append(s.rules, cr)
		}
		cp.sections = append(cp.sections, s)
	}
	add("ingress", Ingress, Allow, p.Ingress)
	add("egress", Egress, Allow, p.Egress)
	add("ingressDeny", Ingress, Deny, p.IngressDeny)
	add("egressDeny", Egress, Deny, p.EgressDeny)
	c.namedEgress += cp.namedEgress
	return cp
}

func (c *Compiler) releasePolicy(cp *cpolicy) {
	c.namedEgress -= cp.namedEgress
	for _, s := range cp.sections {
		for _, r := range s.rules {
			for _, m := range r.matchers {
				c.release(m)
			}
		}
	}
}

// UpsertPolicy adds or replaces a policy (by name) and returns the delta
// of every local endpoint whose entries or enforcement changed.
func (c *Compiler) UpsertPolicy(p *Policy) (map[string]Delta, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	old := c.policies[p.Name]
	np := c.compilePolicy(p)
	c.policies[p.Name] = np
	if old != nil {
		c.releasePolicy(old)
	}
	return c.recomputeWhere(func(l *local) bool {
		return (old != nil && slices.Contains(l.selected, old)) || p.EndpointSelector.Matches(l.labels)
	}), nil
}

// DeletePolicy removes a policy; deleting an unknown name is ErrNotFound.
func (c *Compiler) DeletePolicy(name string) (map[string]Delta, error) {
	old, ok := c.policies[name]
	if !ok {
		return nil, fmt.Errorf("deleting policy %q: %w", name, ErrNotFound)
	}
	delete(c.policies, name)
	c.releasePolicy(old)
	return c.recomputeWhere(func(l *local) bool { return slices.Contains(l.selected, old) }), nil
}

// ReplacePolicies swaps the whole policy set at once (a resync) and
// recomputes each endpoint once. Every policy is validated first: on error
// nothing changes.
func (c *Compiler) ReplacePolicies(ps []*Policy) (map[string]Delta, error) {
	names := map[string]bool{}
	for _, p := range ps {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		if names[p.Name] {
			return nil, fmt.Errorf("%w: policy %q given twice", ErrInvalid, p.Name)
		}
		names[p.Name] = true
	}
	old := c.policies
	c.policies = make(map[string]*cpolicy, len(ps))
	for _, p := range ps {
		c.policies[p.Name] = c.compilePolicy(p)
	}
	for _, cp := range old {
		c.releasePolicy(cp)
	}
	return c.recomputeWhere(func(*local) bool { return true }), nil
}

// AddIdentity records (or re-labels) an identity and returns the deltas:
// only entries for that identity can change.
func (c *Compiler) AddIdentity(n identity.NumericIdentity, labels identity.Labels) map[string]Delta {
	if n == identity.IdentityAny {
		return nil
	}
	if old, ok := c.ids[n]; ok {
		if old.labels.Equal(labels) {
			return nil
		}
		c.dropIdentity(old)
	}
	r := newRecord(n, labels)
	c.putIdentity(r)
	for _, m := range c.matchers {
		if !m.wildcard() && m.matches(r) {
			m.ids[n] = struct{}{}
		}
	}
	return c.recomputeIdentity(n)
}

// RemoveIdentity forgets an identity and returns the deltas removing its
// entries.
func (c *Compiler) RemoveIdentity(n identity.NumericIdentity) map[string]Delta {
	r, ok := c.ids[n]
	if !ok {
		return nil
	}
	c.dropIdentity(r)
	return c.recomputeIdentity(n)
}

// AddEndpoint registers (or re-labels) a local endpoint under a caller's
// key (its address, say) and returns its full policy.
// Named ports set for the key (SetEndpointNamedPorts) are kept.
func (c *Compiler) AddEndpoint(key string, labels identity.Labels) EndpointPolicy {
	l := &local{key: key, labels: labels, entries: map[identity.NumericIdentity]map[Key]Verdict{}}
	c.locals[key] = l
	c.compileLocal(l)
	return l.policy()
}

// RemoveEndpoint forgets a local endpoint and its named ports.
func (c *Compiler) RemoveEndpoint(key string) {
	delete(c.locals, key)
	delete(c.endpointPorts, key)
}

// SetEndpointNamedPorts sets the named ports of a local endpoint (its
// containers' ports, for a pod): ingress rules that name a port resolve
// it against them, as Kubernetes resolves a name against the selected
// pod. It may come before AddEndpoint; nil clears. It returns the delta of
// that endpoint, if any; invalid ports are an error and change nothing.
func (c *Compiler) SetEndpointNamedPorts(key string, ports []NamedPort) (map[string]Delta, error) {
	nps, err := normalizeNamedPorts(ports)
	if err != nil {
		return nil, fmt.Errorf("named ports of endpoint %s: %w", key, err)
	}
	if slices.Equal(c.endpointPorts[key], nps) {
		return nil, nil
	}
	if nps == nil {
		delete(c.endpointPorts, key)
	} else {
		c.endpointPorts[key] = nps
	}
	l, ok := c.locals[key]
	if !ok || !l.namesIngressPorts() {
		return nil, nil
	}
	return c.recomputeWhere(func(x *local) bool { return x == l }), nil
}

// SetIdentityNamedPorts sets the named ports of a peer identity: the
// union of the named ports of every endpoint (local or remote) carrying
// it. Egress rules that name a port resolve it against the destination
// identity's, as Kubernetes resolves a name against the peer pod. Since
// identities are shared, a name two such endpoints map to different
// numbers allows both numbers toward each of them. The ports are kept
// apart from AddIdentity/RemoveIdentity (either may come first); nil
// clears. It returns the deltas of the local endpoints whose entries for
// that identity change; invalid ports are an error and change nothing.
func (c *Compiler) SetIdentityNamedPorts(id identity.NumericIdentity, ports []NamedPort) (map[string]Delta, error) {
	if id == identity.IdentityAny {
		return nil, fmt.Errorf("%w: named ports of identity 0: 0 stands for any peer, not an identity", ErrInvalid)
	}
	nps, err := normalizeNamedPorts(ports)
	if err != nil {
		return nil, fmt.Errorf("named ports of identity %v: %w", id, err)
	}
	if slices.Equal(c.identityPorts[id], nps) {
		return nil, nil
	}
	if nps == nil {
		delete(c.identityPorts, id)
	} else {
		c.identityPorts[id] = nps
	}
	if _, known := c.ids[id]; !known || c.namedEgress == 0 {
		return nil, nil
	}
	return c.recomputeIdentity(id), nil
}

// namesIngressPorts reports whether a policy selecting l names a port in
// an ingress or ingressDeny rule: only then do l's named ports matter.
func (l *local) namesIngressPorts() bool {
	for _, cp := range l.selected {
		for _, s := range cp.sections {
			if s.dir != Ingress {
				continue
			}
			for _, r := range s.rules {
				if len(r.named) > 0 {
					return true
				}
			}
		}
	}
	return false
}

// EndpointPolicy returns the current policy of a local endpoint.
func (c *Compiler) EndpointPolicy(key string) (EndpointPolicy, bool) {
	l, ok := c.locals[key]
	if !ok {
		return EndpointPolicy{}, false
	}
	return l.policy(), true
}

// Policies returns the policies in name order.
func (c *Compiler) Policies() []*Policy {
	out := make([]*Policy, 0, len(c.policies))
	for _, name := range slices.Sorted(maps.Keys(c.policies)) {
		out = append(out, c.policies[name].p)
	}
	return out
}

func (l *local) policy() EndpointPolicy {
	p := EndpointPolicy{IngressEnforced: l.ingress, EgressEnforced: l.egress, Entries: map[Key]Verdict{}}
	for _, es := range l.entries {
		maps.Copy(p.Entries, es)
	}
	return p
}

func (c *Compiler) recomputeWhere(affected func(*local) bool) map[string]Delta {
	out := map[string]Delta{}
	for key, l := range c.locals {
		if !affected(l) {
			continue
		}
		oldIn, oldEg, old := l.ingress, l.egress, l.entries
		c.compileLocal(l)
		d := Delta{IngressEnforced: l.ingress, EgressEnforced: l.egress, Upsert: map[Key]Verdict{}}
		for id := range old {
			diffInto(&d, old[id], l.entries[id])
		}
		for id, es := range l.entries {
			if _, seen := old[id]; !seen {
				diffInto(&d, nil, es)
			}
		}
		if !d.Empty() || oldIn != l.ingress || oldEg != l.egress {
			out[key] = d
		}
	}
	return out
}

func (c *Compiler) recomputeIdentity(n identity.NumericIdentity) map[string]Delta {
	out := map[string]Delta{}
	for key, l := range c.locals {
		var now map[Key]Verdict
		if r := c.ids[n]; r != nil {
			now = c.entriesFor(l, n)
		}
		d := Delta{IngressEnforced: l.ingress, EgressEnforced: l.egress, Upsert: map[Key]Verdict{}}
		diffInto(&d, l.entries[n], now)
		if len(now) == 0 {
			delete(l.entries, n)
		} else {
			l.entries[n] = now
		}
		if !d.Empty() {
			out[key] = d
		}
	}
	return out
}

func diffInto(d *Delta, old, now map[Key]Verdict) {
	for k, v := range now {
		if ov, ok := old[k]; !ok || ov != v {
			d.Upsert[k] = v
		}
	}
	for k := range old {
		if _, ok := now[k]; !ok {
			d.Delete = append(d.Delete, k)
		}
	}
}

// compileLocal recomputes every entry of one endpoint.
func (c *Compiler) compileLocal(l *local) {
	l.selected = l.selected[:0]
	for _, name := range slices.Sorted(maps.Keys(c.policies)) {
		if cp := c.policies[name]; cp.p.EndpointSelector.Matches(l.labels) {
			l.selected = append(l.selected, cp)
		}
	}
	l.ingress, l.egress = false, false
	for _, cp := range l.selected {
		l.ingress = l.ingress || cp.p.Ingress != nil
		l.egress = l.egress || cp.p.Egress != nil
	}
	raw := map[identity.NumericIdentity][]contrib{}
	for _, cp := range l.selected {
		for _, s := range cp.sections {
			for i := range s.rules {
				r := &s.rules[i]
				// Ingress names resolve against l alone: the same keys for
				// every peer. Egress names resolve per peer, below.
				keys := c.keysFor(l, s.dir, r, identity.IdentityAny)
				if r.any {
					raw[identity.IdentityAny] = appendContribs(raw[identity.IdentityAny], s, keys)
					if s.dir == Egress && len(r.named) > 0 {
						for id, nps := range c.identityPorts {
							if _, known := c.ids[id]; known {
								raw[id] = appendContribs(raw[id], s, namedKeys(r.named, nps))
							}
						}
					}
					continue
				}
				for _, m := range r.matchers {
					for id := range m.ids {
						if s.dir == Egress && len(r.named) > 0 {
							raw[id] = appendContribs(raw[id], s, c.keysFor(l, s.dir, r, id))
						} else {
							raw[id] = appendContribs(raw[id], s, keys)
						}
					}
				}
			}
		}
	}
	l.entries = make(map[identity.NumericIdentity]map[Key]Verdict, len(raw))
	for id, cs := range raw {
		if es := resolve(id, cs); len(es) > 0 {
			l.entries[id] = es
		}
	}
}

// entriesFor computes the entries of one peer identity for an endpoint.
func (c *Compiler) entriesFor(l *local, n identity.NumericIdentity) map[Key]Verdict {
	var cs []contrib
	for _, cp := range l.selected {
		for _, s := range cp.sections {
			for i := range s.rules {
				r := &s.rules[i]
				if r.any {
					// The wildcard entry covers n's numeric ports; names
					// in an egress rule resolve against n's own.
					if s.dir == Egress && len(r.named) > 0 {
						cs = appendContribs(cs, s, namedKeys(r.named, c.identityPorts[n]))
					}
					continue
				}
				for _, m := range r.matchers {
					if _, ok := m.ids[n]; ok {
						cs = appendContribs(cs, s, c.keysFor(l, s.dir, r, n))
						break
					}
				}
			}
		}
	}
	return resolve(n, cs)
}

// keysFor returns the port keys a rule asks for on endpoint l toward peer
// identity id (IdentityAny: no particular peer): its numeric keys plus
// its named entries resolved against l's named ports for ingress, or
// against id's for egress.
func (c *Compiler) keysFor(l *local, dir Direction, r *crule, id identity.NumericIdentity) []portKey {
	if len(r.named) == 0 {
		return r.ports
	}
	var against []NamedPort
	switch {
	case dir == Ingress:
		against = c.endpointPorts[l.key]
	case id != identity.IdentityAny:
		against = c.identityPorts[id]
	}
	extra := namedKeys(r.named, against)
	if len(extra) == 0 {
		return r.ports
	}
	return append(slices.Clip(r.ports), extra...)
}

// contrib is one entry a rule asks for, before deny precedence.
type contrib struct {
	dir     Direction
	verdict Verdict
	pk      portKey
}

func appendContribs(cs []contrib, s section, keys []portKey) []contrib {
	for _, pk := range keys {
		cs = append(cs, contrib{dir: s.dir, verdict: s.verdict, pk: pk})
	}
	return cs
}

// resolve turns one identity's contributions into entries so that deny
// wins under longest-prefix matching: within one (direction, identity,
// protocol), an allow prefix lying inside a deny prefix would be the
// longer match and let the packet through, so it is written as Deny.
func resolve(id identity.NumericIdentity, cs []contrib) map[Key]Verdict {
	if len(cs) == 0 {
		return nil
	}
	out := make(map[Key]Verdict, len(cs))
	for _, x := range cs {
		if x.verdict == Deny {
			out[keyOf(id, x)] = Deny
		}
	}
	for _, x := range cs {
		if x.verdict != Allow {
			continue
		}
		k := keyOf(id, x)
		if _, ok := out[k]; ok {
			continue
		}
		v := Allow
		for _, d := range cs {
			if d.verdict == Deny && d.dir == x.dir && d.pk.proto == x.pk.proto && d.pk.plen <= x.pk.plen && keyOf(id, d).covers(x.pk.port) {
				v = Deny
				break
			}
		}
		out[k] = v
	}
	return out
}

func keyOf(id identity.NumericIdentity, x contrib) Key {
	return Key{Direction: x.dir, Identity: id, Protocol: x.pk.proto, Port: x.pk.port, PortPrefixLen: x.pk.plen}
}

// Compile is the whole computation at once: the entries of one endpoint
// with the given labels, under all policies and known identities. The
// Compiler's incremental deltas always add up to this.
func Compile(ps []*Policy, ids map[identity.NumericIdentity]identity.Labels, labels identity.Labels) (EndpointPolicy, error) {
	c := NewCompiler(ids)
	if _, err := c.ReplacePolicies(ps); err != nil {
		return EndpointPolicy{}, err
	}
	return c.AddEndpoint("", labels), nil
}

func ruleLine(p *Policy, section string, i int) int {
	if rs := rulesOf(p, section); i < len(rs) {
		return rs[i].Line
	}
	return 0
}

// ruleName is "policy/section[i]", how traces and logs name a rule.
func ruleName(policy, section string, i int) string {
	return fmt.Sprintf("%s/%s[%d]", policy, section, i)
}

// PolicyEntries counts, per policy, the datapath entries its rules produce
// on the local endpoints it selects (`meshctl policy list`, ENTRIES). An
// entry two policies both ask for counts for each of them, so the counts
// may add up to more than the endpoints hold; a policy that selects no
// local endpoint, or whose peers have no identity yet, counts 0.
func (c *Compiler) PolicyEntries() map[string]int {
	out := make(map[string]int, len(c.policies))
	for name := range c.policies {
		out[name] = 0
	}
	for _, l := range c.locals {
		for _, cp := range l.selected {
			keys := map[Key]struct{}{}
			add := func(id identity.NumericIdentity, dir Direction, pks []portKey) {
				for _, pk := range pks {
					keys[keyOf(id, contrib{dir: dir, pk: pk})] = struct{}{}
				}
			}
			for _, s := range cp.sections {
				for i := range s.rules {
					r := &s.rules[i]
					if r.any {
						add(identity.IdentityAny, s.dir, c.keysFor(l, s.dir, r, identity.IdentityAny))
						if s.dir == Egress && len(r.named) > 0 {
							for id, nps := range c.identityPorts {
								if _, known := c.ids[id]; known {
									add(id, s.dir, namedKeys(r.named, nps))
								}
							}
						}
						continue
					}
					for _, m := range r.matchers {
						for id := range m.ids {
							add(id, s.dir, c.keysFor(l, s.dir, r, id))
						}
					}
				}
			}
			out[cp.p.Name] += len(keys)
		}
	}
	return out
}
