package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
)

// cidrSource gives the node the prefix its workloads take addresses from;
// the first address is the node's mesh IP. A VM takes one from its
// cluster's mesh pool (ipamCIDRs); a Kubernetes node will publish the
// podCIDR its Node object was given.
type cidrSource interface {
	Acquire(ctx context.Context) (netip.Prefix, error)
	// Release gives the prefix back when the node leaves the mesh.
	Release(ctx context.Context, cidr netip.Prefix) error
}

// clusterIPAM is the part of kvstore the mesh-pool source uses.
type clusterIPAM interface {
	EnsureCluster(ctx context.Context, spec kvstore.ClusterSpec) (kvstore.Cluster, bool, error)
	AllocateNodeCIDR(ctx context.Context, cluster, node string, prefixLen int) (netip.Prefix, error)
	ReleaseNodeCIDR(ctx context.Context, cluster, node string, cidr netip.Prefix) error
}

// ipamCIDRs allocates the node's CIDR from its cluster's mesh pool. It is
// the source of an agent holding the admin credential (the seed), which
// registers its cluster if it has no record yet; a joined node's cluster
// was registered when its token was made (serviceCIDRs).
type ipamCIDRs struct {
	kv            clusterIPAM
	cluster, node string
	// clusterID and meshPool are what the configuration asks for (zero
	// and empty: the record's, or free ones for a new cluster).
	clusterID int
	meshPool  string
	prefixLen int
	log       *slog.Logger
}

func (s ipamCIDRs) Acquire(ctx context.Context) (netip.Prefix, error) {
	spec, legacy, err := clusterSpec(s.cluster, s.clusterID, s.meshPool)
	if err != nil {
		return netip.Prefix{}, err
	}
	cl, created, err := s.kv.EnsureCluster(ctx, spec)
	if legacy && (errors.Is(err, kvstore.ErrConflict) || errors.Is(err, kvstore.ErrOverlap)) {
		// meshctl wrote the default pool into every configuration before
		// pools came from the record: it is no request, the record wins.
		s.log.Warn("ignoring ipam.meshPool, which earlier versions of meshctl wrote into every configuration: the cluster's record decides its pool (remove the key)", "meshPool", s.meshPool, "err", err)
		spec.MeshPool = netip.Prefix{}
		cl, created, err = s.kv.EnsureCluster(ctx, spec)
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("registering cluster %s: %w (the configuration's clusterID (--cluster-id) and ipam.meshPool (--mesh-pool) apply to a new cluster only: leave them out to use the cluster's record)", s.cluster, err)
	}
	if created {
		s.log.Info("registered cluster", "cluster", cl.Name, "id", cl.ID, "meshPool", cl.MeshPool)
	}
	cidr, err := s.kv.AllocateNodeCIDR(ctx, s.cluster, s.node, s.prefixLen)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("allocating a CIDR for node %s: %w", s.node, err)
	}
	return cidr, nil
}

// clusterSpec makes the cluster request of a node's configured id and
// pool. legacy is set when the pool is the one meshctl used to write into
// every configuration, which asks for nothing.
func clusterSpec(cluster string, id int, pool string) (spec kvstore.ClusterSpec, legacy bool, err error) {
	spec = kvstore.ClusterSpec{Name: cluster, ID: id}
	if pool == "" {
		return spec, false, nil
	}
	p, err := netip.ParsePrefix(pool)
	if err != nil || p != p.Masked() {
		return spec, false, fmt.Errorf("%w: mesh pool %q is not a CIDR with its host bits zero", kvstore.ErrInvalidConfig, pool)
	}
	spec.MeshPool = p
	return spec, pool == config.DefaultMeshPool, nil
}

func (s ipamCIDRs) Release(ctx context.Context, cidr netip.Prefix) error {
	return s.kv.ReleaseNodeCIDR(ctx, s.cluster, s.node, cidr)
}

// nodeCIDRService is the seed's IPAM as a joined node reaches it: its
// etcd role may read ipam/ but not claim in it (a role cannot say "only
// keys whose value names me"), so the seed claims for it.
type nodeCIDRService interface {
	AllocateCIDR(ctx context.Context, req join.CIDRRequest) (netip.Prefix, error)
	ReleaseCIDR(ctx context.Context, cidr netip.Prefix) error
}

// serviceCIDRs is the mesh-pool source of a node holding a node
// credential: the seed allocates from the cluster's record (a node never
// registers a cluster), and refuses an id or pool the record does not have.
type serviceCIDRs struct {
	svc       nodeCIDRService
	clusterID int
	meshPool  string
	prefixLen int
}

