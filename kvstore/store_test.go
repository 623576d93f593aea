package kvstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// Tests of the typed methods that replaced raw etcd access outside this
// package: Source, Ping, GossipKey, PutPolicies and the identity store.

func TestSourceOffersOnlyReads(t *testing.T) {
	c, _ := kvstoretest.New(t)
	src := c.Source()
	if _, ok := src.(clientv3.KV); ok {
		t.Fatal("Source can be asserted to a clientv3.KV: a cache could write through it")
	}
	putNode(t, c, node("east", 1))
	resp, err := src.Get(context.Background(), kvstore.NodesPrefix, clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Source().Get = %v, %v; want the one node", resp, err)
	}
	// A *clientv3.Client is still a Source, so a cache can follow another
	// (remote, read-only) etcd.
	var _ kvstore.Source = (*clientv3.Client)(nil)
}

func TestPing(t *testing.T) {
	c, _ := kvstoretest.New(t)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping of a live etcd: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ping with a cancelled context = %v, want context.Canceled", err)
	}
}

// A server that accepts connections and never answers: Ping must give up
// after the client's request timeout, not hang on a caller without a
// deadline.
func TestPingHonoursRequestTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn) // held open, never read
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, conn := range conns {
			_ = conn.Close()
		}
	})
	ec, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + l.Addr().String()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	c := kvstore.FromEtcd(ec, 300*time.Millisecond, nil)
	t.Cleanup(func() { _ = c.Close() })
	start := time.Now()
	err = c.Ping(context.Background())
	if err == nil {
		t.Fatal("Ping of a server that never answers succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "etcd does not answer") {
		t.Fatalf("Ping = %v, want a deadline error saying etcd does not answer", err)
	}
	// Generous: it only has to be bounded by the request timeout, not by
	// some longer default.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Ping took %s with a 300ms request timeout", d)
	}
}

func TestGossipKeyIsCreatedOnceAndShared(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	clients := []*kvstore.Client{kvstoretest.Connect(t, srv, nil), kvstoretest.Connect(t, srv, nil)}
	ctx := context.Background()
	const callers = 8 // per client, all at once
	keys := make(chan []byte, callers*len(clients))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, c := range clients {
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				k, err := c.GossipKey(ctx)
				if err != nil {
					t.Errorf("GossipKey: %v", err)
					return
				}
				keys <- k
			}()
		}
	}
	close(start)
	wg.Wait()
	close(keys)
	var first []byte
	for k := range keys {
		if len(k) != 32 {
			t.Fatalf("gossip key of %d bytes, want 32", len(k))
		}
		if first == nil {
			first = k
		} else if !bytes.Equal(k, first) {
			t.Fatal("concurrent callers got different gossip keys")
		}
	}
	if first == nil {
		t.Fatal("no caller got a key")
	}
	// Later callers read the stored key; it sits at the key the agent has
	// always used, in the format it has always written.
	again, err := clients[0].GossipKey(ctx)
	if err != nil || !bytes.Equal(again, first) {
		t.Fatalf("GossipKey later = %x, %v; want the first key", again, err)
	}
	if kvstore.GossipKeyKey != "weft/v1/mesh/gossip-key" {
		t.Fatalf("gossip key moved to %s: existing meshes would get a new key", kvstore.GossipKeyKey)
	}
	resp, err := kvstoretest.Etcd(t, srv).Get(ctx, kvstore.GossipKeyKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading %s: %v, %v", kvstore.GossipKeyKey, resp, err)
	}
	want := `{"version":1,"key":"` + base64.StdEncoding.EncodeToString(first) + `"}`
	if got := string(resp.Kvs[0].Value); got != want {
		t.Fatalf("stored gossip key %s, want %s", got, want)
	}
}

