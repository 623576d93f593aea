package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// eventLog records a multi-source cache's events in order and checks that
// OnEvent is never called by two goroutines at once.
type eventLog struct {
	mu      sync.Mutex
	events  []kvstore.Event[kvstore.Node]
	state   map[string]kvstore.Node
	inside  int
	overlap bool
}

func newEventLog() *eventLog { return &eventLog{state: map[string]kvstore.Node{}} }

func (l *eventLog) on(ev kvstore.Event[kvstore.Node]) {
	l.mu.Lock()
	l.inside++
	if l.inside > 1 {
		l.overlap = true
	}
	l.mu.Unlock()
	time.Sleep(time.Microsecond) // widen the window an overlap needs
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inside--
	l.events = append(l.events, ev)
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		l.state[ev.Key] = ev.Value
	case kvstore.EventDelete:
		delete(l.state, ev.Key)
	}
}

func (l *eventLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// since returns the events after the first n, as "kind key" strings.
func (l *eventLog) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, ev := range l.events[n:] {
		out = append(out, ev.Kind.String()+" "+ev.Key)
	}
	return out
}

// expect waits until at least len(want) events arrived after the first n and
// fails unless they are exactly want. The view changes before OnEvent runs
// (OnEvent may read the view), so a test that saw a change in the view must
// still wait for its event.
func (l *eventLog) expect(t *testing.T, n int, what string, want ...string) {
	t.Helper()
	testutil.Eventually(t, time.Minute, what, func() bool { return l.len() >= n+len(want) })
	if got := l.since(n); !slices.Equal(got, want) {
		t.Fatalf("%s: events %q, want %q", what, got, want)
	}
}

func (l *eventLog) keys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return sortedKeys(l.state)
}

func newMultiCache(t *testing.T, l *eventLog, logBuf *kvstoretest.LogBuffer) *kvstore.MultiCache[kvstore.Node] {
	t.Helper()
	cfg := kvstore.MultiCacheConfig[kvstore.Node]{Name: "nodes", Decode: kvstore.NodeDecoder, OnEvent: l.on, PageSize: 7}
	if logBuf != nil {
		cfg.Logger = logBuf.Logger()
	}
	mc, err := kvstore.NewMultiCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mc.Close)
	return mc
}

func addMember(t *testing.T, mc *kvstore.MultiCache[kvstore.Node], m kvstore.MemberConfig[kvstore.Node]) {
	t.Helper()
	if err := mc.Add(context.Background(), m); err != nil {
		t.Fatalf("adding member %s: %v", m.Name, err)
	}
	select {
	case <-mc.Synced(m.Name):
	case <-time.After(time.Minute):
		t.Fatalf("member %s not synced after a minute", m.Name)
	}
}

