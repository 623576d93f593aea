package lab_test

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
)

// natSpec: two public sites (reflectors, as STUN servers are) and two
// sites of each NAT kind, one node each.
func natSpec() *lab.Spec {
	site := func(name string, kind lab.NATKind) lab.SiteSpec {
		return lab.SiteSpec{Name: name, NATKind: kind, Nodes: []lab.NodeSpec{{Name: name + "-n1"}}}
	}
	return &lab.Spec{Sites: []lab.SiteSpec{
		site("pub1", lab.NATNone), site("pub2", lab.NATNone),
		site("eim1", lab.NATEIM), site("eim2", lab.NATEIM),
		site("sym1", lab.NATSymmetric), site("sym2", lab.NATSymmetric),
	}}
}

// udpSocket opens a UDP socket in a lab node on a fixed port, closed when
// the test ends.
func udpSocket(t *testing.T, l *lab.Lab, node string, port int) net.PacketConn {
	t.Helper()
	pc, err := l.ListenPacket(node, "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("UDP socket on %s:%d: %v", node, port, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// reflector answers every UDP packet with the address:port it came from,
// as a STUN server does: a node behind NAT learns its external address.
func reflector(t *testing.T, l *lab.Lab, node string) netip.AddrPort {
	t.Helper()
	const port = 3478
	pc := udpSocket(t, l, node, port)
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(from.String()), from)
		}
	}()
	return netip.AddrPortFrom(l.Node(node).Underlay, port)
}

// observed is the address:port the reflector saw pc's packets come from.
func observed(t *testing.T, pc net.PacketConn, refl netip.AddrPort) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 1500)
	for try := 0; try < 10; try++ {
		if _, err := pc.WriteTo([]byte("who am I"), net.UDPAddrFromAddrPort(refl)); err != nil {
			t.Fatalf("asking %s: %v", refl, err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			continue
		}
		if from.(*net.UDPAddr).AddrPort().Addr().Unmap() != refl.Addr() {
			continue
		}
		ap, err := netip.ParseAddrPort(string(buf[:n]))
		if err != nil {
			t.Fatalf("reflector %s answered %q: %v", refl, buf[:n], err)
		}
		_ = pc.SetReadDeadline(time.Time{})
		return ap
	}
	t.Fatalf("reflector %s never answered", refl)
	return netip.AddrPort{}
}

// A symmetric NAT gives one inner socket a new external port for every
// destination; an EIM NAT keeps one port whatever the destination. Both
// keep a destination's port while the flow lives.
func TestNATKindPorts(t *testing.T) {
	l := labtest.New(t, natSpec())
	r1, r2 := reflector(t, l, "pub1-n1"), reflector(t, l, "pub2-n1")
	for _, tt := range []struct {
		site string
		kind lab.NATKind
	}{{"eim1", lab.NATEIM}, {"sym1", lab.NATSymmetric}} {
		t.Run(string(tt.kind), func(t *testing.T) {
			router := l.Router(tt.site)
			if router.NATKind != tt.kind || !router.NAT || l.Node(tt.site+"-n1").NATKind != tt.kind {
				t.Fatalf("router %+v, node %+v: want NAT kind %s", router, l.Node(tt.site+"-n1"), tt.kind)
			}
			pc := udpSocket(t, l, tt.site+"-n1", 40000)
			via1, via2 := observed(t, pc, r1), observed(t, pc, r2)
			again := observed(t, pc, r1)
			t.Logf("socket %s-n1:40000 seen as %s by %s, %s by %s, then %s by %s", tt.site, via1, r1, via2, r2, again, r1)
			for _, ap := range []netip.AddrPort{via1, via2} {
				if ap.Addr() != router.WANAddr {
					t.Errorf("seen from %s, want the router's address %s", ap.Addr(), router.WANAddr)
				}
			}
			if again != via1 {
				t.Errorf("the mapping towards %s changed while the flow lived: %s, then %s", r1, via1, again)
			}
			switch tt.kind {
			case lab.NATEIM:
				if via1.Port() != via2.Port() {
					t.Errorf("EIM NAT: ports %d and %d for two destinations, want one", via1.Port(), via2.Port())
				}
			case lab.NATSymmetric:
				if via1.Port() == via2.Port() {
					t.Errorf("symmetric NAT: port %d for both destinations, want one per destination", via1.Port())
				}
			}
		})
	}
}

