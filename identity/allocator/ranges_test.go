package allocator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

func clusterSet(cluster string, i int) identity.Labels {
	return identity.MustLabels(fmt.Sprintf("k8s:app=app-%d", i), "mesh:cluster="+cluster)
}

// Two clusters allocating at once from one etcd (each with its own
// allocator, as two clusters' seeds would) take numbers of their own
// ranges: the same local numbers, different cluster bits, no collision.
func TestClustersAllocateIndependently(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	east := newNode(t, srv, "seed", allocator.Config{Cluster: "east", ClusterID: 1})
	west := newNode(t, srv, "seed", allocator.Config{Cluster: "west", ClusterID: 2})
	const sets = 20
	ids := map[string][]identity.NumericIdentity{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, n := range map[string]*simNode{"east": east, "west": west} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sets {
				id, err := n.alloc.Allocate(context.Background(), clusterSet(name, i))
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				mu.Lock()
				ids[name] = append(ids[name], id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	seen := map[identity.NumericIdentity]string{}
	for name, cid := range map[string]int{"east": 1, "west": 2} {
		if len(ids[name]) != sets {
			t.Fatalf("%s allocated %d sets, want %d", name, len(ids[name]), sets)
		}
		lo, _, _ := identity.ClusterRange(cid)
		for i, id := range ids[name] {
			if id.ClusterID() != cid || id != lo+identity.NumericIdentity(i) {
				t.Errorf("%s's set %d got %d (cluster %d), want %d of cluster %d", name, i, id, id.ClusterID(), lo+identity.NumericIdentity(i), cid)
			}
			if other, dup := seen[id]; dup {
				t.Errorf("%d given to %s and %s", id, other, name)
			}
			seen[id] = name
		}
	}
	// The local numbers are the same; only the cluster bits differ.
	if e, w := ids["east"][0], ids["west"][0]; e&0xffff != w&0xffff || e>>16 == w>>16 {
		t.Errorf("first numbers %#x and %#x", e, w)
	}
	stored, err := kvstore.List(context.Background(), east.client, kvstore.IdentityIDPrefix, kvstore.DecodeIdentity)
	if err != nil || len(stored) != 2*sets {
		t.Fatalf("etcd holds %d identities (%v), want %d", len(stored), err, 2*sets)
	}
}

// A seed serving several clusters places each set by its mesh:cluster
// label (Config.Range); a set it cannot place is refused.
func TestRangeByLabels(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ids := map[string]int{"east": 1, "west": 7}
	seed := newNode(t, srv, "seed", allocator.Config{Range: func(_ context.Context, l identity.Labels) (identity.NumericIdentity, identity.NumericIdentity, error) {
		name, _ := l.Get("mesh:cluster")
		id, ok := ids[name]
		if !ok {
			return 0, 0, fmt.Errorf("cluster %q unknown", name)
		}
		return identity.ClusterRange(id)
	}})
	ctx := context.Background()
	for name, cid := range ids {
		id, err := seed.alloc.Allocate(ctx, clusterSet(name, 1))
		if err != nil || !id.InCluster(cid) {
			t.Errorf("%s's set: %d (%v), want one of cluster %d", name, id, err, cid)
		}
	}
	if id, err := seed.alloc.Allocate(ctx, clusterSet("north", 1)); err == nil || !strings.Contains(err.Error(), `cluster "north" unknown`) {
		t.Errorf("a set of an unknown cluster got %d, %v", id, err)
	}
	// A range outside the plan is a configuration error, not a number.
	bad := newNode(t, srv, "bad", allocator.Config{Range: func(context.Context, identity.Labels) (identity.NumericIdentity, identity.NumericIdentity, error) {
		return identity.CIDRIdentityBase, identity.CIDRIdentityBase + 10, nil
	}})
	if id, err := bad.alloc.Allocate(ctx, clusterSet("east", 2)); !errors.Is(err, allocator.ErrInvalidConfig) {
		t.Errorf("a range of CIDR identities gave %d, %v", id, err)
	}
}

// A full range fails with ErrExhausted naming it; another cluster's range
// is unaffected.
func TestExhaustedRange(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	lo, _, _ := identity.ClusterRange(3)
	small := newNode(t, srv, "n", allocator.Config{Cluster: "c3", ClusterID: 3, Max: lo + 1})
	ctx := context.Background()
	for i := range 2 {
		if _, err := small.alloc.Allocate(ctx, clusterSet("c3", i)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := small.alloc.Allocate(ctx, clusterSet("c3", 2))
	if want := fmt.Sprintf("cluster 3's range %d..%d", lo, lo+1); !errors.Is(err, allocator.ErrExhausted) || !strings.Contains(err.Error(), want) {
		t.Fatalf("third set: %v, want ErrExhausted naming %q", err, want)
	}
	other := newNode(t, srv, "m", allocator.Config{Cluster: "c4", ClusterID: 4})
	if id, err := other.alloc.Allocate(ctx, clusterSet("c4", 0)); err != nil || !id.InCluster(4) {
		t.Fatalf("cluster 4 after cluster 3 ran out: %d, %v", id, err)
	}
}

func TestConfigNeedsARange(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	c := kvstoretest.Connect(t, srv, nil)
	s, err := c.NewSession(context.Background(), kvstore.SessionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for _, cfg := range []allocator.Config{
		{},                        // no cluster id, no range
		{ClusterID: 4096},         // beyond the plan
		{Min: 256, Max: 1 << 29},  // into the CIDR identities
		{Min: 100, Max: 1000},     // into the reserved ones
		{ClusterID: 2, Max: 1000}, // below its own start
	} {
		cfg.Client, cfg.Session, cfg.Cluster, cfg.Node = c, s, "east", "n"
		if _, err := allocator.New(cfg); !errors.Is(err, allocator.ErrInvalidConfig) {
			t.Errorf("ClusterID %d, %d..%d: %v, want ErrInvalidConfig", cfg.ClusterID, cfg.Min, cfg.Max, err)
		}
	}
}

// A set whose identity was made before the number plan (256..65535, no
// cluster's) is renumbered into its cluster's range, not reused; the old
// number stays for the node still using it and is collected once released.
func TestRenumbersIdentityOutsideRange(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx := context.Background()
	old := newNode(t, srv, "old", allocator.Config{Min: identity.MinAllocated, Max: 1<<16 - 1})
	set := clusterSet("east", 1)
	legacy, err := old.alloc.Allocate(ctx, set)
	if err != nil || legacy != identity.MinAllocated {
		t.Fatalf("pre-plan allocation: %d, %v", legacy, err)
	}
	upgraded := newNode(t, srv, "new", allocator.Config{ClusterID: 1})
	id, err := upgraded.alloc.Allocate(ctx, set)
	if err != nil || !id.InCluster(1) {
		t.Fatalf("upgraded node got %d, %v; want a number of cluster 1", id, err)
	}
	raw, _, err := upgraded.client.IdentityNumberValue(ctx, set.Hash())
	if n, derr := kvstore.DecodeIdentityNumber(raw); err != nil || derr != nil || n.ID != uint32(id) {
		t.Fatalf("labels key names %+v (%v %v), want %d", n, err, derr, id)
	}
	// Again: the same, new number.
	if again, err := upgraded.alloc.Allocate(ctx, set); err != nil || again != id {
		t.Fatalf("second allocation %d, %v; want %d", again, err, id)
	}
	// The old node still references the old number: nothing collected.
	if del, err := upgraded.alloc.CollectGarbage(ctx, 0); err != nil || len(del) != 0 {
		t.Fatalf("collected %v (%v) while both are referenced", del, err)
	}
	if err := old.alloc.Release(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	del, err := upgraded.alloc.CollectGarbage(ctx, 0)
	if err != nil || len(del) != 1 || del[0] != legacy {
		t.Fatalf("collected %v, %v; want only the old %d", del, err, legacy)
	}
	if exists, err := upgraded.client.IdentityExists(ctx, uint32(id)); err != nil || !exists {
		t.Fatalf("the new identity %d went too: %v", id, err)
	}
	if raw2, found, _ := upgraded.client.IdentityNumberValue(ctx, set.Hash()); !found || string(raw2) != string(raw) {
		t.Fatalf("labels key after collecting the old number: %q", raw2)
	}
}
