package mirror_test

import (
	"context"
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

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/kvstore/mirror"
)

func TestMain(m *testing.M) { kvstoretest.Main(m) }

const westID = 2

func wgKey(i int) string {
	b := make([]byte, 32)
	b[0], b[1], b[2] = byte(i), byte(i>>8), 0xee
	return base64.StdEncoding.EncodeToString(b)
}

func node(cluster string, i int) kvstore.Node {
	return kvstore.Node{
		Name: fmt.Sprintf("node-%d", i), Cluster: cluster,
		Endpoints:   []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 51833)},
		WGPublicKey: wgKey(i),
		CIDRs:       []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}), 32)},
	}
}

// westIdentity is the n-th identity of cluster id.
func clusterIdentity(id, n int) uint32 {
	lo, _, err := identity.ClusterRange(id)
	if err != nil {
		panic(err)
	}
	return uint32(lo) + uint32(n)
}

func endpoint(cluster string, i int, id uint32) kvstore.Endpoint {
	return kvstore.Endpoint{
		IP: netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}), Identity: id,
		Labels: []string{"mesh:cluster=" + cluster, "vm:app=web"}, Cluster: cluster, Node: "node-1",
	}
}

// put writes rec at key with a plain etcd client, bypassing any check.
func put(t testing.TB, ec *clientv3.Client, key string, rec kvstore.Record) {
	t.Helper()
	data, err := kvstore.Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec.Put(context.Background(), key, string(data)); err != nil {
		t.Fatal(err)
	}
}

func putRaw(t testing.TB, ec *clientv3.Client, key, value string) {
	t.Helper()
	if _, err := ec.Put(context.Background(), key, value); err != nil {
		t.Fatal(err)
	}
}

func del(t testing.TB, ec *clientv3.Client, key string) {
	t.Helper()
	if _, err := ec.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
}

// dump returns every key and value under prefix.
func dump(t testing.TB, ec *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	resp, err := ec.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// wantCopy is what the mirror of west must hold: the remote's values of
// keys, byte for byte, at their mirror keys.
func wantCopy(t testing.TB, remote *clientv3.Client, keys []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range keys {
		resp, err := remote.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 {
			t.Fatalf("remote has no %s", k)
		}
		out[kvstore.MirrorKey("west", k)] = string(resp.Kvs[0].Value)
	}
	return out
}

func records(t testing.TB, local *clientv3.Client) map[string]string {
	t.Helper()
	m := dump(t, local, kvstore.MirrorPrefix("west"))
	delete(m, kvstore.MirrorStatusKey("west"))
	return m
}

func startMirror(t testing.TB, src kvstore.Source, local *clientv3.Client, logBuf *kvstoretest.LogBuffer) *mirror.Mirror {
	t.Helper()
	cfg := mirror.Config{Cluster: "west", ClusterID: westID, Remote: src, Local: local,
		ProbeInterval: 200 * time.Millisecond, StatusInterval: 200 * time.Millisecond}
	if logBuf != nil {
		cfg.Logger = logBuf.Logger()
	}
	m, err := mirror.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
	})
	return m
}

func status(t testing.TB, local *kvstore.Client) kvstore.MirrorStatus {
	t.Helper()
	st, err := local.GetMirrorStatus(context.Background(), "west")
	if err != nil && !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatal(err)
	}
	return st
}