func memberStatus(t *testing.T, mc *kvstore.MultiCache[kvstore.Node], name string) kvstore.MemberStatus {
	t.Helper()
	for _, st := range mc.Status() {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no member %s in %+v", name, mc.Status())
	return kvstore.MemberStatus{}
}

func deleteNode(t *testing.T, c *kvstore.Client, cluster, name string) {
	t.Helper()
	if err := c.Delete(context.Background(), kvstore.NodeKey(cluster, name)); err != nil {
		t.Fatal(err)
	}
}

func TestMultiCacheTwoEtcds(t *testing.T) {
	local, _ := kvstoretest.New(t)
	west, _ := kvstoretest.New(t) // another etcd, its own CA
	for i := range 10 {
		putNode(t, local, node("east", i))
		putNode(t, west, node("west", 100+i))
	}
	// The west etcd also holds a record of east (shared mode, or a west
	// that lies): the remote member refuses it.
	putNode(t, west, node("east", 50))
	var logBuf kvstoretest.LogBuffer
	l := newEventLog()
	mc := newMultiCache(t, l, &logBuf)
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "local", Source: local.Source(), Prefix: kvstore.NodesPrefix, ProbeInterval: -1})
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "cluster:west", Source: west.Source(), Prefix: kvstore.NodesPrefix,
		Accept: kvstore.AcceptRemote[kvstore.Node]("west", 2)})
	if mc.Len() != 20 || l.len() != 20 {
		t.Fatalf("after sync: %d entries, %d events; want 20 and 20", mc.Len(), l.len())
	}
	if _, ok := mc.Get(kvstore.NodeKey("east", "node-50")); ok {
		t.Fatal("the west etcd's record of an east node is in the view")
	}
	if st := memberStatus(t, mc, "cluster:west"); st.Refused != 1 || st.Entries != 10 || !st.Synced || !st.Connected {
		t.Fatalf("west status %+v; want 1 refused, 10 entries, synced, connected", st)
	}
	if !strings.Contains(logBuf.String(), kvstore.NodeKey("east", "node-50")) || !strings.Contains(logBuf.String(), "refused") {
		t.Fatalf("the refusal is not logged with its key:\n%s", logBuf.String())
	}
	if owner, _ := mc.Owner(kvstore.NodeKey("west", "node-100")); owner != "cluster:west" {
		t.Fatalf("owner of west/node-100 = %q", owner)
	}

	// Adds, updates and deletes from both etcds.
	n := l.len()
	upd := node("east", 1)
	upd.AgentVersion = "v2"
	putNode(t, local, upd)
	wupd := node("west", 101)
	wupd.AgentVersion = "v2"
	putNode(t, west, wupd)
	putNode(t, local, node("east", 20))
	putNode(t, west, node("west", 120))
	deleteNode(t, local, "east", "node-2")
	deleteNode(t, west, "west", "node-102")
	testutil.Eventually(t, time.Minute, "six changes from two etcds in the view", func() bool { return l.len() == n+6 })
	got := l.since(n)
	slices.Sort(got)
	want := []string{
		"add " + kvstore.NodeKey("east", "node-20"), "add " + kvstore.NodeKey("west", "node-120"),
		"delete " + kvstore.NodeKey("east", "node-2"), "delete " + kvstore.NodeKey("west", "node-102"),
		"update " + kvstore.NodeKey("east", "node-1"), "update " + kvstore.NodeKey("west", "node-101"),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if v, _ := mc.Get(wupd.Key()); v.AgentVersion != "v2" {
		t.Fatalf("west update not in the view: %+v", v)
	}
	if got, want := l.keys(), sortedKeys(mc.Snapshot()); !slices.Equal(got, want) {
		t.Fatalf("consumer state %v, view %v", got, want)
	}

	// Remove emits a delete for every key the member provided, and
	// nothing of it arrives afterwards.
	n = l.len()
	if !mc.Remove("cluster:west") {
		t.Fatal("Remove found no member")
	}
	dels := l.since(n)
	if len(dels) != 10 {
		t.Fatalf("Remove emitted %d events, want 10 deletes: %q", len(dels), dels)
	}
	for _, d := range dels {
		if !strings.HasPrefix(d, "delete "+kvstore.NodesPrefix+"west/") {
			t.Fatalf("Remove emitted %q", d)
		}
	}
	putNode(t, west, node("west", 130))
	putNode(t, local, node("east", 30))
	testutil.Eventually(t, time.Minute, "the local member goes on", func() bool { _, ok := mc.Get(kvstore.NodeKey("east", "node-30")); return ok })
	if _, ok := mc.Get(kvstore.NodeKey("west", "node-130")); ok || mc.Len() != 11 {
		t.Fatalf("removed member still feeds the view (%d entries)", mc.Len())
	}
	if mc.Remove("cluster:west") {
		t.Fatal("second Remove found the member again")
	}
	if mc.Synced("cluster:west") != nil || len(mc.Status()) != 1 {
		t.Fatalf("removed member still listed: %+v", mc.Status())
	}
	if l.overlap {
		t.Fatal("OnEvent ran on two goroutines at once")
	}
	if err := mc.Add(context.Background(), kvstore.MemberConfig[kvstore.Node]{Name: "local", Source: local.Source(), Prefix: kvstore.NodesPrefix}); err == nil {
		t.Fatal("a second member named local was added")
	}
}

