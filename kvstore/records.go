package kvstore

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
	"github.com/weftmesh/weft/kvstore/grant"
)

// RecordVersion is the only record version this code writes and reads.
// A record with another version is refused with ErrUnsupportedVersion so an
// older agent never misreads what a newer one wrote.
const RecordVersion = 1

// MaxPolicyDocument bounds a stored policy document; etcd refuses requests
// above about 1.5 MiB and policies are far smaller.
const MaxPolicyDocument = 512 << 10

var (
	// MeshRangeV4 is where IPv4 mesh pools must lie (RFC 6598 shared space).
	MeshRangeV4 = netip.MustParsePrefix("100.64.0.0/10")
	// MeshRangeV6 is where IPv6 mesh pools must lie (unique local addresses).
	MeshRangeV6 = netip.MustParsePrefix("fc00::/7")
)

// Record is a value of the key schema. Encode sets its version and
// validates it before anything is written.
type Record interface {
	Validate() error
	recordKind() string
	versionField() *int
}

// Encode validates rec and returns its JSON encoding with the current
// version.
func Encode(rec Record) ([]byte, error) {
	*rec.versionField() = RecordVersion
	if err := rec.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding %s: %w", ErrInvalidRecord, rec.recordKind(), err)
	}
	return data, nil
}

// decode checks the version, unmarshals and validates. Unknown fields are
// accepted so a newer writer can add optional fields within one version.
func decode[T any, PT interface {
	*T
	Record
}](data []byte) (T, error) {
	var v T
	kind := PT(&v).recordKind()
	var hdr struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &hdr); err != nil {
		return v, fmt.Errorf("%w: %s is not valid JSON: %w", ErrInvalidRecord, kind, err)
	}
	if hdr.Version == nil {
		return v, fmt.Errorf("%w: %s has no \"version\" field", ErrInvalidRecord, kind)
	}
	if *hdr.Version != RecordVersion {
		return v, fmt.Errorf("%w: %s has version %d, this Weft reads version %d (upgrade it to read this record)", ErrUnsupportedVersion, kind, *hdr.Version, RecordVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&v); err != nil {
		return v, fmt.Errorf("%w: %s: %w", ErrInvalidRecord, kind, err)
	}
	if err := PT(&v).Validate(); err != nil {
		return v, err
	}
	return v, nil
}

func invalid(kind, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidRecord, kind, fmt.Sprintf(format, args...))
}

// Cluster is clusters/<cluster>.
type Cluster struct {
	Version  int            `json:"version"`
	Name     string         `json:"name"`
	ID       int            `json:"id"`
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	MeshPool netip.Prefix   `json:"meshPool"`
}

func (*Cluster) recordKind() string   { return "cluster" }
func (c *Cluster) versionField() *int { return &c.Version }

// MaxClusterID is the highest cluster id (identity.MaxClusterID: the id is
// part of every identity number the cluster allocates).
const MaxClusterID = identity.MaxClusterID

// Validate checks the name, the id (1..MaxClusterID), that every CIDR is canonical,
// that the mesh pool lies in the mesh range and that nothing overlaps.
func (c Cluster) Validate() error {
	if err := ValidateName("cluster", c.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	if c.ID < 1 || c.ID > MaxClusterID {
		return invalid("cluster", "%s: id %d out of range, must be 1..%d", c.Name, c.ID, MaxClusterID)
	}
	if err := validateMeshPool(c.MeshPool); err != nil {
		return invalid("cluster", "%s: %v", c.Name, err)
	}
	all := append([]netip.Prefix{c.MeshPool}, c.PodCIDRs...)
	for i, p := range c.PodCIDRs {
		if err := canonicalPrefix(p); err != nil {
			return invalid("cluster", "%s: podCIDRs[%d]: %v", c.Name, i, err)
		}
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[i].Overlaps(all[j]) {
				return invalid("cluster", "%s: %s overlaps %s", c.Name, all[i], all[j])
			}
		}
	}
	return nil
}

func validateMeshPool(p netip.Prefix) error {
	if err := canonicalPrefix(p); err != nil {
		return fmt.Errorf("meshPool: %v", err)
	}
	rng := MeshRangeV4
	if p.Addr().Is6() {
		rng = MeshRangeV6
	}
	if !rng.Contains(p.Addr()) || p.Bits() < rng.Bits() {
		return fmt.Errorf("meshPool %s is outside the mesh range %s", p, rng)
	}
	return nil
}

func canonicalPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("missing or invalid CIDR")
	}
	if p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("CIDR %s: use plain IPv4 or IPv6 without zone", p)
	}
	if p != p.Masked() {
		return fmt.Errorf("CIDR %s has host bits set (did you mean %s?)", p, p.Masked())
	}
	return nil
}

func validateAddr(a netip.Addr) error {
	if !a.IsValid() {
		return fmt.Errorf("missing or invalid IP address")
	}
	if a.Is4In6() || a.Zone() != "" || a.IsUnspecified() {
		return fmt.Errorf("IP %s: want a unicast IPv4 or IPv6 address without zone", a)
	}
	return nil
}

// ValidateLabels checks the shape of stored labels: `source:key=value`,
// no duplicates. The identity package owns the finer rules; the store only
// makes sure nothing unparseable is written.
func ValidateLabels(labels []string) error {
	seen := make(map[string]bool, len(labels))
	for i, l := range labels {
		src, rest, ok := strings.Cut(l, ":")
		key, _, ok2 := strings.Cut(rest, "=")
		if !ok || !ok2 || src == "" || key == "" {
			return fmt.Errorf("label %d %q: want source:key=value", i, l)
		}
		if strings.ContainsAny(l, " \t\n\r\x00") {
			return fmt.Errorf("label %d %q contains white space or NUL", i, l)
		}
		sk := src + ":" + key
		if seen[sk] {
			return fmt.Errorf("label %q appears twice", sk)
		}
		seen[sk] = true
	}
	return nil
}

// Node is nodes/<cluster>/<node>, written under the node's lease.
type Node struct {
	Version     int              `json:"version"`
	Name        string           `json:"name"`
	Cluster     string           `json:"cluster"`
	Endpoints   []netip.AddrPort `json:"endpoints,omitempty"`
	WGPublicKey string           `json:"wgPublicKey"`
	// WGNextPublicKey is the key the node announced it will rotate to;
	// empty outside a rotation. Peers install it beside WGPublicKey so the
	// switch loses no traffic (docs/tunnel.md). Optional, so records of
	// agents that do not rotate stay version 1.
	WGNextPublicKey string         `json:"wgNextPublicKey,omitempty"`
	CIDRs           []netip.Prefix `json:"cidrs,omitempty"`
	MeshIP          netip.Addr     `json:"meshIP,omitzero"`
	Labels          []string       `json:"labels,omitempty"`
	AgentVersion    string         `json:"agentVersion,omitempty"`
	// Leaving is written just before a node leaves the mesh on purpose
	// (`meshctl leave`): peers seeing the record go then drop the node at
	// once. A record that goes without it (an expired lease, a deletion
	// by someone else) is not the node's death: peers keep it while its
	// tunnel shows life (docs/architecture.md, "Outages").
	Leaving bool `json:"leaving,omitempty"`
	// Reflexive are the addresses the node's peers see its WireGuard
	// socket at (behind NAT: the NAT's external address and port), learned
	// by asking them. Peers try these beside Endpoints, both sides at once,
	// which opens endpoint-independent NATs (docs/nat.md).
	Reflexive []netip.AddrPort `json:"reflexive,omitempty"`
	// SymmetricNAT says two peers saw the node at different ports: its NAT
	// maps each destination to a new port, so nobody can reach it at a
	// published address, and a peer behind NAT too goes through a relay
	// at once instead of trying first.
	SymmetricNAT bool `json:"symmetricNAT,omitempty"`
	// Relay is where the node serves as a relay for WireGuard packets of
	// mesh nodes that cannot reach each other; invalid when it is none.
	Relay netip.AddrPort `json:"relay,omitzero"`
}

// MaxReflexive bounds Node.Reflexive.
const MaxReflexive = 4

func (*Node) recordKind() string   { return "node" }
func (n *Node) versionField() *int { return &n.Version }

// Key returns nodes/<cluster>/<node>.
func (n Node) Key() string { return NodeKey(n.Cluster, n.Name) }

