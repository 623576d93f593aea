package kvstore_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/pki"
)

// remoteFor is a connection record to cluster name whose credential is a
// real one of srv (user cluster:<reader>).
func remoteFor(t *testing.T, srv *kvstoretest.Server, name string, id int, pool, reader string) kvstore.RemoteCluster {
	t.Helper()
	ca, err := pki.LoadCAFiles(srv.Files.CAFile, srv.Files.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueClient(kvstore.ClusterUser(reader), []string{"weft:clusters"})
	if err != nil {
		t.Fatal(err)
	}
	eps := srv.Config.Endpoints
	return kvstore.RemoteCluster{
		Name: name, ID: id, MeshPool: netip.MustParsePrefix(pool), JoinServer: "198.18.0.1:7946",
		EtcdEndpoints: eps, CACert: string(ca.CertPEM), Cert: string(cert), Key: string(key),
		Mode: kvstore.ModeMirror, Connected: time.Now(),
	}
}

func TestRemoteClusterValidate(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	good := remoteFor(t, srv, "west", 2, "100.65.0.0/16", "east")
	if err := good.Validate(); err != nil {
		t.Fatalf("a good record: %v", err)
	}
	other := remoteFor(t, srv, "west", 2, "100.65.0.0/16", "east")
	cases := []struct {
		name string
		mod  func(*kvstore.RemoteCluster)
		want string
	}{
		{"id 0", func(r *kvstore.RemoteCluster) { r.ID = 0 }, "1..4095"},
		{"no endpoints", func(r *kvstore.RemoteCluster) { r.EtcdEndpoints = nil }, "0 etcd endpoints"},
		{"plaintext endpoint", func(r *kvstore.RemoteCluster) { r.EtcdEndpoints = []string{"http://198.18.0.1:2379"} }, "not https://host:port"},
		{"endpoint without port", func(r *kvstore.RemoteCluster) { r.EtcdEndpoints = []string{"https://198.18.0.1"} }, "not https://host:port"},
		{"endpoint with user", func(r *kvstore.RemoteCluster) { r.EtcdEndpoints = []string{"https://u:p@198.18.0.1:2379"} }, "not https://host:port"},
		{"CA not PEM", func(r *kvstore.RemoteCluster) { r.CACert = "hello" }, "caCert"},
		{"key of another cert", func(r *kvstore.RemoteCluster) { r.Key = other.Key }, "cert and key"},
		{"mode", func(r *kvstore.RemoteCluster) { r.Mode = "carrier-pigeon" }, "mode"},
		{"pool outside the mesh range", func(r *kvstore.RemoteCluster) { r.MeshPool = netip.MustParsePrefix("10.0.0.0/16") }, "outside the mesh range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := good
			c.mod(&r)
			err := r.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, kvstore.ErrInvalidRecord) {
				t.Fatalf("Validate = %v, want an invalid-record error mentioning %q", err, c.want)
			}
		})
	}
	// The view agents read holds no credential in mirror mode.
	v := good.View()
	if v.Direct != nil || v.Validate() != nil {
		t.Fatalf("mirror-mode view %+v: %v", v, v.Validate())
	}
	good.Mode = kvstore.ModeDirect
	if v := good.View(); v.Direct == nil || v.Direct.Key != good.Key || v.Validate() != nil {
		t.Fatalf("direct-mode view lacks the access: %+v", v)
	}
}

