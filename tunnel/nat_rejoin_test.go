package tunnel

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

// TestNATRejoin: a node behind NAT that leaves (its peers remove it, its
// device goes away) and joins again with the same key is reachable from
// the public node as soon as it initiates, as on its first join. Before the
// public node's helper forgot what it had confirmed, it answered the
// rejoined node's initiations at the configured (unreachable) address for a
// whole session lifetime.
func TestNATRejoin(t *testing.T) {
	testutil.Privileged(t)
	l := newNATLab(t)
	a := openNode(t, l.a, "a", "100.64.0.1/32")
	cState := t.TempDir()
	openC := func() *Tunnel {
		c, err := Open(context.Background(), Config{
			Name: devName("c"), StateDir: cState, Addresses: pfx("100.64.0.3/32"),
			Helper: SelfHelper(), Mode: ModeUserspace, Netns: nsPath(l.c), Logger: testLogger(t).With("node", "c"),
		})
		if err != nil {
			t.Fatalf("opening c: %v", err)
		}
		return c
	}
	c := openC()
	ak, ck := a.PublicKey().String(), c.PublicKey().String()
	// c's record names its LAN address, which a cannot reach.
	cPeer := Peer{PublicKey: ck, Endpoint: "10.99.0.3:51833", AllowedIPs: pfx("100.64.0.3/32")}
	aPeer := Peer{PublicKey: ak, Endpoint: l.aIP + ":51833", AllowedIPs: pfx("100.64.0.1/32"), Keepalive: 5 * time.Second}
	reconcile(t, a, cPeer)
	reconcile(t, c, aPeer)
	mustPing(t, l.c, "100.64.0.1")
	mustPing(t, l.a, "100.64.0.3")

	// c leaves: a removes it; c's device and helper go away.
	reconcile(t, a)
	if err := c.Destroy(); err != nil {
		t.Fatalf("destroying c: %v", err)
	}
	// c joins again with the same key.
	c = openC()
	t.Cleanup(func() { _ = c.Destroy() })
	if c.PublicKey().String() != ck {
		t.Fatalf("c came back with another key")
	}
	reconcile(t, a, cPeer)
	reconcile(t, c, aPeer)
	// ping waits up to 6 s: WireGuard's first retry would come at 5 s, the
	// defect lasted the 180 s trust window.
	mustPing(t, l.c, "100.64.0.1")
	mustPing(t, l.a, "100.64.0.3")
	if ep := peerStatus(t, a, ck).Endpoint; !strings.HasPrefix(ep, l.cWAN+":") {
		t.Errorf("a reaches rejoined c at %q; want the NAT's address %s", ep, l.cWAN)
	}
}

// TestNATNodeRacesItsRecord: a node behind NAT initiates to a public node
// before that node has added it (the new node's agent is faster than the
// other's watch). When the public node adds it, with the unreachable LAN
// address from its record, it reaches the new node at once at the address
// the early initiation came from, instead of waiting for WireGuard's retry
// 5 s later.
func TestNATNodeRacesItsRecord(t *testing.T) {
	testutil.Privileged(t)
	l := newNATLab(t)
	b := openNode(t, l.b, "b", "100.64.0.2/32")
	c := openNode(t, l.c, "c", "100.64.0.3/32")
	bk, ck := b.PublicKey().String(), c.PublicKey().String()
	reconcile(t, c, Peer{PublicKey: bk, Endpoint: l.bIP + ":51833", AllowedIPs: pfx("100.64.0.2/32"), Keepalive: 5 * time.Second})
	// c's keepalive sends its first initiation at once; b drops it (no
	// peer) but its helper remembers the source.
	testutil.Eventually(t, 5*time.Second, "c to send its first initiation", func() bool {
		return peerStatus(t, c, bk).TxBytes > 0
	})
	time.Sleep(100 * time.Millisecond) // in flight across the lab's routers
	reconcile(t, b, Peer{PublicKey: ck, Endpoint: "10.99.0.3:51833", AllowedIPs: pfx("100.64.0.3/32"), Keepalive: 5 * time.Second})
	if ep := peerStatus(t, b, ck).Endpoint; !strings.HasPrefix(ep, l.cWAN+":") {
		t.Fatalf("b added c at %q; want the address c's early initiation came from (%s)", ep, l.cWAN)
	}
	testutil.Eventually(t, 10*time.Second, "b and c to handshake", func() bool {
		return !peerStatus(t, b, ck).LastHandshake.IsZero()
	})
	mustPing(t, l.b, "100.64.0.3")
	mustPing(t, l.c, "100.64.0.2")
}