func TestMultiCacheConflictingKey(t *testing.T) {
	a, _ := kvstoretest.New(t)
	b, _ := kvstoretest.New(t)
	key := kvstore.NodeKey("east", "node-1")
	inB := node("east", 1)
	inB.AgentVersion = "from-b"
	putNode(t, b, inB)
	var logBuf kvstoretest.LogBuffer
	l := newEventLog()
	mc := newMultiCache(t, l, &logBuf)
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "local", Source: a.Source(), Prefix: kvstore.NodesPrefix, ProbeInterval: -1})
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "other", Source: b.Source(), Prefix: kvstore.NodesPrefix})
	if v, _ := mc.Get(key); v.AgentVersion != "from-b" {
		t.Fatalf("the only holder's value is not in the view: %+v", v)
	}

	// The member added first takes the key even though it comes later:
	// arrival order is a race between etcds, Add order is not.
	inA := node("east", 1)
	inA.AgentVersion = "from-a"
	n := l.len()
	putNode(t, a, inA)
	l.expect(t, n, "the first member takes the key", "update "+key)
	if o, _ := mc.Owner(key); o != "local" {
		t.Fatalf("key owned by %q after the first member's put", o)
	}
	if v, _ := mc.Get(key); v.AgentVersion != "from-a" {
		t.Fatalf("view holds %+v", v)
	}

	// The other member's changes of the key are refused while the first
	// one holds it; its other keys still come through.
	// b's watch delivers its two changes in order, so a refused update
	// that came through would be logged before node-2's add.
	n = l.len()
	inB.AgentVersion = "from-b-2"
	putNode(t, b, inB)
	putNode(t, b, node("east", 2))
	l.expect(t, n, "only the other member's next key (the refused update must not come through)", "add "+kvstore.NodeKey("east", "node-2"))
	if v, _ := mc.Get(key); v.AgentVersion != "from-a" {
		t.Fatalf("the second member overwrote the first one's key: %+v", v)
	}
	if st := memberStatus(t, mc, "other"); st.Refused < 2 {
		t.Fatalf("other's status %+v; want its shadowed key counted as refused", st)
	}
	if !strings.Contains(logBuf.String(), `"msg":"key provided by two members: the one added first takes it","cache":"nodes","key":"`+key+`","member":"local","from":"other"`) {
		t.Fatalf("the conflict is not logged:\n%s", logBuf.String())
	}

	// When the first member's record goes, the other's takes over (an
	// update, not a delete and an add); when that goes too, a delete.
	n = l.len()
	deleteNode(t, a, "east", "node-1")
	testutil.Eventually(t, time.Minute, "handed over", func() bool { o, _ := mc.Owner(key); return o == "other" })
	if v, _ := mc.Get(key); v.AgentVersion != "from-b-2" {
		t.Fatalf("view holds %+v after the hand-over", v)
	}
	deleteNode(t, b, "east", "node-1")
	l.expect(t, n, "an update then a delete", "update "+key, "delete "+key)
	if _, ok := mc.Get(key); ok {
		t.Fatal("the key is still in the view after both members deleted it")
	}
}

