package kvstore_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/grant"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

func TestNodeRolePermissions(t *testing.T) {
	r, err := kvstore.NodeRole("default", "a1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "node:default/a1" || r.Admin {
		t.Fatalf("role %q admin=%v", r.Name, r.Admin)
	}
	P := kvstore.Prefix
	cases := []struct {
		key, end string
		op       kvstore.Operation
		want     bool
	}{
		{P + "nodes/default/a1", "", kvstore.OpWrite, true},
		{P + "nodes/default/a1x", "", kvstore.OpWrite, false}, // exact key, not a prefix
		{P + "nodes/default/b1", "", kvstore.OpWrite, false},
		{P + "nodes/default/b1", "", kvstore.OpRead, true},
		{P + "nodes/", clientv3.GetPrefixRangeEnd(P + "nodes/"), kvstore.OpRead, true},
		{P + "nodes/", clientv3.GetPrefixRangeEnd(P + "nodes/"), kvstore.OpWrite, false},
		{P + "endpoints/default/a1/100.64.1.2", "", kvstore.OpWrite, true},
		{P + "endpoints/default/a1/", clientv3.GetPrefixRangeEnd(P + "endpoints/default/a1/"), kvstore.OpWrite, true},
		{P + "endpoints/default/a10/100.64.1.2", "", kvstore.OpWrite, false},
		{P + "endpoints/default/b1/100.64.2.2", "", kvstore.OpWrite, false},
		{P + "endpoints/", clientv3.GetPrefixRangeEnd(P + "endpoints/"), kvstore.OpRead, true},
		{P + "identities/refs/default/a1/256", "", kvstore.OpWrite, true},
		{P + "identities/refs/default/b1/256", "", kvstore.OpWrite, false},
		{P + "identities/refs/", clientv3.GetPrefixRangeEnd(P + "identities/refs/"), kvstore.OpRead, false},
		{P + "identities/id/256", "", kvstore.OpWrite, false},
		{P + "identities/id/256", "", kvstore.OpRead, true},
		{P + "identities/labels/" + strings.Repeat("a", 64), "", kvstore.OpWrite, false},
		{P + "ipam/default/100.64.1.0/24", "", kvstore.OpWrite, false},
		{P + "ipam/", clientv3.GetPrefixRangeEnd(P + "ipam/"), kvstore.OpRead, true},
		{P + "clusters/default", "", kvstore.OpWrite, false},
		{P + "policies/db", "", kvstore.OpWrite, false},
		{P + "policies/db", "", kvstore.OpRead, true},
		{P + "tokens/t1", "", kvstore.OpRead, false},
		{P + "tokens/", clientv3.GetPrefixRangeEnd(P + "tokens/"), kvstore.OpRead, false},
		{P + "tokens/t1", "", kvstore.OpWrite, false},
		{P + "grants/default/a1", "", kvstore.OpRead, true},
		{P + "grants/default/a1", "", kvstore.OpWrite, false},
		{P + "revoked/default/b1", "", kvstore.OpRead, true},
		{P + "revoked/", clientv3.GetPrefixRangeEnd(P + "revoked/"), kvstore.OpRead, true},
		{P + "revoked/default/a1", "", kvstore.OpWrite, false},
		{kvstore.GossipKeyKey, "", kvstore.OpRead, true},
		{kvstore.GossipKeyKey, "", kvstore.OpWrite, false},
		{P, "", kvstore.OpRead, true},
		{P, clientv3.GetPrefixRangeEnd(P), kvstore.OpRead, false}, // a full read would include tokens/
		{"", "\x00", kvstore.OpRead, false},                       // everything
		{"other/key", "", kvstore.OpRead, false},
	}
	for _, c := range cases {
		if got := kvstore.Authorize(r, c.key, c.end, c.op); got != c.want {
			t.Errorf("Authorize(%q, end %q, %s) = %v, want %v", c.key, c.end, c.op, got, c.want)
		}
		if !kvstore.Authorize(kvstore.AdminRole(), c.key, c.end, c.op) {
			t.Errorf("the admin may not %s %q", c.op, c.key)
		}
	}
	if _, err := kvstore.NodeRole("default", "A/B"); err == nil {
		t.Error("NodeRole accepted a node name with a slash")
	}
}

