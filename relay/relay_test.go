package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

func loopback(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

func startServer(t testing.TB, cfg ServerConfig) (*Server, netip.AddrPort) {
	t.Helper()
	pc := loopback(t)
	cfg.Conn = pc
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, addrOf(pc)
}

// node is a relay client with a fake WireGuard device: a UDP socket on
// loopback standing for the device's port.
type node struct {
	id ID
	wg *net.UDPConn
	cl *Client
}

func newNode(t testing.TB, name string) *node {
	t.Helper()
	n := &node{id: NodeID("lab", name), wg: loopback(t)}
	cl, err := NewClient(ClientConfig{Self: n.id, WireGuard: addrOf(n.wg), ListenAddr: "127.0.0.1:0", Keepalive: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	n.cl = cl
	return n
}

func (n *node) use(t testing.TB, s *Server, addr netip.AddrPort) {
	t.Helper()
	if err := n.cl.AddRelay("r", addr, func(context.Context) (Ticket, error) { return s.Ticket(n.id) }); err != nil {
		t.Fatal(err)
	}
}

func wgTransport(body string) []byte {
	b := make([]byte, 16, 64)
	binary.LittleEndian.PutUint32(b, 4)
	b = append(b, body...)
	for len(b)%16 != 0 || len(b) < 32 {
		b = append(b, 0)
	}
	return b
}

func recv(c *net.UDPConn, within time.Duration) ([]byte, netip.AddrPort, error) {
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(within))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return buf[:n], from, err
}

func pair(t *testing.T) (*Server, netip.AddrPort, *node, *node) {
	s, addr := startServer(t, ServerConfig{})
	a, b := newNode(t, "a"), newNode(t, "b")
	a.cl.SetPeers([]ID{b.id})
	b.cl.SetPeers([]ID{a.id})
	a.use(t, s, addr)
	b.use(t, s, addr)
	testutil.Eventually(t, 5*time.Second, "both registered", func() error {
		if !a.cl.Registered("r") || !b.cl.Registered("r") {
			return context.DeadlineExceeded
		}
		return nil
	})
	return s, addr, a, b
}

func TestRelayCarriesWireGuardBothWays(t *testing.T) {
	s, _, a, b := pair(t)
	epB, err := a.cl.Endpoint("r", b.id)
	if err != nil {
		t.Fatal(err)
	}
	msg := wgTransport("hello b")
	if _, err := a.wg.WriteToUDPAddrPort(msg, epB); err != nil {
		t.Fatal(err)
	}
	got, from, err := recv(b.wg, 2*time.Second)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("b's device got %x (%v), want %x", got, err, msg)
	}
	// b's device answers where the packet came from: a's local socket on b.
	reply := wgTransport("hello a")
	if _, err := b.wg.WriteToUDPAddrPort(reply, from); err != nil {
		t.Fatal(err)
	}
	got, fromA, err := recv(a.wg, 2*time.Second)
	if err != nil || !bytes.Equal(got, reply) || fromA != epB {
		t.Fatalf("a's device got %x from %v (%v), want %x from %v", got, fromA, err, reply, epB)
	}
	if st := s.Stats(); st.ForwardedPackets != 2 || st.Bindings != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Not WireGuard: dropped.
	_, _ = a.wg.WriteToUDPAddrPort([]byte("plain text, not a WireGuard message"), epB)
	if got, _, err := recv(b.wg, 300*time.Millisecond); err == nil {
		t.Fatalf("a non-WireGuard payload was relayed: %q", got)
	}
	if s.Stats().DroppedNotWireGuard == 0 {
		t.Fatal("the non-WireGuard payload was not counted")
	}
}

func TestStrangersGetNothingThrough(t *testing.T) {
	s, addr, _, b := pair(t)
	stranger := loopback(t)
	data := append([]byte{TypeData, 1, 0, 0}, b.id[:]...)
	data = append(data, wgTransport("from a stranger")...)
	var forged Ticket
	reg := append([]byte{TypeRegister, 1, 0, 0}, forged[:]...)
	for range 5 {
		_, _ = stranger.WriteToUDPAddrPort(reg, addr)
		_, _ = stranger.WriteToUDPAddrPort(data, addr)
	}
	if got, _, err := recv(b.wg, 300*time.Millisecond); err == nil {
		t.Fatalf("a stranger's packet reached b: %x", got)
	}
	// A stranger hears at most UNKNOWN.
	for {
		got, _, err := recv(stranger, 200*time.Millisecond)
		if err != nil {
			break
		}
		if !bytes.Equal(got, []byte{TypeUnknown, 1, 0, 0}) {
			t.Fatalf("the stranger got %x", got)
		}
	}
	// A ticket is good once: a second REGISTER with it from elsewhere fails.
	tk, _ := s.Ticket(NodeID("lab", "c"))
	reg = append([]byte{TypeRegister, 1, 0, 0}, tk[:]...)
	c1, c2 := loopback(t), loopback(t)
	_, _ = c1.WriteToUDPAddrPort(reg, addr)
	if got, _, err := recv(c1, time.Second); err != nil || got[0] != TypeRegistered {
		t.Fatalf("a valid ticket: %x %v", got, err)
	}
	_, _ = c2.WriteToUDPAddrPort(reg, addr)
	if got, _, err := recv(c2, 300*time.Millisecond); err == nil {
		t.Fatalf("a used ticket registered again: %x", got)
	}
	st := s.Stats()
	if st.DroppedBadTicket < 6 || st.DroppedUnregistered < 5 || st.ForwardedPackets != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestExpiredTicketAndRevocation(t *testing.T) {
	s, addr := startServer(t, ServerConfig{TicketTTL: 50 * time.Millisecond})
	tk, _ := s.Ticket(NodeID("lab", "x"))
	time.Sleep(100 * time.Millisecond)
	c := loopback(t)
	_, _ = c.WriteToUDPAddrPort(append([]byte{TypeRegister, 1, 0, 0}, tk[:]...), addr)
	if got, _, err := recv(c, 300*time.Millisecond); err == nil {
		t.Fatalf("an expired ticket registered: %x", got)
	}
	_, _, a, b := pair(t)
	_ = a
	_ = b
}

func TestRevokeCutsANodeOffAndRestartReregisters(t *testing.T) {
	s, addr, a, b := pair(t)
	epB, _ := a.cl.Endpoint("r", b.id)
	s.Revoke(a.id)
	_, _ = a.wg.WriteToUDPAddrPort(wgTransport("after revoke"), epB)
	if got, _, err := recv(b.wg, 300*time.Millisecond); err == nil {
		t.Fatalf("a revoked node's packet was relayed: %x", got)
	}
	// The relay answered UNKNOWN; a re-registers with a new ticket (the
	// agent would refuse one to a revoked node; here the source gives it).
	testutil.Eventually(t, 5*time.Second, "a registered again", func() error {
		_, _ = a.wg.WriteToUDPAddrPort(wgTransport("again"), epB)
		if _, _, err := recv(b.wg, 200*time.Millisecond); err != nil {
			return err
		}
		return nil
	})
	_ = addr
}

func TestRateLimitDrops(t *testing.T) {
	s, addr := startServer(t, ServerConfig{Rate: 1000, Burst: 2000})
	a, b := newNode(t, "a"), newNode(t, "b")
	a.cl.SetPeers([]ID{b.id})
	b.cl.SetPeers([]ID{a.id})
	a.use(t, s, addr)
	b.use(t, s, addr)
	testutil.Eventually(t, 5*time.Second, "registered", func() error {
		if !a.cl.Registered("r") || !b.cl.Registered("r") {
			return context.DeadlineExceeded
		}
		return nil
	})
	epB, _ := a.cl.Endpoint("r", b.id)
	msg := wgTransport(string(bytes.Repeat([]byte("x"), 400)))
	for range 50 {
		_, _ = a.wg.WriteToUDPAddrPort(msg, epB)
	}
	got := 0
	for {
		if _, _, err := recv(b.wg, 200*time.Millisecond); err != nil {
			break
		}
		got++
	}
	if got == 0 || got > 6 || s.Stats().DroppedRateLimited == 0 {
		t.Fatalf("%d of 50 packets of 432 bytes went through a 2000-byte bucket; stats %+v", got, s.Stats())
	}
}

func TestUnknownPeerIsNotDelivered(t *testing.T) {
	_, _, a, b := pair(t)
	b.cl.SetPeers(nil) // a is no peer of b any more
	epB, _ := a.cl.Endpoint("r", b.id)
	_, _ = a.wg.WriteToUDPAddrPort(wgTransport("who?"), epB)
	if got, _, err := recv(b.wg, 300*time.Millisecond); err == nil {
		t.Fatalf("a packet from a node that is no peer was delivered: %x", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{TypeRegister, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add(append([]byte{TypeData, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, wgTransport("x")...))
	f.Add([]byte{TypeUnknown, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		if m.Type == TypeData && checkWireGuard(m.Payload) != nil {
			t.Fatalf("accepted DATA with a non-WireGuard payload: %x", b)
		}
	})
}
