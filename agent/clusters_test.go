package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// seedForTokens is the part of a seed agent that makes tokens and serves
// joined nodes: its etcd client with the admin credential and the mesh CA.
func seedForTokens(t *testing.T) (*Agent, *kvstore.Client) {
	t.Helper()
	srv := kvstoretest.StartEmbedded(t)
	kv := kvstoretest.Connect(t, srv, nil)
	cfg := config.Default()
	cfg.Cluster = "default"
	cfg.Join.Advertise = "198.18.1.10:51834"
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler), cp: &controlPlane{kv: kv, files: srv.Files}}
	// The seed registered its own cluster when it took its CIDR.
	seed := ipamCIDRs{kv: kv, cluster: "default", node: "seed", prefixLen: 24, log: a.log}
	if _, err := seed.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a, kv
}

func TestTokenCreatesItsCluster(t *testing.T) {
	a, kv := seedForTokens(t)
	ctx := context.Background()
	def, err := kv.GetCluster(ctx, "default")
	if err != nil || def.ID != 1 || def.MeshPool != netip.MustParsePrefix("100.64.0.0/16") {
		t.Fatalf("the seed's cluster = %+v, %v; want id 1 and 100.64.0.0/16", def, err)
	}

	// A token of the seed's own cluster shows it as it is.
	tok, err := a.CreateToken(ctx, api.TokenRequest{})
	if err != nil || tok.Cluster != "default" || tok.ClusterID != 1 || tok.MeshPool != "100.64.0.0/16" || tok.ClusterCreated {
		t.Fatalf("default token = %+v, %v", tok, err)
	}

	// A token for a new cluster creates it with a free id and a pool
	// disjoint from default's; the next token for it finds it.
	west, err := a.CreateToken(ctx, api.TokenRequest{Cluster: "west", MaxUses: 3, TTL: api.Duration(time.Hour)})
	if err != nil || west.Cluster != "west" || west.ClusterID != 2 || west.MeshPool != "100.65.0.0/16" || !west.ClusterCreated {
		t.Fatalf("west token = %+v, %v; want a new cluster with id 2 and 100.65.0.0/16", west, err)
	}
	rec, err := kv.GetCluster(ctx, "west")
	if err != nil || rec.ID != 2 || rec.MeshPool.String() != west.MeshPool {
		t.Fatalf("west's record = %+v, %v", rec, err)
	}
	again, err := a.CreateToken(ctx, api.TokenRequest{Cluster: "west", ClusterID: 2})
	if err != nil || again.ClusterID != 2 || again.MeshPool != "100.65.0.0/16" || again.ClusterCreated {
		t.Fatalf("second west token = %+v, %v", again, err)
	}

	// The id and pool asked for, for a new cluster.
	lab, err := a.CreateToken(ctx, api.TokenRequest{Cluster: "lab", ClusterID: 4095, MeshPool: "100.127.0.0/20"})
	if err != nil || lab.ClusterID != 4095 || lab.MeshPool != "100.127.0.0/20" || !lab.ClusterCreated {
		t.Fatalf("lab token = %+v, %v", lab, err)
	}

	// Refusals name what is wrong, and make neither a cluster nor a token.
	before, err := kv.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  api.TokenRequest
		want []string
	}{
		{"id of another cluster", api.TokenRequest{Cluster: "east", ClusterID: 2}, []string{`"west"`, "id 2"}},
		{"pool of another cluster", api.TokenRequest{Cluster: "east", MeshPool: "100.65.128.0/17"}, []string{`"west"`, "100.65.0.0/16"}},
		{"existing cluster, other id", api.TokenRequest{Cluster: "west", ClusterID: 3}, []string{"id 2", "id 3"}},
		{"existing cluster, other pool", api.TokenRequest{Cluster: "west", MeshPool: "100.66.0.0/16"}, []string{"100.65.0.0/16", "100.66.0.0/16"}},
		{"pool outside the mesh range", api.TokenRequest{Cluster: "east", MeshPool: "10.0.0.0/16"}, []string{"outside the mesh range"}},
		{"pool not canonical", api.TokenRequest{Cluster: "east", MeshPool: "100.66.0.1/16"}, []string{"--mesh-pool", "canonical"}},
		{"id out of range", api.TokenRequest{Cluster: "east", ClusterID: 4096}, []string{"out of range"}},
	} {
		_, err := a.CreateToken(ctx, tc.req)
		if !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %s", tc.name, err, w)
			}
		}
	}
	if _, err := kv.GetCluster(ctx, "east"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("a refused token created its cluster: %v", err)
	}
	if after, err := kv.ListTokens(ctx); err != nil || len(after) != len(before) {
		t.Errorf("refused requests made tokens: %d before, %d after (%v)", len(before), len(after), err)
	}

	// A Kubernetes token for a new cluster: the pod CIDRs are its own, the
	// pool avoids them.
	k8s, err := a.CreateToken(ctx, api.TokenRequest{Cluster: "k8s", PodCIDRs: []string{"100.66.0.0/16"}})
	if err != nil || k8s.ClusterID != 3 || k8s.MeshPool != "100.67.0.0/16" {
		t.Fatalf("k8s token = %+v, %v", k8s, err)
	}
	if rec, err := kv.GetCluster(ctx, "k8s"); err != nil || len(rec.PodCIDRs) != 1 || rec.PodCIDRs[0] != netip.MustParsePrefix("100.66.0.0/16") {
		t.Fatalf("k8s's record = %+v, %v", rec, err)
	}
}