func TestPutRemoteClusterConflicts(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := kvstoretest.Connect(t, srv, nil)
	if err := kv.PutCluster(ctx, kvstore.Cluster{Name: "east", ID: 1, MeshPool: netip.MustParsePrefix("100.64.0.0/16"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	west := remoteFor(t, srv, "west", 2, "100.65.0.0/16", "east")
	if err := kv.PutRemoteCluster(ctx, west); err != nil {
		t.Fatalf("a disjoint cluster: %v", err)
	}
	cases := []struct {
		name      string
		r         kvstore.RemoteCluster
		want      string
		sentinels error
	}{
		{"same name as a local cluster", remoteFor(t, srv, "east", 3, "100.66.0.0/16", "east"), `both clusters are named "east"`, kvstore.ErrConflict},
		{"same id as a local cluster", remoteFor(t, srv, "north", 1, "100.66.0.0/16", "east"), "both have id 1", kvstore.ErrConflict},
		{"same id as a connected cluster", remoteFor(t, srv, "north", 2, "100.66.0.0/16", "east"), `"north" and cluster "west" both have id 2`, kvstore.ErrConflict},
		{"pool overlaps the local pool", remoteFor(t, srv, "north", 3, "100.64.128.0/17", "east"), `range 100.64.128.0/17 overlaps cluster "east" range 100.64.0.0/16`, kvstore.ErrOverlap},
		{"pool overlaps local pod CIDRs", remoteFor(t, srv, "north", 3, "100.96.0.0/20", "east"), "overlaps cluster \"east\" range 100.96.0.0/16", kvstore.ErrOverlap},
		{"pool overlaps a connected cluster", remoteFor(t, srv, "north", 3, "100.65.0.0/24", "east"), `overlaps cluster "west" range 100.65.0.0/16`, kvstore.ErrOverlap},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := kv.PutRemoteCluster(ctx, c.r)
			if err == nil || !errors.Is(err, c.sentinels) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("PutRemoteCluster = %v, want %v naming %q", err, c.sentinels, c.want)
			}
			if _, err := kv.GetRemoteCluster(ctx, c.r.Name); !errors.Is(err, kvstore.ErrNotFound) && c.r.Name != "east" {
				t.Fatalf("a refused connection was stored: %v", err)
			}
		})
	}
	rs, err := kv.ListRemoteClusters(ctx)
	if err != nil || len(rs) != 1 || rs[0].Name != "west" {
		t.Fatalf("connections = %+v, %v", rs, err)
	}
	// The view is written beside the record, and both go with the mirror.
	raw := kvstoretest.Etcd(t, srv)
	if _, err := raw.Put(ctx, kvstore.MirrorKey("west", kvstore.NodeKey("west", "w1")), "{}"); err != nil {
		t.Fatal(err)
	}
	if resp, err := raw.Get(ctx, kvstore.RemoteClusterViewKey("west")); err != nil || len(resp.Kvs) != 1 || strings.Contains(string(resp.Kvs[0].Value), "PRIVATE KEY") {
		t.Fatalf("view of a mirror-mode connection: %v %v", resp, err)
	}
	if err := kv.DeleteRemoteCluster(ctx, "west"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{kvstore.ClusterMeshPrefix, kvstore.RemoteClustersPrefix, kvstore.MirrorsPrefix} {
		if resp, err := raw.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
			t.Errorf("%s after disconnect: %d keys, %v", p, resp.Count, err)
		}
	}
}

