package lab_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
)

// udpPath is a UDP flow from one node to another: a socket on each end
// that lives as long as the test, so a cut is seen on a flow that was
// already there (its conntrack entries established), as WireGuard's is.
type udpPath struct {
	from net.PacketConn
	to   netip.AddrPort
	mu   sync.Mutex
	seen map[string]bool
	seq  int
	name string
}

func newUDPPath(t *testing.T, l *lab.Lab, from, to string, port int) *udpPath {
	t.Helper()
	return pathOver(udpSocket(t, l, from, port), udpSocket(t, l, to, port), netip.AddrPortFrom(l.Node(to).Underlay, uint16(port)), from+" -> "+to)
}

// pathOver is the flow from socket from to address to, where socket recv
// gets it; recv must be the receiving end of no other path.
func pathOver(from, recv net.PacketConn, to netip.AddrPort, name string) *udpPath {
	p := &udpPath{from: from, to: to, seen: map[string]bool{}, name: name}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := recv.ReadFrom(buf)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.seen[string(buf[:n])] = true
			p.mu.Unlock()
		}
	}()
	return p
}

// passes sends a fresh packet every 20ms for up to d and reports whether
// one of them arrived.
func (p *udpPath) passes(d time.Duration) bool {
	p.mu.Lock()
	p.seq++
	msg := fmt.Sprintf("probe %d", p.seq)
	p.mu.Unlock()
	for start := time.Now(); time.Since(start) < d; time.Sleep(20 * time.Millisecond) {
		_, _ = p.from.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(p.to))
		p.mu.Lock()
		ok := p.seen[msg]
		p.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// tcpWorks opens a TCP connection from one node to another and has a line
// echoed back.
func tcpWorks(t *testing.T, l *lab.Lab, from, to string, port int) error {
	t.Helper()
	ln, err := l.Listen(to, "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, io.LimitReader(c, 6))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, from, "tcp", net.JoinHostPort(l.Node(to).Underlay.String(), fmt.Sprint(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return err
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	return nil
}

// cutTable is router's cut table, or "" when it has none.
func cutTable(t *testing.T, l *lab.Lab, router string) string {
	t.Helper()
	out, err := l.Exec(context.Background(), router, "nft", "list", "table", "ip", "weft-lab-cut")
	if err != nil {
		return ""
	}
	return string(out)
}

// A cut drops UDP between two sites, both ways, on flows that were there
// before it, while TCP between them and UDP to other sites pass; heal
// restores it. A NAT site is cut by its router's address, also from
// another NAT site it reached by hole punching. The cut is in the state,
// seen by another handle of the lab, which can heal it.
func TestCutHeal(t *testing.T) {
	ctx := context.Background()
	l := labtest.New(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "a", Nodes: []lab.NodeSpec{{Name: "a1"}}},
		{Name: "b", Nodes: []lab.NodeSpec{{Name: "b1"}}},
		{Name: "c", Nodes: []lab.NodeSpec{{Name: "c1"}}},
		{Name: "n", NATKind: lab.NATEIM, Nodes: []lab.NodeSpec{{Name: "n1"}}},
		{Name: "m", NATKind: lab.NATEIM, Nodes: []lab.NodeSpec{{Name: "m1"}}},
	}})
	const port = 51833
	ab, ba := newUDPPath(t, l, "a1", "b1", port), newUDPPath(t, l, "b1", "a1", port+1)
	ac, ca := newUDPPath(t, l, "a1", "c1", port+2), newUDPPath(t, l, "c1", "a1", port+3)
	na, nb := newUDPPath(t, l, "n1", "a1", port+4), newUDPPath(t, l, "n1", "b1", port+5)
	// n1 and m1 behind their NATs, each other's address learned from a
	// reflector on c1: only the routers' internet addresses are involved.
	refl := reflector(t, l, "c1")
	nSock, mSock := udpSocket(t, l, "n1", port+6), udpSocket(t, l, "m1", port+6)
	extN, extM := observed(t, nSock, refl), observed(t, mSock, refl)
	if aGot, bGot := punch(nSock, mSock, extN, extM, false, 3*time.Second); !aGot || !bGot {
		t.Fatalf("n1 and m1 do not reach each other by hole punching (n1 got a packet %t, m1 %t)", aGot, bGot)
	}
	nm, mn := pathOver(nSock, mSock, extM, "n1 -> m1 (punched)"), pathOver(mSock, nSock, extN, "m1 -> n1 (punched)")
	all := []*udpPath{ab, ba, ac, ca, na, nb, nm, mn}
	check := func(t *testing.T, pass, drop []*udpPath) {
		t.Helper()
		for _, p := range pass {
			if !p.passes(3 * time.Second) {
				t.Errorf("UDP %s does not pass", p.name)
			}
		}
		for _, p := range drop {
			if p.passes(time.Second) {
				t.Errorf("UDP %s passes, want it dropped", p.name)
			}
		}
	}
	check(t, all, nil)

	if err := l.Cut(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	t.Run("cut", func(t *testing.T) {
		check(t, []*udpPath{ac, ca, na, nb}, []*udpPath{ab, ba})
		if err := tcpWorks(t, l, "a1", "b1", 7100); err != nil {
			t.Errorf("TCP a1 -> b1 while cut: %v", err)
		}
		if err := tcpWorks(t, l, "b1", "a1", 7101); err != nil {
			t.Errorf("TCP b1 -> a1 while cut: %v", err)
		}
		ping(t, l, "a1", l.Node("b1").Underlay)
		want := []lab.Cut{{A: "a", B: "b"}}
		if got := l.Status().Cuts; !reflect.DeepEqual(got, want) {
			t.Errorf("status cuts %v, want %v", got, want)
		}
		for router, cut := range map[string]bool{"a-router": true, "b-router": true, "c-router": false, "n-router": false, "m-router": false} {
			if table := cutTable(t, l, router); (table != "") != cut {
				t.Errorf("%s: cut table present %t, want %t:\n%s", router, table != "", cut, table)
			}
		}
		if table := cutTable(t, l, "a-router"); !strings.Contains(table, "198.18.2.0/24") || !strings.Contains(table, "198.19.0.3") {
			t.Errorf("a-router's cut set lacks b's LAN or router address:\n%s", table)
		}
	})

	t.Run("twice, reversed, and a pair not cut", func(t *testing.T) {
		if err := l.Cut(ctx, "b", "a"); err != nil {
			t.Errorf("cutting b and a again: %v", err)
		}
		if err := l.Heal(ctx, "a", "c"); err != nil {
			t.Errorf("healing a and c, which are not cut: %v", err)
		}
		if got := l.Cuts(); !reflect.DeepEqual(got, []lab.Cut{{A: "a", B: "b"}}) {
			t.Errorf("cuts %v, want only a <-> b", got)
		}
		check(t, []*udpPath{ac}, []*udpPath{ab})
	})

	// The NAT'd node's packets reach a's router from n's router address.
	if err := l.Cut(ctx, "n", "a"); err != nil {
		t.Fatal(err)
	}
	t.Run("a NAT site", func(t *testing.T) {
		check(t, []*udpPath{nb, ac, nm, mn}, []*udpPath{na, ab})
		if got := l.Cuts(); !reflect.DeepEqual(got, []lab.Cut{{A: "a", B: "b"}, {A: "a", B: "n"}}) {
			t.Errorf("cuts %v, want a <-> b and a <-> n", got)
		}
	})
	if err := l.Cut(ctx, "m", "n"); err != nil {
		t.Fatal(err)
	}
	t.Run("two NAT sites", func(t *testing.T) {
		check(t, []*udpPath{nb}, []*udpPath{nm, mn})
	})
	if err := l.Heal(ctx, "m", "n"); err != nil {
		t.Fatal(err)
	}

	// Another handle, as `meshctl lab heal` in another process has.
	other, err := lab.Load(l.Name())
	if err != nil {
		t.Fatal(err)
	}
	if got := other.Status().Cuts; len(got) != 2 {
		t.Errorf("another handle's status shows cuts %v, want 2", got)
	}
	if err := other.Heal(ctx, "b", "a"); err != nil {
		t.Fatal(err)
	}
	t.Run("healed by another handle", func(t *testing.T) {
		check(t, []*udpPath{ab, ba, nb, nm, mn}, []*udpPath{na})
		if got := l.Cuts(); !reflect.DeepEqual(got, []lab.Cut{{A: "a", B: "n"}}) {
			t.Errorf("the first handle sees cuts %v, want a <-> n", got)
		}
		if table := cutTable(t, l, "b-router"); table != "" {
			t.Errorf("b-router, cut from nothing now, still has a cut table:\n%s", table)
		}
	})

	if err := l.HealAll(ctx); err != nil {
		t.Fatal(err)
	}
	t.Run("heal all", func(t *testing.T) {
		check(t, all, nil)
		if got := l.Status().Cuts; len(got) != 0 {
			t.Errorf("cuts after HealAll: %v", got)
		}
		for _, r := range l.Routers() {
			if table := cutTable(t, l, r.Name); table != "" {
				t.Errorf("%s still has a cut table:\n%s", r.Name, table)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tt := range []struct{ a, b, want string }{
			{"a", "zz", `no site "zz"`},
			{"a", "zz", "(sites: a, b, c, n, m)"},
			{"a1", "b", "a1 is a node, of site a"},
			{"a", "b-router", "b-router is the router of site b"},
		} {
			if err := l.Cut(ctx, tt.a, tt.b); !errors.Is(err, lab.ErrUnknownName) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Cut(%s, %s) = %v, want ErrUnknownName with %q", tt.a, tt.b, err, tt.want)
			}
			if err := l.Heal(ctx, tt.a, tt.b); !errors.Is(err, lab.ErrUnknownName) {
				t.Errorf("Heal(%s, %s) = %v, want ErrUnknownName", tt.a, tt.b, err)
			}
		}
		if err := l.Cut(ctx, "a", "a"); err == nil || !strings.Contains(err.Error(), "never cut from itself") {
			t.Errorf("Cut(a, a) = %v", err)
		}
		if got := l.Cuts(); len(got) != 0 {
			t.Errorf("refused cuts changed the state: %v", got)
		}
	})

	// Down takes the cuts with the lab; a cut left in place is no trouble.
	if err := l.Cut(ctx, "b", "c"); err != nil {
		t.Fatal(err)
	}
	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	labtest.CheckRemoved(t, l.Name())
	if err := other.Cut(ctx, "a", "b"); !errors.Is(err, lab.ErrNotFound) {
		t.Errorf("cutting in a removed lab: %v, want ErrNotFound", err)
	}
}