// Validate checks names, endpoints, the WireGuard key, CIDRs and labels.
func (n Node) Validate() error {
	if err := ValidateName("cluster", n.Cluster); err != nil {
		return fmt.Errorf("%w: node: %w", ErrInvalidRecord, err)
	}
	if err := ValidateName("node", n.Name); err != nil {
		return fmt.Errorf("%w: node: %w", ErrInvalidRecord, err)
	}
	id := n.Cluster + "/" + n.Name
	for i, e := range n.Endpoints {
		if err := validateAddr(e.Addr()); err != nil || e.Port() == 0 {
			return invalid("node", "%s: endpoints[%d] %q: want ip:port with a non-zero port", id, i, e)
		}
	}
	if len(n.Reflexive) > MaxReflexive {
		return invalid("node", "%s: reflexive: %d addresses, at most %d", id, len(n.Reflexive), MaxReflexive)
	}
	for i, e := range n.Reflexive {
		if err := validateAddr(e.Addr()); err != nil || e.Port() == 0 || e.Addr().IsLoopback() {
			return invalid("node", "%s: reflexive[%d] %q: want a non-loopback ip:port with a non-zero port", id, i, e)
		}
	}
	if n.Relay.IsValid() {
		if err := validateAddr(n.Relay.Addr()); err != nil || n.Relay.Port() == 0 || n.Relay.Addr().IsLoopback() {
			return invalid("node", "%s: relay %q: want a non-loopback ip:port with a non-zero port", id, n.Relay)
		}
	}
	if err := ValidateWGKey(n.WGPublicKey); err != nil {
		return invalid("node", "%s: wgPublicKey: %v", id, err)
	}
	if n.WGNextPublicKey != "" {
		if err := ValidateWGKey(n.WGNextPublicKey); err != nil {
			return invalid("node", "%s: wgNextPublicKey: %v", id, err)
		}
		if n.WGNextPublicKey == n.WGPublicKey {
			return invalid("node", "%s: wgNextPublicKey equals wgPublicKey: a rotation needs a new key (leave wgNextPublicKey empty when not rotating)", id)
		}
	}
	for i, p := range n.CIDRs {
		if err := canonicalPrefix(p); err != nil {
			return invalid("node", "%s: cidrs[%d]: %v", id, i, err)
		}
		for j := 0; j < i; j++ {
			if p.Overlaps(n.CIDRs[j]) {
				return invalid("node", "%s: cidrs %s and %s overlap", id, n.CIDRs[j], p)
			}
		}
	}
	if n.MeshIP.IsValid() {
		if err := validateAddr(n.MeshIP); err != nil {
			return invalid("node", "%s: meshIP: %v", id, err)
		}
	}
	if err := ValidateLabels(n.Labels); err != nil {
		return invalid("node", "%s: %v", id, err)
	}
	if len(n.AgentVersion) > 64 {
		return invalid("node", "%s: agentVersion longer than 64 characters", id)
	}
	return nil
}

// ValidateWGKey checks a base64 WireGuard public key (32 bytes).
func ValidateWGKey(k string) error {
	if k == "" {
		return fmt.Errorf("missing WireGuard public key")
	}
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("%q is not a base64 WireGuard key (32 bytes)", k)
	}
	return nil
}

// IPAMAllocation is ipam/<cluster>/<cidr>: the CIDR belongs to Node.
type IPAMAllocation struct {
	Version int          `json:"version"`
	Cluster string       `json:"cluster"`
	Node    string       `json:"node"`
	CIDR    netip.Prefix `json:"cidr"`
}

func (*IPAMAllocation) recordKind() string   { return "ipam allocation" }
func (a *IPAMAllocation) versionField() *int { return &a.Version }

// Validate checks the names and the CIDR.
func (a IPAMAllocation) Validate() error {
	if err := ValidateName("cluster", a.Cluster); err != nil {
		return fmt.Errorf("%w: ipam: %w", ErrInvalidRecord, err)
	}
	if err := ValidateName("node", a.Node); err != nil {
		return fmt.Errorf("%w: ipam: %w", ErrInvalidRecord, err)
	}
	if err := canonicalPrefix(a.CIDR); err != nil {
		return invalid("ipam allocation", "%v", err)
	}
	return nil
}

// Identity is identities/id/<n>: the labels of identity n.
type Identity struct {
	Version int      `json:"version"`
	ID      uint32   `json:"id"`
	Labels  []string `json:"labels"`
}

func (*Identity) recordKind() string   { return "identity" }
func (i *Identity) versionField() *int { return &i.Version }

// Validate checks the labels; the number is whatever the allocator chose.
func (i Identity) Validate() error {
	if i.ID == 0 {
		return invalid("identity", "id 0 is not an identity")
	}
	if len(i.Labels) == 0 {
		return invalid("identity", "%d: no labels", i.ID)
	}
	if err := ValidateLabels(i.Labels); err != nil {
		return invalid("identity", "%d: %v", i.ID, err)
	}
	return nil
}

// IdentityNumber is identities/labels/<hash>: the number of a label set.
type IdentityNumber struct {
	Version int    `json:"version"`
	ID      uint32 `json:"id"`
}

func (*IdentityNumber) recordKind() string   { return "identity number" }
func (i *IdentityNumber) versionField() *int { return &i.Version }

