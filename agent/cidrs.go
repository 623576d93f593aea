package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

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
	GetCluster(ctx context.Context, name string) (kvstore.Cluster, error)
	PutCluster(ctx context.Context, c kvstore.Cluster) error
	AllocateNodeCIDR(ctx context.Context, cluster, node string, prefixLen int) (netip.Prefix, error)
	ReleaseNodeCIDR(ctx context.Context, cluster, node string, cidr netip.Prefix) error
}

// ipamCIDRs allocates the node's CIDR from its cluster's mesh pool,
// registering the cluster first if this is its first node.
type ipamCIDRs struct {
	kv            clusterIPAM
	cluster, node string
	clusterID     int
	meshPool      string
	prefixLen     int
	log           *slog.Logger
}

func (s ipamCIDRs) Acquire(ctx context.Context) (netip.Prefix, error) {
	cl, err := s.kv.GetCluster(ctx, s.cluster)
	switch {
	case errors.Is(err, kvstore.ErrNotFound):
		pool, perr := netip.ParsePrefix(s.meshPool)
		if perr != nil {
			return netip.Prefix{}, fmt.Errorf("ipam.meshPool: %w", perr)
		}
		id := s.clusterID
		if id == 0 {
			id = 1
		}
		cl = kvstore.Cluster{Name: s.cluster, ID: id, MeshPool: pool}
		if err := s.kv.PutCluster(ctx, cl); err != nil {
			// Another node may have registered it meanwhile.
			if _, gerr := s.kv.GetCluster(ctx, s.cluster); gerr != nil {
				return netip.Prefix{}, fmt.Errorf("registering cluster %s: %w", s.cluster, err)
			}
		} else {
			s.log.Info("registered cluster", "cluster", cl.Name, "id", cl.ID, "meshPool", cl.MeshPool)
		}
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("reading cluster %s: %w", s.cluster, err)
	}
	cidr, err := s.kv.AllocateNodeCIDR(ctx, s.cluster, s.node, s.prefixLen)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("allocating a CIDR for node %s: %w", s.node, err)
	}
	return cidr, nil
}

func (s ipamCIDRs) Release(ctx context.Context, cidr netip.Prefix) error {
	return s.kv.ReleaseNodeCIDR(ctx, s.cluster, s.node, cidr)
}