func TestMirrorCopiesTheClustersOwnRecords(t *testing.T) {
	remoteKV, remoteSrv := kvstoretest.New(t)
	remote := kvstoretest.Etcd(t, remoteSrv)
	localKV, localSrv := kvstoretest.New(t)
	local := kvstoretest.Etcd(t, localSrv)

	cl := kvstore.Cluster{Name: "west", ID: westID, MeshPool: netip.MustParsePrefix("100.65.0.0/16")}
	put(t, remote, kvstore.ClusterKey("west"), &cl)
	copied := []string{kvstore.ClusterKey("west")}
	for i := range 3 {
		n := node("west", i)
		put(t, remote, n.Key(), &n)
		e := endpoint("west", i, clusterIdentity(westID, i))
		put(t, remote, e.Key(), &e)
		id := kvstore.Identity{ID: clusterIdentity(westID, i), Labels: []string{"mesh:cluster=west", fmt.Sprintf("vm:app=a%d", i)}}
		put(t, remote, kvstore.IdentityIDKey(id.ID), &id)
		copied = append(copied, n.Key(), e.Key(), kvstore.IdentityIDKey(id.ID))
	}
	rv := kvstore.Revocation{Cluster: "west", Node: "gone", RevokedAt: time.Now().UTC().Truncate(time.Second)}
	put(t, remote, rv.Key(), &rv)
	copied = append(copied, rv.Key())
	g := kvstore.Grant{Cluster: "west", Node: "node-2", AllowLabels: []string{"app=web"}}
	put(t, remote, g.Key(), &g)
	copied = append(copied, g.Key())
	// An endpoint of a reserved identity (a node's own address) is the
	// cluster's to give.
	hostEP := endpoint("west", 9, uint32(identity.IdentityRemoteNode))
	put(t, remote, hostEP.Key(), &hostEP)
	copied = append(copied, hostEP.Key())

	// What must not be copied: another cluster's records (shared etcd),
	// an identity of another cluster's range, an endpoint claiming one,
	// a record naming another cluster under west's prefix, corrupt values,
	// a cluster whose name starts with west, a corrupt grant and tokens.
	east := node("east", 1)
	put(t, remote, east.Key(), &east)
	eastEP := endpoint("east", 1, clusterIdentity(3, 1))
	put(t, remote, eastEP.Key(), &eastEP)
	foreign := kvstore.Identity{ID: clusterIdentity(3, 7), Labels: []string{"mesh:cluster=east"}}
	put(t, remote, kvstore.IdentityIDKey(foreign.ID), &foreign)
	badEP := endpoint("west", 5, clusterIdentity(3, 2))
	put(t, remote, badEP.Key(), &badEP)
	put(t, remote, kvstore.NodeKey("west", "impostor"), &east)
	putRaw(t, remote, kvstore.NodeKey("west", "corrupt"), "{not json")
	putRaw(t, remote, kvstore.EndpointsPrefix+"west/node-1/100.65.9.9", `{"version":9}`)
	west2 := kvstore.Cluster{Name: "west2", ID: 9, MeshPool: netip.MustParsePrefix("100.66.0.0/16")}
	put(t, remote, kvstore.ClusterKey("west2"), &west2)
	putRaw(t, remote, kvstore.GrantsPrefix+"west/node-1", `{"version":1}`)
	putRaw(t, remote, kvstore.TokensPrefix+"abc", `{"version":1}`)

	// The local etcd: its own records and another cluster's mirror, which
	// the mirror of west must leave alone, and a stale copy of west from a
	// previous run, which it must delete.
	ln := node("east", 7)
	put(t, local, ln.Key(), &ln)
	putRaw(t, local, kvstore.MirrorKey("other", kvstore.NodeKey("other", "x")), "other's")
	putRaw(t, local, kvstore.MirrorKey("west", kvstore.NodeKey("west", "stale")), "stale")
	outside := dump(t, local, kvstore.Prefix)
	delete(outside, kvstore.MirrorKey("west", kvstore.NodeKey("west", "stale")))

	var logBuf kvstoretest.LogBuffer
	m := startMirror(t, remoteKV.Source(), local, &logBuf)
	want := wantCopy(t, remote, copied)
	testutil.Eventually(t, time.Minute, "the copy equals the cluster's own records", func() bool {
		return mapsEqual(records(t, local), want) && status(t, localKV).Synced
	})
	st := status(t, localKV)
	if !st.Connected || st.Counts != (kvstore.MirrorCounts{Clusters: 1, Nodes: 3, Endpoints: 4, Identities: 3, Revocations: 1, Grants: 1}) {
		t.Fatalf("status %+v", st)
	}
	// Refused: east's identity, the endpoint of east's identity. Skipped:
	// the impostor, the corrupt node, the newer-version endpoint, the
	// corrupt grant.
	if st.Refused != 2 || st.Skipped != 4 || st.Revision == 0 || st.HeartbeatSeconds != 1 || time.Since(st.Updated) > time.Minute {
		t.Fatalf("status %+v; want 2 refused, 4 skipped, a revision and a fresh update time", st)
	}
	for _, k := range []string{kvstore.IdentityIDKey(foreign.ID), badEP.Key(), kvstore.NodeKey("west", "corrupt")} {
		if !strings.Contains(logBuf.String(), `"key":"`+k+`"`) {
			t.Fatalf("no log record names %s:\n%s", k, logBuf.String())
		}
	}

	// Updates, additions and deletions follow.
	n1 := node("west", 1)
	n1.AgentVersion = "v2"
	put(t, remote, n1.Key(), &n1)
	n4 := node("west", 4)
	put(t, remote, n4.Key(), &n4)
	del(t, remote, kvstore.NodeKey("west", "node-0"))
	del(t, remote, rv.Key())
	copied = slices.DeleteFunc(copied, func(k string) bool { return k == kvstore.NodeKey("west", "node-0") || k == rv.Key() })
	copied = append(copied, n4.Key())
	want = wantCopy(t, remote, copied)
	testutil.Eventually(t, time.Minute, "the copy follows updates, additions and deletions", func() bool {
		return mapsEqual(records(t, local), want)
	})
	testutil.Eventually(t, time.Minute, "the status counts follow", func() bool {
		st := status(t, localKV)
		return st.Counts.Nodes == 3 && st.Counts.Revocations == 0
	})
	// A valid record overwritten by an invalid one goes from the copy.
	putRaw(t, remote, n1.Key(), "garbage")
	delete(want, kvstore.MirrorKey("west", n1.Key()))
	testutil.Eventually(t, time.Minute, "a record turned corrupt leaves the copy", func() bool {
		return mapsEqual(records(t, local), want)
	})

	// Nothing outside the mirror's own prefix was touched.
	after := dump(t, local, kvstore.Prefix)
	for k, v := range outside {
		if after[k] != v {
			t.Fatalf("the mirror changed %s outside its prefix: %q → %q", k, v, after[k])
		}
	}
	for k := range after {
		if _, ok := outside[k]; !ok && !strings.HasPrefix(k, kvstore.MirrorPrefix("west")) {
			t.Fatalf("the mirror wrote %s outside its prefix", k)
		}
	}
	if got := m.Status(); !got.Synced || got.Cluster != "west" {
		t.Fatalf("Status() = %+v", got)
	}
}