// Validate refuses 0.
func (i IdentityNumber) Validate() error {
	if i.ID == 0 {
		return invalid("identity number", "id 0 is not an identity")
	}
	return nil
}

// IdentityRef is identities/refs/<cluster>/<node>/<n>, leased by the node
// that uses identity n.
type IdentityRef struct {
	Version int    `json:"version"`
	ID      uint32 `json:"id"`
}

func (*IdentityRef) recordKind() string   { return "identity reference" }
func (r *IdentityRef) versionField() *int { return &r.Version }

// Validate refuses 0.
func (r IdentityRef) Validate() error {
	if r.ID == 0 {
		return invalid("identity reference", "id 0 is not an identity")
	}
	return nil
}

// Endpoint is endpoints/<cluster>/<node>/<ip>, leased by its node.
type Endpoint struct {
	Version  int        `json:"version"`
	IP       netip.Addr `json:"ip"`
	Identity uint32     `json:"identity"`
	Labels   []string   `json:"labels,omitempty"`
	Name     string     `json:"name,omitempty"`
	Cluster  string     `json:"cluster"`
	Node     string     `json:"node"`
	// NamedPorts are the endpoint's named ports (a pod's container
	// ports): egress rules naming a port resolve it against them.
	NamedPorts []NamedPort `json:"namedPorts,omitempty"`
}

// NamedPort is a named port of an endpoint.
type NamedPort struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
}

// MaxNamedPorts bounds an endpoint's named ports.
const MaxNamedPorts = 64

func (*Endpoint) recordKind() string   { return "endpoint" }
func (e *Endpoint) versionField() *int { return &e.Version }

// Key returns endpoints/<cluster>/<node>/<ip>.
func (e Endpoint) Key() string { return EndpointKey(e.Cluster, e.Node, e.IP) }

// Validate checks the address, identity, labels and owner names.
func (e Endpoint) Validate() error {
	if err := ValidateName("cluster", e.Cluster); err != nil {
		return fmt.Errorf("%w: endpoint: %w", ErrInvalidRecord, err)
	}
	if err := ValidateName("node", e.Node); err != nil {
		return fmt.Errorf("%w: endpoint: %w", ErrInvalidRecord, err)
	}
	if err := validateAddr(e.IP); err != nil {
		return invalid("endpoint", "%v", err)
	}
	if e.Identity == 0 {
		return invalid("endpoint", "%s: identity 0 is not an identity", e.IP)
	}
	if err := ValidateLabels(e.Labels); err != nil {
		return invalid("endpoint", "%s: %v", e.IP, err)
	}
	if len(e.NamedPorts) > MaxNamedPorts {
		return invalid("endpoint", "%s: %d named ports, at most %d", e.IP, len(e.NamedPorts), MaxNamedPorts)
	}
	for i, np := range e.NamedPorts {
		if np.Name == "" || len(np.Name) > 15 || np.Port == 0 || (np.Protocol != "TCP" && np.Protocol != "UDP" && np.Protocol != "SCTP") {
			return invalid("endpoint", "%s: namedPorts[%d] %q %d/%s: want a name of 1-15 bytes, a port 1-65535 and TCP, UDP or SCTP", e.IP, i, np.Name, np.Port, np.Protocol)
		}
	}
	// The name is optional (the address is the key), but when there is
	// one it follows the rule of every name in the mesh.
	if e.Name != "" {
		if err := names.Validate("endpoint", e.Name); err != nil {
			return invalid("endpoint", "%s: %v", e.IP, err)
		}
	}
	return nil
}

// Policy is policies/<name>: a policy document as the user wrote it (YAML or
// JSON text). The policy package validates documents before they are
// written; the store keeps them opaque so it never depends on it.
type Policy struct {
	Version   int       `json:"version"`
	Name      string    `json:"name"`
	Format    string    `json:"format"` // "yaml" or "json"
	Document  string    `json:"document"`
	Updated   time.Time `json:"updated,omitzero"`
	UpdatedBy string    `json:"updatedBy,omitempty"`
	// File and Line say where Document was applied from: the file's name
	// as given to `meshctl policy apply` and the line the document starts
	// on, so traces name the user's file:line. Optional (older records
	// have neither).
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
}

func (*Policy) recordKind() string   { return "policy" }
func (p *Policy) versionField() *int { return &p.Version }

