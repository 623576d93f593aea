package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

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