func TestParseNodeUser(t *testing.T) {
	for in, want := range map[string][2]string{
		"node:default/a1": {"default", "a1"},
		"node:east/vm-3":  {"east", "vm-3"},
	} {
		c, n, ok := kvstore.ParseNodeUser(in)
		if !ok || c != want[0] || n != want[1] || kvstore.NodeUser(c, n) != in {
			t.Errorf("ParseNodeUser(%q) = %q %q %v", in, c, n, ok)
		}
	}
	for _, in := range []string{"root", "node:", "node:default", "node:default/a/b", "node:De/a1", "nodes:default/a1"} {
		if _, _, ok := kvstore.ParseNodeUser(in); ok {
			t.Errorf("ParseNodeUser(%q) accepted it", in)
		}
	}
}

// authorizeSpec is the intent NodeRole must implement, written the other
// way round (from the key's shape, not from permissions).
func authorizeSpec(cluster, node, key string, op kvstore.Operation) bool {
	own := key == kvstore.NodeKey(cluster, node) ||
		strings.HasPrefix(key, kvstore.EndpointsNodePrefix(cluster, node)) ||
		strings.HasPrefix(key, kvstore.IdentityRefsNodePrefix(cluster, node))
	if op == kvstore.OpWrite {
		return own
	}
	if own || key == kvstore.Prefix || key == kvstore.GossipKeyKey {
		return true
	}
	for _, p := range []string{kvstore.ClustersPrefix, kvstore.NodesPrefix, kvstore.IPAMPrefix, kvstore.IdentityIDPrefix,
		kvstore.IdentityLabelsPrefix, kvstore.EndpointsPrefix, kvstore.PoliciesPrefix, kvstore.GrantsPrefix, kvstore.RevokedPrefix} {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func FuzzAuthorize(f *testing.F) {
	P := kvstore.Prefix
	f.Add("default", "a1", P+"nodes/default/a1", "", true)
	f.Add("default", "a1", P+"nodes/default/b1", "", true)
	f.Add("default", "a1", P+"tokens/t1", "", false)
	f.Add("default", "a1", P+"endpoints/default/a1/", P+"endpoints/default/a10", true)
	f.Add("default", "a1", P+"nodes/", P+"nodes0", false)
	f.Add("east", "vm-1", P+"identities/refs/east/vm-1/300", "", true)
	f.Add("default", "a1", P+"revoked/default/a1", "", true)
	f.Add("default", "a1", P+"revoked/", P+"revoked0", false)
	f.Fuzz(func(t *testing.T, cluster, node, key, end string, write bool) {
		role, err := kvstore.NodeRole(cluster, node)
		if err != nil {
			return
		}
		op := kvstore.OpRead
		if write {
			op = kvstore.OpWrite
		}
		got := kvstore.Authorize(role, key, end, op)
		if end == "" {
			if want := authorizeSpec(cluster, node, key, op); got != want {
				t.Fatalf("Authorize(%s/%s, %q, %s) = %v, spec says %v", cluster, node, key, op, got, want)
			}
		}
		if !got {
			return
		}
		// Whatever is allowed on a range is allowed on its first key, and
		// never touches tokens or another node's keys when writing.
		if !kvstore.Authorize(role, key, "", op) {
			t.Fatalf("range [%q, %q) allowed but its first key is not", key, end)
		}
		if strings.HasPrefix(key, kvstore.TokensPrefix) || end != "" && end > kvstore.TokensPrefix && key < kvstore.TokensPrefix {
			t.Fatalf("%s/%s may %s tokens: [%q, %q)", cluster, node, op, key, end)
		}
		if op == kvstore.OpWrite {
			if pk, err := kvstore.ParseKey(key); err == nil && (pk.Cluster != cluster || pk.Node != node) {
				t.Fatalf("%s/%s may write %q, which belongs to %s/%s", cluster, node, key, pk.Cluster, pk.Node)
			}
		}
	})
}

// TestNodeCredentialsAgainstEtcd replays, with a node's own certificate,
// what a compromised node tried, against a real etcd with authentication
// on; the node's own keys still work and the admin can do everything.
func TestNodeCredentialsAgainstEtcd(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.EnableAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if on, err := admin.AuthEnabled(ctx); (err != nil || !on) && (err == nil || !strings.Contains(err.Error(), "Unimplemented")) {
		t.Fatalf("auth enabled = %v, %v", on, err)
	}
	for _, n := range []string{"a1", "b1"} {
		if err := admin.EnsureNodeUser(ctx, "default", n); err != nil {
			t.Fatal(err)
		}
	}
	// Twice is harmless (the join service may admit a node again).
	if err := admin.EnsureNodeUser(ctx, "default", "a1"); err != nil {
		t.Fatal(err)
	}
	gossip, err := admin.GossipKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.PutPolicy(ctx, kvstore.Policy{Name: "db", Format: "yaml", Document: "kind: Policy"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := admin.CreateToken(ctx, kvstore.TokenSpec{Cluster: "default", TTL: time.Hour, MaxUses: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := admin.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: "a1", AllowLabels: []string{"app=web"}}); err != nil {
		t.Fatal(err)
	}

	nsrv := kvstoretest.NodeServer(t, srv, "default", "a1")
	a1 := kvstoretest.Connect(t, nsrv, nil)
	raw := kvstoretest.Etcd(t, nsrv)

	// What the node needs works.
	s, err := a1.NewSession(ctx, kvstore.SessionConfig{TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("a node cannot open a session: %v", err)
	}
	defer s.Close(ctx)
	self := node("default", 1)
	self.Name = "a1"
	if err := s.Put(ctx, self.Key(), &self); err != nil {
		t.Fatalf("a node cannot write its own record: %v", err)
	}
	ep := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.2"), Identity: 256, Labels: []string{"vm:app=web"}, Cluster: "default", Node: "a1"}
	if err := s.Put(ctx, ep.Key(), &ep); err != nil {
		t.Fatalf("a node cannot write its own endpoint: %v", err)
	}
	if err := s.Put(ctx, kvstore.IdentityRefKey("default", "a1", 256), &kvstore.IdentityRef{ID: 256}); err != nil {
		t.Fatalf("a node cannot write its own identity reference: %v", err)
	}
	if k, err := a1.GossipKey(ctx); err != nil || string(k) != string(gossip) {
		t.Fatalf("a node reads the gossip key: %v (same: %v)", err, string(k) == string(gossip))
	}
	for _, p := range []string{kvstore.NodesPrefix, kvstore.EndpointsPrefix, kvstore.PoliciesPrefix, kvstore.IdentityIDPrefix, kvstore.ClustersPrefix, kvstore.IPAMPrefix, kvstore.GrantsPrefix} {
		if _, err := raw.Get(ctx, p, clientv3.WithPrefix()); err != nil {
			t.Errorf("a node cannot list %s: %v", p, err)
		}
	}
	if g, err := a1.GetGrant(ctx, "default", "a1"); err != nil || g.Allows([]string{"vm:app=web"}) != nil || g.Allows([]string{"vm:app=db"}) == nil {
		t.Errorf("grant as read by the node: %+v, %v", g, err)
	}
	if err := a1.Ping(ctx); err != nil {
		t.Errorf("a node cannot ping: %v", err)
	}

	denied := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: allowed, want permission denied", what)
			return
		}
		if !kvstore.IsPermissionDenied(err) && !errors.Is(err, rpctypes.ErrPermissionDenied) && !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s: %v, want permission denied", what, err)
		}
	}
	other := node("default", 2)
	other.Name = "b1"
	denied("write another node's record", a1.Put(ctx, other.Key(), &other))
	_, err = raw.Delete(ctx, kvstore.NodesPrefix, clientv3.WithPrefix())
	denied("delete every node record", err)
	bep := ep
	bep.Node, bep.IP = "b1", netip.MustParseAddr("100.64.2.2")
	denied("write another node's endpoint", a1.Put(ctx, bep.Key(), &bep))
	denied("write another node's identity reference", a1.Put(ctx, kvstore.IdentityRefKey("default", "b1", 256), &kvstore.IdentityRef{ID: 256}))
	_, err = a1.ListTokens(ctx)
	denied("list tokens", err)
	_, err = raw.Get(ctx, kvstore.Prefix, clientv3.WithPrefix())
	denied("read the whole mesh", err)
	_, _, err = a1.CreateToken(ctx, kvstore.TokenSpec{Cluster: "default", TTL: time.Hour, MaxUses: 10000}, time.Now())
	denied("create a token", err)
	denied("delete a policy", a1.DeletePolicy(ctx, "db"))
	denied("write a policy", a1.PutPolicy(ctx, kvstore.Policy{Name: "evil", Format: "yaml", Document: "kind: Policy"}))
	denied("write a cluster", a1.PutCluster(ctx, kvstore.Cluster{Name: "evil", ID: 9, MeshPool: netip.MustParsePrefix("100.96.0.0/16")}))
	denied("write an identity", a1.Put(ctx, kvstore.IdentityIDKey(999), &kvstore.Identity{ID: 999, Labels: []string{"vm:app=web"}}))
	denied("write a grant", a1.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: "a1", AllowLabels: []string{"*"}}))
	_, err = raw.Put(ctx, kvstore.IPAMKey("default", netip.MustParsePrefix("100.64.9.0/24")), "x")
	denied("claim a CIDR directly", err)
	_, err = raw.Put(ctx, kvstore.GossipKeyKey, "x")
	denied("replace the gossip key", err)
	_, err = raw.AuthDisable(ctx)
	denied("auth disable", err)
	_, err = raw.UserAdd(ctx, "evil", "pw")
	denied("user add", err)
	_, err = raw.RoleGrantPermission(ctx, "node:default/a1", "", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
	denied("widen its own role", err)
	_, err = raw.MemberAdd(ctx, []string{"http://127.0.0.1:1"})
	denied("member add", err)
	rc, err := raw.Snapshot(ctx)
	if err == nil {
		_, err = rc.Read(make([]byte, 1))
		rc.Close()
	}
	denied("snapshot", err)

	// Nothing changed.
	if _, err := admin.GetPolicy(ctx, "db"); err != nil {
		t.Errorf("the policy is gone: %v", err)
	}
	if ts, err := admin.ListTokens(ctx); err != nil || len(ts) != 1 {
		t.Errorf("tokens after the attacks: %d, %v", len(ts), err)
	}
	if resp, err := admin.Source().Get(ctx, kvstore.NodeKey("default", "b1")); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("b1's record was written: %v", err)
	}
	// The admin may do what the node may not.
	if err := admin.Put(ctx, other.Key(), &other); err != nil {
		t.Errorf("admin write: %v", err)
	}
	if err := admin.DeletePolicy(ctx, "db"); err != nil {
		t.Errorf("admin delete policy: %v", err)
	}
	// Removing the user locks the certificate out.
	if err := admin.RemoveNodeUser(ctx, "default", "a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); err == nil {
		t.Error("a removed node still reads")
	}
}

