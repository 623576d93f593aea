package policy

import (
	"errors"
	"net/netip"

	"github.com/weftmesh/weft/identity"
)

// Sentinel errors.
var (
	// ErrInvalid wraps every validation and parse error.
	ErrInvalid = errors.New("policy: invalid policy")
	// ErrNotFound is returned when deleting a policy that does not exist.
	ErrNotFound = errors.New("policy: not found")
)

// APIVersion and Kind are the only values a document may carry.
const (
	APIVersion = "weft.dev/v1"
	Kind       = "Policy"
)

// Policy is one validated policy document.
//
// A nil rule list means the section is absent; a non-nil empty one
// (`ingress: []`) is present and isolates the selected endpoints.
type Policy struct {
	Name             string
	Description      string
	EndpointSelector identity.Selector
	Ingress          []Rule
	Egress           []Rule
	IngressDeny      []Rule
	EgressDeny       []Rule

	// File and Line say where the document came from, for messages and
	// traces; empty for policies built in code. Line is the line of the
	// document's first field.
	File string
	Line int
	// Source is the document's text as written in File, from SourceLine
	// on: what `policy apply` stores, so that `policy get` prints what the
	// user wrote and a trace names the lines of the user's file.
	Source     string
	SourceLine int
}

// Rule is one entry of a rule list: peers (`from` or `to`) and ports. No
// peers means every peer, the world included; no ports means every port
// of every protocol.
type Rule struct {
	Peers []Peer
	Ports []PortRule
	// Line is where the rule was written (0 when built in code).
	Line int
}

// PeerKind tells which of a Peer's fields is set.
type PeerKind uint8

// The kinds of peer.
const (
	PeerSelector PeerKind = iota // matchLabels / matchExpressions; {} = every mesh endpoint
	PeerEntities                 // entities: [host, world, ...]
	PeerCIDR                     // cidr + except
)

// Peer is one element of `from` or `to`: exactly one of a label selector,
// a list of entities, or a CIDR with exceptions.
type Peer struct {
	Kind     PeerKind
	Selector identity.Selector
	Entities []Entity
	CIDR     netip.Prefix
	Except   []netip.Prefix
}

// Entity names a class of peers that labels cannot express.
type Entity string

// The entities.
const (
	// EntityHost is the local node (identity host).
	EntityHost Entity = "host"
	// EntityRemoteNode is every other node's own address (identity remote-node).
	EntityRemoteNode Entity = "remote-node"
	// EntityWorld is everything outside the mesh: identity world and every
	// CIDR identity.
	EntityWorld Entity = "world"
	// EntityMesh is everything inside the mesh: every endpoint identity,
	// host, remote-node and the other reserved identities except world.
	EntityMesh Entity = "mesh"
	// EntityAll is every peer, inside or outside the mesh.
	EntityAll Entity = "all"
)

var entities = []Entity{EntityHost, EntityRemoteNode, EntityWorld, EntityMesh, EntityAll}

// Protocol is a protocol name as written in a policy.
type Protocol string

// The protocols a port entry may name.
const (
	ProtoTCP  Protocol = "TCP"
	ProtoUDP  Protocol = "UDP"
	ProtoSCTP Protocol = "SCTP"
	ProtoICMP Protocol = "ICMP" // ICMP and ICMPv6; no ports
	ProtoANY  Protocol = "ANY"
)

// IANA protocol numbers used in datapath keys.
const (
	IPProtoAny    uint8 = 0
	IPProtoICMP   uint8 = 1
	IPProtoTCP    uint8 = 6
	IPProtoUDP    uint8 = 17
	IPProtoICMPv6 uint8 = 58
	IPProtoSCTP   uint8 = 132
)

// numbers returns the IANA numbers a protocol name stands for.
func (p Protocol) numbers() []uint8 {
	switch p {
	case ProtoTCP:
		return []uint8{IPProtoTCP}
	case ProtoUDP:
		return []uint8{IPProtoUDP}
	case ProtoSCTP:
		return []uint8{IPProtoSCTP}
	case ProtoICMP:
		return []uint8{IPProtoICMP, IPProtoICMPv6}
	}
	return []uint8{IPProtoAny}
}

// PortRule is one entry of `ports`. Port 0 means every port of the
// protocol; EndPort 0 means just Port.
//
// Name, when set, is a named port (`port: http`) instead of a number:
// Port and EndPort are 0 and the name is resolved where Kubernetes
// resolves it — in an ingress rule against the named ports of the local
// (destination) endpoint, in an egress rule against those of the peer
// (destination) identity. Only named ports of the entry's protocol count
// (every protocol for ANY); a name that resolves to nothing matches
// nothing.
type PortRule struct {
	Protocol Protocol
	Port     uint16
	EndPort  uint16
	Name     string
}

// matches reports whether a packet's protocol and port fall in the entry.
// ICMP packets carry no port and are looked up with port 0.
// A named entry never matches here: see (PortRule).matchesNamed.
func (pr PortRule) matches(proto uint8, port uint16) bool {
	if pr.Name != "" {
		return false
	}
	if pr.Protocol != ProtoANY && !containsProto(pr.Protocol.numbers(), proto) {
		return false
	}
	if pr.Port == 0 {
		return true
	}
	end := pr.EndPort
	if end == 0 {
		end = pr.Port
	}
	return port >= pr.Port && port <= end
}

func containsProto(ps []uint8, p uint8) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}
