package kvstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrClusterIDsExhausted is returned when every cluster id
// (1..MaxClusterID) is taken.
var ErrClusterIDsExhausted = errors.New("kvstore: no free cluster id")

// DefaultClusterPoolBits is the size of the mesh pool EnsureCluster gives a
// new cluster that asks for none: a /16 holds 256 node CIDRs of /24, and
// MeshRangeV4 (a /10) holds 64 such pools.
const DefaultClusterPoolBits = 16

// ClusterSpec names the cluster EnsureCluster finds or creates, and what a
// new one should get. Zero fields are chosen by EnsureCluster.
type ClusterSpec struct {
	Name string
	// ID is the id asked for; 0 takes the lowest free one.
	ID int
	// MeshPool is the pool asked for; the zero Prefix takes the first
	// free /DefaultClusterPoolBits of MeshRangeV4.
	MeshPool netip.Prefix
	// PodCIDRs are a new cluster's pod CIDRs (a Kubernetes cluster's
	// CIDR); a chosen pool avoids them. An existing cluster's pod CIDRs are
	// left as they are (PutCluster changes them).
	PodCIDRs []netip.Prefix
}

// validate checks the request itself, before etcd is read.
func (s ClusterSpec) validate() error {
	if err := ValidateName("cluster", s.Name); err != nil {
		return err
	}
	if s.ID < 0 || s.ID > MaxClusterID {
		return fmt.Errorf("%w: cluster %q: id %d out of range, use 1..%d (or none: the lowest free id)", ErrInvalidConfig, s.Name, s.ID, MaxClusterID)
	}
	if s.MeshPool.IsValid() {
		if err := validateMeshPool(s.MeshPool); err != nil {
			return fmt.Errorf("%w: cluster %q: %v", ErrInvalidConfig, s.Name, err)
		}
	}
	for i, p := range s.PodCIDRs {
		if err := canonicalPrefix(p); err != nil {
			return fmt.Errorf("%w: cluster %q: podCIDRs[%d]: %v", ErrInvalidConfig, s.Name, i, err)
		}
	}
	return nil
}

// EnsureCluster returns clusters/<spec.Name>, creating it when it does not
// exist: with the id asked for or the lowest free one, and the pool asked
// for or the first free /DefaultClusterPoolBits of MeshRangeV4 that
// overlaps no other cluster's pool or pod CIDRs. created says whether this
// call wrote it.
//
// The record is written in one transaction conditioned on no cluster
// record having changed since they were listed, so clusters created at the
// same moment (two admins, or two goroutines) never share an id or a pool:
// the loser lists again and picks the next ones.
//
// An existing cluster is returned unchanged; asking it for another id or
// pool than it has is an ErrConflict naming both, since a node that thought
// otherwise would address its workloads outside the cluster's pool. An id
// asked for that another cluster has is an ErrConflict, a pool asked for
// that overlaps another cluster's ranges an ErrOverlap, both naming that
// cluster. Running out of ids is ErrClusterIDsExhausted, of pools
// ErrPoolExhausted.
func (cl *Client) EnsureCluster(ctx context.Context, spec ClusterSpec) (Cluster, bool, error) {
	if err := spec.validate(); err != nil {
		return Cluster{}, false, err
	}
	key := ClusterKey(spec.Name)
	for {
		rctx, cancel := cl.reqCtx(ctx)
		resp, err := cl.kv.Get(rctx, ClustersPrefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return Cluster{}, false, fmt.Errorf("reading clusters: %w", err)
		}
		var others []Cluster
		for _, kv := range resp.Kvs {
			c, derr := DecodeCluster(kv.Value)
			if string(kv.Key) == key {
				if derr != nil {
					// Overwriting it could change the id and pool its
					// nodes already use.
					return Cluster{}, false, fmt.Errorf("%s exists but does not decode (%w): fix or delete it with an admin etcd client", key, derr)
				}
				if err := spec.Matches(c); err != nil {
					return Cluster{}, false, err
				}
				return c, false, nil
			}
			if derr != nil {
				// Its id and ranges are unknown: it cannot be taken
				// into account, as PutCluster does not either.
				cl.log.Warn("skipping value that does not decode", "key", string(kv.Key), "err", derr)
				continue
			}
			others = append(others, c)
		}
		c, err := newCluster(spec, others)
		if err != nil {
			return Cluster{}, false, err
		}
		data, err := Encode(&c)
		if err != nil {
			return Cluster{}, false, err
		}
		rctx, cancel = cl.reqCtx(ctx)
		tresp, err := cl.kv.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(ClustersPrefix), "<", resp.Header.Revision+1).WithPrefix(),
				clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(data))).Commit()
		cancel()
		if err != nil {
			return Cluster{}, false, fmt.Errorf("writing %s: %w", key, err)
		}
		if tresp.Succeeded {
			cl.log.Info("created cluster", "cluster", c.Name, "id", c.ID, "meshPool", c.MeshPool)
			return c, true, nil
		}
		if ctx.Err() != nil {
			return Cluster{}, false, ctx.Err()
		}
		// A cluster was added or changed meanwhile (maybe this one):
		// list again.
	}
}

