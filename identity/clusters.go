package identity

import "fmt"

// The identity number plan. An allocated identity carries the id of the
// cluster that allocated it, so clusters with their own etcd allocate
// independently and their numbers never collide when they are connected:
//
//	bits 28..31  zero: 1<<28 and above are node-local CIDR identities
//	bits 16..27  cluster id, 1..MaxClusterID (0 only for reserved numbers)
//	bits  0..15  the number within the cluster, MinAllocated..0xffff
//
// That is 4,095 clusters of 65,280 identities each. Cilium keeps 8 bits
// (255 clusters, or 511 with fewer identities); 12 bits is what a mesh of
// many small clusters (one per region or edge site) needs, and 16 bits per
// cluster is as much as Cilium gives one cluster.
const (
	// ClusterIDBits is the width of the cluster id in an identity.
	ClusterIDBits = 12
	// ClusterLocalBits is the width of the number within a cluster.
	ClusterLocalBits = 16
	// MaxClusterID is the highest cluster id.
	MaxClusterID = 1<<ClusterIDBits - 1
	// CIDRIdentityBase is the first node-local CIDR identity (peers given
	// by CIDR in policies); below it every number is reserved or carries
	// a cluster id. The datapath's IDENTITY_CIDR_BASE must equal it.
	CIDRIdentityBase NumericIdentity = 1 << (ClusterIDBits + ClusterLocalBits)
)

// ClusterRange returns the numbers cluster id allocates from.
func ClusterRange(clusterID int) (lo, hi NumericIdentity, err error) {
	if clusterID < 1 || clusterID > MaxClusterID {
		return 0, 0, fmt.Errorf("%w: cluster id %d out of range, must be 1..%d", ErrInvalidLabel, clusterID, MaxClusterID)
	}
	base := NumericIdentity(clusterID) << ClusterLocalBits
	return base | MinAllocated, base | (1<<ClusterLocalBits - 1), nil
}

// ClusterID returns the id of the cluster that allocated n, 0 for reserved
// and CIDR identities (they belong to no cluster).
func (n NumericIdentity) ClusterID() int {
	if n.IsReserved() || n >= CIDRIdentityBase {
		return 0
	}
	return int(n >> ClusterLocalBits)
}

// InCluster reports whether n is an identity cluster id may allocate: the
// check that keeps a connected cluster from speaking for another one.
func (n NumericIdentity) InCluster(clusterID int) bool {
	lo, hi, err := ClusterRange(clusterID)
	return err == nil && n >= lo && n <= hi
}