// A key written before the schema named it (by an older agent) is read
// back as it is, never replaced.
func TestGossipKeyReadsExistingKey(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ctx := context.Background()
	old := bytes.Repeat([]byte{7}, 32)
	val := `{"version":1,"key":"` + base64.StdEncoding.EncodeToString(old) + `"}`
	if _, err := kvstoretest.Etcd(t, srv).Put(ctx, kvstore.GossipKeyKey, val); err != nil {
		t.Fatal(err)
	}
	k, err := c.GossipKey(ctx)
	if err != nil || !bytes.Equal(k, old) {
		t.Fatalf("GossipKey = %x, %v; want the existing %x", k, err, old)
	}
}

func TestGossipKeyCorruptValueIsActionable(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	for _, tc := range []struct{ value, want string }{
		{"{not json", "does not decode"},
		{`{"version":1,"key":"` + base64.StdEncoding.EncodeToString([]byte("short")) + `"}`, "is not 32 bytes of base64"},
		{`{"version":1,"key":"%%% not base64"}`, "is not 32 bytes of base64"},
	} {
		if _, err := ec.Put(ctx, kvstore.GossipKeyKey, tc.value); err != nil {
			t.Fatal(err)
		}
		_, err := c.GossipKey(ctx)
		if err == nil {
			t.Fatalf("GossipKey accepted %q", tc.value)
		}
		for _, w := range []string{kvstore.GossipKeyKey, tc.want, "delete it and restart the agents"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("GossipKey on %q = %q; want it to say %q", tc.value, err, w)
			}
		}
		// The bad value is reported, never silently replaced.
		if resp, err := ec.Get(ctx, kvstore.GossipKeyKey); err != nil || string(resp.Kvs[0].Value) != tc.value {
			t.Fatalf("the corrupt gossip key was changed: %v, %v", resp, err)
		}
	}
}

func policyDoc(name string) string {
	return "apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {name: " + name + "}\n"
}

func TestPutPoliciesWritesAllInOneTransaction(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	if err := c.PutPolicies(ctx, nil); err != nil {
		t.Fatalf("PutPolicies of nothing: %v", err)
	}
	ps := []kvstore.Policy{
		{Name: "web", Format: "yaml", Document: policyDoc("web")},
		{Name: "db", Format: "yaml", Document: policyDoc("db")},
		{Name: "cache", Format: "json", Document: `{"kind":"Policy"}`, UpdatedBy: "node-1"},
	}
	if err := c.PutPolicies(ctx, ps); err != nil {
		t.Fatal(err)
	}
	var rev int64
	for _, p := range ps {
		got, err := c.GetPolicy(ctx, p.Name)
		if err != nil || got.Document != p.Document || got.Format != p.Format || got.UpdatedBy != p.UpdatedBy {
			t.Fatalf("GetPolicy(%s) = %+v, %v", p.Name, got, err)
		}
		resp, err := ec.Get(ctx, kvstore.PolicyKey(p.Name))
		if err != nil {
			t.Fatal(err)
		}
		if rev == 0 {
			rev = resp.Kvs[0].ModRevision
		} else if resp.Kvs[0].ModRevision != rev {
			t.Fatalf("policies written at revisions %d and %d: not one transaction", rev, resp.Kvs[0].ModRevision)
		}
	}
	if ps[0].Version != 0 {
		t.Fatal("PutPolicies changed the caller's slice")
	}
}