// Matches refuses an existing cluster whose id or pool is not the one the
// spec asks for.
func (s ClusterSpec) Matches(c Cluster) error {
	if s.ID != 0 && s.ID != c.ID {
		return fmt.Errorf("%w: cluster %q exists with id %d, not the id %d asked for: leave the id out to use the cluster as it is", ErrConflict, c.Name, c.ID, s.ID)
	}
	if s.MeshPool.IsValid() && s.MeshPool != c.MeshPool {
		return fmt.Errorf("%w: cluster %q exists with mesh pool %s, not the pool %s asked for: leave the pool out to use the cluster as it is", ErrConflict, c.Name, c.MeshPool, s.MeshPool)
	}
	return nil
}

// newCluster picks the id and pool of a cluster that does not exist yet,
// next to others.
func newCluster(spec ClusterSpec, others []Cluster) (Cluster, error) {
	c := Cluster{Name: spec.Name, ID: spec.ID, MeshPool: spec.MeshPool, PodCIDRs: slices.Clone(spec.PodCIDRs)}
	used := make(map[int]string, len(others))
	var taken []netip.Prefix
	for _, o := range others {
		used[o.ID] = o.Name
		taken = append(taken, o.MeshPool)
		taken = append(taken, o.PodCIDRs...)
	}
	if c.ID != 0 {
		if owner, ok := used[c.ID]; ok {
			return Cluster{}, fmt.Errorf("%w: cluster %q cannot take id %d: cluster %q has it (leave the id out to take the lowest free one)", ErrConflict, c.Name, c.ID, owner)
		}
	} else {
		for id := 1; id <= MaxClusterID; id++ {
			if _, ok := used[id]; !ok {
				c.ID = id
				break
			}
		}
		if c.ID == 0 {
			return Cluster{}, fmt.Errorf("%w: all %d cluster ids are taken; remove a cluster that is no longer used", ErrClusterIDsExhausted, MaxClusterID)
		}
	}
	// Pod CIDRs first: they are given, the pool may be chosen around them.
	if err := overlapsOther(c.Name, c.PodCIDRs, others); err != nil {
		return Cluster{}, err
	}
	if c.MeshPool.IsValid() {
		if err := overlapsOther(c.Name, []netip.Prefix{c.MeshPool}, others); err != nil {
			return Cluster{}, err
		}
	} else {
		pool, ok := firstFree(MeshRangeV4, DefaultClusterPoolBits, append(taken, c.PodCIDRs...))
		if !ok {
			return Cluster{}, fmt.Errorf("%w: no /%d left in the mesh range %s that overlaps no cluster's ranges (%d clusters): give the new cluster a smaller pool of its own, or remove a cluster that is no longer used", ErrPoolExhausted, DefaultClusterPoolBits, MeshRangeV4, len(others))
		}
		c.MeshPool = pool
	}
	return c, nil
}

// overlapsOther names the first cluster of others whose pool or pod CIDRs
// overlap one of mine.
func overlapsOther(name string, mine []netip.Prefix, others []Cluster) error {
	for _, o := range others {
		theirs := append([]netip.Prefix{o.MeshPool}, o.PodCIDRs...)
		for _, a := range mine {
			for _, b := range theirs {
				if a.Overlaps(b) {
					return fmt.Errorf("%w: cluster %q range %s overlaps cluster %q range %s; give each cluster its own ranges (or leave the pool out to get a free one)", ErrOverlap, name, a, o.Name, b)
				}
			}
		}
	}
	return nil
}
