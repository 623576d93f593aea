package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// identitySeed is a seed of cluster east (id 1) whose etcd also holds
// cluster west (id 2), with its allocator configured as startCaches does.
func identitySeed(t *testing.T) (*Agent, *kvstore.Client) {
	t.Helper()
	ctx := context.Background()
	srv := kvstoretest.StartEmbedded(t)
	kv := kvstoretest.Connect(t, srv, nil)
	for _, c := range []kvstore.Cluster{
		{Name: "east", ID: 1, MeshPool: netip.MustParsePrefix("100.64.0.0/16")},
		{Name: "west", ID: 2, MeshPool: netip.MustParsePrefix("100.65.0.0/16")},
	} {
		if err := kv.PutCluster(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Default()
	cfg.Cluster, cfg.NodeName = "east", "seed"
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), cp: &controlPlane{kv: kv, files: srv.Files}}
	clusters, err := newClusterIDs(ctx, kv, "east", nil, a.log)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	go func() { _ = clusters.cache.Run(rctx) }()
	<-clusters.cache.Synced()
	s, err := kv.NewSession(ctx, kvstore.SessionConfig{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	a.alloc, err = allocator.New(allocator.Config{Client: kv, Session: s, Cluster: "east", Node: "seed",
		ClusterID: clusters.selfID, Range: clusters.identityRange, Accept: clusters.acceptIdentity})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = a.alloc.Run(rctx) }()
	<-a.alloc.Synced()
	return a, kv
}

// The seed allocates for a node of another cluster sharing its etcd in
// that cluster's range, and refuses labels that name no cluster or
// another one than the caller's.
func TestSeedCreatesIdentitiesInTheCallersCluster(t *testing.T) {
	a, _ := identitySeed(t)
	svc := nodeServices{a}
	ctx := context.Background()
	west := join.Caller{Cluster: "west", Node: "w1"}
	id, err := svc.CreateIdentity(ctx, west, []string{"vm:app=web", "mesh:cluster=west"})
	if err != nil || !identity.NumericIdentity(id).InCluster(2) {
		t.Fatalf("west's identity %d (%v), want one of cluster 2", id, err)
	}
	own, err := svc.CreateIdentity(ctx, join.Caller{Cluster: "east", Node: "e1"}, []string{"vm:app=web", "mesh:cluster=east"})
	if err != nil || !identity.NumericIdentity(own).InCluster(1) {
		t.Fatalf("east's identity %d (%v), want one of cluster 1", own, err)
	}
	for _, c := range []struct {
		labels []string
		code   join.Code
		want   string
	}{
		{[]string{"vm:app=web"}, join.CodeInvalid, "no mesh:cluster label"},
		{[]string{"vm:app=db", "mesh:cluster=east"}, join.CodeForbidden, "cannot claim another cluster"},
	} {
		_, err := svc.CreateIdentity(ctx, west, c.labels)
		var je *join.Error
		if !errors.As(err, &je) || je.Code != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %s mentioning %q", c.labels, err, c.code, c.want)
		}
	}
	// A cluster without a record has no range.
	_, err = svc.CreateIdentity(ctx, join.Caller{Cluster: "north", Node: "n1"}, []string{"vm:app=web", "mesh:cluster=north"})
	var je *join.Error
	if !errors.As(err, &je) || je.Code != join.CodeInvalid || !strings.Contains(err.Error(), `cluster "north" has no record`) {
		t.Errorf("a cluster without a record: %v", err)
	}
}

