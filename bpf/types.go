package bpf

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/weftmesh/weft/identity"
)

// Direction is the policy direction, seen from the local endpoint.
type Direction uint8

const (
	Ingress Direction = 0 // traffic to the endpoint
	Egress  Direction = 1 // traffic from the endpoint
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Verdict is what a policy entry says about matching traffic.
type Verdict uint8

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
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Reserved identities the datapath itself relies on (DESIGN.md).
const (
	IdentityAny   uint32 = 0 // in a PolicyKey: any peer, the world included
	IdentityHost  uint32 = 1
	IdentityWorld uint32 = 2 // a peer address the ipcache does not know
)

// IPCacheNode is the ipcache flag of a mesh node's own mesh address (the
// address its node record announces as its meshIP, never a workload's):
// control traffic between two such addresses on the agents' ports passes
// the host endpoint whatever the policy (IPCACHE_F_NODE in C).
const IPCacheNode uint32 = 1

// ipcacheFlags are the flags UpsertIPCache accepts.
const ipcacheFlags = IPCacheNode

// IsMeshIdentity reports whether the datapath treats an ipcache identity as
// a mesh address, one that may arrive only through the tunnel or from its
// own veth: allocated identities of any cluster (256 up to
// CIDRIdentityBase) and the reserved host (1), health (4) and remote-node
// (6). The world and the node-local identities of CIDR peers are outside
// the mesh.
func IsMeshIdentity(id uint32) bool {
	return id == IdentityHost || id == identityHealth || id == identityRemoteNode ||
		(id >= identityAllocatedMin && id < CIDRIdentityBase)
}

// CIDRIdentityBase is where the node-local identities of CIDR peers start
// (IDENTITY_CIDR_BASE in C; the agent allocates them from there). The
// number plan is declared once, in identity; the C header's copy is checked
// against it by a test.
const CIDRIdentityBase = uint32(identity.CIDRIdentityBase)

const (
	identityHealth       = uint32(identity.IdentityHealth)
	identityRemoteNode   = uint32(identity.IdentityRemoteNode)
	identityAllocatedMin = uint32(identity.MinAllocated)
)

// DropReason says why the datapath dropped a packet. The values are shared
// with the C programs (bpf/lib/common.h) and only ever appended to.
type DropReason uint8

const (
	ReasonNone          DropReason = 0
	ReasonPolicyDefault DropReason = 1 // the direction is enforced and no rule allows the packet
	ReasonPolicyDeny    DropReason = 2 // a deny rule matched
	ReasonInvalidSource DropReason = 3 // a workload sent from an address not its own, or the source is impossible
	ReasonMalformed     DropReason = 4 // truncated or inconsistent headers
	ReasonFragment      DropReason = 5 // a non-first IP fragment: it has no ports to judge
	// ReasonSpoofedSource: the source (or, on the underlay, the
	// destination) is a mesh address, but the packet came neither through
	// the WireGuard device nor from the veth of the endpoint owning it.
	ReasonSpoofedSource DropReason = 6
	// ReasonUnencrypted: strict mode, plaintext between mesh nodes'
	// underlay addresses other than WireGuard, the join service and etcd.
	ReasonUnencrypted DropReason = 7
)

const numReasons = 8 // REASON_MAX in C

var reasonNames = map[DropReason]string{
	ReasonNone:          "none",
	ReasonPolicyDefault: "policy-denied-by-default",
	ReasonPolicyDeny:    "policy-deny-rule",
	ReasonInvalidSource: "invalid-source",
	ReasonMalformed:     "malformed-packet",
	ReasonFragment:      "unsupported-fragment",
	ReasonSpoofedSource: "spoofed-source",
	ReasonUnencrypted:   "unencrypted-underlay",
}

func (r DropReason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// PolicyKey selects the traffic one policy entry applies to, for one
// endpoint and direction.
type PolicyKey struct {
	Direction Direction
	// Identity is the peer's numeric identity; IdentityAny matches every
	// peer, the world included.
	Identity uint32
	// Protocol is the IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58
	// ICMPv6); 0 matches every protocol. For ICMP the "port" is the type.
	Protocol uint8
	// Port and PortPrefixLen: the entry matches destination ports whose
	// PortPrefixLen leading bits equal Port's. 0 matches every port, 16 one.
	Port          uint16
	PortPrefixLen uint8
}

func (k PolicyKey) String() string {
	return fmt.Sprintf("%s identity=%d proto=%d port=%d/%d", k.Direction, k.Identity, k.Protocol, k.Port, k.PortPrefixLen)
}

// Validate reports what is wrong with k.
func (k PolicyKey) Validate() error {
	if k.Direction != Ingress && k.Direction != Egress {
		return fmt.Errorf("policy key %v: direction must be 0 (ingress) or 1 (egress)", k)
	}
	if k.PortPrefixLen > 16 {
		return fmt.Errorf("policy key %v: port prefix length must be 0..16", k)
	}
	if k.PortPrefixLen < 16 && k.Port&^(uint16(0xffff)<<(16-k.PortPrefixLen)) != 0 {
		return fmt.Errorf("policy key %v: port has bits set beyond its %d-bit prefix; clear them (port %d)",
			k, k.PortPrefixLen, k.Port&(uint16(0xffff)<<(16-k.PortPrefixLen)))
	}
	return nil
}

// Endpoint is a local workload (or the node's host endpoint) as the
// datapath sees it.
type Endpoint struct {
	// ID is the agent's number for the endpoint; policy entries are keyed by
	// it. It must not be 0.
	ID       uint32
	Identity uint32
	// IngressEnforced/EgressEnforced make the direction deny-by-default:
	// only what a policy entry allows passes.
	IngressEnforced bool
	EgressEnforced  bool
	// Host marks the node's own endpoint, judged on the mesh device rather
	// than on a veth.
	Host bool
}

const (
	epIngressEnforced = 1
	epEgressEnforced  = 2
	epHost            = 4
)

// EventType says what an Event records.
type EventType uint8

const (
	EventDrop    EventType = 1
	EventNewConn EventType = 2
)

func (t EventType) String() string {
	switch t {
	case EventDrop:
		return "drop"
	case EventNewConn:
		return "new-connection"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Event is one flow record from the datapath: a dropped packet or the first
// packet of a connection policy allowed.
type Event struct {
	Type       EventType
	Reason     DropReason // for drops
	Direction  Direction
	EndpointID uint32 // 0 when the packet was dropped before its endpoint was known
	// SrcIdentity and DstIdentity are the identities of the packet's source
	// and destination (one of them the endpoint's).
	SrcIdentity uint32
	DstIdentity uint32
	Src, Dst    netip.Addr
	Protocol    uint8
	// SrcPort and DstPort are the TCP/UDP ports, or the echo identifier of an
	// ICMP echo.
	SrcPort, DstPort uint16
	TCPFlags         uint8
	Length           uint32 // IP length of the packet
	Ifindex          uint32
	L3               bool // seen on the mesh device rather than a veth
	// NodeControl marks a new connection passed as control traffic between
	// two nodes' own mesh addresses on an agent port, not by a policy rule.
	NodeControl bool
	// Time is when the datapath saw the packet.
	Time time.Time
}

func (e Event) String() string {
	s := fmt.Sprintf("%s %s ep=%d %v:%d (id %d) -> %v:%d (id %d) proto=%d len=%d",
		e.Type, e.Direction, e.EndpointID, e.Src, e.SrcPort, e.SrcIdentity, e.Dst, e.DstPort, e.DstIdentity, e.Protocol, e.Length)
	if e.Type == EventDrop {
		s += " reason=" + e.Reason.String()
	}
	if e.NodeControl {
		s += " node-control"
	}
	return s
}

// Counter is a packet and byte count for one (direction, verdict, reason).
type Counter struct {
	Direction Direction
	Dropped   bool
	Reason    DropReason // ReasonNone for forwarded packets
	Packets   uint64
	Bytes     uint64
}

// Metrics is a read-out of the datapath's counters, summed over CPUs.
type Metrics struct {
	Counters []Counter // only non-zero ones
	// EventsLost counts events the ring buffer had no room for.
	EventsLost uint64
	// DropEventsSuppressed counts drops not reported as events because of
	// the per-CPU rate limit.
	DropEventsSuppressed uint64
}

// Get returns the counter for one (direction, dropped, reason), zero if none.
func (m Metrics) Get(dir Direction, dropped bool, reason DropReason) Counter {
	for _, c := range m.Counters {
		if c.Direction == dir && c.Dropped == dropped && c.Reason == reason {
			return c
		}
	}
	return Counter{Direction: dir, Dropped: dropped, Reason: reason}
}
