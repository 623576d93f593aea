package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

func TestEnsureClusterConcurrentNewClusters(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	// The mesh's first cluster, as its seed registers it.
	def, created, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "default"})
	if err != nil || !created || def.ID != 1 || def.MeshPool != netip.MustParsePrefix("100.64.0.0/16") {
		t.Fatalf("first cluster = %+v, created %v, %v; want id 1, 100.64.0.0/16", def, created, err)
	}

	const n = 8
	got := make([]kvstore.Cluster, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _, errs[i] = c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: fmt.Sprintf("c%d", i)})
		}()
	}
	wg.Wait()
	all := append([]kvstore.Cluster{def}, got...)
	ids := map[int]string{}
	for i, cl := range got {
		if errs[i] != nil {
			t.Fatalf("c%d: %v", i, errs[i])
		}
		if cl.Name != fmt.Sprintf("c%d", i) || cl.ID < 2 || cl.ID > n+1 || cl.MeshPool.Bits() != kvstore.DefaultClusterPoolBits || !kvstore.MeshRangeV4.Contains(cl.MeshPool.Addr()) {
			t.Errorf("c%d = %+v: want an id in 2..%d and a /%d of %s", i, cl, n+1, kvstore.DefaultClusterPoolBits, kvstore.MeshRangeV4)
		}
	}
	for i, a := range all {
		if other, dup := ids[a.ID]; dup {
			t.Errorf("clusters %s and %s both have id %d", other, a.Name, a.ID)
		}
		ids[a.ID] = a.Name
		for _, b := range all[i+1:] {
			if a.MeshPool.Overlaps(b.MeshPool) {
				t.Errorf("pools of %s (%s) and %s (%s) overlap", a.Name, a.MeshPool, b.Name, b.MeshPool)
			}
		}
		// What was returned is what etcd holds.
		if stored, err := c.GetCluster(ctx, a.Name); err != nil || stored.ID != a.ID || stored.MeshPool != a.MeshPool {
			t.Errorf("stored %s = %+v, %v; EnsureCluster returned %+v", a.Name, stored, err, a)
		}
	}
}

func TestEnsureClusterSameNameConcurrently(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	const n = 8
	got := make([]kvstore.Cluster, n)
	created := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], created[i], errs[i] = c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "west"})
		}()
	}
	wg.Wait()
	writers := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("%d: %v", i, errs[i])
		}
		if created[i] {
			writers++
		}
		if got[i].ID != got[0].ID || got[i].MeshPool != got[0].MeshPool {
			t.Errorf("call %d got %+v, call 0 %+v", i, got[i], got[0])
		}
	}
	if writers != 1 {
		t.Errorf("%d calls say they created the cluster, want 1", writers)
	}
}

func TestEnsureClusterExistingUnchanged(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	east := kvstore.Cluster{Name: "east", ID: 7, MeshPool: netip.MustParsePrefix("100.70.0.0/20"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	if err := c.PutCluster(ctx, east); err != nil {
		t.Fatal(err)
	}
	before, err := ec.Get(ctx, kvstore.ClusterKey("east"))
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []kvstore.ClusterSpec{
		{Name: "east"},
		{Name: "east", ID: 7, MeshPool: east.MeshPool},
		// Pod CIDRs of a request are for a new cluster only.
		{Name: "east", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}},
	} {
		got, created, err := c.EnsureCluster(ctx, spec)
		if err != nil || created || got.ID != 7 || got.MeshPool != east.MeshPool || len(got.PodCIDRs) != 1 || got.PodCIDRs[0] != east.PodCIDRs[0] {
			t.Errorf("EnsureCluster(%+v) = %+v, created %v, %v; want east unchanged", spec, got, created, err)
		}
	}
	after, err := ec.Get(ctx, kvstore.ClusterKey("east"))
	if err != nil {
		t.Fatal(err)
	}
	if after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Errorf("the existing record was written again (mod revision %d -> %d)", before.Kvs[0].ModRevision, after.Kvs[0].ModRevision)
	}

	// Asking an existing cluster for other values names both.
	_, _, err = c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "east", ID: 8})
	if !errors.Is(err, kvstore.ErrConflict) || !strings.Contains(err.Error(), "id 7") || !strings.Contains(err.Error(), "id 8") {
		t.Errorf("other id: %v", err)
	}
	_, _, err = c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "east", MeshPool: netip.MustParsePrefix("100.71.0.0/16")})
	if !errors.Is(err, kvstore.ErrConflict) || !strings.Contains(err.Error(), "100.70.0.0/20") || !strings.Contains(err.Error(), "100.71.0.0/16") {
		t.Errorf("other pool: %v", err)
	}

	// A record at the key that does not decode is not overwritten.
	if _, err := ec.Put(ctx, kvstore.ClusterKey("broken"), "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "broken"}); err == nil || !strings.Contains(err.Error(), "does not decode") {
		t.Errorf("corrupt record: %v", err)
	}
	// ... and another cluster's corrupt record does not stop new clusters.
	if got, created, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "west"}); err != nil || !created || got.ID != 1 || got.MeshPool != netip.MustParsePrefix("100.64.0.0/16") {
		t.Errorf("west = %+v, %v, %v; want id 1 and 100.64.0.0/16 (east holds 7 and 100.70.0.0/20)", got, created, err)
	}
}

