package kvstore

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/weftmesh/weft/internal/names"
)

// Prefix is the root of every key Weft writes. The schema version is part
// of the prefix so a future incompatible layout can live beside this one.
const Prefix = "weft/v1/"

// Key prefixes of the schema; see docs/kvstore.md.
const (
	ClustersPrefix       = Prefix + "clusters/"
	NodesPrefix          = Prefix + "nodes/"
	IPAMPrefix           = Prefix + "ipam/"
	IdentityIDPrefix     = Prefix + "identities/id/"
	IdentityLabelsPrefix = Prefix + "identities/labels/"
	IdentityRefsPrefix   = Prefix + "identities/refs/"
	EndpointsPrefix      = Prefix + "endpoints/"
	PoliciesPrefix       = Prefix + "policies/"
	TokensPrefix         = Prefix + "tokens/"
	// RevokedPrefix holds node revocations (revoked/<cluster>/<node>):
	// written by an admin, read by every agent, never written by a node,
	// so a revoked node cannot lift its own revocation.
	RevokedPrefix         = Prefix + "revoked/"
	identityLabelsHashLen = 64
)

// GossipKeyKey holds the mesh's gossip key (see Client.GossipKey). The agent
// wrote it at this key before the schema named it, so the string must not
// change: existing meshes keep their key.
const GossipKeyKey = Prefix + "mesh/gossip-key"