// An identity record whose number is not of the cluster its labels name
// stays out of the agent's cache; the set is renumbered when allocated.
func TestIdentityOfAnotherClustersRangeRefused(t *testing.T) {
	a, kv := identitySeed(t)
	ctx := context.Background()
	// As a seed before the number plan (or one that allocated every
	// cluster's sets in its own range) wrote it: west's set in cluster
	// 1's range.
	s, err := kv.NewSession(ctx, kvstore.SessionConfig{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	set := identity.MustLabels("vm:app=web", "mesh:cluster=west")
	lo1, _, _ := identity.ClusterRange(1)
	h := kvstore.IdentityHolder{Session: s, Cluster: "east", Node: "old"}
	if ok, err := kv.CreateIdentity(ctx, h, uint32(lo1+7), set.Hash(), set.Strings()); err != nil || !ok {
		t.Fatalf("writing the old identity: %v %v", ok, err)
	}
	// A valid identity written after it: once the cache has it, it has
	// judged the first one too (a watch delivers in revision order).
	marker := identity.MustLabels("vm:app=marker", "mesh:cluster=east")
	if ok, err := kv.CreateIdentity(ctx, h, uint32(lo1+8), marker.Hash(), marker.Strings()); err != nil || !ok {
		t.Fatalf("writing the marker identity: %v %v", ok, err)
	}
	testutil.Eventually(t, time.Minute, "the cache has the marker", func() bool { _, ok := a.alloc.LookupByID(lo1 + 8); return ok })
	if l, ok := a.alloc.LookupByID(lo1 + 7); ok {
		t.Fatalf("identity %d of west's labels in cluster 1's range was accepted: %v", lo1+7, l)
	}
	id, err := a.alloc.Allocate(ctx, set)
	if err != nil || !id.InCluster(2) {
		t.Fatalf("renumbered to %d (%v), want one of cluster 2", id, err)
	}
}

// ipcacheFixture is an ipcache reconciler over clusters east (id 1) and
// west (id 2), whose nodes own 100.96.1.0/24 (east) and 100.97.1.0/24.
func ipcacheFixture(eps ...kvstore.Endpoint) (*ipcacheReconciler, *bpftest.Datapath) {
	dp := bpftest.New()
	owned := func(cluster, node string) ([]netip.Prefix, bool) {
		if cluster == "east" {
			return []netip.Prefix{netip.MustParsePrefix("100.96.1.0/24")}, true
		}
		return []netip.Prefix{netip.MustParsePrefix("100.97.1.0/24")}, true
	}
	r := newIPCacheReconciler(dp, owned, fakeEndpoints(eps), slog.New(slog.DiscardHandler))
	ids := map[string]int{"east": 1, "west": 2}
	r.clusterID = func(c string) (int, bool) { id, ok := ids[c]; return id, ok }
	return r, dp
}

// An endpoint may carry only identities of its own cluster's range, and
// labels naming its own cluster: a node (or a whole cluster) cannot speak
// with another cluster's identities.
func TestIPCacheRefusesIdentitiesOfOtherClusters(t *testing.T) {
	lo1, _, _ := identity.ClusterRange(1)
	lo2, _, _ := identity.ClusterRange(2)
	ep := func(ip string, id identity.NumericIdentity, cluster string, labels ...string) kvstore.Endpoint {
		return kvstore.Endpoint{IP: netip.MustParseAddr(ip), Identity: uint32(id), Cluster: cluster, Node: "n", Labels: labels}
	}
	good := ep("100.96.1.2", lo1, "east", "mesh:cluster=east")
	goodWest := ep("100.97.1.2", lo2, "west", "mesh:cluster=west")
	forged := ep("100.97.1.3", lo1, "west", "mesh:cluster=west")       // east's number from west
	legacy := ep("100.96.1.4", identity.MinAllocated, "east")          // before the number plan
	otherLabel := ep("100.97.1.5", lo2+1, "west", "mesh:cluster=east") // west's number, east's label
	unknown := ep("100.98.1.6", lo1+9, "north")                        // checked elsewhere (no record here)
	r, dp := ipcacheFixture(good, goodWest, forged, legacy, otherLabel, unknown)
	r.owned = func(cluster, node string) ([]netip.Prefix, bool) {
		return []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")}, true
	}
	for _, e := range []kvstore.Endpoint{good, goodWest, forged, legacy, otherLabel, unknown} {
		r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: e})
	}
	ipc := dp.IPCache()
	for _, c := range []struct {
		e    kvstore.Endpoint
		want bool
	}{{good, true}, {goodWest, true}, {forged, false}, {legacy, false}, {otherLabel, false}, {unknown, true}} {
		e, want := c.e, c.want
		got, ok := ipc[netip.PrefixFrom(e.IP, 32)]
		if ok != want || ok && got != e.Identity {
			t.Errorf("%s (identity %d of cluster %s): in the ipcache %v as %d, want %v", e.IP, e.Identity, e.Cluster, ok, got, want)
		}
	}
	// An installed endpoint whose record is replaced by one with another
	// cluster's number leaves the ipcache.
	bad := good
	bad.Identity = uint32(lo2)
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventUpdate, Old: good, Value: bad})
	if got, ok := dp.IPCache()[netip.PrefixFrom(good.IP, 32)]; ok {
		t.Errorf("%s kept %d after its record took cluster 2's number", good.IP, got)
	}
}