func TestEnsureClusterRequested(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	pfx := netip.MustParsePrefix
	if err := c.PutCluster(ctx, kvstore.Cluster{Name: "default", ID: 1, MeshPool: pfx("100.64.0.0/16"), PodCIDRs: []netip.Prefix{pfx("100.65.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec kvstore.ClusterSpec
		is   error
		want []string
	}{
		{"id taken", kvstore.ClusterSpec{Name: "west", ID: 1}, kvstore.ErrConflict, []string{`"west"`, `"default"`, "id 1"}},
		{"pool overlaps pool", kvstore.ClusterSpec{Name: "west", MeshPool: pfx("100.64.128.0/17")}, kvstore.ErrOverlap, []string{`"default"`, "100.64.0.0/16"}},
		{"pool overlaps pod CIDRs", kvstore.ClusterSpec{Name: "west", MeshPool: pfx("100.65.0.0/24")}, kvstore.ErrOverlap, []string{`"default"`, "100.65.0.0/16"}},
		{"pod CIDRs overlap", kvstore.ClusterSpec{Name: "west", PodCIDRs: []netip.Prefix{pfx("100.64.7.0/24")}}, kvstore.ErrOverlap, []string{`"default"`}},
		{"pool outside mesh range", kvstore.ClusterSpec{Name: "west", MeshPool: pfx("10.0.0.0/16")}, kvstore.ErrInvalidConfig, []string{"outside the mesh range"}},
		{"pool host bits", kvstore.ClusterSpec{Name: "west", MeshPool: pfx("100.66.0.1/16")}, kvstore.ErrInvalidConfig, []string{"host bits"}},
		{"id too large", kvstore.ClusterSpec{Name: "west", ID: kvstore.MaxClusterID + 1}, kvstore.ErrInvalidConfig, []string{"out of range"}},
		{"negative id", kvstore.ClusterSpec{Name: "west", ID: -1}, kvstore.ErrInvalidConfig, []string{"out of range"}},
		{"bad name", kvstore.ClusterSpec{Name: "West/1"}, kvstore.ErrInvalidKey, nil},
	} {
		_, _, err := c.EnsureCluster(ctx, tc.spec)
		if !errors.Is(err, tc.is) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.is)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %s", tc.name, err, w)
			}
		}
	}
	if _, err := c.GetCluster(ctx, "west"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("a refused cluster was written: %v", err)
	}

	// What is asked for and free is what it gets; a chosen pool avoids
	// the cluster's own pod CIDRs and others' (100.65/16 is default's).
	west, created, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "west", ID: 4095, MeshPool: pfx("100.127.0.0/24")})
	if err != nil || !created || west.ID != 4095 || west.MeshPool != pfx("100.127.0.0/24") {
		t.Fatalf("west = %+v, %v, %v", west, created, err)
	}
	k8s, _, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "k8s", PodCIDRs: []netip.Prefix{pfx("100.66.0.0/16")}})
	if err != nil || k8s.ID != 2 || k8s.MeshPool != pfx("100.67.0.0/16") || len(k8s.PodCIDRs) != 1 {
		t.Fatalf("k8s = %+v, %v; want id 2, pool 100.67.0.0/16 and its pod CIDRs", k8s, err)
	}
}

func TestEnsureClusterPoolsExhausted(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	// 100.64.0.0/10 holds 64 pools of /16.
	const pools = 1 << (kvstore.DefaultClusterPoolBits - 10)
	for i := range pools {
		cl, _, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: fmt.Sprintf("c%d", i)})
		if err != nil {
			t.Fatalf("cluster %d of %d: %v", i+1, pools, err)
		}
		if want := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i), 0, 0}), 16); cl.MeshPool != want || cl.ID != i+1 {
			t.Fatalf("cluster %d = %+v, want id %d and %s", i, cl, i+1, want)
		}
	}
	_, _, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "one-too-many"})
	if !errors.Is(err, kvstore.ErrPoolExhausted) || !strings.Contains(err.Error(), "100.64.0.0/10") {
		t.Fatalf("65th /16: %v", err)
	}
	// A smaller pool of its own still fits nowhere: the range is full.
	_, _, err = c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "one-too-many", MeshPool: netip.MustParsePrefix("100.100.1.0/24")})
	if !errors.Is(err, kvstore.ErrOverlap) || !strings.Contains(err.Error(), `"c36"`) {
		t.Fatalf("pool inside c36's: %v", err)
	}
}

func TestEnsureClusterIDsExhausted(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	// Every id taken, each cluster with a /24 of its own, written in
	// batches (etcd takes at most 128 operations per transaction).
	var ops []clientv3.Op
	flush := func() {
		if _, err := ec.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for id := 1; id <= kvstore.MaxClusterID; id++ {
		cl := kvstore.Cluster{Name: fmt.Sprintf("c%d", id), ID: id,
			MeshPool: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + id>>8), byte(id), 0}), 24)}
		data, err := kvstore.Encode(&cl)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(kvstore.ClusterKey(cl.Name), string(data)))
		if len(ops) == 100 {
			flush()
		}
	}
	flush()
	_, _, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "one-too-many"})
	if !errors.Is(err, kvstore.ErrClusterIDsExhausted) || !strings.Contains(err.Error(), "4095") {
		t.Fatalf("4096th cluster: %v", err)
	}
	// Freeing one id makes it the next cluster's.
	if _, err := ec.Delete(ctx, kvstore.ClusterKey("c1000")); err != nil {
		t.Fatal(err)
	}
	cl, created, err := c.EnsureCluster(ctx, kvstore.ClusterSpec{Name: "one-too-many"})
	if err != nil || !created || cl.ID != 1000 {
		t.Fatalf("after freeing id 1000: %+v, %v, %v", cl, created, err)
	}
}
