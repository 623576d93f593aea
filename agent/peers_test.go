package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/tunnel"
	"github.com/weftmesh/weft/tunnel/tunneltest"
)

func testKey(t *testing.T) string {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func TestDesiredPeers(t *testing.T) {
	self := testKey(t)
	k1, k2, k3, next := testKey(t), testKey(t), testKey(t), testKey(t)
	node := func(name, key string, cidr string) kvstore.Node {
		p := netip.MustParsePrefix(cidr)
		return kvstore.Node{Name: name, Cluster: "c", WGPublicKey: key, CIDRs: []netip.Prefix{p}, MeshIP: p.Addr().Next(),
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.1.1:51833")}}
	}
	me := peerSelf{Cluster: "c", Node: "me", Key: self, CIDRs: pfx("100.64.0.0/24"), Keepalive: 25 * time.Second}
	for _, c := range []struct {
		name     string
		nodes    []kvstore.Node
		want     map[string][]netip.Prefix // key -> allowed
		next     map[string]string         // key -> next key
		rejected []string                  // substrings of the rejection reasons
	}{
		{
			name:  "self by name and by key is no peer",
			nodes: []kvstore.Node{node("me", testKey(t), "100.64.0.0/24"), node("other-name", self, "100.64.9.0/24"), node("b", k1, "100.64.1.0/24")},
			want:  map[string][]netip.Prefix{k1: pfx("100.64.1.0/24")},
		},
		{
			name:     "a second claim on a prefix loses it, the first keeps it",
			nodes:    []kvstore.Node{node("b", k1, "100.64.1.0/24"), node("a", k2, "100.64.1.0/24")},
			want:     map[string][]netip.Prefix{k2: pfx("100.64.1.0/24"), k1: nil},
			rejected: []string{"c/b: prefix already claimed by c/a"},
		},
		{
			name:     "a prefix overlapping this node's own is dropped",
			nodes:    []kvstore.Node{node("b", k1, "100.64.0.0/16")},
			want:     map[string][]netip.Prefix{k1: nil},
			rejected: []string{"overlaps this node's own"},
		},
		{
			name: "a next key colliding with a key in use is ignored, a fresh one installed",
			nodes: func() []kvstore.Node {
				b, d := node("b", k1, "100.64.1.0/24"), node("d", k3, "100.64.3.0/24")
				b.WGNextPublicKey = k3 // d's current key
				d.WGNextPublicKey = next
				return []kvstore.Node{b, d}
			}(),
			want:     map[string][]netip.Prefix{k1: pfx("100.64.1.0/24"), k3: pfx("100.64.3.0/24")},
			next:     map[string]string{k1: "", k3: next},
			rejected: []string{"next WireGuard key is already in use"},
		},
		{
			name:     "a current key two records claim, with no owner before, goes to neither",
			nodes:    []kvstore.Node{node("a", k1, "100.64.9.0/24"), node("b", k1, "100.64.1.0/24"), node("d", k3, "100.64.3.0/24")},
			want:     map[string][]netip.Prefix{k3: pfx("100.64.3.0/24")},
			rejected: []string{"c/a: WireGuard key is also claimed by c/b; no record gets it", "c/b: WireGuard key is also claimed by c/a; no record gets it"},
		},
		{
			name: "a mesh IP outside the CIDRs is allowed too",
			nodes: func() []kvstore.Node {
				b := node("b", k1, "100.64.1.0/24")
				b.MeshIP = netip.MustParseAddr("100.64.200.1")
				return []kvstore.Node{b}
			}(),
			want: map[string][]netip.Prefix{k1: pfx("100.64.1.0/24", "100.64.200.1/32")},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			peers, rej := desiredPeers(c.nodes, me)
			if len(peers) != len(c.want) {
				t.Fatalf("peers = %+v, want %d", peers, len(c.want))
			}
			if !slices.IsSortedFunc(peers, func(x, y tunnel.Peer) int { return strings.Compare(x.PublicKey, y.PublicKey) }) {
				t.Fatal("peers are not sorted by key")
			}
			for _, p := range peers {
				want, ok := c.want[p.PublicKey]
				if !ok {
					t.Fatalf("unexpected peer %s", p.PublicKey)
				}
				if !slices.Equal(p.AllowedIPs, want) {
					t.Errorf("peer %s allows %v, want %v", p.PublicKey, p.AllowedIPs, want)
				}
				if c.next != nil && p.NextPublicKey != c.next[p.PublicKey] {
					t.Errorf("peer %s next key %q, want %q", p.PublicKey, p.NextPublicKey, c.next[p.PublicKey])
				}
				if p.Keepalive != 25*time.Second || p.Endpoint != "198.18.1.1:51833" {
					t.Errorf("peer %s keepalive %v endpoint %q", p.PublicKey, p.Keepalive, p.Endpoint)
				}
			}
			if len(rej) != len(c.rejected) {
				t.Fatalf("rejections = %+v, want %d", rej, len(c.rejected))
			}
			for i, r := range rej {
				if got := r.Node + ": " + r.Reason; !strings.Contains(got, c.rejected[i]) {
					t.Errorf("rejection %q, want it to say %q", got, c.rejected[i])
				}
			}
			// What the translation produced is what a device accepts.
			if err := tunnel.ValidatePeers(peers, mustKey(t, self)); err != nil {
				t.Fatalf("the device would refuse the peers: %v", err)
			}
		})
	}
}

func mustKey(t *testing.T, s string) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDesiredPeersIsDeterministic(t *testing.T) {
	// Two records claim one prefix; whichever the cache lists first, the
	// same one wins.
	k1, k2 := testKey(t), testKey(t)
	a := kvstore.Node{Name: "a", Cluster: "c", WGPublicKey: k1, CIDRs: pfx("100.64.1.0/24")}
	b := kvstore.Node{Name: "b", Cluster: "c", WGPublicKey: k2, CIDRs: pfx("100.64.1.0/24")}
	me := peerSelf{Cluster: "c", Node: "me", Key: testKey(t)}
	p1, _ := desiredPeers([]kvstore.Node{a, b}, me)
	p2, _ := desiredPeers([]kvstore.Node{b, a}, me)
	if fmt.Sprint(p1) != fmt.Sprint(p2) {
		t.Fatalf("order of records changed the outcome:\n%v\n%v", p1, p2)
	}
}

// A compromised node copies another node's public key into its own record
// (the only record it can write), with its own endpoint and prefixes, under
// a name that sorts first. The key's peer stays the owner as it was, the
// copy is refused, the device accepts the list, and nobody else is cut.
func TestCopiedWireGuardKeyStaysWithItsOwner(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	nodes := fakeNodes{}
	victim, other := testKey(t), testKey(t)
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.1.2:51833")}
	nodes.put(kvstore.Node{Name: "victim", Cluster: "c", WGPublicKey: victim, CIDRs: pfx("100.64.1.0/24"), Endpoints: ep})
	nodes.put(kvstore.Node{Name: "other", Cluster: "c", WGPublicKey: other, CIDRs: pfx("100.64.2.0/24")})
	r := newTestPeerReconciler(dev, nodes)
	if got := len(r.desired()); got != 2 {
		t.Fatalf("%d peers before the copy, want 2", got)
	}
	nodes.put(kvstore.Node{Name: "aaa-attacker", Cluster: "c", WGPublicKey: victim, CIDRs: pfx("100.64.9.0/24"),
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:51833")}})
	for range 2 { // and it stays so on the next reconcile
		peers := r.desired()
		if err := dev.Reconcile(context.Background(), peers); err != nil {
			t.Fatalf("the device refused the peers after a copied key: %v", err)
		}
		p, ok := peerFor(dev, victim)
		if !ok || p.Endpoint != "198.18.1.2:51833" || !slices.Equal(p.AllowedIPs, pfx("100.64.1.0/24")) {
			t.Fatalf("the victim's key is configured as %+v (ok %v), want its own endpoint and prefix", p, ok)
		}
		if _, ok := peerFor(dev, other); !ok || len(peers) != 2 {
			t.Fatalf("peers %+v, want the victim and the other node only", peers)
		}
	}
	// Once the copy is gone, nothing is left of it.
	delete(nodes, kvstore.NodeKey("c", "aaa-attacker"))
	if peers := r.desired(); len(peers) != 2 {
		t.Fatalf("peers %+v after the copy went", peers)
	}
}

func newTestPeerReconciler(dev *tunneltest.Device, nodes fakeNodes) *peerReconciler {
	r := newPeerReconciler(dev, nodes, func() peerSelf { return peerSelf{Cluster: "c", Node: "me", CIDRs: pfx("100.64.0.0/24")} },
		slog.New(slog.DiscardHandler), func(string, time.Time) {})
	r.retryAfter = 10 * time.Millisecond
	return r
}

func TestPeerReconcilerFollowsNodesAndRetries(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	nodes := fakeNodes{}
	r := newTestPeerReconciler(dev, nodes)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.run(ctx) }()

	k1 := testKey(t)
	nodes.put(kvstore.Node{Name: "b", Cluster: "c", WGPublicKey: k1, CIDRs: pfx("100.64.1.0/24")})
	dev.FailNextReconcile(errors.New("helper died"))
	r.trigger()
	// The first reconcile fails; the retry, without another node event,
	// installs the peer.
	testutil.Eventually(t, 5*time.Second, "the expected state", func() error {
		if p, ok := peerFor(dev, k1); !ok || !slices.Equal(p.AllowedIPs, pfx("100.64.1.0/24")) {
			return fmt.Errorf("device peers %+v", dev.Peers())
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("run = %v after cancel", err)
	}
}

func TestPeerAdmitKeepsKnownPeersAndOnlyAdmitsNewOnes(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	nodes := fakeNodes{}
	known, fresh := testKey(t), testKey(t)
	nodes.put(kvstore.Node{Name: "known", Cluster: "c", WGPublicKey: known, CIDRs: pfx("100.64.1.0/24")})
	nodes.put(kvstore.Node{Name: "fresh", Cluster: "c", WGPublicKey: fresh, CIDRs: pfx("100.64.2.0/24")})
	r := newTestPeerReconciler(dev, nodes)
	r.admit(context.Background(), func() (map[string]bool, error) { return map[string]bool{known: true}, nil })
	if p, _ := peerFor(dev, known); !slices.Equal(p.AllowedIPs, pfx("100.64.1.0/24")) {
		t.Fatalf("a peer the device already had lost its prefixes: %+v", p)
	}
	if p, ok := peerFor(dev, fresh); !ok || len(p.AllowedIPs) != 0 || p.Keepalive != 0 {
		t.Fatalf("a new peer was admitted with %+v, want no prefixes and no keepalive", p)
	}
	// A failed status read admits nothing and does not fail.
	before := dev.Reconciles()
	r.admit(context.Background(), func() (map[string]bool, error) { return nil, errors.New("no device") })
	if dev.Reconciles() != before {
		t.Fatal("admit reconciled without knowing the device's peers")
	}
	r.configure(context.Background())
	if p, _ := peerFor(dev, fresh); !slices.Equal(p.AllowedIPs, pfx("100.64.2.0/24")) {
		t.Fatalf("configure left the new peer at %+v", p)
	}
}

func TestIPCacheOwnershipFromNodeRecords(t *testing.T) {
	nodes := fakeNodes{}
	nodes.put(kvstore.Node{Name: "b", Cluster: "c", CIDRs: pfx("100.64.1.0/24"), MeshIP: netip.MustParseAddr("100.64.200.1")})
	own := ownershipOf(nodes)
	got, ok := own("c", "b")
	if !ok || !slices.Equal(got, pfx("100.64.1.0/24", "100.64.200.1/32")) {
		t.Fatalf("ownership = %v, %v", got, ok)
	}
	if _, ok := own("c", "nobody"); ok {
		t.Fatal("an unknown node owns prefixes")
	}
}

func TestPeerRetainedWhileItsTunnelIsAlive(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	nodes := fakeNodes{}
	r := newTestPeerReconciler(dev, nodes)
	r.silence = time.Minute
	r.status = dev.Status
	var dropped []string
	r.onDrop = func(c, n string) { dropped = append(dropped, c+"/"+n) }
	k := testKey(t)
	b := kvstore.Node{Name: "b", Cluster: "c", WGPublicKey: k, CIDRs: pfx("100.64.1.0/24")}
	nodes.put(b)
	r.configure(context.Background())

	// b's lease expires: its record goes without a leave.
	delete(nodes, b.Key())
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: b})
	if !r.isRetained("c", "b") {
		t.Fatal("a record gone without a leave is not retained")
	}
	if p, ok := peerFor(dev, k); !ok || len(p.AllowedIPs) != 1 {
		t.Fatalf("the device lost b: %+v", dev.Peers())
	}
	r.configure(context.Background())
	if _, ok := peerFor(dev, k); !ok {
		t.Fatal("a reconcile after the deletion removed the retained peer")
	}
	// Its tunnel keeps receiving: it stays past the silence limit.
	t0 := time.Now()
	r.checkRetained(t0) // first read: the baseline
	dev.AddRx(k, 32)
	if r.checkRetained(t0.Add(50*time.Second)) || !r.isRetained("c", "b") {
		t.Fatal("a peer that keeps sending was dropped")
	}
	dev.AddRx(k, 32)
	if r.checkRetained(t0.Add(100 * time.Second)) {
		t.Fatal("a peer that sent 50 s ago was dropped with a 60 s limit")
	}
	// Then it goes silent: dropped once the limit passes.
	if !r.checkRetained(t0.Add(161*time.Second)) || r.isRetained("c", "b") || len(dropped) != 1 || dropped[0] != "c/b" {
		t.Fatalf("a silent peer was not dropped (dropped %v)", dropped)
	}
	r.configure(context.Background())
	if _, ok := peerFor(dev, k); ok {
		t.Fatal("the dropped node is still a peer")
	}
}

func TestPeerLeavingOrReturningIsNotRetained(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	r := newTestPeerReconciler(dev, fakeNodes{})
	r.silence = time.Minute
	r.status = dev.Status
	b := kvstore.Node{Name: "b", Cluster: "c", WGPublicKey: testKey(t), CIDRs: pfx("100.64.1.0/24")}
	leaving := b
	leaving.Leaving = true
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: leaving})
	if r.isRetained("c", "b") {
		t.Fatal("a node that left is retained")
	}
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: b})
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventAdd, Value: b})
	if r.isRetained("c", "b") {
		t.Fatal("a node whose record is back is still retained")
	}
	// This node's own record is never retained (it writes it again).
	me := kvstore.Node{Name: "me", Cluster: "c", WGPublicKey: testKey(t)}
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: me})
	if r.isRetained("c", "me") {
		t.Fatal("this node's own record is retained")
	}
	// A device without the peer any more: nothing to keep.
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: b})
	if !r.checkRetained(time.Now()) || r.isRetained("c", "b") {
		t.Fatal("a retained node the device has no peer for was kept")
	}
}