// ValidateName checks a cluster, node, policy or token name against the
// mesh's one name rule (internal/names): a lower-case DNS name of at most
// 63 characters. Names end up in keys, so '/' and anything else that could
// escape a key segment is refused.
func ValidateName(kind, name string) error {
	if err := names.Validate(kind, name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return nil
}

func mustName(kind, name string) string {
	if err := ValidateName(kind, name); err != nil {
		panic(err)
	}
	return name
}

// The key builders panic on invalid names: callers validate user input
// (ValidateName, record Validate) before building keys, so a bad name here
// is a programming error, not an input error.

// ClusterKey is clusters/<cluster>.
func ClusterKey(cluster string) string { return ClustersPrefix + mustName("cluster", cluster) }

// NodeKey is nodes/<cluster>/<node>.
func NodeKey(cluster, node string) string {
	return NodesPrefix + mustName("cluster", cluster) + "/" + mustName("node", node)
}

// IPAMClusterPrefix is ipam/<cluster>/.
func IPAMClusterPrefix(cluster string) string { return IPAMPrefix + mustName("cluster", cluster) + "/" }

// IPAMKey is ipam/<cluster>/<cidr>, the CIDR in its canonical text form
// (e.g. ipam/east/100.64.3.0/24).
func IPAMKey(cluster string, cidr netip.Prefix) string {
	return IPAMClusterPrefix(cluster) + cidr.Masked().String()
}

// IdentityIDKey is identities/id/<n>.
func IdentityIDKey(id uint32) string { return IdentityIDPrefix + strconv.FormatUint(uint64(id), 10) }

// IdentityLabelsKey is identities/labels/<hash>; hash is the hex SHA-256 of
// the canonical label string.
func IdentityLabelsKey(hash string) string {
	if len(hash) != identityLabelsHashLen {
		panic(fmt.Sprintf("kvstore: label hash %q is not a hex sha256", hash))
	}
	return IdentityLabelsPrefix + hash
}

// IdentityRefsNodePrefix is identities/refs/<cluster>/<node>/.
func IdentityRefsNodePrefix(cluster, node string) string {
	return IdentityRefsPrefix + mustName("cluster", cluster) + "/" + mustName("node", node) + "/"
}

// IdentityRefKey is identities/refs/<cluster>/<node>/<n>.
func IdentityRefKey(cluster, node string, id uint32) string {
	return IdentityRefsNodePrefix(cluster, node) + strconv.FormatUint(uint64(id), 10)
}

// EndpointsNodePrefix is endpoints/<cluster>/<node>/.
func EndpointsNodePrefix(cluster, node string) string {
	return EndpointsPrefix + mustName("cluster", cluster) + "/" + mustName("node", node) + "/"
}

// EndpointKey is endpoints/<cluster>/<node>/<ip>.
func EndpointKey(cluster, node string, ip netip.Addr) string {
	return EndpointsNodePrefix(cluster, node) + ip.String()
}

// PolicyKey is policies/<name>.
func PolicyKey(name string) string { return PoliciesPrefix + mustName("policy", name) }

// TokenKey is tokens/<id>.
func TokenKey(id string) string { return TokensPrefix + mustName("token", id) }

// RevokedKey is revoked/<cluster>/<node>.
func RevokedKey(cluster, node string) string {
	return RevokedPrefix + mustName("cluster", cluster) + "/" + mustName("node", node)
}

// MirrorPrefix is mirror/<cluster>/: where this etcd keeps the copy of
// remote cluster's records that its mirror (kvstore/mirror) writes. The
// copy of a record sits at the record's key with mirror/<cluster>/ after
// weft/v1/ (MirrorKey), so that agents watch only their own etcd.
func MirrorPrefix(cluster string) string { return MirrorsPrefix + mustName("cluster", cluster) + "/" }

// MirrorStatusKey is mirror/<cluster>/status (MirrorStatus), which the
// mirror of cluster rewrites as it goes.
func MirrorStatusKey(cluster string) string { return MirrorPrefix(cluster) + mirrorStatusName }

const mirrorStatusName = "status"

// MirrorKey is where cluster's mirror keeps its copy of key, a key of the
// schema: nodes/west/vm-1 → mirror/west/nodes/west/vm-1.
func MirrorKey(cluster, key string) string {
	rest, ok := strings.CutPrefix(key, Prefix)
	if !ok || rest == "" {
		panic(fmt.Sprintf("kvstore: %q is not a key of the schema", key))
	}
	return MirrorPrefix(cluster) + rest
}

// FromMirror is the inverse of MirrorKey: the cluster whose mirror key
// is in, and the key of the record it copies. ok is false for keys
// outside the mirrors, the status keys, an invalid cluster name and a
// mirror inside a mirror.
func FromMirror(key string) (cluster, canonical string, ok bool) {
	rest, found := strings.CutPrefix(key, MirrorsPrefix)
	if !found {
		return "", "", false
	}
	cluster, rest, found = strings.Cut(rest, "/")
	if !found || rest == "" || rest == mirrorStatusName || strings.HasPrefix(rest, "mirror/") || ValidateName("cluster", cluster) != nil {
		return "", "", false
	}
	return cluster, Prefix + rest, true
}

// MirrorKeyMap maps the keys of cluster's mirror to the keys they copy:
// the KeyMap of a MultiCache member that reads a mirror.
func MirrorKeyMap(cluster string) func(key string) (string, bool) {
	mustName("cluster", cluster)
	return func(key string) (string, bool) {
		c, canonical, ok := FromMirror(key)
		if !ok || c != cluster {
			return "", false
		}
		return canonical, true
	}
}

// ParsedKey is a key split into its schema parts.
type ParsedKey struct {
	Kind    string // clusters, nodes, ipam, identities/id, identities/labels, identities/refs, endpoints, policies, tokens, grants, revoked, mesh/gossip-key
	Cluster string
	Node    string
	Name    string       // cluster, node, policy or token name
	CIDR    netip.Prefix // ipam
	IP      netip.Addr   // endpoints
	ID      uint32       // identities/id, identities/refs
	Hash    string       // identities/labels
}

// ParseKey splits a full key of the schema into its parts and validates
// them. Watchers use it to learn the cluster and node a key belongs to.
func ParseKey(key string) (ParsedKey, error) {
	rest, ok := strings.CutPrefix(key, Prefix)
	if !ok {
		return ParsedKey{}, fmt.Errorf("%w: %q does not start with %s", ErrInvalidKey, key, Prefix)
	}
	bad := func(why string) (ParsedKey, error) {
		return ParsedKey{}, fmt.Errorf("%w: %q: %s", ErrInvalidKey, key, why)
	}
	parts := strings.Split(rest, "/")
	names := func(kinds ...string) error {
		for i, k := range kinds {
			if err := ValidateName(k, parts[i+1]); err != nil {
				return err
			}
		}
		return nil
	}
	switch parts[0] {
	case "clusters":
		if len(parts) != 2 {
			return bad("want clusters/<cluster>")
		}
		if err := names("cluster"); err != nil {
			return ParsedKey{}, err
		}
		return ParsedKey{Kind: "clusters", Cluster: parts[1], Name: parts[1]}, nil
	case "nodes":
		if len(parts) != 3 {
			return bad("want nodes/<cluster>/<node>")
		}
		if err := names("cluster", "node"); err != nil {
			return ParsedKey{}, err
		}
		return ParsedKey{Kind: "nodes", Cluster: parts[1], Node: parts[2], Name: parts[2]}, nil
	case "ipam":
		// The CIDR keeps its '/' so the key reads naturally: ipam/c/10.0.0.0/24.
		if len(parts) != 4 {
			return bad("want ipam/<cluster>/<cidr>")
		}
		if err := names("cluster"); err != nil {
			return ParsedKey{}, err
		}
		pfx, err := netip.ParsePrefix(parts[2] + "/" + parts[3])
		if err != nil || pfx != pfx.Masked() {
			return bad("the CIDR is not a canonical prefix")
		}
		return ParsedKey{Kind: "ipam", Cluster: parts[1], CIDR: pfx}, nil
	case "identities":
		if len(parts) < 2 {
			return bad("want identities/{id,labels,refs}/...")
		}
		switch parts[1] {
		case "id":
			if len(parts) != 3 {
				return bad("want identities/id/<n>")
			}
			id, err := parseID(parts[2])
			if err != nil {
				return bad(err.Error())
			}
			return ParsedKey{Kind: "identities/id", ID: id}, nil
		case "labels":
			if len(parts) != 3 || !isHexSHA256(parts[2]) {
				return bad("want identities/labels/<hex sha256>")
			}
			return ParsedKey{Kind: "identities/labels", Hash: parts[2]}, nil
		case "refs":
			if len(parts) != 5 {
				return bad("want identities/refs/<cluster>/<node>/<n>")
			}
			parts = parts[1:] // so names() sees cluster, node at 1, 2
			if err := names("cluster", "node"); err != nil {
				return ParsedKey{}, err
			}
			id, err := parseID(parts[3])
			if err != nil {
				return bad(err.Error())
			}
			return ParsedKey{Kind: "identities/refs", Cluster: parts[1], Node: parts[2], ID: id}, nil
		}
		return bad("unknown identities sub-prefix " + parts[1])
	case "endpoints":
		if len(parts) != 4 {
			return bad("want endpoints/<cluster>/<node>/<ip>")
		}
		if err := names("cluster", "node"); err != nil {
			return ParsedKey{}, err
		}
		ip, err := netip.ParseAddr(parts[3])
		if err != nil || ip.String() != parts[3] {
			return bad("the IP is not in canonical form")
		}
		return ParsedKey{Kind: "endpoints", Cluster: parts[1], Node: parts[2], IP: ip}, nil
	case "policies", "tokens":
		if len(parts) != 2 {
			return bad("want " + parts[0] + "/<name>")
		}
		kind := map[string]string{"policies": "policy", "tokens": "token"}[parts[0]]
		if err := names(kind); err != nil {
			return ParsedKey{}, err
		}
		return ParsedKey{Kind: parts[0], Name: parts[1]}, nil
	case "grants", "revoked":
		if len(parts) != 3 {
			return bad("want " + parts[0] + "/<cluster>/<node>")
		}
		if err := names("cluster", "node"); err != nil {
			return ParsedKey{}, err
		}
		return ParsedKey{Kind: parts[0], Cluster: parts[1], Node: parts[2], Name: parts[2]}, nil
	case "mesh":
		if len(parts) != 2 || parts[1] != "gossip-key" {
			return bad("want mesh/gossip-key")
		}
		return ParsedKey{Kind: "mesh/gossip-key"}, nil
	}
	return bad("unknown key kind " + strconv.Quote(parts[0]))
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("identity number %q is not a canonical decimal uint32", s)
	}
	return uint32(n), nil
}

func isHexSHA256(s string) bool {
	if len(s) != identityLabelsHashLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// nopZap silences the etcd client's own zap logging; errors surface through
// returned values and our slog logger instead.
func nopZap() *zap.Logger { return zap.NewNop() }
