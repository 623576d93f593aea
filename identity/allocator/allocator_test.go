package allocator_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

func TestMain(m *testing.M) { kvstoretest.Main(m) }

type simNode struct {
	client *kvstore.Client
	sess   *kvstore.Session
	alloc  *allocator.Allocator
}

// newNode simulates one node: its own etcd client, session and allocator,
// of cluster east (id 1) unless cfg says otherwise.
func newNode(t testing.TB, srv *kvstoretest.Server, name string, cfg allocator.Config) *simNode {
	t.Helper()
	c := kvstoretest.Connect(t, srv, nil)
	s, err := c.NewSession(context.Background(), kvstore.SessionConfig{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	cfg.Client, cfg.Session, cfg.Node = c, s, name
	if cfg.Cluster == "" {
		cfg.Cluster = "east"
	}
	if cfg.ClusterID == 0 && cfg.Min == 0 {
		cfg.ClusterID = 1
	}
	a, err := allocator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-a.Synced()
	return &simNode{client: c, sess: s, alloc: a}
}

func labelSet(i int) identity.Labels {
	return identity.MustLabels(fmt.Sprintf("k8s:app=app-%d", i%7), fmt.Sprintf("k8s:tier=t%d", i/7), "mesh:cluster=east")
}

func TestConcurrentAllocationIsConsistent(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	const nodes, goroutines, sets = 3, 8, 30
	var sim []*simNode
	for i := range nodes {
		sim = append(sim, newNode(t, srv, fmt.Sprintf("node-%d", i), allocator.Config{}))
	}
	type result struct {
		set string
		id  identity.NumericIdentity
	}
	results := make(chan result, nodes*goroutines*sets)
	var wg sync.WaitGroup
	for n := range nodes {
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Every goroutine allocates an overlapping half of the
				// sets in its own order.
				r := rand.New(rand.NewPCG(uint64(n), uint64(g)))
				for _, i := range r.Perm(sets)[:sets/2+g] {
					l := labelSet(i)
					id, err := sim[n].alloc.Allocate(context.Background(), l)
					if err != nil {
						t.Errorf("node %d: allocating %s: %v", n, l, err)
						return
					}
					results <- result{l.String(), id}
				}
			}()
		}
	}
	wg.Wait()
	close(results)
	setToID := map[string]identity.NumericIdentity{}
	idToSet := map[identity.NumericIdentity]string{}
	for r := range results {
		if !r.id.InCluster(1) {
			t.Fatalf("%s got %d, outside cluster 1's range", r.set, r.id)
		}
		if old, ok := setToID[r.set]; ok && old != r.id {
			t.Fatalf("label set %s got two numbers: %d and %d", r.set, old, r.id)
		}
		if old, ok := idToSet[r.id]; ok && old != r.set {
			t.Fatalf("number %d given to two sets: %s and %s", r.id, old, r.set)
		}
		setToID[r.set], idToSet[r.id] = r.id, r.set
	}
	if len(setToID) != sets {
		t.Fatalf("%d sets allocated, want %d", len(setToID), sets)
	}
	// etcd agrees, and every node's cache converges on the same mapping.
	stored, err := kvstore.List(context.Background(), sim[0].client, kvstore.IdentityIDPrefix, kvstore.DecodeIdentity)
	if err != nil || len(stored) != sets {
		t.Fatalf("etcd holds %d identities (%v), want %d", len(stored), err, sets)
	}
	for n, s := range sim {
		testutil.Eventually(t, time.Minute, fmt.Sprintf("node %d cache has every identity", n), func() bool {
			for set, id := range setToID {
				l, ok := s.alloc.LookupByID(id)
				if !ok || l.String() != set {
					return false
				}
				if got, ok := s.alloc.LookupByLabels(l); !ok || got != id {
					return false
				}
			}
			return true
		})
	}
}

