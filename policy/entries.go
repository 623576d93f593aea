package policy

import (
	"fmt"
	"maps"
	"math/bits"

	"github.com/weftmesh/weft/identity"
)

// Direction is the direction of traffic relative to the local endpoint.
type Direction uint8

// The directions.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Key is one datapath entry's key. Identity 0 is any peer (the world
// included); Protocol 0 is any protocol; the port is a prefix of
// PortPrefixLen leading bits (0 = any port, 16 = exactly Port).
type Key struct {
	Direction     Direction
	Identity      identity.NumericIdentity
	Protocol      uint8
	Port          uint16
	PortPrefixLen uint8
}

func (k Key) String() string {
	return fmt.Sprintf("%s id=%v proto=%d port=%d/%d", k.Direction, k.Identity, k.Protocol, k.Port, k.PortPrefixLen)
}

// covers reports whether k's port prefix contains port.
func (k Key) covers(port uint16) bool {
	if k.PortPrefixLen == 0 {
		return true
	}
	mask := uint16(0xffff) << (16 - k.PortPrefixLen)
	return port&mask == k.Port
}

// Verdict is a datapath verdict.
type Verdict uint8

// The verdicts; the zero Verdict is "no entry".
const (
	Allow Verdict = 1
	Deny  Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "none"
}

// EndpointPolicy is everything the datapath needs for one local endpoint.
type EndpointPolicy struct {
	IngressEnforced, EgressEnforced bool
	Entries                         map[Key]Verdict
}

// Delta turns one EndpointPolicy into the next: set the flags, write every
// Upsert entry, remove every Delete key. It is minimal: an entry whose
// verdict does not change appears in neither.
type Delta struct {
	IngressEnforced, EgressEnforced bool
	Upsert                          map[Key]Verdict
	Delete                          []Key
}

// Empty reports whether the delta changes no entry (the flags may still
// need writing if they changed; callers compare them).
func (d Delta) Empty() bool { return len(d.Upsert) == 0 && len(d.Delete) == 0 }

// Apply applies a delta to p in place, as the datapath would.
func (p *EndpointPolicy) Apply(d Delta) {
	p.IngressEnforced, p.EgressEnforced = d.IngressEnforced, d.EgressEnforced
	if p.Entries == nil {
		p.Entries = map[Key]Verdict{}
	}
	for _, k := range d.Delete {
		delete(p.Entries, k)
	}
	maps.Copy(p.Entries, d.Upsert)
}

// Clone returns a deep copy.
func (p EndpointPolicy) Clone() EndpointPolicy {
	p.Entries = maps.Clone(p.Entries)
	if p.Entries == nil {
		p.Entries = map[Key]Verdict{}
	}
	return p
}

// Equal reports whether both hold the same flags and entries.
func (p EndpointPolicy) Equal(o EndpointPolicy) bool {
	return p.IngressEnforced == o.IngressEnforced && p.EgressEnforced == o.EgressEnforced && maps.Equal(p.Entries, o.Entries)
}

// Verdict evaluates a packet against the entries exactly as the datapath
// contract says: up to four longest-prefix-match lookups on the port —
// (identity, protocol), (identity, any), (any, protocol), (any, any) —
// deny if any lookup's longest match is Deny, else allow if any is Allow,
// else the direction's default (deny when enforced, allow when not).
// It is the reference the eBPF implementation is tested against.
func (p EndpointPolicy) Verdict(dir Direction, id identity.NumericIdentity, proto uint8, port uint16) Verdict {
	allowed := false
	for _, lid := range []identity.NumericIdentity{id, identity.IdentityAny} {
		for _, lproto := range []uint8{proto, IPProtoAny} {
			switch p.longestMatch(dir, lid, lproto, port) {
			case Deny:
				return Deny
			case Allow:
				allowed = true
			}
			if proto == IPProtoAny {
				break
			}
		}
		if id == identity.IdentityAny {
			break
		}
	}
	if allowed {
		return Allow
	}
	enforced := p.IngressEnforced
	if dir == Egress {
		enforced = p.EgressEnforced
	}
	if enforced {
		return Deny
	}
	return Allow
}

func (p EndpointPolicy) longestMatch(dir Direction, id identity.NumericIdentity, proto uint8, port uint16) Verdict {
	for plen := 16; plen >= 0; plen-- {
		k := Key{Direction: dir, Identity: id, Protocol: proto, PortPrefixLen: uint8(plen)}
		if plen > 0 {
			k.Port = port & (uint16(0xffff) << (16 - plen))
		}
		if v, ok := p.Entries[k]; ok {
			return v
		}
	}
	return 0
}

// portPrefix is one aligned power-of-two block of ports.
type portPrefix struct {
	port uint16
	plen uint8
}

// portPrefixes splits [lo, hi] into the fewest aligned prefixes. lo == 0
// and hi == 0xffff is the single prefix 0/0.
func portPrefixes(lo, hi uint16) []portPrefix {
	var out []portPrefix
	cur := uint32(lo)
	end := uint32(hi)
	for cur <= end {
		// The largest block aligned at cur that does not pass end.
		size := uint32(1) << 16
		if cur != 0 {
			size = uint32(1) << bits.TrailingZeros32(cur)
		}
		for cur+size-1 > end {
			size >>= 1
		}
		plen := 16 - bits.TrailingZeros32(size)
		out = append(out, portPrefix{port: uint16(cur), plen: uint8(plen)})
		cur += size
	}
	return out
}