// punch has a and b (each a socket of a node behind NAT) send to each
// other's external address, as learned from the reflector, every 20ms
// until both got a packet of the other or d has passed; with aFirst, a
// sends alone for the first half of d (a hole punch whose first packets
// arrive before the other side sent anything). It reports whether each
// side got a packet of the other.
func punch(a, b net.PacketConn, extA, extB netip.AddrPort, aFirst bool, d time.Duration) (aGot, bGot bool) {
	recv := func(pc net.PacketConn, want string, got *atomic.Bool) {
		buf := make([]byte, 1500)
		_ = pc.SetReadDeadline(time.Now().Add(d))
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == want {
				got.Store(true)
				return
			}
		}
	}
	var aSaw, bSaw atomic.Bool
	var readers sync.WaitGroup
	readers.Go(func() { recv(a, "from b", &aSaw) })
	readers.Go(func() { recv(b, "from a", &bSaw) })
	start := time.Now()
	for time.Since(start) < d && !(aSaw.Load() && bSaw.Load()) {
		_, _ = a.WriteTo([]byte("from a"), net.UDPAddrFromAddrPort(extB))
		if !aFirst || time.Since(start) >= d/2 {
			_, _ = b.WriteTo([]byte("from b"), net.UDPAddrFromAddrPort(extA))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The sockets go on being used: stop the readers, lift the deadline.
	for _, pc := range []net.PacketConn{a, b} {
		_ = pc.SetReadDeadline(time.Now())
	}
	readers.Wait()
	for _, pc := range []net.PacketConn{a, b} {
		_ = pc.SetReadDeadline(time.Time{})
	}
	return aSaw.Load(), bSaw.Load()
}

// Two nodes behind EIM NATs reach each other by hole punching: each sends
// to the other's external address as a public node saw it, and the NATs
// let the replies in. Behind symmetric NATs the same procedure fails —
// the case a relay has to handle.
func TestHolePunch(t *testing.T) {
	l := labtest.New(t, natSpec())
	refl := reflector(t, l, "pub1-n1")
	const port = 41000
	try := func(t *testing.T, siteA, siteB string, port int, aFirst bool) (bool, bool) {
		a, b := udpSocket(t, l, siteA+"-n1", port), udpSocket(t, l, siteB+"-n1", port)
		extA, extB := observed(t, a, refl), observed(t, b, refl)
		aGot, bGot := punch(a, b, extA, extB, aFirst, 3*time.Second)
		t.Logf("%s as %s, %s as %s: %s got a packet: %t, %s got one: %t", siteA, extA, siteB, extB, siteA, aGot, siteB, bGot)
		return aGot, bGot
	}
	t.Run("eim", func(t *testing.T) {
		if aGot, bGot := try(t, "eim1", "eim2", port, false); !aGot || !bGot {
			t.Errorf("hole punching between EIM NATs failed: eim1 got a packet %t, eim2 %t", aGot, bGot)
		}
	})
	// eim1's first packets reach eim2's router before eim2 sent anything:
	// the router's input chain drops them without a trace, so its
	// mapping for eim2's socket stays the one the reflector saw.
	t.Run("eim, one side first", func(t *testing.T) {
		if aGot, bGot := try(t, "eim1", "eim2", port+1, true); !aGot || !bGot {
			t.Errorf("hole punching between EIM NATs, eim1 first, failed: eim1 got a packet %t, eim2 %t", aGot, bGot)
		}
	})
	t.Run("symmetric", func(t *testing.T) {
		if aGot, bGot := try(t, "sym1", "sym2", port, false); aGot || bGot {
			t.Errorf("hole punching between symmetric NATs worked (sym1 got a packet %t, sym2 %t): they should need a relay", aGot, bGot)
		}
	})
	// Without the input chain the punch that arrives first leaves a
	// conntrack entry on eim2's router that takes eim2's external port,
	// and the NATs never meet: what the chain is there for.
	t.Run("eim, one side first, without the input chain", func(t *testing.T) {
		if _, err := l.Exec(context.Background(), "eim2-router", "nft", "delete", "chain", "ip", "weft-lab", "input"); err != nil {
			t.Fatal(err)
		}
		if aGot, bGot := try(t, "eim1", "eim2", port+2, true); aGot && bGot {
			t.Errorf("without the router's input chain the late side's punch should fail, but both got packets")
		}
	})
}