// liveEndpoints is an endpoint cache the test changes as it goes.
type liveEndpoints struct {
	mu  sync.Mutex
	eps map[netip.Addr]kvstore.Endpoint
}

// put and del change the endpoints under the lock: the reconciler reads
// them from its own goroutines (settle timers).
func (l *liveEndpoints) put(e kvstore.Endpoint) { l.mu.Lock(); defer l.mu.Unlock(); l.eps[e.IP] = e }
func (l *liveEndpoints) del(ip netip.Addr)      { l.mu.Lock(); defer l.mu.Unlock(); delete(l.eps, ip) }

func (l *liveEndpoints) Get(key string) (kvstore.Endpoint, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.eps {
		if e.Key() == key {
			return e, true
		}
	}
	return kvstore.Endpoint{}, false
}

func (l *liveEndpoints) Range(fn func(string, kvstore.Endpoint) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ip, e := range l.eps {
		if !fn(ip.String(), e) {
			return
		}
	}
}

func TestIPCacheHoldsAddressesOfARetainedNode(t *testing.T) {
	dp := bpftest.New()
	live := &liveEndpoints{eps: map[netip.Addr]kvstore.Endpoint{}}
	known := map[string]bool{"b": true, "c2": true}
	var mu sync.Mutex
	owned := func(_, node string) ([]netip.Prefix, bool) {
		mu.Lock()
		defer mu.Unlock()
		return pfx("100.64.1.0/24"), known[node]
	}
	retained := map[string]bool{}
	r := newIPCacheReconciler(dp, owned, live, slog.New(slog.DiscardHandler))
	r.held = func(_, node string) bool { mu.Lock(); defer mu.Unlock(); return retained[node] }
	r.settle = 10 * time.Millisecond
	web := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.2"), Identity: 300, Cluster: "c", Node: "b"}
	gone := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.3"), Identity: 301, Cluster: "c", Node: "b"}
	for _, e := range []kvstore.Endpoint{web, gone} {
		live.put(e)
		r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: e})
	}
	has := func(e kvstore.Endpoint) bool { _, ok := dp.IPCache()[netip.PrefixFrom(e.IP, 32)]; return ok }

	// An explicit removal while b's record is there: the address goes.
	live.del(gone.IP)
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventDelete, Old: gone})
	testutil.Eventually(t, 5*time.Second, "the removed endpoint to leave the ipcache", func() bool { return !has(gone) })

	// b's lease expires: its endpoint goes before its record (the caches
	// deliver in any order), then b is retained: the address stays.
	live.del(web.IP)
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventDelete, Old: web})
	mu.Lock()
	known["b"], retained["b"] = false, true
	mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	if !has(web) {
		t.Fatal("the address of a retained node's endpoint lost its identity")
	}
	// b comes back with the same endpoint: still there, nothing lost.
	mu.Lock()
	known["b"], retained["b"] = true, false
	mu.Unlock()
	live.put(web)
	r.resyncNode("c", "b")
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: web})
	time.Sleep(100 * time.Millisecond)
	if !has(web) {
		t.Fatal("the address went when its node came back")
	}

	// Expired again, and this time b is dropped for good: the address goes.
	live.del(web.IP)
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventDelete, Old: web})
	mu.Lock()
	known["b"], retained["b"] = false, true
	mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	r.dropNode("c", "b")
	if has(web) {
		t.Fatal("a dropped node's held address kept its identity")
	}
}