// cuttable stands for the network between the mirror and the remote etcd:
// cut, the mirror's reads fail and its watches end, while the remote stays
// writable (and compactable) for the test.
type cuttable struct {
	kvstore.Source
	mu     sync.Mutex
	cut    chan struct{} // non-nil while cut: closed on restore
	cancel []context.CancelFunc
}

var errCut = errors.New("test: network cut")

func (c *cuttable) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.mu.Lock()
	cut := c.cut
	c.mu.Unlock()
	if cut != nil {
		return nil, errCut
	}
	return c.Source.Get(ctx, key, opts...)
}

func (c *cuttable) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	c.mu.Lock()
	cut := c.cut
	c.mu.Unlock()
	if cut != nil {
		select {
		case <-cut:
		case <-ctx.Done():
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.cancel = append(c.cancel, cancel)
	c.mu.Unlock()
	return c.Source.Watch(wctx, key, opts...)
}

func (c *cuttable) setCut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = make(chan struct{})
	for _, f := range c.cancel {
		f()
	}
	c.cancel = nil
}

func (c *cuttable) restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.cut)
	c.cut = nil
}

func TestMirrorResyncAfterOutageAndCompaction(t *testing.T) {
	remoteKV, remoteSrv := kvstoretest.New(t)
	remote := kvstoretest.Etcd(t, remoteSrv)
	localKV, localSrv := kvstoretest.New(t)
	local := kvstoretest.Etcd(t, localSrv)
	var keys []string
	for i := range 10 {
		n := node("west", i)
		put(t, remote, n.Key(), &n)
		keys = append(keys, n.Key())
	}
	src := &cuttable{Source: remoteKV.Source()}
	var logBuf kvstoretest.LogBuffer
	startMirror(t, src, local, &logBuf)
	testutil.Eventually(t, time.Minute, "first copy", func() bool {
		return mapsEqual(records(t, local), wantCopy(t, remote, keys)) && status(t, localKV).Synced
	})
	before := records(t, local)

	// Cut off: the copy stays as it is and the status says so.
	src.setCut()
	testutil.Eventually(t, time.Minute, "the status shows the remote disconnected", func() bool {
		st := status(t, localKV)
		return !st.Connected && strings.HasPrefix(st.LastError, "remote: ") && st.Counts.Nodes == 10
	})
	// Meanwhile the remote changes, and compacts the history away: the
	// mirror can only catch up by listing again.
	for _, i := range []int{0, 3, 6} {
		del(t, remote, kvstore.NodeKey("west", fmt.Sprintf("node-%d", i)))
	}
	n5 := node("west", 5)
	n5.AgentVersion = "during-outage"
	put(t, remote, n5.Key(), &n5)
	n20 := node("west", 20)
	put(t, remote, n20.Key(), &n20)
	resp, err := remote.Put(context.Background(), "weft/v1/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Compact(context.Background(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if got := records(t, local); !mapsEqual(got, before) {
		t.Fatalf("the copy changed during the outage")
	}

	src.restore()
	keys = slices.DeleteFunc(keys, func(k string) bool {
		return slices.Contains([]string{kvstore.NodeKey("west", "node-0"), kvstore.NodeKey("west", "node-3"), kvstore.NodeKey("west", "node-6")}, k)
	})
	keys = append(keys, n20.Key())
	want := wantCopy(t, remote, keys)
	testutil.Eventually(t, time.Minute, "the copy converges after the outage", func() bool {
		st := status(t, localKV)
		return mapsEqual(records(t, local), want) && st.Connected && st.Synced && st.Counts.Nodes == 8
	})
	if !strings.Contains(logBuf.String(), "compacted") {
		t.Fatalf("no relist after the compaction in the log:\n%s", logBuf.String())
	}
}