func TestJoinedNodeTakesItsClusterFromTheRecord(t *testing.T) {
	a, kv := seedForTokens(t)
	ctx := context.Background()
	if _, err := a.CreateToken(ctx, api.TokenRequest{Cluster: "west"}); err != nil {
		t.Fatal(err)
	}
	svc := nodeServices{a}
	west1 := join.Caller{Cluster: "west", Node: "vm-1"}

	// What a node joined with `token create --cluster west` asks: no id,
	// no pool (the configuration meshctl join writes has neither).
	cidr, err := svc.AllocateCIDR(ctx, west1, join.CIDRRequest{PrefixLength: 24})
	if err != nil || cidr != netip.MustParsePrefix("100.65.0.0/24") {
		t.Fatalf("west's first node got %s, %v; want 100.65.0.0/24 from west's pool", cidr, err)
	}
	// Its own id and pool, given explicitly, agree.
	if got, err := svc.AllocateCIDR(ctx, west1, join.CIDRRequest{PrefixLength: 24, ClusterID: 2, MeshPool: "100.65.0.0/16"}); err != nil || got != cidr {
		t.Fatalf("with the record's id and pool: %s, %v", got, err)
	}
	// The pool earlier meshctl wrote into every configuration is no
	// request: the node keeps working after an upgrade.
	if got, err := svc.AllocateCIDR(ctx, west1, join.CIDRRequest{PrefixLength: 24, MeshPool: config.DefaultMeshPool}); err != nil || got != cidr {
		t.Fatalf("with the old default pool: %s, %v", got, err)
	}

	// Anything else is refused, naming the record's value and the node's.
	west2 := join.Caller{Cluster: "west", Node: "vm-2"}
	for _, tc := range []struct {
		req  join.CIDRRequest
		want []string
	}{
		{join.CIDRRequest{PrefixLength: 24, ClusterID: 1}, []string{"id 2", "id 1", "--cluster-id"}},
		{join.CIDRRequest{PrefixLength: 24, MeshPool: "100.66.0.0/16"}, []string{"100.65.0.0/16", "100.66.0.0/16", "--mesh-pool"}},
		{join.CIDRRequest{PrefixLength: 24, MeshPool: "100.66.0.1/16"}, []string{"100.66.0.1/16"}},
	} {
		_, err := svc.AllocateCIDR(ctx, west2, tc.req)
		var je *join.Error
		if !errors.As(err, &je) || je.Code != join.CodeInvalid {
			t.Errorf("%+v: %v, want an invalid-request refusal", tc.req, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: %q does not say %s", tc.req, err, w)
			}
		}
	}
	if got, err := kv.NodeCIDRs(ctx, "west", "vm-2"); err != nil || len(got) != 0 {
		t.Errorf("a refused node got CIDRs %v, %v", got, err)
	}

	// A node cannot register a cluster, whatever it asks for.
	_, err = svc.AllocateCIDR(ctx, join.Caller{Cluster: "east", Node: "vm-1"}, join.CIDRRequest{PrefixLength: 24, ClusterID: 9, MeshPool: "100.90.0.0/16"})
	if err == nil || !strings.Contains(err.Error(), "meshctl token create --cluster east") {
		t.Errorf("a node of a cluster with no record: %v", err)
	}
	if _, err := kv.GetCluster(ctx, "east"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("a node's request registered its cluster: %v", err)
	}
}

func TestAdminAgentRegistersItsCluster(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	kv := kvstoretest.Connect(t, srv, nil)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	src := func(cluster, node string, id int, pool string) ipamCIDRs {
		return ipamCIDRs{kv: kv, cluster: cluster, node: node, clusterID: id, meshPool: pool, prefixLen: 24, log: log}
	}
	if _, err := src("default", "seed", 0, "").Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	// The old default pool in a new cluster's configuration, as earlier
	// meshctl wrote it: the cluster gets a free pool, not default's.
	cidr, err := src("west", "w1", 0, config.DefaultMeshPool).Acquire(ctx)
	if err != nil || cidr != netip.MustParsePrefix("100.65.0.0/24") {
		t.Fatalf("west with the old default pool: %s, %v", cidr, err)
	}
	if c, err := kv.GetCluster(ctx, "west"); err != nil || c.ID != 2 {
		t.Fatalf("west = %+v, %v; want id 2", c, err)
	}
	// An id that is not the record's stops the agent, naming both.
	_, err = src("west", "w2", 5, "").Acquire(ctx)
	if !errors.Is(err, kvstore.ErrConflict) || !strings.Contains(err.Error(), "id 2") || !strings.Contains(err.Error(), "id 5") || !strings.Contains(err.Error(), "--cluster-id") {
		t.Fatalf("other id: %v", err)
	}
	// An explicit pool that another cluster has is refused, naming it.
	_, err = src("north", "n1", 0, "100.65.0.0/20").Acquire(ctx)
	if !errors.Is(err, kvstore.ErrOverlap) || !strings.Contains(err.Error(), `"west"`) {
		t.Fatalf("pool inside west's: %v", err)
	}
}