func TestIPCacheRefusesBorrowedIdentitiesAndUngrantedLabels(t *testing.T) {
	dp := bpftest.New()
	live := &liveEndpoints{eps: map[netip.Addr]kvstore.Endpoint{}}
	owned := func(_, _ string) ([]netip.Prefix, bool) { return pfx("100.64.1.0/24"), true }
	r := newIPCacheReconciler(dp, owned, live, slog.New(slog.DiscardHandler))
	idents := map[uint32][]string{300: {"mesh:cluster=c", "vm:app=web"}}
	r.identityLabels = func(id uint32) ([]string, bool) { l, ok := idents[id]; return l, ok }
	r.allows = func(_, node string, labels []string) error {
		if node == "b" && slices.Contains(labels, "vm:app=web") {
			return errors.New("vm:app=web is outside the node's grant")
		}
		return nil
	}
	has := func(ip string) bool { _, ok := dp.IPCache()[netip.MustParsePrefix(ip+"/32")]; return ok }
	add := func(e kvstore.Endpoint) {
		live.put(e)
		r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: e})
	}
	// a borrows web's number for its cache workload: refused.
	add(kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.2"), Identity: 300, Labels: []string{"vm:app=cache", "mesh:cluster=c"}, Cluster: "c", Node: "a"})
	if has("100.64.1.2") {
		t.Fatal("an endpoint with another label set's identity number was mapped")
	}
	// b claims web's labels, outside its grant: refused.
	add(kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.3"), Identity: 300, Labels: []string{"vm:app=web", "mesh:cluster=c"}, Cluster: "c", Node: "b"})
	if has("100.64.1.3") {
		t.Fatal("an endpoint outside its node's grant was mapped")
	}
	// a's own web: mapped.
	add(kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.4"), Identity: 300, Labels: []string{"mesh:cluster=c", "vm:app=web"}, Cluster: "c", Node: "a"})
	if !has("100.64.1.4") {
		t.Fatal("a granted endpoint with its own identity was not mapped")
	}
	// An identity not known yet: the endpoint waits, then is mapped.
	add(kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.5"), Identity: 301, Labels: []string{"vm:app=db"}, Cluster: "c", Node: "a"})
	if has("100.64.1.5") {
		t.Fatal("an endpoint was mapped before its identity was known")
	}
	idents[301] = []string{"vm:app=db"}
	r.resyncIdentity(301)
	if !has("100.64.1.5") {
		t.Fatal("the endpoint that waited for its identity was not mapped")
	}
}

// TestPeerDroppedByARemovalTombstone: a crashed node whose record expired
// is retained; the leaving tombstone `meshctl node remove` writes ends the
// retention and the peer at once, and a revoked node is no peer whatever
// its record says.
func TestPeerDroppedByARemovalTombstone(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	nodes := fakeNodes{}
	r := newTestPeerReconciler(dev, nodes)
	r.silence = time.Minute
	r.status = dev.Status
	k := testKey(t)
	b := kvstore.Node{Name: "b", Cluster: "c", WGPublicKey: k, CIDRs: pfx("100.64.1.0/24")}
	nodes.put(b)
	r.configure(context.Background())
	delete(nodes, b.Key())
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: b})
	if !r.isRetained("c", "b") {
		t.Fatal("the expired record is not retained")
	}
	tomb := kvstore.Node{Name: "b", Cluster: "c", WGPublicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", Leaving: true}
	nodes.put(tomb)
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventAdd, Value: tomb})
	r.configure(context.Background())
	if r.isRetained("c", "b") || len(dev.Peers()) != 0 {
		t.Fatalf("after the tombstone: retained %v, peers %+v", r.isRetained("c", "b"), dev.Peers())
	}
	delete(nodes, tomb.Key())
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: tomb})
	if r.isRetained("c", "b") {
		t.Fatal("the deleted tombstone is retained")
	}

	revoked := map[string]bool{"c/b": true}
	r.revoked = func(c, n string) bool { return revoked[c+"/"+n] }
	nodes.put(b)
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventAdd, Value: b})
	r.configure(context.Background())
	if len(dev.Peers()) != 0 {
		t.Fatalf("a revoked node's record made a peer: %+v", dev.Peers())
	}
	delete(nodes, b.Key())
	r.nodeEvent(kvstore.Event[kvstore.Node]{Kind: kvstore.EventDelete, Old: b})
	if r.isRetained("c", "b") {
		t.Fatal("a revoked node is retained")
	}
}