func TestPutPoliciesOneBadDocumentWritesNothing(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	if err := c.PutPolicy(ctx, kvstore.Policy{Name: "web", Format: "yaml", Document: policyDoc("web")}); err != nil {
		t.Fatal(err)
	}
	good := func(name string) kvstore.Policy {
		return kvstore.Policy{Name: name, Format: "yaml", Document: policyDoc(name) + "# v2\n"}
	}
	for _, tc := range []struct {
		what string
		bad  kvstore.Policy
		want error
	}{
		{"empty document", kvstore.Policy{Name: "db", Format: "yaml", Document: "  \n"}, kvstore.ErrInvalidRecord},
		{"unknown format", kvstore.Policy{Name: "db", Format: "toml", Document: "x = 1"}, kvstore.ErrInvalidRecord},
		{"invalid name", kvstore.Policy{Name: "DB/x", Format: "yaml", Document: policyDoc("db")}, kvstore.ErrInvalidRecord},
		{"a name twice", good("web"), kvstore.ErrInvalidRecord},
	} {
		// The bad one comes last, so any early write would show.
		err := c.PutPolicies(ctx, []kvstore.Policy{good("web"), good("api"), tc.bad})
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: PutPolicies = %v, want %v", tc.what, err, tc.want)
		}
		if p, err := c.GetPolicy(ctx, "web"); err != nil || p.Document != policyDoc("web") {
			t.Fatalf("%s: the existing policy changed: %+v, %v", tc.what, p, err)
		}
		all, err := kvstore.List(ctx, c, kvstore.PoliciesPrefix, kvstore.DecodePolicy)
		if err != nil || len(all) != 1 {
			t.Fatalf("%s: %d policies stored (%v), want only the existing one", tc.what, len(all), err)
		}
	}
}

func labelsHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func newSession(t *testing.T, c *kvstore.Client) *kvstore.Session {
	t.Helper()
	s, err := c.NewSession(context.Background(), kvstore.SessionConfig{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func TestIdentityStoreCreateAndReference(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	n1 := kvstore.IdentityHolder{Session: newSession(t, c), Cluster: "east", Node: "node-1"}
	n2 := kvstore.IdentityHolder{Session: newSession(t, c), Cluster: "east", Node: "node-2"}
	labels := []string{"k8s:app=web", "mesh:cluster=east"}
	hash := labelsHash(strings.Join(labels, ","))

	if _, found, err := c.IdentityNumberValue(ctx, hash); err != nil || found {
		t.Fatalf("IdentityNumberValue of an unknown set = %v, %v", found, err)
	}
	if ok, err := c.IdentityExists(ctx, 300); err != nil || ok {
		t.Fatalf("IdentityExists(300) before creation = %v, %v", ok, err)
	}
	if ok, err := c.CreateIdentity(ctx, n1, 300, hash, labels); err != nil || !ok {
		t.Fatalf("CreateIdentity = %v, %v", ok, err)
	}
	// The identity, its labels key and node-1's reference: only the
	// reference is leased.
	for key, leased := range map[string]bool{
		kvstore.IdentityIDKey(300):                    false,
		kvstore.IdentityLabelsKey(hash):               false,
		kvstore.IdentityRefKey("east", "node-1", 300): true,
	} {
		resp, err := ec.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s after CreateIdentity: %v, %v", key, resp, err)
		}
		if got := clientv3.LeaseID(resp.Kvs[0].Lease); (got == n1.Session.Lease()) != leased || !leased && got != 0 {
			t.Fatalf("%s has lease %x, want leased=%v (session lease %x)", key, got, leased, n1.Session.Lease())
		}
	}
	if id, _, err := kvstore.Get(ctx, c, kvstore.IdentityIDKey(300), kvstore.DecodeIdentity); err != nil || id.ID != 300 || strings.Join(id.Labels, ",") != strings.Join(labels, ",") {
		t.Fatalf("stored identity %+v, %v", id, err)
	}
	if ok, err := c.IdentityExists(ctx, 300); err != nil || !ok {
		t.Fatalf("IdentityExists(300) = %v, %v", ok, err)
	}

	// Neither the set nor the number can be created twice.
	other := []string{"k8s:app=db"}
	if ok, err := c.CreateIdentity(ctx, n2, 301, hash, labels); err != nil || ok {
		t.Fatalf("second number for the same set: %v, %v", ok, err)
	}
	if ok, err := c.CreateIdentity(ctx, n2, 300, labelsHash("other"), other); err != nil || ok {
		t.Fatalf("second set for the same number: %v, %v", ok, err)
	}
	for _, key := range []string{kvstore.IdentityIDKey(301), kvstore.IdentityLabelsKey(labelsHash("other")), kvstore.IdentityRefKey("east", "node-2", 300), kvstore.IdentityRefKey("east", "node-2", 301)} {
		if resp, _ := ec.Get(ctx, key); len(resp.Kvs) != 0 {
			t.Fatalf("a refused creation wrote %s", key)
		}
	}

	// node-2 references the existing identity on the strength of what it
	// read; a stale read gets nothing.
	value, found, err := c.IdentityNumberValue(ctx, hash)
	if err != nil || !found {
		t.Fatalf("IdentityNumberValue = %v, %v", found, err)
	}
	if num, err := kvstore.DecodeIdentityNumber(value); err != nil || num.ID != 300 {
		t.Fatalf("labels key holds %+v, %v", num, err)
	}
	if ok, err := c.ReferenceIdentity(ctx, n2, 300, hash, []byte(`{"version":1,"id":299}`)); err != nil || ok {
		t.Fatalf("reference on a stale read = %v, %v", ok, err)
	}
	if ok, err := c.ReferenceIdentity(ctx, n2, 300, hash, value); err != nil || !ok {
		t.Fatalf("ReferenceIdentity = %v, %v", ok, err)
	}
	if resp, _ := ec.Get(ctx, kvstore.IdentityRefKey("east", "node-2", 300)); len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != n2.Session.Lease() {
		t.Fatalf("node-2's reference: %v", resp)
	}

	// A reference must go through a session of the same client.
	foreign := kvstore.IdentityHolder{Session: newSession(t, kvstoretest.Connect(t, srv, nil)), Cluster: "east", Node: "node-3"}
	if _, err := c.ReferenceIdentity(ctx, foreign, 300, hash, value); !errors.Is(err, kvstore.ErrInvalidConfig) {
		t.Fatalf("reference through another client's session: %v, want ErrInvalidConfig", err)
	}
	if _, err := c.CreateIdentity(ctx, kvstore.IdentityHolder{Session: n1.Session, Cluster: "East", Node: "node-1"}, 302, labelsHash("x"), other); !errors.Is(err, kvstore.ErrInvalidKey) {
		t.Fatalf("holder with an invalid cluster name: %v, want ErrInvalidKey", err)
	}
}

// After a lost lease a reference comes back only while its identity does;
// otherwise the holder hears which number it lost.
func TestIdentityStoreReportsLostReferences(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	lost := make(chan uint32, 2)
	h := kvstore.IdentityHolder{Session: newSession(t, c), Cluster: "east", Node: "node-1", OnLost: func(id uint32) { lost <- id }}
	keep, gone := labelsHash("keep"), labelsHash("gone")
	for id, hash := range map[uint32]string{300: keep, 301: gone} {
		if ok, err := c.CreateIdentity(ctx, h, id, hash, []string{"k8s:app=a" + hash[:4]}); err != nil || !ok {
			t.Fatalf("CreateIdentity(%d) = %v, %v", id, ok, err)
		}
	}
	if _, err := ec.Delete(ctx, kvstore.IdentityLabelsKey(gone)); err != nil {
		t.Fatal(err)
	}
	if _, err := ec.Revoke(ctx, h.Session.Lease()); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-lost:
		if id != 301 {
			t.Fatalf("OnLost(%d), want 301", id)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("OnLost not called")
	}
	testutil.Eventually(t, time.Minute, "the reference to 300 is restored", func() bool {
		resp, err := ec.Get(ctx, kvstore.IdentityRefKey("east", "node-1", 300))
		return err == nil && len(resp.Kvs) == 1
	})
	if resp, _ := ec.Get(ctx, kvstore.IdentityRefKey("east", "node-1", 301)); len(resp.Kvs) != 0 {
		t.Fatal("the reference to a removed identity was restored")
	}
	select {
	case id := <-lost:
		t.Fatalf("OnLost(%d) called for a restored reference", id)
	default:
	}
}

func TestIdentityStoreListAndDelete(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	h := kvstore.IdentityHolder{Session: newSession(t, c), Cluster: "east", Node: "node-1"}
	a, b := labelsHash("a"), labelsHash("b")
	if ok, err := c.CreateIdentity(ctx, h, 300, a, []string{"k8s:app=a"}); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if ok, err := c.CreateIdentity(ctx, h, 301, b, []string{"k8s:app=b"}); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := h.Session.Delete(ctx, kvstore.IdentityRefKey("east", "node-1", 300)); err != nil {
		t.Fatal(err)
	}
	l, err := c.ListIdentities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.RefKeys) != 1 || l.RefKeys[0] != kvstore.IdentityRefKey("east", "node-1", 301) {
		t.Fatalf("RefKeys = %v, want node-1's reference to 301", l.RefKeys)
	}
	if len(l.Identities) != 2 || l.Identities[0].Key != kvstore.IdentityIDKey(300) || l.Identities[1].Key != kvstore.IdentityIDKey(301) {
		t.Fatalf("Identities = %+v, want 300 and 301", l.Identities)
	}
	if _, err := kvstore.IdentityDecoder(l.Identities[0].Key, l.Identities[0].Value); err != nil {
		t.Fatalf("listed value does not decode: %v", err)
	}
	ida := l.Identities[0]
	if l.Revision < ida.ModRevision || ida.ModRevision == 0 {
		t.Fatalf("listing revision %d, identity modified at %d", l.Revision, ida.ModRevision)
	}

	// A reference written after the listing: no deletion based on it may
	// happen, and the caller learns that all of them would fail.
	if ok, err := c.ReferenceIdentity(ctx, kvstore.IdentityHolder{Session: h.Session, Cluster: "east", Node: "node-2"}, 301, b, mustValue(t, c, b)); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if del, refs, err := c.DeleteUnreferencedIdentity(ctx, 300, a, ida.ModRevision, l.Revision); err != nil || del || !refs {
		t.Fatalf("delete after references changed = %v, %v, %v; want false, true", del, refs, err)
	}
	l, err = c.ListIdentities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ida = l.Identities[0]
	// The identity changed since it was read, or its labels key does not
	// name it: not deleted, and the others are not blocked.
	if del, refs, err := c.DeleteUnreferencedIdentity(ctx, 300, a, ida.ModRevision-1, l.Revision); err != nil || del || refs {
		t.Fatalf("delete of a changed identity = %v, %v, %v; want false, false", del, refs, err)
	}
	if del, refs, err := c.DeleteUnreferencedIdentity(ctx, 300, b, ida.ModRevision, l.Revision); err != nil || del || refs {
		t.Fatalf("delete through a labels key naming another number = %v, %v, %v; want false, false", del, refs, err)
	}
	if del, refs, err := c.DeleteUnreferencedIdentity(ctx, 300, a, ida.ModRevision, l.Revision); err != nil || !del || refs {
		t.Fatalf("DeleteUnreferencedIdentity = %v, %v, %v; want true, false", del, refs, err)
	}
	for _, key := range []string{kvstore.IdentityIDKey(300), kvstore.IdentityLabelsKey(a)} {
		if resp, _ := ec.Get(ctx, key); len(resp.Kvs) != 0 {
			t.Fatalf("%s remains after deletion", key)
		}
	}
	if ok, err := c.IdentityExists(ctx, 301); err != nil || !ok {
		t.Fatalf("the other identity went too: %v, %v", ok, err)
	}
}

func mustValue(t *testing.T, c *kvstore.Client, hash string) []byte {
	t.Helper()
	v, found, err := c.IdentityNumberValue(context.Background(), hash)
	if err != nil || !found {
		t.Fatalf("IdentityNumberValue(%s) = %v, %v", hash, found, err)
	}
	return v
}