// Validate checks the name, format and size.
func (p Policy) Validate() error {
	if err := ValidateName("policy", p.Name); err != nil {
		return fmt.Errorf("%w: policy: %w", ErrInvalidRecord, err)
	}
	if p.Format != "yaml" && p.Format != "json" {
		return invalid("policy", "%s: format %q, want yaml or json", p.Name, p.Format)
	}
	if strings.TrimSpace(p.Document) == "" {
		return invalid("policy", "%s: empty document", p.Name)
	}
	if len(p.Document) > MaxPolicyDocument {
		return invalid("policy", "%s: document is %d bytes, at most %d allowed", p.Name, len(p.Document), MaxPolicyDocument)
	}
	return nil
}

// Token is tokens/<id>: a join token, stored with only the SHA-256 of its
// secret.
type Token struct {
	Version      int       `json:"version"`
	ID           string    `json:"id"`
	SecretSHA256 string    `json:"secretSHA256"`
	Created      time.Time `json:"created"`
	Expires      time.Time `json:"expires"`
	Labels       []string  `json:"labels,omitempty"`
	Cluster      string    `json:"cluster"`
	Uses         int       `json:"uses"`
	MaxUses      int       `json:"maxUses"`
	Revoked      bool      `json:"revoked,omitempty"`
	// AllowLabels bounds the labels the nodes it admits may publish
	// endpoints with (kvstore/grant patterns); empty grants every label,
	// as tokens did before grants existed.
	AllowLabels []string `json:"allowLabels,omitempty"`
	// PodCIDRs makes the admitted nodes Kubernetes nodes: each may claim
	// the podCIDR its Node object was given as its CIDR, if it lies in one
	// of these (they are also the cluster's pod CIDRs).
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	// Purpose says what the token admits: nodes (PurposeJoin, empty, as
	// every token before clusters could connect) or one remote cluster's
	// connection (PurposeCluster). Neither kind is accepted for the other.
	Purpose string `json:"purpose,omitempty"`
}

// Token purposes.
const (
	PurposeJoin    = ""
	PurposeCluster = "cluster"
)

func (*Token) recordKind() string   { return "token" }
func (t *Token) versionField() *int { return &t.Version }

// Validate checks the token's fields.
func (t Token) Validate() error {
	if err := ValidateName("token", t.ID); err != nil {
		return fmt.Errorf("%w: token: %w", ErrInvalidRecord, err)
	}
	if b, err := hex.DecodeString(t.SecretSHA256); err != nil || len(b) != 32 {
		return invalid("token", "%s: secretSHA256 is not a hex SHA-256", t.ID)
	}
	if err := ValidateName("cluster", t.Cluster); err != nil {
		return fmt.Errorf("%w: token %s: %w", ErrInvalidRecord, t.ID, err)
	}
	if t.Expires.IsZero() {
		return invalid("token", "%s: no expiry", t.ID)
	}
	if t.MaxUses < 1 {
		return invalid("token", "%s: maxUses %d, must be at least 1", t.ID, t.MaxUses)
	}
	if t.Purpose != PurposeJoin && t.Purpose != PurposeCluster {
		return invalid("token", "%s: purpose %q, must be empty (join) or %q", t.ID, t.Purpose, PurposeCluster)
	}
	if t.Uses < 0 || t.Uses > t.MaxUses {
		return invalid("token", "%s: uses %d outside 0..maxUses (%d)", t.ID, t.Uses, t.MaxUses)
	}
	if err := ValidateLabels(t.Labels); err != nil {
		return invalid("token", "%s: %v", t.ID, err)
	}
	if _, err := grant.Parse(t.AllowLabels); err != nil {
		return invalid("token", "%s: allowLabels: %v", t.ID, err)
	}
	for i, p := range t.PodCIDRs {
		if err := canonicalPrefix(p); err != nil {
			return invalid("token", "%s: podCIDRs[%d]: %v", t.ID, i, err)
		}
	}
	return nil
}

// Decoders of the schema's values. Each checks the version and validates.

func DecodeCluster(data []byte) (Cluster, error)               { return decode[Cluster](data) }
func DecodeNode(data []byte) (Node, error)                     { return decode[Node](data) }
func DecodeIPAM(data []byte) (IPAMAllocation, error)           { return decode[IPAMAllocation](data) }
func DecodeIdentity(data []byte) (Identity, error)             { return decode[Identity](data) }
func DecodeIdentityNumber(data []byte) (IdentityNumber, error) { return decode[IdentityNumber](data) }
func DecodeIdentityRef(data []byte) (IdentityRef, error)       { return decode[IdentityRef](data) }
func DecodeEndpoint(data []byte) (Endpoint, error)             { return decode[Endpoint](data) }
func DecodePolicy(data []byte) (Policy, error)                 { return decode[Policy](data) }
func DecodeToken(data []byte) (Token, error)                   { return decode[Token](data) }
