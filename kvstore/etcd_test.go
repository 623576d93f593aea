package kvstore_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

func TestMain(m *testing.M) { kvstoretest.Main(m) }

func wgKey(i int) string {
	b := make([]byte, 32)
	b[0], b[1] = byte(i), byte(i>>8)
	return base64.StdEncoding.EncodeToString(b)
}

func node(cluster string, i int) kvstore.Node {
	return kvstore.Node{
		Name: fmt.Sprintf("node-%d", i), Cluster: cluster,
		Endpoints:   []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 51833)},
		WGPublicKey: wgKey(i),
		CIDRs:       []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}), 32)},
		Labels:      []string{"mesh:cluster=" + cluster, "vm:app=web"},
	}
}

func TestServerRefusesPlaintextAndAnonymousClients(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	endpoint := srv.Config.Endpoints[0]
	ctx := context.Background()

	// Plain http to the TLS port.
	plain := kvstore.Config{Endpoints: []string{strings.Replace(endpoint, "https://", "http://", 1)}, DialTimeout: time.Second}
	if c, err := kvstore.New(ctx, plain); err == nil {
		c.Close()
		t.Fatalf("%s etcd accepted a plaintext client", srv.Kind)
	}
	// TLS that trusts the server but presents no client certificate.
	anon := kvstore.Config{Endpoints: []string{endpoint}, CAFile: srv.Files.CAFile, DialTimeout: time.Second}
	if c, err := kvstore.New(ctx, anon); err == nil {
		c.Close()
		t.Fatalf("%s etcd accepted a client without a certificate", srv.Kind)
	}
	// The administrative certificate works.
	c := kvstoretest.Connect(t, srv, nil)
	if err := c.PutPolicy(ctx, kvstore.Policy{Name: "p", Format: "yaml", Document: "kind: Policy"}); err != nil {
		t.Fatal(err)
	}
	// A client that does not trust the server's CA is refused too.
	ec, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, TLS: &tls.Config{MinVersion: tls.VersionTLS12}})
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, gerr := ec.Get(cctx, "x")
		cancel()
		ec.Close()
		if gerr == nil {
			t.Fatal("a client that does not verify against the mesh CA got an answer")
		}
	}
}

func TestSessionRestoresKeysAfterLeaseLoss(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	s, err := c.NewSession(ctx, kvstore.SessionConfig{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	n := node("east", 1)
	if err := s.Put(ctx, n.Key(), &n); err != nil {
		t.Fatal(err)
	}
	ep := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.0.9"), Identity: 300, Cluster: "east", Node: n.Name}
	if err := s.Put(ctx, ep.Key(), &ep); err != nil {
		t.Fatal(err)
	}
	old := s.Lease()
	// Someone revokes the lease with the plain etcd client: etcd deletes
	// the node's keys at once.
	if _, err := ec.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	if resp, err := ec.Get(ctx, n.Key()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("revoking the lease did not delete the node key: %v %v", resp, err)
	}
	// The session notices and writes both keys again under a new lease.
	for _, key := range []string{n.Key(), ep.Key()} {
		testutil.Eventually(t, time.Minute, "session restores "+key, func() bool {
			resp, err := ec.Get(ctx, key)
			return err == nil && len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) != old && resp.Kvs[0].Lease != 0
		})
	}
	got, _, err := kvstore.Get(ctx, c, n.Key(), kvstore.DecodeNode)
	if err != nil || got.WGPublicKey != n.WGPublicKey {
		t.Fatalf("restored node = %+v, %v", got, err)
	}
	if g := s.Generation(); g != 2 {
		t.Fatalf("session generation %d after one restore, want 2", g)
	}
	// Close revokes: the keys go away with it.
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ec.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Fatalf("keys left after Close: %d", len(resp.Kvs))
	}
}