func (s serviceCIDRs) Acquire(ctx context.Context) (netip.Prefix, error) {
	cidr, err := s.svc.AllocateCIDR(ctx, join.CIDRRequest{PrefixLength: s.prefixLen, MeshPool: s.meshPool, ClusterID: s.clusterID})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("allocating this node's CIDR through the first node's join service: %w", err)
	}
	return cidr, nil
}

func (s serviceCIDRs) Release(ctx context.Context, cidr netip.Prefix) error {
	if err := s.svc.ReleaseCIDR(ctx, cidr); err != nil {
		return fmt.Errorf("releasing %s through the first node's join service: %w", cidr, err)
	}
	return nil
}

// claimedCIDRs is a Kubernetes node's CIDR source: the podCIDR of its
// Node object, claimed in the mesh's IPAM (by the seed for a joined node,
// directly with an admin credential).
type claimedCIDRs struct {
	podCIDR func(ctx context.Context) (netip.Prefix, error)
	claim   func(ctx context.Context, p netip.Prefix) (netip.Prefix, error)
	release func(ctx context.Context, p netip.Prefix) error
}

func (s claimedCIDRs) Acquire(ctx context.Context) (netip.Prefix, error) {
	p, err := s.podCIDR(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	got, err := s.claim(ctx, p)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claiming the podCIDR %s as this node's CIDR: %w", p, err)
	}
	return got, nil
}

func (s claimedCIDRs) Release(ctx context.Context, p netip.Prefix) error { return s.release(ctx, p) }

// claimedCIDRSource makes the Kubernetes node's CIDR source.
func (cp *controlPlane) claimedCIDRSource(cluster, node string, podCIDR func(context.Context) (netip.Prefix, error)) cidrSource {
	if cp.node != nil {
		svc := cp.node.svc
		return claimedCIDRs{podCIDR: podCIDR,
			claim: func(ctx context.Context, p netip.Prefix) (netip.Prefix, error) {
				return svc.AllocateCIDR(ctx, join.CIDRRequest{Claim: p})
			},
			release: func(ctx context.Context, p netip.Prefix) error { return svc.ReleaseCIDR(ctx, p) },
		}
	}
	return claimedCIDRs{podCIDR: podCIDR,
		claim: func(ctx context.Context, p netip.Prefix) (netip.Prefix, error) {
			return cp.kv.ClaimNodeCIDR(ctx, cluster, node, p)
		},
		release: func(ctx context.Context, p netip.Prefix) error { return cp.kv.ReleaseNodeCIDR(ctx, cluster, node, p) },
	}
}

// cidrSource is the node's CIDR source for its credential.
func (cp *controlPlane) cidrSource(cluster, node string, clusterID int, meshPool string, prefixLen int, log *slog.Logger) cidrSource {
	if cp.node != nil {
		return serviceCIDRs{svc: cp.node.svc, clusterID: clusterID, meshPool: meshPool, prefixLen: prefixLen}
	}
	return ipamCIDRs{kv: cp.kv, cluster: cluster, node: node, clusterID: clusterID, meshPool: meshPool, prefixLen: prefixLen, log: log}
}

// identityCreator is the seed's identity creation as a joined node
// reaches it.
type identityCreator interface {
	CreateIdentity(ctx context.Context, labels []string) (uint32, error)
}

// nodeIdentities is the allocator backend of a node holding a node
// credential: reads, watches and its own leased references go to etcd;
// creating an identity (identities/id/, identities/labels/, which no node
// role may write) goes to the seed, and garbage collection is the seed's.
type nodeIdentities struct {
	*kvstore.Client
	svc identityCreator
}

// CreateIdentity asks the seed for the set's number and reports "lost the
// race": the allocator then reads the labels key and writes this node's
// reference with the same guarded transaction as for any existing
// identity, so the reference never attaches to a number being collected.
func (b nodeIdentities) CreateIdentity(ctx context.Context, _ kvstore.IdentityHolder, _ uint32, _ string, labels []string) (bool, error) {
	if _, err := b.svc.CreateIdentity(ctx, labels); err != nil {
		return false, fmt.Errorf("creating the identity of %v through the first node's join service: %w", labels, err)
	}
	return false, nil
}

// CollectsGarbage is false: a node's role may not delete identities.
func (nodeIdentities) CollectsGarbage() bool { return false }

// identityBackend is the allocator's backend for the credential.
func (cp *controlPlane) identityBackend() allocator.Backend {
	if cp.node != nil {
		return nodeIdentities{Client: cp.kv, svc: cp.node.svc}
	}
	return cp.kv
}