func TestMultiCacheRemoteOutageAndReplacement(t *testing.T) {
	if kvstoretest.Backend() != "embedded" {
		t.Skip("stops and restarts an embedded etcd; ran in the embedded pass")
	}
	local, _ := kvstoretest.New(t)
	remote := kvstoretest.StartRestartable(t)
	west := kvstoretest.Connect(t, remote.Server, nil)
	putNode(t, local, node("east", 1))
	for i := range 20 {
		putNode(t, west, node("west", i))
	}
	for i := range 5 { // history, so that the revision is well ahead
		upd := node("west", 0)
		upd.AgentVersion = fmt.Sprint("v", i)
		putNode(t, west, upd)
	}
	var logBuf kvstoretest.LogBuffer
	l := newEventLog()
	mc := newMultiCache(t, l, &logBuf)
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "local", Source: local.Source(), Prefix: kvstore.NodesPrefix, ProbeInterval: -1})
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "cluster:west", Source: west.Source(), Prefix: kvstore.NodesPrefix + "west/",
		Accept: kvstore.AcceptRemote[kvstore.Node]("west", 2), ProbeInterval: 200 * time.Millisecond})
	if mc.Len() != 21 {
		t.Fatalf("view holds %d entries, want 21", mc.Len())
	}
	before := memberStatus(t, mc, "cluster:west")

	// Outage: the entries stay, nothing is emitted, the status says so.
	n := l.len()
	remote.Stop()
	testutil.Eventually(t, time.Minute, "west shown disconnected", func() bool {
		st := memberStatus(t, mc, "cluster:west")
		return !st.Connected && st.LastError != ""
	})
	time.Sleep(time.Second) // a few failed probes
	if mc.Len() != 21 || l.len() != n {
		t.Fatalf("during the outage: %d entries, %d new events; want 21 and none", mc.Len(), l.len()-n)
	}
	if st := memberStatus(t, mc, "local"); !st.Connected {
		t.Fatalf("the local member is shown disconnected: %+v", st)
	}

	// Back with its data: the watch resumes, no event for what did not
	// change, and the next change arrives.
	remote.Start()
	testutil.Eventually(t, time.Minute, "west shown connected again", func() bool { return memberStatus(t, mc, "cluster:west").Connected })
	upd := node("west", 3)
	upd.AgentVersion = "after-outage"
	putNode(t, west, upd)
	l.expect(t, n, "the one change after the outage", "update "+upd.Key())
	if v, _ := mc.Get(upd.Key()); v.AgentVersion != "after-outage" {
		t.Fatalf("view holds %+v after the outage's update", v)
	}
	if st := memberStatus(t, mc, "cluster:west"); st.Entries != 20 || st.LastErrorAt.Before(before.LastErrorAt) {
		t.Fatalf("west status after the outage %+v", st)
	}

	// Replaced by an etcd that is behind (restored from an old backup):
	// the cache notices the older revision, relists, and emits only the
	// difference: node-3 back to its old value, node-19 gone, node-99 new;
	// the other 18 records have the same bytes and emit nothing.
	n = l.len()
	remote.Stop()
	remote.WipeData()
	remote.Start()
	// A new client: etcd's authentication of the wiped server starts
	// over, the certificates are the same.
	west2 := kvstoretest.Connect(t, remote.Server, nil)
	for i := range 19 {
		nd := node("west", i)
		if i == 0 {
			nd.AgentVersion = "v4" // the value it had
		}
		putNode(t, west2, nd)
	}
	putNode(t, west2, node("west", 99))
	testutil.Eventually(t, time.Minute, "the view follows the replaced etcd", func() bool {
		_, has99 := mc.Get(kvstore.NodeKey("west", "node-99"))
		_, has19 := mc.Get(kvstore.NodeKey("west", "node-19"))
		v3, _ := mc.Get(upd.Key())
		return has99 && !has19 && v3.AgentVersion == ""
	})
	testutil.Eventually(t, 10*time.Second, "the three events", func() bool { return l.len() >= n+3 })
	time.Sleep(500 * time.Millisecond)
	got := l.since(n)
	slices.Sort(got)
	want := []string{"add " + kvstore.NodeKey("west", "node-99"), "delete " + kvstore.NodeKey("west", "node-19"), "update " + upd.Key()}
	if !slices.Equal(got, want) {
		t.Fatalf("events after the replacement %q, want only the difference %q", got, want)
	}
	if !strings.Contains(logBuf.String(), "relisting") {
		t.Fatalf("no relist in the log:\n%s", logBuf.String())
	}
	if got, want := l.keys(), sortedKeys(mc.Snapshot()); !slices.Equal(got, want) {
		t.Fatalf("consumer state %v, view %v", got, want)
	}
	if l.overlap {
		t.Fatal("OnEvent ran on two goroutines at once")
	}
}

func TestMultiCacheMirrorMember(t *testing.T) {
	// A member reading a mirror's copy in the local etcd: keys map back to
	// the schema's, the status key and keys of another mirror are not
	// records, and the record must still match its canonical key.
	local, srv := kvstoretest.New(t)
	ec := kvstoretest.Etcd(t, srv)
	ctx := context.Background()
	put := func(key string, n kvstore.Node) {
		t.Helper()
		data, err := kvstore.Encode(&n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ec.Put(ctx, key, string(data)); err != nil {
			t.Fatal(err)
		}
	}
	w1 := node("west", 1)
	put(kvstore.MirrorKey("west", w1.Key()), w1)
	put(kvstore.MirrorKey("west", kvstore.NodeKey("west", "node-7")), node("west", 2)) // at another node's key
	if _, err := ec.Put(ctx, kvstore.MirrorStatusKey("west"), `{"version":1}`); err != nil {
		t.Fatal(err)
	}
	putNode(t, local, node("east", 1))
	l := newEventLog()
	mc := newMultiCache(t, l, nil)
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "local", Source: local.Source(), Prefix: kvstore.NodesPrefix, ProbeInterval: -1})
	addMember(t, mc, kvstore.MemberConfig[kvstore.Node]{Name: "mirror:west", Source: local.Source(), Prefix: kvstore.MirrorPrefix("west") + "nodes/",
		KeyMap: kvstore.MirrorKeyMap("west"), Accept: kvstore.AcceptRemote[kvstore.Node]("west", 2), ProbeInterval: -1})
	if got, want := sortedKeys(mc.Snapshot()), []string{kvstore.NodeKey("east", "node-1"), w1.Key()}; !slices.Equal(got, want) {
		t.Fatalf("view %v, want %v", got, want)
	}
	if st := memberStatus(t, mc, "mirror:west"); st.Skipped != 1 || st.Entries != 1 {
		t.Fatalf("mirror member status %+v; want 1 skipped (the record at another key), 1 entry", st)
	}
}

