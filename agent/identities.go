package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
)

// The identity number plan as the agent applies it (identity/clusters.go):
// a label set's number lies in the range of the cluster its mesh:cluster
// label names, whoever allocates it, and records that break the plan are
// refused (ipcache.go for endpoints, clusterIDs.acceptIdentity for
// identities).

// RenumberIdentity goes to the seed like CreateIdentity: a node's role may
// not write identities, and the seed's allocator renumbers a set whose
// number lies outside its cluster's range when asked for it.
func (b nodeIdentities) RenumberIdentity(ctx context.Context, h kvstore.IdentityHolder, id uint32, hash string, labels []string, _ []byte) (bool, error) {
	return b.CreateIdentity(ctx, h, id, hash, labels)
}

// clusterIDs knows the ids of the clusters sharing this etcd, from their
// clusters/<name> records. A cluster's id never changes while it has
// identities (they carry it), so a cached id is as good as a read.
type clusterIDs struct {
	self   string
	selfID int
	kv     interface {
		GetCluster(ctx context.Context, name string) (kvstore.Cluster, error)
	}
	cache *kvstore.Cache[kvstore.Cluster]
}

// newClusterIDs reads this cluster's own id from its record (the agent's
// configuration may leave it to the record) and makes the cache of every
// cluster's record; run the cache before the identity and endpoint caches.
func newClusterIDs(ctx context.Context, kv *kvstore.Client, self string, onEvent func(kvstore.Event[kvstore.Cluster]), log *slog.Logger) (*clusterIDs, error) {
	cl, err := kv.GetCluster(ctx, self)
	if err != nil {
		return nil, fmt.Errorf("reading the id of cluster %s (its identities carry it): %w", self, err)
	}
	if _, _, err := identity.ClusterRange(cl.ID); err != nil {
		return nil, fmt.Errorf("cluster %s's record: %w", self, err)
	}
	cache, err := kvstore.NewCache(kv.Source(), kvstore.CacheConfig[kvstore.Cluster]{
		Name: "clusters", Prefix: kvstore.ClustersPrefix, Decode: kvstore.ClusterDecoder, OnEvent: onEvent, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return &clusterIDs{self: self, selfID: cl.ID, kv: kv, cache: cache}, nil
}

// ID returns the id of cluster name, known false when no record of it is
// seen.
func (c *clusterIDs) ID(name string) (int, bool) {
	if name == c.self {
		return c.selfID, true
	}
	if c.cache == nil {
		return 0, false
	}
	cl, ok := c.cache.Get(kvstore.ClusterKey(name))
	return cl.ID, ok && cl.ID != 0
}

// identityRange is the allocator's Config.Range: a set's numbers are those
// of the cluster its mesh:cluster label names, this cluster's when it names
// none. Another cluster's id is read from its record (not the cache): the
// seed allocates for a node of a cluster whose record may be seconds old.
func (c *clusterIDs) identityRange(ctx context.Context, labels identity.Labels) (lo, hi identity.NumericIdentity, err error) {
	name, ok := labels.Get(identity.SourceMesh + ":cluster")
	if !ok || name == c.self {
		return identity.ClusterRange(c.selfID)
	}
	cl, err := c.kv.GetCluster(ctx, name)
	if errors.Is(err, kvstore.ErrNotFound) {
		return 0, 0, fmt.Errorf("%w: cluster %q has no record (clusters/%s), so it has no identity range: register the cluster first ('meshctl token create --cluster %s')", allocator.ErrInvalidLabels, name, name, name)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("reading the id of cluster %s: %w", name, err)
	}
	return identity.ClusterRange(cl.ID)
}

// acceptIdentity refuses an identity record whose number is not of the
// cluster its labels name (when that cluster is known): a number says
// which cluster allocated it, and an allocator gives a set a number of its
// own cluster's range only. Such a record predates the number plan (or
// comes from a seed that allocated every cluster's sets in its own range);
// the endpoints carrying it are refused by the ipcache anyway, and the set
// is renumbered the next time a node allocates it. A set naming no cluster,
// or one not known here, is accepted: there is nothing to hold it against.
func (c *clusterIDs) acceptIdentity(id allocator.Identity) error {
	name, ok := id.Labels.Get(identity.SourceMesh + ":cluster")
	if !ok {
		return nil
	}
	want, known := c.ID(name)
	if !known || id.ID.InCluster(want) {
		return nil
	}
	return fmt.Errorf("identity %d of cluster %s lies outside that cluster's range (cluster id %d; the number is of cluster %d): refused, the set gets a new number when it is next allocated", id.ID, name, want, id.ID.ClusterID())
}