func TestSessionDetachKeepsKeysUntilTheLeaseExpires(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	s, err := c.NewSession(ctx, kvstore.SessionConfig{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n := node("east", 1)
	if err := s.Put(ctx, n.Key(), &n); err != nil {
		t.Fatal(err)
	}
	s.Detach()
	// The record outlives the session (a restarting agent finds it) ...
	if resp, err := ec.Get(ctx, n.Key()); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the key went with Detach: %v %v", resp, err)
	}
	// ... but nobody keeps it alive: it goes with the lease, and the
	// detached session does not restore it.
	testutil.Eventually(t, 30*time.Second, "the detached session's key to expire", func() bool {
		resp, err := ec.Get(ctx, n.Key())
		return err == nil && len(resp.Kvs) == 0
	})
	time.Sleep(500 * time.Millisecond)
	if resp, _ := ec.Get(ctx, n.Key()); len(resp.Kvs) != 0 {
		t.Fatal("a detached session wrote its key again")
	}
}

func TestSessionDefendsItsKeys(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	s, err := c.NewSession(ctx, kvstore.SessionConfig{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	n := node("east", 1)
	if err := s.Put(ctx, n.Key(), &n); err != nil {
		t.Fatal(err)
	}
	s.Defend(kvstore.NodesPrefix)
	time.Sleep(200 * time.Millisecond) // the watch is up
	own := func() (kvstore.Node, bool) {
		got, _, err := kvstore.Get(ctx, c, n.Key(), kvstore.DecodeNode)
		return got, err == nil
	}
	// Someone else deletes the record: the owner writes it again.
	if _, err := ec.Delete(ctx, n.Key()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the deleted record to be written again", func() bool {
		got, ok := own()
		return ok && got.WGPublicKey == n.WGPublicKey
	})
	// Someone else overwrites it with a key of theirs: written back.
	evil := n
	evil.WGPublicKey = node("east", 2).WGPublicKey
	time.Sleep(1100 * time.Millisecond) // rewrites of one key are a second apart
	if err := c.Put(ctx, n.Key(), &evil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the overwritten record to be written back", func() bool {
		got, ok := own()
		return ok && got.WGPublicKey == n.WGPublicKey
	})
	// The owner's own new value stays (no revert to the registered old one).
	mine := n
	mine.AgentVersion = "v2"
	if err := s.Put(ctx, n.Key(), &mine); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if got, ok := own(); !ok || got.AgentVersion != "v2" {
		t.Fatalf("the owner's own update was reverted: %+v", got)
	}
	// The owner's own delete stays deleted.
	if err := s.Delete(ctx, n.Key()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, ok := own(); ok {
		t.Fatal("the owner's own delete was undone")
	}
}

func TestSessionGuardIsCheckedOnRestore(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	s, err := c.NewSession(ctx, kvstore.SessionConfig{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	if _, err := ec.Put(ctx, "weft/v1/test/anchor", "1"); err != nil {
		t.Fatal(err)
	}
	guard := func() []clientv3.Cmp {
		return []clientv3.Cmp{clientv3.Compare(clientv3.Value("weft/v1/test/anchor"), "=", "1")}
	}
	lost := make(chan string, 2)
	for _, k := range []string{"weft/v1/test/a", "weft/v1/test/b"} {
		ok, err := s.PutIf(ctx, k, []byte("x"), guard(), guard, func(k string) { lost <- k })
		if err != nil || !ok {
			t.Fatalf("PutIf(%s) = %v, %v", k, ok, err)
		}
	}
	// Without the anchor the guarded write does not happen.
	if _, err := ec.Delete(ctx, "weft/v1/test/anchor"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.PutIf(ctx, "weft/v1/test/c", []byte("x"), guard(), guard, nil); err != nil || ok {
		t.Fatalf("PutIf with failing guard = %v, %v; want false, nil", ok, err)
	}
	if _, err := ec.Revoke(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	got := []string{<-lost, <-lost}
	slices.Sort(got)
	if !slices.Equal(got, []string{"weft/v1/test/a", "weft/v1/test/b"}) {
		t.Fatalf("lost keys %v", got)
	}
	if resp, _ := ec.Get(ctx, "weft/v1/test/", clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Fatalf("guarded keys restored although their guard failed: %v", resp.Kvs)
	}
	if s.Keys() != 0 {
		t.Fatalf("session still keeps %d keys", s.Keys())
	}
}

// recorder rebuilds a map purely from cache events, as a consumer would.
type recorder struct {
	mu    sync.Mutex
	state map[string]kvstore.Node
	kinds map[kvstore.EventKind]int
}

func newRecorder() *recorder {
	return &recorder{state: map[string]kvstore.Node{}, kinds: map[kvstore.EventKind]int{}}
}

func (r *recorder) on(ev kvstore.Event[kvstore.Node]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds[ev.Kind]++
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		r.state[ev.Key] = ev.Value
	case kvstore.EventDelete:
		delete(r.state, ev.Key)
	}
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortedKeys(r.state)
}

func (r *recorder) count(k kvstore.EventKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kinds[k]
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func truth(t *testing.T, c *kvstore.Client) []string {
	t.Helper()
	m, err := kvstore.List(context.Background(), c, kvstore.NodesPrefix, kvstore.DecodeNode)
	if err != nil {
		t.Fatal(err)
	}
	return sortedKeys(m)
}

func startCache(t *testing.T, src kvstore.Source, rec *recorder, logBuf *kvstoretest.LogBuffer) *kvstore.Cache[kvstore.Node] {
	t.Helper()
	cfg := kvstore.CacheConfig[kvstore.Node]{Name: "nodes", Prefix: kvstore.NodesPrefix, Decode: kvstore.NodeDecoder, OnEvent: rec.on, PageSize: 7}
	if logBuf != nil {
		cfg.Logger = logBuf.Logger()
	}
	cache, err := kvstore.NewCache(src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cache.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-cache.Synced()
	return cache
}

func putNode(t *testing.T, c *kvstore.Client, n kvstore.Node) {
	t.Helper()
	if err := c.Put(context.Background(), n.Key(), &n); err != nil {
		t.Fatal(err)
	}
}

func TestCacheListsThenWatches(t *testing.T) {
	c, _ := kvstoretest.New(t)
	for i := range 20 { // more than one page
		putNode(t, c, node("east", i))
	}
	rec := newRecorder()
	cache := startCache(t, c.Source(), rec, nil)
	if cache.Len() != 20 || rec.count(kvstore.EventAdd) != 20 {
		t.Fatalf("after sync: cache %d entries, %d add events; want 20", cache.Len(), rec.count(kvstore.EventAdd))
	}
	updated := node("east", 3)
	updated.AgentVersion = "v2"
	putNode(t, c, updated)
	putNode(t, c, node("west", 100))
	if err := c.Delete(context.Background(), kvstore.NodeKey("east", "node-5")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Minute, "cache sees update, add and delete", func() bool {
		n, ok := cache.Get(updated.Key())
		_, gone := cache.Get(kvstore.NodeKey("east", "node-5"))
		return ok && n.AgentVersion == "v2" && !gone && cache.Len() == 20
	})
	if rec.count(kvstore.EventUpdate) != 1 || rec.count(kvstore.EventDelete) != 1 || rec.count(kvstore.EventAdd) != 21 {
		t.Fatalf("events: %v", rec.kinds)
	}
	if got, want := rec.names(), truth(t, c); !slices.Equal(got, want) {
		t.Fatalf("consumer state %v, etcd %v", got, want)
	}
}

// pausable wraps a real etcd client so the test can cut the cache's watch
// and hold it off while history is written and compacted.
type pausable struct {
	*clientv3.Client
	mu     sync.Mutex
	paused chan struct{} // non-nil while paused: Watch waits for it to close
	cancel []context.CancelFunc
}

func (p *pausable) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	p.mu.Lock()
	gate := p.paused
	p.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	p.mu.Lock()
	p.cancel = append(p.cancel, cancel)
	p.mu.Unlock()
	return p.Client.Watch(wctx, key, opts...)
}

func (p *pausable) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = make(chan struct{})
	for _, c := range p.cancel {
		c()
	}
	p.cancel = nil
}

func (p *pausable) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.paused)
	p.paused = nil
}

func TestCacheConvergesAfterCompaction(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	for i := range 10 {
		putNode(t, c, node("east", i))
	}
	src := &pausable{Client: ec}
	var logBuf kvstoretest.LogBuffer
	rec := newRecorder()
	cache := startCache(t, src, rec, &logBuf)

	// Cut the watch, then change history and compact it away: the cache
	// can only catch up by relisting.
	src.pause()
	for i := 0; i < 10; i += 2 {
		if err := c.Delete(ctx, kvstore.NodeKey("east", fmt.Sprintf("node-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	upd := node("east", 1)
	upd.AgentVersion = "after-compaction"
	putNode(t, c, upd)
	for i := 10; i < 15; i++ {
		putNode(t, c, node("east", i))
	}
	resp, err := ec.Put(ctx, "weft/v1/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	src.resume()

	want := truth(t, c)
	testutil.Eventually(t, time.Minute, "cache converges after compaction", func() bool {
		return slices.Equal(sortedKeys(cache.Snapshot()), want) && slices.Equal(rec.names(), want)
	})
	if n, _ := cache.Get(upd.Key()); n.AgentVersion != "after-compaction" {
		t.Fatalf("update lost across compaction: %+v", n)
	}
	if rec.count(kvstore.EventDelete) != 5 || rec.count(kvstore.EventUpdate) != 1 {
		t.Fatalf("difference emitted as events: %v, want 5 deletes and 1 update", rec.kinds)
	}
	if !strings.Contains(logBuf.String(), "compacted") {
		t.Fatalf("no relist after compaction in the log:\n%s", logBuf.String())
	}
}

func TestCacheSkipsCorruptValues(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	for i := range 3 {
		putNode(t, c, node("east", i))
	}
	corrupt := kvstore.NodeKey("east", "corrupt")
	future := kvstore.NodeKey("east", "future")
	if _, err := ec.Put(ctx, corrupt, "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := ec.Put(ctx, future, `{"version":7,"name":"future"}`); err != nil {
		t.Fatal(err)
	}
	var logBuf kvstoretest.LogBuffer
	rec := newRecorder()
	cache := startCache(t, c.Source(), rec, &logBuf)
	if cache.Len() != 3 {
		t.Fatalf("cache holds %d entries, want the 3 valid ones", cache.Len())
	}
	for _, key := range []string{corrupt, future} {
		if !strings.Contains(logBuf.String(), `"key":"`+key+`"`) {
			t.Fatalf("no log record naming %s:\n%s", key, logBuf.String())
		}
	}
	if !strings.Contains(logBuf.String(), "unsupported record version") {
		t.Fatalf("the newer version is not named as such:\n%s", logBuf.String())
	}

	// While watching: a corrupt write is skipped, later good writes still
	// arrive, and a good value overwritten with garbage is dropped rather
	// than kept stale.
	if _, err := ec.Put(ctx, kvstore.NodeKey("east", "node-1"), "garbage"); err != nil {
		t.Fatal(err)
	}
	// A record stored under someone else's key is refused too.
	impostor := node("east", 9)
	data, _ := kvstore.Encode(&impostor)
	if _, err := ec.Put(ctx, kvstore.NodeKey("east", "node-2x"), string(data)); err != nil {
		t.Fatal(err)
	}
	putNode(t, c, node("east", 42))
	testutil.Eventually(t, time.Minute, "cache processes the writes after the corrupt ones", func() bool {
		_, ok := cache.Get(kvstore.NodeKey("east", "node-42"))
		return ok
	})
	if _, ok := cache.Get(kvstore.NodeKey("east", "node-1")); ok {
		t.Fatal("cache kept node-1's old value after it was overwritten with garbage")
	}
	if _, ok := cache.Get(kvstore.NodeKey("east", "node-2x")); ok {
		t.Fatal("cache accepted a node record stored under another node's key")
	}
	if got := rec.names(); !slices.Equal(got, []string{kvstore.NodeKey("east", "node-0"), kvstore.NodeKey("east", "node-2"), kvstore.NodeKey("east", "node-42")}) {
		t.Fatalf("consumer state %v", got)
	}
	for _, key := range []string{kvstore.NodeKey("east", "node-1"), kvstore.NodeKey("east", "node-2x")} {
		if !strings.Contains(logBuf.String(), `"key":"`+key+`"`) {
			t.Fatalf("no log record naming %s", key)
		}
	}
}

func TestIPAM(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	east := kvstore.Cluster{Name: "east", ID: 1, MeshPool: netip.MustParsePrefix("100.64.0.0/16"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	if err := c.PutCluster(ctx, east); err != nil {
		t.Fatal(err)
	}
	// Overlapping pools are refused with both clusters named, and nothing
	// is written.
	west := kvstore.Cluster{Name: "west", ID: 2, MeshPool: netip.MustParsePrefix("100.64.128.0/17")}
	err := c.PutCluster(ctx, west)
	if !errors.Is(err, kvstore.ErrOverlap) || !strings.Contains(err.Error(), `"west"`) || !strings.Contains(err.Error(), `"east"`) {
		t.Fatalf("overlapping cluster: %v", err)
	}
	if _, err := c.GetCluster(ctx, "west"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("refused cluster was written: %v", err)
	}
	west.MeshPool = netip.MustParsePrefix("100.65.0.0/16")
	west.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.128.0/17")}
	if err := c.PutCluster(ctx, west); !errors.Is(err, kvstore.ErrOverlap) {
		t.Fatalf("overlapping pod CIDRs: %v", err)
	}
	west.PodCIDRs = nil
	if err := c.PutCluster(ctx, west); err != nil {
		t.Fatal(err)
	}

	// Nodes racing for CIDRs get distinct ones.
	const nodes = 24
	got := make([]netip.Prefix, nodes)
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := c.AllocateNodeCIDR(ctx, "east", fmt.Sprintf("vm-%d", i), 24)
			if err != nil {
				errs <- err
			}
			got[i] = p
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[netip.Prefix]int{}
	for i, p := range got {
		if !east.MeshPool.Contains(p.Addr()) || p.Bits() != 24 {
			t.Fatalf("vm-%d got %s, not a /24 of %s", i, p, east.MeshPool)
		}
		if j, dup := seen[p]; dup {
			t.Fatalf("vm-%d and vm-%d both got %s", j, i, p)
		}
		seen[p] = i
	}
	// A restarted node gets its CIDR back.
	again, err := c.AllocateNodeCIDR(ctx, "east", "vm-3", 24)
	if err != nil || again != got[3] {
		t.Fatalf("re-allocation for vm-3 = %s, %v; want %s", again, err, got[3])
	}
	// Release needs the owner; a released CIDR is reused.
	if err := c.ReleaseNodeCIDR(ctx, "east", "vm-4", got[3]); !errors.Is(err, kvstore.ErrNotOwner) {
		t.Fatalf("release by another node: %v", err)
	}
	if err := c.ReleaseNodeCIDR(ctx, "east", "vm-3", got[3]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodeCIDRs(ctx, "East/../x", "vm-3"); !errors.Is(err, kvstore.ErrInvalidKey) {
		t.Fatalf("NodeCIDRs of a bad cluster name: %v", err)
	}
	if cidrs, _ := c.NodeCIDRs(ctx, "east", "vm-3"); len(cidrs) != 0 {
		t.Fatalf("vm-3 still owns %v", cidrs)
	}
	lowest := slices.MinFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if err := c.ReleaseNodeCIDR(ctx, "east", fmt.Sprintf("vm-%d", seen[lowest]), lowest); err != nil {
		t.Fatal(err)
	}
	if p, err := c.AllocateNodeCIDR(ctx, "east", "newcomer", 24); err != nil || p != lowest {
		t.Fatalf("newcomer got %s, %v; want the freed %s", p, err, lowest)
	}
	// Bad sizes and unknown clusters are refused clearly.
	if _, err := c.AllocateNodeCIDR(ctx, "east", "vm-x", 8); !errors.Is(err, kvstore.ErrInvalidConfig) {
		t.Fatalf("a /8 from a /16 pool: %v", err)
	}
	if _, err := c.AllocateNodeCIDR(ctx, "nowhere", "vm-x", 24); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("unknown cluster: %v", err)
	}
	// Exhaustion.
	small := kvstore.Cluster{Name: "small", ID: 3, MeshPool: netip.MustParsePrefix("100.66.0.0/23")}
	if err := c.PutCluster(ctx, small); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := c.AllocateNodeCIDR(ctx, "small", fmt.Sprintf("n%d", i), 24); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.AllocateNodeCIDR(ctx, "small", "n2", 24); !errors.Is(err, kvstore.ErrPoolExhausted) {
		t.Fatalf("third /24 from a /23: %v", err)
	}
	// A value that names another CIDR than its key: the key is what is
	// claimed, so the key's CIDR is taken and the allocation moves on
	// (before, it retried the existing key forever).
	odd := kvstore.Cluster{Name: "odd", ID: 4, MeshPool: netip.MustParsePrefix("100.67.0.0/22")}
	if err := c.PutCluster(ctx, odd); err != nil {
		t.Fatal(err)
	}
	stray, err := kvstore.Encode(&kvstore.IPAMAllocation{Cluster: "odd", Node: "ghost", CIDR: netip.MustParsePrefix("100.67.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec.Put(ctx, kvstore.IPAMKey("odd", netip.MustParsePrefix("100.67.0.0/24")), string(stray)); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second) // only so a regression fails instead of hanging
	defer cancel()
	if p, err := c.AllocateNodeCIDR(actx, "odd", "n0", 24); err != nil || p != netip.MustParsePrefix("100.67.1.0/24") {
		t.Fatalf("allocation beside a mismatched record = %s, %v; want 100.67.1.0/24", p, err)
	}
}

func TestTokens(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	now := time.Now()
	tok, secret, err := c.CreateToken(ctx, kvstore.TokenSpec{Cluster: "east", Labels: []string{"vm:app=db"}, TTL: time.Hour, MaxUses: 3}, now)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := ec.Get(ctx, kvstore.TokenKey(tok.ID))
	if strings.Contains(string(raw.Kvs[0].Value), secret) {
		t.Fatal("the secret is stored in clear")
	}
	if _, err := c.ConsumeToken(ctx, tok.ID, "wrong", now); !errors.Is(err, kvstore.ErrTokenUnknown) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := c.ConsumeToken(ctx, "tnope", secret, now); !errors.Is(err, kvstore.ErrTokenUnknown) {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := c.ConsumeToken(ctx, tok.ID, secret, now.Add(2*time.Hour)); !errors.Is(err, kvstore.ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
	// Ten joins race for three uses: exactly three win.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, usedUp := 0, 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.ConsumeToken(ctx, tok.ID, secret, now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, kvstore.ErrTokenUsedUp):
				usedUp++
			default:
				t.Errorf("consume: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 3 || usedUp != 7 {
		t.Fatalf("%d joins won, %d used up; want 3 and 7", wins, usedUp)
	}
	tok2, secret2, err := c.CreateToken(ctx, kvstore.TokenSpec{Cluster: "east", TTL: time.Hour, MaxUses: 1}, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RevokeToken(ctx, tok2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConsumeToken(ctx, tok2.ID, secret2, now); !errors.Is(err, kvstore.ErrTokenRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	list, err := c.ListTokens(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("ListTokens = %d tokens, %v", len(list), err)
	}
	if _, _, err := c.CreateToken(ctx, kvstore.TokenSpec{Cluster: "east", TTL: time.Hour}, now); !errors.Is(err, kvstore.ErrInvalidRecord) {
		t.Fatalf("token without maxUses: %v", err)
	}
}

func TestPolicies(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	doc := "apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {name: db}\n"
	if err := c.PutPolicy(ctx, kvstore.Policy{Name: "db", Format: "yaml", Document: doc}); err != nil {
		t.Fatal(err)
	}
	p, err := c.GetPolicy(ctx, "db")
	if err != nil || p.Document != doc {
		t.Fatalf("GetPolicy = %+v, %v", p, err)
	}
	if err := c.PutPolicy(ctx, kvstore.Policy{Name: "db", Format: "toml", Document: doc}); !errors.Is(err, kvstore.ErrInvalidRecord) {
		t.Fatalf("bad format: %v", err)
	}
	if p, _ := c.GetPolicy(ctx, "db"); p.Format != "yaml" {
		t.Fatal("a refused write changed the stored policy")
	}
	if err := c.DeletePolicy(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeletePolicy(ctx, "db"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
}

// TestCacheOnRevisionAfterAWholeWrite: a transaction of three policies is
// one revision; OnRevision reports it only after all three events were
// passed on, and the listing's revision after the listing's events.
func TestCacheOnRevisionAfterAWholeWrite(t *testing.T) {
	c, _ := kvstoretest.New(t)
	var mu sync.Mutex
	var log []string
	cache, err := kvstore.NewCache(c.Source(), kvstore.CacheConfig[kvstore.Policy]{
		Name: "policies", Prefix: kvstore.PoliciesPrefix, Decode: kvstore.PolicyDecoder,
		OnEvent: func(ev kvstore.Event[kvstore.Policy]) {
			mu.Lock()
			log = append(log, "event "+ev.Value.Name)
			mu.Unlock()
		},
		OnRevision: func(rev int64) {
			mu.Lock()
			log = append(log, fmt.Sprint("rev ", rev))
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cache.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-cache.Synced()
	var ps []kvstore.Policy
	for _, n := range []string{"a", "b", "c"} {
		ps = append(ps, kvstore.Policy{Name: n, Format: "yaml", Document: "apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {name: " + n + "}\nspec: {endpointSelector: {}}\n"})
	}
	rev, err := c.PutPoliciesRevision(context.Background(), ps)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint("rev ", rev)
	testutil.Eventually(t, time.Minute, "the write's revision reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(log, want)
	})
	mu.Lock()
	defer mu.Unlock()
	i := slices.Index(log, want)
	if i < 3 || log[i-3] != "event a" || log[i-2] != "event b" || log[i-1] != "event c" || !strings.HasPrefix(log[0], "rev ") {
		t.Fatalf("order: %q; want the listing's revision, then the three events before %s", log, want)
	}
}