func TestMultiCacheConfig(t *testing.T) {
	if _, err := kvstore.NewMultiCache(kvstore.MultiCacheConfig[kvstore.Node]{Name: "x"}); err == nil {
		t.Fatal("a cache without a decoder was made")
	}
	mc, err := kvstore.NewMultiCache(kvstore.MultiCacheConfig[kvstore.Node]{Name: "x", Decode: kvstore.NodeDecoder})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []kvstore.MemberConfig[kvstore.Node]{
		{Name: "", Prefix: kvstore.NodesPrefix},
		{Name: "a b", Prefix: kvstore.NodesPrefix},
		{Name: "nosource", Prefix: kvstore.NodesPrefix},
	} {
		if err := mc.Add(context.Background(), m); err == nil {
			t.Fatalf("member %+v was added", m)
		}
	}
	mc.Close()
}

func TestMirrorKeys(t *testing.T) {
	k := kvstore.NodeKey("west", "vm-1")
	mk := kvstore.MirrorKey("west", k)
	if mk != "weft/v1/mirror/west/nodes/west/vm-1" {
		t.Fatalf("MirrorKey = %q", mk)
	}
	if c, canonical, ok := kvstore.FromMirror(mk); !ok || c != "west" || canonical != k {
		t.Fatalf("FromMirror(%q) = %q, %q, %v", mk, c, canonical, ok)
	}
	for _, bad := range []string{
		kvstore.MirrorStatusKey("west"), k, "weft/v1/mirror/west/", "weft/v1/mirror/West/nodes/west/vm-1",
		"weft/v1/mirror/west/mirror/east/nodes/east/x", "weft/v1/mirror/west",
	} {
		if _, _, ok := kvstore.FromMirror(bad); ok {
			t.Errorf("FromMirror(%q) accepted it", bad)
		}
	}
	km := kvstore.MirrorKeyMap("west")
	if got, ok := km(mk); !ok || got != k {
		t.Fatalf("MirrorKeyMap(west)(%q) = %q, %v", mk, got, ok)
	}
	if _, ok := km(kvstore.MirrorKey("east", kvstore.NodeKey("east", "x"))); ok {
		t.Fatal("west's key map accepted a key of east's mirror")
	}
}

func TestCheckRemote(t *testing.T) {
	lo, hi, _ := identity.ClusterRange(2)
	other, _, _ := identity.ClusterRange(3)
	ep := func(id uint32) kvstore.Endpoint {
		return kvstore.Endpoint{IP: netip.MustParseAddr("100.65.0.1"), Identity: id, Cluster: "west", Node: "n"}
	}
	for _, c := range []struct {
		key string
		v   any
		ok  bool
	}{
		{kvstore.ClusterKey("west"), kvstore.Cluster{Name: "west", ID: 2}, true},
		{kvstore.ClusterKey("west"), kvstore.Cluster{Name: "west", ID: 3}, false},
		{kvstore.ClusterKey("east"), kvstore.Cluster{Name: "east", ID: 2}, false},
		{kvstore.NodeKey("west", "n"), kvstore.Node{}, true},
		{kvstore.NodeKey("east", "n"), kvstore.Node{}, false},
		{kvstore.EndpointKey("west", "n", netip.MustParseAddr("100.65.0.1")), ep(uint32(lo)), true},
		{kvstore.EndpointKey("west", "n", netip.MustParseAddr("100.65.0.1")), ep(uint32(identity.IdentityRemoteNode)), true},
		{kvstore.EndpointKey("west", "n", netip.MustParseAddr("100.65.0.1")), ep(uint32(other)), false},
		{kvstore.EndpointKey("west", "n", netip.MustParseAddr("100.65.0.1")), ep(uint32(identity.CIDRIdentityBase)), false},
		{kvstore.IdentityIDKey(uint32(hi)), nil, true},
		{kvstore.IdentityIDKey(uint32(hi) + 1), nil, false},
		{kvstore.IdentityIDKey(300), nil, false},
		{kvstore.RevokedKey("west", "n"), nil, true},
		{kvstore.GrantKey("west", "n"), nil, true},
		{kvstore.PolicyKey("p"), nil, false},
		{kvstore.TokenKey("t"), nil, false},
		{kvstore.IdentityRefKey("west", "n", uint32(lo)), nil, false},
		{"weft/v1/nonsense", nil, false},
	} {
		err := kvstore.CheckRemote("west", 2, c.key, c.v)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, kvstore.ErrRefused)) {
			t.Errorf("CheckRemote(%s, %+v) = %v, want ok=%v", c.key, c.v, err, c.ok)
		}
	}
}
