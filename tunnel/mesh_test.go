package tunnel

import (
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

// TestNATMesh: three nodes, c behind NAT. c reaches a and b by their
// endpoints; a and b learn c's NAT'd endpoint from its handshakes and reach
// it back; ping and TCP work both ways between every pair of mesh addresses.
func TestNATMesh(t *testing.T) {
	testutil.Privileged(t)
	l := newNATLab(t)
	a := openNode(t, l.a, "a", "100.64.0.1/32")
	b := openNode(t, l.b, "b", "100.64.0.2/32")
	c := openNode(t, l.c, "c", "100.64.0.3/32")
	if a.Kind() != KindUserspace {
		t.Logf("device kind: %s", a.Kind())
	}
	ak, bk, ck := a.PublicKey().String(), b.PublicKey().String(), c.PublicKey().String()
	const keep = 25 * time.Second
	reconcile(t, a,
		Peer{PublicKey: bk, Endpoint: l.bIP + ":51833", AllowedIPs: pfx("100.64.0.2/32")},
		Peer{PublicKey: ck, AllowedIPs: pfx("100.64.0.3/32")})
	reconcile(t, b,
		Peer{PublicKey: ak, Endpoint: l.aIP + ":51833", AllowedIPs: pfx("100.64.0.1/32")},
		Peer{PublicKey: ck, AllowedIPs: pfx("100.64.0.3/32")})
	reconcile(t, c,
		Peer{PublicKey: ak, Endpoint: l.aIP + ":51833", AllowedIPs: pfx("100.64.0.1/32"), Keepalive: keep},
		Peer{PublicKey: bk, Endpoint: l.bIP + ":51833", AllowedIPs: pfx("100.64.0.2/32"), Keepalive: keep})

	// The public nodes cannot reach c before it has handshaken: they have
	// no endpoint for it. Its keepalive makes the first handshake.
	for _, n := range []*Tunnel{a, b} {
		testutil.Eventually(t, 20*time.Second, n.Name()+" to learn c's endpoint", func() bool {
			return peerStatus(t, n, ck).Endpoint != ""
		})
		if ep := peerStatus(t, n, ck).Endpoint; ep[:len(l.cWAN)] != l.cWAN {
			t.Errorf("%s learned endpoint %s for c; want the NAT's public address %s", n.Name(), ep, l.cWAN)
		}
	}
	nodes := []struct {
		ns, ip string
	}{{l.a, "100.64.0.1"}, {l.b, "100.64.0.2"}, {l.c, "100.64.0.3"}}
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			mustPing(t, from.ns, to.ip)
			tcpEcho(t, from.ns, to.ns, to.ip+":7000")
		}
	}
	st := peerStatus(t, a, ck)
	if st.LastHandshake.IsZero() || st.RxBytes == 0 || st.TxBytes == 0 {
		t.Errorf("status of c on a: %+v; want a handshake and traffic both ways", st)
	}
}