func TestMirrorRemoteEtcdDown(t *testing.T) {
	if kvstoretest.Backend() != "embedded" {
		t.Skip("stops and restarts an embedded etcd; ran in the embedded pass")
	}
	srv := kvstoretest.StartRestartable(t)
	remoteKV := kvstoretest.Connect(t, srv.Server, nil)
	localKV, localSrv := kvstoretest.New(t)
	local := kvstoretest.Etcd(t, localSrv)
	for i := range 5 {
		n := node("west", i)
		if err := remoteKV.Put(context.Background(), n.Key(), &n); err != nil {
			t.Fatal(err)
		}
	}
	startMirror(t, remoteKV.Source(), local, nil)
	testutil.Eventually(t, time.Minute, "first copy", func() bool { return len(records(t, local)) == 5 && status(t, localKV).Synced })
	before := records(t, local)
	srv.Stop()
	testutil.Eventually(t, time.Minute, "the status shows the remote down", func() bool {
		st := status(t, localKV)
		return !st.Connected && st.LastError != "" && st.Synced
	})
	if got := records(t, local); !mapsEqual(got, before) {
		t.Fatal("the copy changed while the remote was down")
	}
	srv.Start()
	testutil.Eventually(t, time.Minute, "connected again", func() bool { return status(t, localKV).Connected })
	n9 := node("west", 9)
	if err := remoteKV.Put(context.Background(), n9.Key(), &n9); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Minute, "a change after the outage is copied", func() bool { return len(records(t, local)) == 6 })
}

func TestMirrorConfig(t *testing.T) {
	kv, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	for _, cfg := range []mirror.Config{
		{Cluster: "", ClusterID: 2, Remote: kv.Source(), Local: ec},
		{Cluster: "West", ClusterID: 2, Remote: kv.Source(), Local: ec},
		{Cluster: "west", ClusterID: 0, Remote: kv.Source(), Local: ec},
		{Cluster: "west", ClusterID: kvstore.MaxClusterID + 1, Remote: kv.Source(), Local: ec},
		{Cluster: "west", ClusterID: 2, Local: ec},
		{Cluster: "west", ClusterID: 2, Remote: kv.Source()},
		{Cluster: "west", ClusterID: 2, Remote: kv.Source(), Local: ec, ResyncInterval: -time.Second},
	} {
		if _, err := mirror.New(cfg); !errors.Is(err, mirror.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