// TestGrantCache reads grants with a node's own credential, as the
// ipcache reconciler will, and follows changes.
func TestGrantCache(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.EnableAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.EnsureNodeUser(ctx, "default", "b1"); err != nil {
		t.Fatal(err)
	}
	if err := admin.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: "a1", AllowLabels: []string{"app=web", "tier=*"}}); err != nil {
		t.Fatal(err)
	}
	b1 := kvstoretest.Connect(t, kvstoretest.NodeServer(t, srv, "default", "b1"), nil)
	gc, err := kvstore.NewGrantCache(b1.Source(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go gc.Run(rctx)
	<-gc.Synced()
	if err := gc.Allows("default", "a1", []string{"vm:app=web", "k8s:tier=db", "mesh:cluster=default"}); err != nil {
		t.Errorf("granted labels refused: %v", err)
	}
	if err := gc.Allows("default", "a1", []string{"vm:app=db"}); err == nil || !strings.Contains(err.Error(), "outside the node's grant") {
		t.Errorf("labels outside the grant: %v", err)
	}
	if err := gc.Allows("default", "c1", []string{"vm:app=db"}); err != nil {
		t.Errorf("a node without a grant (joined before grants) is refused: %v", err)
	}
	if err := admin.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: "a1", AllowLabels: []string{"app=db"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for gc.Allows("default", "a1", []string{"vm:app=db"}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the cache did not follow the new grant")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := gc.Allows("default", "a1", []string{"vm:app=web"}); err == nil {
		t.Error("the old grant still allows app=web")
	}

	// Namespace labels only from Kubernetes nodes, whatever the patterns.
	if err := admin.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: "vm9", AllowLabels: []string{grant.Any}}); err != nil {
		t.Fatal(err)
	}
	if err := admin.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: "k9", AllowLabels: []string{grant.Any}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	ns := []string{"k8s:io.kubernetes.pod.namespace=prod", "k8s:app=db"}
	deadline = time.Now().Add(10 * time.Second)
	for {
		err := gc.Allows("default", "vm9", ns)
		if err != nil {
			if !strings.Contains(err.Error(), "no Kubernetes node") {
				t.Errorf("a VM publishing a namespace label: %v; want it refused as no Kubernetes node", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a VM may publish a namespace label")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := gc.Allows("default", "k9", ns); err != nil {
		t.Errorf("a Kubernetes node's pod labels refused: %v", err)
	}
}