// A record that copies a rotating node's announced next key as its own
// current key, before the rotating node switches to it, must not end up
// owning that key: the next key was the victim's first.
func TestCopiedNextWireGuardKeyStaysWithItsAnnouncer(t *testing.T) {
	dev := tunneltest.New("wt0", 51833)
	nodes := fakeNodes{}
	cur, nextKey := testKey(t), testKey(t)
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.1.2:51833")}
	victim := kvstore.Node{Name: "victim", Cluster: "c", WGPublicKey: cur, WGNextPublicKey: nextKey, CIDRs: pfx("100.64.1.0/24"), Endpoints: ep}
	nodes.put(victim)
	r := newTestPeerReconciler(dev, nodes)
	reconcile := func(what string) []tunnel.Peer {
		t.Helper()
		peers := r.desired()
		if err := dev.Reconcile(context.Background(), peers); err != nil {
			t.Fatalf("%s: the device refused the peers: %v", what, err)
		}
		return peers
	}
	reconcile("rotation announced")
	nodes.put(kvstore.Node{Name: "aaa-attacker", Cluster: "c", WGPublicKey: nextKey, CIDRs: pfx("100.64.9.0/24"),
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:51833")}})
	peers := reconcile("the next key copied")
	if len(peers) != 1 || peers[0].PublicKey != cur || peers[0].NextPublicKey != nextKey {
		t.Fatalf("peers %+v after the copy, want only the victim, still rotating to its next key", peers)
	}
	// The victim switches; the key stays its own.
	victim.WGPublicKey, victim.WGNextPublicKey = nextKey, ""
	nodes.put(victim)
	for range 2 {
		peers = reconcile("after the switch")
		p, ok := peerFor(dev, nextKey)
		if len(peers) != 1 || !ok || p.Endpoint != "198.18.1.2:51833" || !slices.Equal(p.AllowedIPs, pfx("100.64.1.0/24")) {
			t.Fatalf("after the switch the key is configured as %+v (peers %+v), want the victim's endpoint and prefix", p, peers)
		}
	}

}
