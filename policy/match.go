package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/weftmesh/weft/identity"
)

// class is what kind of peer an identity is, which decides what entities
// and selectors can match it.
type class uint8

const (
	classEndpoint      class = iota // an allocated workload identity (selectors apply)
	classHost                       // the local node
	classRemoteNode                 // another node
	classWorld                      // outside the mesh, no CIDR known
	classCIDR                       // outside the mesh, a CIDR identity
	classOtherReserved              // unmanaged, health, init, other numbers below 256
)

// idRecord is an identity as the matchers need it.
type idRecord struct {
	id     identity.NumericIdentity
	labels identity.Labels
	class  class
	cidrs  []netip.Prefix
}

// newRecord classifies an identity. Reserved numbers are classified by
// number; otherwise (and for traces, which only have labels, n = 0) the
// labels decide: any `cidr:` label makes a CIDR identity, `reserved:<name>`
// the reserved class of that name, anything else an endpoint.
func newRecord(n identity.NumericIdentity, l identity.Labels) *idRecord {
	r := &idRecord{id: n, labels: l}
	for _, x := range l {
		if x.Source == identity.SourceCIDR {
			if p, err := netip.ParsePrefix(x.Key); err == nil {
				r.cidrs = append(r.cidrs, p)
			}
		}
	}
	switch {
	case n != identity.IdentityAny && n.IsReserved():
		r.class = classOf(n)
	case len(r.cidrs) > 0:
		r.class = classCIDR
	default:
		r.class = classEndpoint
		for _, x := range l {
			if x.Source == identity.SourceReserved {
				if rn, err := identity.LookupReserved(x.Key); err == nil {
					r.class = classOf(rn)
				} else {
					r.class = classOtherReserved
				}
				break
			}
		}
	}
	return r
}

func classOf(n identity.NumericIdentity) class {
	switch n {
	case identity.IdentityHost:
		return classHost
	case identity.IdentityRemoteNode:
		return classRemoteNode
	case identity.IdentityWorld:
		return classWorld
	}
	return classOtherReserved
}

// matcher is one atomic peer: a selector, one entity, or one CIDR with its
// exceptions. Identical peers across policies share one matcher (and its
// set of matching identities), keyed by their canonical text.
type matcher struct {
	key    string
	kind   PeerKind
	sel    identity.Selector
	entity Entity
	cidr   netip.Prefix
	except []netip.Prefix

	refs int
	ids  map[identity.NumericIdentity]struct{}
}

// wildcard matchers stand for identity 0 (any peer) in the datapath.
func (m *matcher) wildcard() bool { return m.kind == PeerEntities && m.entity == EntityAll }

// matchersOf splits a peer into atomic matchers (one per entity).
func matchersOf(p Peer) []*matcher {
	switch p.Kind {
	case PeerEntities:
		out := make([]*matcher, 0, len(p.Entities))
		for _, e := range p.Entities {
			out = append(out, &matcher{key: "entity:" + string(e), kind: PeerEntities, entity: e})
		}
		return out
	case PeerCIDR:
		ex := slices.Clone(p.Except)
		slices.SortFunc(ex, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
		ex = slices.Compact(ex)
		var b strings.Builder
		b.WriteString("cidr:" + p.CIDR.String())
		for _, e := range ex {
			b.WriteString(" except " + e.String())
		}
		return []*matcher{{key: b.String(), kind: PeerCIDR, cidr: p.CIDR, except: ex}}
	}
	return []*matcher{{key: "selector:" + p.Selector.String(), kind: PeerSelector, sel: p.Selector}}
}

// matches is the one definition of "this peer covers this identity",
// shared by compilation and Trace so that both always agree.
func (m *matcher) matches(r *idRecord) bool {
	switch m.kind {
	case PeerSelector:
		return r.class == classEndpoint && m.sel.Matches(r.labels)
	case PeerEntities:
		switch m.entity {
		case EntityAll:
			return true
		case EntityHost:
			return r.class == classHost
		case EntityRemoteNode:
			return r.class == classRemoteNode
		case EntityWorld:
			return r.class == classWorld || r.class == classCIDR
		case EntityMesh:
			return r.class == classEndpoint || r.class == classHost || r.class == classRemoteNode || r.class == classOtherReserved
		}
		return false
	case PeerCIDR:
		if r.class == classWorld {
			// Traffic from an address no CIDR identity covers carries world:
			// only a /0 peer covers all of it.
			return m.cidr.Bits() == 0
		}
		if r.class != classCIDR {
			return false
		}
		for _, q := range r.cidrs {
			if prefixWithin(q, m.cidr) && !slices.ContainsFunc(m.except, func(e netip.Prefix) bool { return prefixWithin(q, e) }) {
				return true
			}
		}
	}
	return false
}

// prefixWithin reports whether inner lies entirely inside outer.
func prefixWithin(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

// labelIndex maps "key=value" (any source) and "source:key=value" to the
// endpoint identities carrying them, so a selector with a matchLabels or
// In requirement only tests a few candidates instead of every identity.
type labelIndex map[string]map[identity.NumericIdentity]struct{}

func (ix labelIndex) update(r *idRecord, add bool) {
	if r.class != classEndpoint {
		return
	}
	for _, l := range r.labels {
		for _, k := range []string{l.Key + "=" + l.Value, l.Source + ":" + l.Key + "=" + l.Value} {
			if add {
				s := ix[k]
				if s == nil {
					s = map[identity.NumericIdentity]struct{}{}
					ix[k] = s
				}
				s[r.id] = struct{}{}
			} else if s := ix[k]; s != nil {
				delete(s, r.id)
				if len(s) == 0 {
					delete(ix, k)
				}
			}
		}
	}
}

// candidates returns a superset of the endpoint identities sel can match,
// or ok=false when only a full scan can tell (no positive requirement).
func (ix labelIndex) candidates(sel identity.Selector) (ids []identity.NumericIdentity, ok bool) {
	best := -1
	var bestSets []map[identity.NumericIdentity]struct{}
	consider := func(sets []map[identity.NumericIdentity]struct{}) {
		n := 0
		for _, s := range sets {
			n += len(s)
		}
		if best < 0 || n < best {
			best, bestSets = n, sets
		}
	}
	for k, v := range sel.MatchLabels {
		consider([]map[identity.NumericIdentity]struct{}{ix[k+"="+v]})
	}
	for _, r := range sel.MatchExpressions {
		if r.Operator == identity.OpIn {
			sets := make([]map[identity.NumericIdentity]struct{}, 0, len(r.Values))
			for _, v := range r.Values {
				sets = append(sets, ix[r.Key+"="+v])
			}
			consider(sets)
		}
	}
	if best < 0 {
		return nil, false
	}
	out := make([]identity.NumericIdentity, 0, best)
	for _, s := range bestSets {
		for id := range s {
			out = append(out, id)
		}
	}
	return out, true
}