func TestReleaseCollectAndReuse(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	n1 := newNode(t, srv, "node-1", allocator.Config{})
	n2 := newNode(t, srv, "node-2", allocator.Config{})
	ctx := context.Background()
	a, b, c := labelSet(1), labelSet(2), labelSet(3)
	ida, err := n1.alloc.Allocate(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	idb, err := n1.alloc.Allocate(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	// Cluster 1's first numbers.
	if lo, _, _ := identity.ClusterRange(1); ida != lo || idb != lo+1 || ida != 65536+256 {
		t.Fatalf("first numbers %d, %d; want %d, %d", ida, idb, lo, lo+1)
	}
	// node-2 uses b too; node-1 uses a twice.
	if id, err := n2.alloc.Allocate(ctx, b); err != nil || id != idb {
		t.Fatalf("node-2 got %d, %v for b; want %d", id, err, idb)
	}
	if _, err := n1.alloc.Allocate(ctx, a); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := n1.alloc.Release(ctx, ida); err != nil {
			t.Fatal(err)
		}
	}
	if err := n1.alloc.Release(ctx, idb); err != nil {
		t.Fatal(err)
	}
	if err := n1.alloc.Release(ctx, ida); !errors.Is(err, allocator.ErrNotHeld) {
		t.Fatalf("releasing more than allocated: %v", err)
	}
	// node-2's cache must have seen a before it can be asked to forget it;
	// otherwise "forgotten" below holds vacuously and a's late arrival makes
	// node-2 skip the freed number.
	testutil.Eventually(t, time.Minute, "node-2's cache sees a", func() bool { _, ok := n2.alloc.LookupByID(ida); return ok })
	// Within the grace period nothing is collected.
	if del, err := n1.alloc.CollectGarbage(ctx, time.Hour); err != nil || len(del) != 0 {
		t.Fatalf("collected %v (%v) within the grace period", del, err)
	}
	del, err := n1.alloc.CollectGarbage(ctx, 0)
	if err != nil || len(del) != 1 || del[0] != ida {
		t.Fatalf("collected %v, %v; want only %d (b is still used by node-2)", del, err, ida)
	}
	if _, _, err := kvstore.Get(ctx, n1.client, kvstore.IdentityLabelsKey(a.Hash()), kvstore.DecodeIdentityNumber); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("labels key of a collected identity remains: %v", err)
	}
	testutil.Eventually(t, time.Minute, "caches forget the collected identity", func() bool {
		_, ok1 := n1.alloc.LookupByID(ida)
		_, ok2 := n2.alloc.LookupByID(ida)
		return !ok1 && !ok2
	})
	// The freed number is reused for the next new set.
	if id, err := n2.alloc.Allocate(ctx, c); err != nil || id != ida {
		t.Fatalf("new set got %d, %v; want the freed %d", id, err, ida)
	}
}

// An identity whose labels key does not point back to it is left alone and
// does not keep the identities listed after it from being collected.
func TestCollectSkipsInconsistentIdentity(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	n1 := newNode(t, srv, "node-1", allocator.Config{})
	ctx := context.Background()
	a, b := labelSet(1), labelSet(2)
	ida, err := n1.alloc.Allocate(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	idb, err := n1.alloc.Allocate(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []identity.NumericIdentity{ida, idb} {
		if err := n1.alloc.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// ida is listed first (same number of digits, lower); its labels key
	// goes missing.
	if err := n1.client.Delete(ctx, kvstore.IdentityLabelsKey(a.Hash())); err != nil {
		t.Fatal(err)
	}
	del, err := n1.alloc.CollectGarbage(ctx, 0)
	if err != nil || len(del) != 1 || del[0] != idb {
		t.Fatalf("collected %v, %v; want only %d (%d is inconsistent)", del, err, idb, ida)
	}
	if _, _, err := kvstore.Get(ctx, n1.client, kvstore.IdentityIDKey(uint32(ida)), kvstore.DecodeIdentity); err != nil {
		t.Fatalf("inconsistent identity %d was touched: %v", ida, err)
	}
}

func TestRefusesInvalidSets(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	n := newNode(t, srv, "node-1", allocator.Config{})
	for _, l := range []identity.Labels{{}, identity.MustLabels("reserved:host=")} {
		if _, err := n.alloc.Allocate(context.Background(), l); !errors.Is(err, allocator.ErrInvalidLabels) {
			t.Errorf("Allocate(%q) = %v, want ErrInvalidLabels", l, err)
		}
	}
	raw := func(b []byte) ([]byte, error) { return b, nil }
	if all, err := kvstore.List(context.Background(), n.client, kvstore.Prefix, raw); err != nil || len(all) != 0 {
		t.Fatalf("refused allocations wrote %d keys (%v)", len(all), err)
	}
}

func TestLostLeaseRestoresReferences(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	lost := make(chan allocator.Identity, 1)
	n := newNode(t, srv, "node-1", allocator.Config{OnLost: func(i allocator.Identity) { lost <- i }})
	ctx := context.Background()
	keep, gone := labelSet(1), labelSet(2)
	idKeep, err := n.alloc.Allocate(ctx, keep)
	if err != nil {
		t.Fatal(err)
	}
	idGone, err := n.alloc.Allocate(ctx, gone)
	if err != nil {
		t.Fatal(err)
	}
	etcd := kvstoretest.Etcd(t, srv) // behind the allocator's back
	// While the node is cut off, an operator (or a collector) removes the
	// second identity; then the lease is lost.
	if _, err := etcd.Delete(ctx, kvstore.IdentityLabelsKey(gone.Hash())); err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Revoke(ctx, n.sess.Lease()); err != nil {
		t.Fatal(err)
	}
	refKeep := kvstore.IdentityRefKey("east", "node-1", uint32(idKeep))
	testutil.Eventually(t, time.Minute, "reference restored", func() bool {
		resp, err := etcd.Get(ctx, refKeep)
		return err == nil && len(resp.Kvs) == 1
	})
	got := <-lost
	if got.ID != idGone || !got.Labels.Equal(gone) {
		t.Fatalf("OnLost(%+v), want %d %s", got, idGone, gone)
	}
	if resp, _ := etcd.Get(ctx, kvstore.IdentityRefKey("east", "node-1", uint32(idGone))); len(resp.Kvs) != 0 {
		t.Fatal("reference to a removed identity was restored")
	}
	if held := n.alloc.Held(); len(held) != 1 || !held[idKeep].Equal(keep) {
		t.Fatalf("held after restore: %v", held)
	}
}