// A remote cluster's credential, against a real etcd with authentication:
// it reads what a mirror needs of the local cluster and nothing else, and
// writes nothing.
func TestClusterCredentialsAgainstEtcd(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.EnableAuth(ctx); err != nil {
		t.Fatal(err)
	}
	raw := kvstoretest.Etcd(t, srv)
	P := kvstore.Prefix
	seed := map[string]string{
		P + "clusters/east":              "c",
		P + "clusters/south":             "c",
		P + "nodes/east/e1":              "n",
		P + "nodes/south/s1":             "n",
		P + "endpoints/east/e1/1.2.3.4":  "e",
		P + "identities/id/65792":        "i",
		P + "grants/east/e1":             "g",
		P + "revoked/east/e2":            "r",
		P + "tokens/t1":                  "secret",
		P + "policies/db":                "p",
		P + "ipam/east/100.64.1.0/24":    "x",
		P + "clustermesh/north":          "credential",
		P + "mirror/north/nodes/north/n": "m",
	}
	for k, v := range seed {
		if _, err := raw.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := admin.EnsureClusterUser(ctx, "west", "east", false); err != nil {
		t.Fatal(err)
	}
	if err := admin.EnsureClusterUser(ctx, "west", "east", false); err != nil {
		t.Fatalf("twice: %v", err)
	}
	r := remoteFor(t, srv, "east", 1, "100.64.0.0/16", "west")
	west, err := kvstore.NewRemoteClient(ctx, kvstore.RemoteAccess{Endpoints: r.EtcdEndpoints, CAPEM: []byte(r.CACert), CertPEM: []byte(r.Cert), KeyPEM: []byte(r.Key)})
	if err != nil {
		t.Fatal(err)
	}
	defer west.Close()
	src := west.Source()
	for _, p := range []string{P + "nodes/east/", P + "endpoints/east/", P + "identities/id/", P + "grants/east/", P + "revoked/east/"} {
		resp, err := src.Get(ctx, p, clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 1 {
			t.Errorf("the remote cluster cannot list %s: %v", p, err)
		}
	}
	if _, err := src.Get(ctx, P+"clusters/east"); err != nil {
		t.Errorf("the remote cluster cannot read the cluster record: %v", err)
	}
	if err := west.Ping(ctx); err != nil {
		t.Errorf("the remote cluster cannot ping: %v", err)
	}
	for _, k := range []string{P + "tokens/t1", P + "policies/db", P + "ipam/east/100.64.1.0/24", P + "clustermesh/north", P + "mirror/north/nodes/north/n", P + "nodes/south/s1", P + "clusters/south"} {
		if _, err := src.Get(ctx, k); !kvstore.IsPermissionDenied(mapErr(err)) {
			t.Errorf("the remote cluster read %s: %v", k, err)
		}
	}
	for _, p := range []string{P + "nodes/", P + "tokens/"} {
		if _, err := src.Get(ctx, p, clientv3.WithPrefix()); !kvstore.IsPermissionDenied(mapErr(err)) {
			t.Errorf("the remote cluster listed %s: %v", p, err)
		}
	}
	if _, err := west.KV().Put(ctx, P+"nodes/east/e1", "forged"); !kvstore.IsPermissionDenied(err) {
		t.Errorf("the remote cluster wrote a node record: %v", err)
	}
	if err := admin.RemoveClusterUser(ctx, "west"); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Get(ctx, P+"nodes/east/e1"); err == nil {
		t.Error("a disconnected cluster's credential still reads")
	}
}

// mapErr gives a Source's raw etcd error the mapping the helpers apply.
func mapErr(err error) error {
	if err != nil && strings.Contains(err.Error(), "permission denied") {
		return errors.Join(kvstore.ErrPermissionDenied, err)
	}
	return err
}

// A cluster token does not join a node and a join token does not connect a
// cluster; the refusal counts no use.
func TestTokenPurpose(t *testing.T) {
	kv, _ := kvstoretest.New(t)
	ctx := context.Background()
	now := time.Now()
	ct, csecret, err := kv.CreateToken(ctx, kvstore.TokenSpec{Cluster: "east", TTL: time.Hour, MaxUses: 1, Purpose: kvstore.PurposeCluster}, now)
	if err != nil {
		t.Fatal(err)
	}
	jt, jsecret, err := kv.CreateToken(ctx, kvstore.TokenSpec{Cluster: "east", TTL: time.Hour, MaxUses: 1}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.ConsumeToken(ctx, ct.ID, csecret, now); !errors.Is(err, kvstore.ErrTokenWrongPurpose) || !strings.Contains(err.Error(), "meshctl cluster connect") {
		t.Fatalf("a cluster token joined a node: %v", err)
	}
	if _, err := kv.ConsumeTokenFor(ctx, jt.ID, jsecret, kvstore.PurposeCluster, now); !errors.Is(err, kvstore.ErrTokenWrongPurpose) {
		t.Fatalf("a join token connected a cluster: %v", err)
	}
	got, err := kv.ConsumeTokenFor(ctx, ct.ID, csecret, kvstore.PurposeCluster, now)
	if err != nil || got.Uses != 1 {
		t.Fatalf("the cluster token, used for its purpose after a refusal: %+v, %v (uses must be 1: refusals count none)", got, err)
	}
	if got, err := kv.ConsumeToken(ctx, jt.ID, jsecret, now); err != nil || got.Uses != 1 {
		t.Fatalf("the join token: %+v, %v", got, err)
	}
	bad := kvstore.Token{ID: "t1", SecretSHA256: strings.Repeat("ab", 32), Cluster: "east", Expires: now, MaxUses: 1, Purpose: "admin"}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "purpose") {
		t.Fatalf("a token of unknown purpose: %v", err)
	}
}

// A cluster that pushes its records may write its own mirror prefix and
// nothing else.
func TestPushingClusterRole(t *testing.T) {
	r, err := kvstore.PushingClusterRole("c", "a")
	if err != nil {
		t.Fatal(err)
	}
	P := kvstore.Prefix
	for _, c := range []struct {
		key  string
		op   kvstore.Operation
		want bool
	}{
		{P + "mirror/c/nodes/c/c1", kvstore.OpWrite, true},
		{P + "mirror/c/status", kvstore.OpWrite, true},
		{P + "mirror/b/nodes/b/b1", kvstore.OpWrite, false},
		{P + "mirror/b/nodes/b/b1", kvstore.OpRead, false},
		{P + "mirror/cc/nodes/cc/x", kvstore.OpWrite, false},
		{P + "nodes/a/a1", kvstore.OpRead, true},
		{P + "nodes/a/a1", kvstore.OpWrite, false},
		{P + "nodes/c/c1", kvstore.OpWrite, false},
		{P + "tokens/t1", kvstore.OpRead, false},
		{P + "policies/p", kvstore.OpRead, false},
		{P + "clustermesh/c", kvstore.OpRead, false},
	} {
		if got := kvstore.Authorize(r, c.key, "", c.op); got != c.want {
			t.Errorf("%s %s: allowed=%v, want %v", c.op, c.key, got, c.want)
		}
	}
	plain, _ := kvstore.RemoteClusterRole("c", "a")
	if kvstore.Authorize(plain, P+"mirror/c/status", "", kvstore.OpWrite) {
		t.Error("a cluster that does not push may write its mirror")
	}
}
