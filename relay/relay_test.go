package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

// Every test runs on loopback with real sockets: a Server on its own UDP
// socket, Clients with their underlay sockets, and per node a UDP socket
// standing for its WireGuard device.

func loopback(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c net.PacketConn) netip.AddrPort {
	return unmap(c.LocalAddr().(*net.UDPAddr).AddrPort())
}

// serveOn runs a Server on pc until the test ends (or stop is called) and
// checks that Serve returns nil.
func serveOn(t testing.TB, pc net.PacketConn, cfg ServerConfig) (s *Server, stop func()) {
	t.Helper()
	cfg.Conn = pc
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return s, stop
}

func startServer(t testing.TB, cfg ServerConfig) (*Server, netip.AddrPort) {
	t.Helper()
	pc := loopback(t)
	s, _ := serveOn(t, pc, cfg)
	return s, addrOf(pc)
}

// node is a relay client with a fake WireGuard device.
type node struct {
	id ID
	wg *net.UDPConn
	cl *Client
}

func newNode(t testing.TB, name string, keepalive time.Duration) *node {
	t.Helper()
	n := &node{id: NodeID("lab", name), wg: loopback(t)}
	cl, err := NewClient(ClientConfig{Self: n.id, WireGuard: addrOf(n.wg), ListenAddr: "127.0.0.1:0", Keepalive: keepalive})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	n.cl = cl
	return n
}

// use registers n with the relay at addr under the name "r"; tickets come
// from whatever server() is at the time.
func (n *node) use(t testing.TB, addr netip.AddrPort, server func() *Server) {
	t.Helper()
	if err := n.cl.AddRelay("r", addr, func(context.Context) (Ticket, error) { return server().Ticket(n.id) }); err != nil {
		t.Fatal(err)
	}
}

func waitRegistered(t testing.TB, ns ...*node) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "registered with the relay", func() error {
		for _, n := range ns {
			if !n.cl.Registered("r") {
				return fmt.Errorf("node %s is not registered: %+v", n.id, n.cl.Relays())
			}
		}
		return nil
	})
}

func pairOn(t testing.TB, addr netip.AddrPort, server func() *Server, keepalive time.Duration) (a, b *node) {
	t.Helper()
	a, b = newNode(t, "a", keepalive), newNode(t, "b", keepalive)
	a.cl.SetPeers([]ID{b.id})
	b.cl.SetPeers([]ID{a.id})
	a.use(t, addr, server)
	b.use(t, addr, server)
	waitRegistered(t, a, b)
	return a, b
}

func pair(t testing.TB) (*Server, netip.AddrPort, *node, *node) {
	s, addr := startServer(t, ServerConfig{})
	a, b := pairOn(t, addr, func() *Server { return s }, 200*time.Millisecond)
	return s, addr, a, b
}

// wgTransport is a WireGuard transport message of n bytes (n >= 32) with
// random contents after its header, as ciphertext looks.
func wgTransport(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	binary.LittleEndian.PutUint32(b, 4)
	return b
}

// wgMessage is a WireGuard message of type typ and its size.
func wgMessage(typ byte) []byte {
	size := map[byte]int{1: 148, 2: 92, 3: 64, 4: 32}[typ]
	b := wgTransport(size)
	b[0] = typ
	return b
}

func recv(c *net.UDPConn, within time.Duration) ([]byte, netip.AddrPort, error) {
	buf := make([]byte, MaxDatagram)
	_ = c.SetReadDeadline(time.Now().Add(within))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return buf[:n], unmap(from), err
}

// nothing fails t when c receives a datagram within d.
func nothing(t testing.TB, c *net.UDPConn, d time.Duration, what string) {
	t.Helper()
	if got, from, err := recv(c, d); err == nil {
		t.Fatalf("%s: got %d bytes from %v: %x", what, len(got), from, got[:min(len(got), 32)])
	}
}

func send(t testing.TB, c *net.UDPConn, b []byte, to netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatal(err)
	}
}

// registerRaw registers a plain socket as node id, speaking the protocol
// itself (a node whose address the test controls).
func registerRaw(t testing.TB, c *net.UDPConn, s *Server, relay netip.AddrPort, id ID) {
	t.Helper()
	tk, err := s.Ticket(id)
	if err != nil {
		t.Fatal(err)
	}
	send(t, c, AppendRegister(nil, tk), relay)
	got, _, err := recv(c, 2*time.Second)
	if err != nil || !bytes.Equal(got, AppendRegistered(nil, id)) {
		t.Fatalf("registering %s: got %x (%v), want REGISTERED", id, got, err)
	}
}

func TestRelayCarriesWireGuardBothWays(t *testing.T) {
	s, _, a, b := pair(t)
	epB, err := a.cl.Endpoint("r", b.id)
	if err != nil {
		t.Fatal(err)
	}
	if !epB.Addr().IsLoopback() {
		t.Fatalf("endpoint %v is not on loopback", epB)
	}
	msgs := [][]byte{wgMessage(1), wgMessage(2), wgMessage(3), wgMessage(4), wgTransport(1452), wgTransport(9000), wgTransport(60000)}
	var epA netip.AddrPort
	for _, msg := range msgs {
		send(t, a.wg, msg, epB)
		got, from, err := recv(b.wg, 2*time.Second)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("b's device got %d bytes (%v), want the %d sent", len(got), err, len(msg))
		}
		if epA.IsValid() && from != epA {
			t.Fatalf("b's device got packets of a from %v and %v: one local socket stands for a", epA, from)
		}
		epA = from
		// b's device answers where the packet came from: a's local socket on b.
		reply := bytes.Clone(msg)
		reply[len(reply)-1] ^= 0xff
		send(t, b.wg, reply, from)
		got, fromA, err := recv(a.wg, 2*time.Second)
		if err != nil || !bytes.Equal(got, reply) || fromA != epB {
			t.Fatalf("a's device got %d bytes from %v (%v), want the %d-byte reply from %v", len(got), fromA, err, len(reply), epB)
		}
	}
	if ep, err := b.cl.Endpoint("r", a.id); err != nil || ep != epA {
		t.Fatalf("b's Endpoint for a is %v (%v), but a's packets came from %v", ep, err, epA)
	}
	if r, peer, ok := b.cl.RelayOf(epA); !ok || r != "r" || peer != a.id {
		t.Fatalf("RelayOf(%v) = %q %s %v, want r %s", epA, r, peer, ok, a.id)
	}
	// A burst arrives whole and in order.
	var burst [][]byte
	for i := range 200 {
		m := wgTransport(1452)
		binary.BigEndian.PutUint32(m[8:], uint32(i))
		burst = append(burst, m)
		send(t, a.wg, m, epB)
	}
	for i, m := range burst {
		got, _, err := recv(b.wg, 2*time.Second)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("burst packet %d: got %d bytes (%v), want packet %d", i, len(got), err, binary.BigEndian.Uint32(got[8:]))
		}
	}
	want := uint64(2*len(msgs) + len(burst))
	if st := s.Stats(); st.ForwardedPackets != want || st.Bindings != 2 {
		t.Fatalf("relay stats %+v: want %d forwarded, 2 bindings", st, want)
	}
	if st := b.cl.Stats(); st.DeliveredPackets != uint64(len(msgs)+len(burst)) {
		t.Fatalf("b's stats %+v", st)
	}
}

func TestNotWireGuardIsDropped(t *testing.T) {
	s, addr, a, b := pair(t)
	epB, _ := a.cl.Endpoint("r", b.id)
	// From the device: the client does not send it.
	send(t, a.wg, []byte("plain text, not a WireGuard message"), epB)
	nothing(t, b.wg, 300*time.Millisecond, "a non-WireGuard payload from a's device")
	if st := a.cl.Stats(); st.DroppedNotWireGuard != 1 || st.SentPackets != 0 {
		t.Fatalf("a's stats %+v: want the payload dropped", st)
	}
	// From a registered node that sends it anyway: the relay drops it.
	x := loopback(t)
	registerRaw(t, x, s, addr, NodeID("lab", "x"))
	bad := [][]byte{
		[]byte("plain text, not a WireGuard message"),
		wgTransport(31),                                    // transport too short
		append(wgMessage(1), 0),                            // initiation of 149 bytes
		{5, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8},               // type 5
		append([]byte{4, 1, 0, 0}, wgTransport(40)[4:]...), // non-zero reserved byte
	}
	for _, p := range bad {
		send(t, x, AppendData(nil, b.id, p), addr)
	}
	nothing(t, b.wg, 300*time.Millisecond, "a non-WireGuard payload through the relay")
	if st := s.Stats(); st.DroppedNotWireGuard != uint64(len(bad)) || st.ForwardedPackets != 0 {
		t.Fatalf("relay stats %+v: want %d dropped as not WireGuard", st, len(bad))
	}
}

func TestStrangersGetNothingThrough(t *testing.T) {
	s, addr, a, b := pair(t)
	stranger := loopback(t)
	data := AppendData(nil, b.id, wgTransport(100))
	var forged Ticket
	_, _ = rand.Read(forged[:])
	for range 5 {
		send(t, stranger, AppendRegister(nil, forged), addr)
		send(t, stranger, data, addr)
		send(t, stranger, AppendKeepalive(nil, a.id), addr) // a's ID, not a's address
	}
	nothing(t, b.wg, 300*time.Millisecond, "a stranger's packet reached b")
	// A stranger hears at most UNKNOWN, 4 bytes.
	unknowns := 0
	for {
		got, _, err := recv(stranger, 200*time.Millisecond)
		if err != nil {
			break
		}
		if !bytes.Equal(got, AppendUnknown(nil)) {
			t.Fatalf("the stranger got %x", got)
		}
		unknowns++
	}
	if unknowns != 10 {
		t.Fatalf("the stranger got %d UNKNOWN answers to 10 KEEPALIVE and DATA", unknowns)
	}
	st := s.Stats()
	if st.DroppedBadTicket != 5 || st.DroppedUnregistered != 10 || st.ForwardedPackets != 0 || st.Bindings != 2 {
		t.Fatalf("relay stats %+v", st)
	}
	// a is still registered and still gets through.
	epB, _ := a.cl.Endpoint("r", b.id)
	msg := wgTransport(64)
	send(t, a.wg, msg, epB)
	if got, _, err := recv(b.wg, 2*time.Second); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("after the stranger, a's packet: %x (%v)", got, err)
	}
	// A stranger sending DATA straight to b's client, as if from a relay.
	send(t, stranger, AppendData(nil, a.id, wgTransport(64)), b.cl.LocalAddr())
	nothing(t, b.wg, 300*time.Millisecond, "DATA from a stranger to the client")
	if st := b.cl.Stats(); st.DroppedStranger != 1 {
		t.Fatalf("b's stats %+v: want 1 stranger's datagram dropped", st)
	}
}

func TestReusedTicketIsRefused(t *testing.T) {
	s, addr, _, b := pair(t)
	c := NodeID("lab", "c")
	tk, _ := s.Ticket(c)
	c1, c2 := loopback(t), loopback(t)
	send(t, c1, AppendRegister(nil, tk), addr)
	if got, _, err := recv(c1, 2*time.Second); err != nil || !bytes.Equal(got, AppendRegistered(nil, c)) {
		t.Fatalf("a valid ticket: %x (%v)", got, err)
	}
	send(t, c2, AppendRegister(nil, tk), addr)
	nothing(t, c2, 300*time.Millisecond, "a used ticket answered")
	send(t, c2, AppendData(nil, b.id, wgTransport(64)), addr)
	if got, _, err := recv(c2, time.Second); err != nil || !bytes.Equal(got, AppendUnknown(nil)) {
		t.Fatalf("DATA after a reused ticket: %x (%v), want UNKNOWN", got, err)
	}
	st := s.Stats()
	if st.DroppedBadTicket != 1 || st.DroppedUnregistered != 1 || st.ForwardedPackets != 0 || st.Bindings != 3 {
		t.Fatalf("relay stats %+v", st)
	}
	// c1 (registered) reaches b's client, which drops it: c is no peer of b.
	send(t, c1, AppendData(nil, b.id, wgTransport(64)), addr)
	nothing(t, b.wg, 300*time.Millisecond, "a packet from a node that is not among b's peers")
	testutil.Eventually(t, 2*time.Second, "b's client counting c's packet", func() bool {
		return s.Stats().ForwardedPackets == 1 && b.cl.Stats().DroppedNotPeer == 1
	})
}

func TestExpiredTicketIsRefused(t *testing.T) {
	s, addr := startServer(t, ServerConfig{TicketTTL: 100 * time.Millisecond})
	id := NodeID("lab", "x")
	tk, _ := s.Ticket(id)
	time.Sleep(200 * time.Millisecond)
	c := loopback(t)
	send(t, c, AppendRegister(nil, tk), addr)
	nothing(t, c, 300*time.Millisecond, "an expired ticket answered")
	if st := s.Stats(); st.DroppedBadTicket != 1 || st.Bindings != 0 || st.Tickets != 0 {
		t.Fatalf("relay stats %+v", st)
	}
	registerRaw(t, c, s, addr, id) // a fresh one works
}

func TestRateLimitDrops(t *testing.T) {
	const rate, burst, size = 64 << 10, 64 << 10, 1452
	s, addr := startServer(t, ServerConfig{Rate: rate, Burst: burst})
	a, b := pairOn(t, addr, func() *Server { return s }, time.Minute)
	epB, _ := a.cl.Endpoint("r", b.id)
	fits := burst / (HeaderLen + size) // 44
	for round := range 2 {
		before := s.Stats()
		for range 100 {
			send(t, a.wg, wgTransport(size), epB)
		}
		got := 0
		for {
			if _, _, err := recv(b.wg, 300*time.Millisecond); err != nil {
				break
			}
			got++
		}
		st := s.Stats()
		fwd, dropped := st.ForwardedPackets-before.ForwardedPackets, st.DroppedRateLimited-before.DroppedRateLimited
		if got < fits || got > fits+2 || uint64(got) != fwd || fwd+dropped != 100 {
			t.Fatalf("round %d: %d of 100 packets of %d bytes went through a %d-byte bucket (want %d); relay forwarded %d, dropped %d over the rate; relay %+v; a %+v",
				round, got, size, burst, fits, fwd, dropped, st, a.cl.Stats())
		}
		time.Sleep(time.Second + 100*time.Millisecond) // refills the bucket
	}
}

func TestBindingExpires(t *testing.T) {
	s, addr := startServer(t, ServerConfig{BindingTTL: 300 * time.Millisecond})
	// Clients that keep alive faster than the TTL stay.
	a, b := pairOn(t, addr, func() *Server { return s }, 50*time.Millisecond)
	x := loopback(t)
	xid := NodeID("lab", "x")
	registerRaw(t, x, s, addr, xid)
	b.cl.SetPeers([]ID{a.id, xid})
	if st := s.Stats(); st.Bindings != 3 {
		t.Fatalf("bindings %d, want 3", st.Bindings)
	}
	testutil.Eventually(t, 3*time.Second, "x's silent binding dropped", func() bool { return s.Stats().Bindings == 2 })
	send(t, x, AppendData(nil, b.id, wgTransport(64)), addr)
	if got, _, err := recv(x, time.Second); err != nil || !bytes.Equal(got, AppendUnknown(nil)) {
		t.Fatalf("DATA after the binding expired: %x (%v), want UNKNOWN", got, err)
	}
	nothing(t, b.wg, 200*time.Millisecond, "DATA of an expired binding")
	// b's packets for x go nowhere.
	epX, err := b.cl.Endpoint("r", xid)
	if err != nil {
		t.Fatal(err)
	}
	before := s.Stats().DroppedUnknownPeer
	send(t, b.wg, wgTransport(64), epX)
	testutil.Eventually(t, 2*time.Second, "DATA for an expired node counted", func() bool { return s.Stats().DroppedUnknownPeer == before+1 })
	nothing(t, x, 200*time.Millisecond, "DATA for an expired binding")
	// a and b, alive, still talk.
	epB, _ := a.cl.Endpoint("r", b.id)
	msg := wgTransport(64)
	send(t, a.wg, msg, epB)
	if got, _, err := recv(b.wg, 2*time.Second); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("a's packet after x expired: %x (%v); relay %+v a %+v b %+v", got, err, s.Stats(), a.cl.Stats(), b.cl.Stats())
	}
}

func TestRegisterFromNewAddressReplacesBinding(t *testing.T) {
	s, addr, _, b := pair(t)
	xid := NodeID("lab", "x")
	b.cl.SetPeers([]ID{NodeID("lab", "a"), xid})
	epX, err := b.cl.Endpoint("r", xid)
	if err != nil {
		t.Fatal(err)
	}
	old, moved := loopback(t), loopback(t)
	registerRaw(t, old, s, addr, xid)
	msg := wgTransport(64)
	send(t, b.wg, msg, epX)
	if got, _, err := recv(old, 2*time.Second); err != nil || !bytes.Equal(got, AppendData(nil, b.id, msg)) {
		t.Fatalf("x at its first address got %x (%v), want DATA from b", got, err)
	}
	// x's NAT rebinds: x registers from a new address.
	registerRaw(t, moved, s, addr, xid)
	send(t, b.wg, msg, epX)
	if got, _, err := recv(moved, 2*time.Second); err != nil || !bytes.Equal(got, AppendData(nil, b.id, msg)) {
		t.Fatalf("x at its new address got %x (%v), want DATA from b", got, err)
	}
	nothing(t, old, 200*time.Millisecond, "the old address still served")
	send(t, old, AppendData(nil, b.id, wgTransport(64)), addr)
	if got, _, err := recv(old, time.Second); err != nil || !bytes.Equal(got, AppendUnknown(nil)) {
		t.Fatalf("DATA from the old address: %x (%v), want UNKNOWN", got, err)
	}
	nothing(t, b.wg, 200*time.Millisecond, "DATA from the old address delivered")
	if st := s.Stats(); st.Bindings != 3 {
		t.Fatalf("relay stats %+v: want 3 bindings (a, b, x once)", st)
	}
}

func TestRevokeCutsANodeOff(t *testing.T) {
	s, addr := startServer(t, ServerConfig{})
	var revoked atomic.Bool
	a, b := newNode(t, "a", 100*time.Millisecond), newNode(t, "b", 100*time.Millisecond)
	a.cl.SetPeers([]ID{b.id})
	b.cl.SetPeers([]ID{a.id})
	// The agent refuses a revoked node a ticket.
	if err := a.cl.AddRelay("r", addr, func(context.Context) (Ticket, error) {
		if revoked.Load() {
			return Ticket{}, errors.New("node revoked")
		}
		return s.Ticket(a.id)
	}); err != nil {
		t.Fatal(err)
	}
	b.use(t, addr, func() *Server { return s })
	waitRegistered(t, a, b)
	epB, _ := a.cl.Endpoint("r", b.id)
	send(t, a.wg, wgTransport(64), epB)
	_, epA, err := recv(b.wg, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	revoked.Store(true)
	s.Revoke(a.id)
	send(t, a.wg, wgTransport(64), epB)
	nothing(t, b.wg, 300*time.Millisecond, "a revoked node's packet relayed")
	testutil.Eventually(t, 5*time.Second, "a learning it is not registered", func() bool { return !a.cl.Registered("r") })
	before := s.Stats().DroppedUnknownPeer
	send(t, b.wg, wgTransport(64), epA)
	testutil.Eventually(t, 2*time.Second, "b's packet for a dropped", func() bool { return s.Stats().DroppedUnknownPeer == before+1 })
	nothing(t, a.wg, 200*time.Millisecond, "a packet for a revoked node")
	time.Sleep(500 * time.Millisecond) // a keeps trying, and keeps failing
	if st := s.Stats(); st.Bindings != 1 || a.cl.Registered("r") {
		t.Fatalf("relay stats %+v, a registered %v: want a cut off", st, a.cl.Registered("r"))
	}
}

func TestRelayRestartClientsRegisterAgainOnUnknown(t *testing.T) {
	pc := loopback(t)
	addr := addrOf(pc)
	s1, stop1 := serveOn(t, pc, ServerConfig{})
	var cur atomic.Pointer[Server]
	cur.Store(s1)
	// Keepalives a minute apart: only UNKNOWN can make them register again.
	a, b := pairOn(t, addr, cur.Load, time.Minute)
	epB, _ := a.cl.Endpoint("r", b.id)
	send(t, a.wg, wgTransport(64), epB)
	_, epA, err := recv(b.wg, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	// The relay restarts: a new process, a new socket on the same port.
	stop1()
	pc.Close()
	pc2, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc2.Close() })
	s2, _ := serveOn(t, pc2, ServerConfig{})
	cur.Store(s2)

	// WireGuard keeps sending both ways; the first packets get UNKNOWN,
	// the clients register again, and traffic flows.
	testutil.Eventually(t, 10*time.Second, "traffic through the restarted relay both ways", func() error {
		ab, ba := wgTransport(64), wgTransport(64)
		send(t, a.wg, ab, epB)
		send(t, b.wg, ba, epA)
		// A packet of an earlier round may arrive late: any of them counts.
		if got, _, err := recv(b.wg, 100*time.Millisecond); err != nil || len(got) != len(ab) || got[0] != 4 {
			return fmt.Errorf("a → b: %v", err)
		}
		if got, _, err := recv(a.wg, 100*time.Millisecond); err != nil || len(got) != len(ba) || got[0] != 4 {
			return fmt.Errorf("b → a: %v", err)
		}
		return nil
	})
	if st := s2.Stats(); st.Bindings != 2 || st.Registrations < 2 || st.UnknownSent == 0 {
		t.Fatalf("restarted relay's stats %+v: want both nodes registered after UNKNOWN", st)
	}
	if ra, rb := a.cl.Stats().Registrations, b.cl.Stats().Registrations; ra < 2 || rb < 2 {
		t.Fatalf("registrations: a %d, b %d, want a second one each", ra, rb)
	}
}

func TestMissedKeepalivesRegisterAgain(t *testing.T) {
	pc := loopback(t)
	addr := addrOf(pc)
	s1, stop1 := serveOn(t, pc, ServerConfig{})
	var cur atomic.Pointer[Server]
	cur.Store(s1)
	a, b := pairOn(t, addr, cur.Load, 50*time.Millisecond)
	// The relay stops answering (no UNKNOWN either: silence).
	stop1()
	testutil.Eventually(t, 3*time.Second, "the clients noticing the silent relay", func() bool {
		return !a.cl.Registered("r") && !b.cl.Registered("r")
	})
	if st := a.cl.Relays(); len(st) != 1 || st[0].Registered || time.Since(st[0].LastAck) < 150*time.Millisecond {
		t.Fatalf("a's relays %+v: want unregistered, the last ack 3 keepalives ago", st)
	}
	s2, _ := serveOn(t, pc, ServerConfig{})
	cur.Store(s2)
	waitRegistered(t, a, b)
	if st := s2.Stats(); st.Bindings != 2 {
		t.Fatalf("relay stats %+v", st)
	}
}

func TestPacketFromANodeNotAmongPeersIsNotDelivered(t *testing.T) {
	s, _, a, b := pair(t)
	epB, _ := a.cl.Endpoint("r", b.id)
	send(t, a.wg, wgTransport(64), epB)
	_, epA, err := recv(b.wg, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b.cl.SetPeers(nil) // a left the mesh
	send(t, a.wg, wgTransport(64), epB)
	nothing(t, b.wg, 300*time.Millisecond, "a packet from a node that is no peer")
	testutil.Eventually(t, 2*time.Second, "the relay forwarding and b dropping", func() bool {
		return s.Stats().ForwardedPackets == 2 && b.cl.Stats().DroppedNotPeer == 1
	})
	// a's local socket on b is closed, and b gives no new one.
	if _, err := b.cl.Endpoint("r", a.id); err == nil {
		t.Fatal("Endpoint for a node that is no peer succeeded")
	}
	freed, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(epA))
	if err != nil {
		t.Fatalf("a's local socket on b (%v) is still open: %v", epA, err)
	}
	freed.Close()
}

func TestRemoveRelayClosesItsSockets(t *testing.T) {
	_, _, a, b := pair(t)
	epB, _ := a.cl.Endpoint("r", b.id)
	a.cl.RemoveRelay("r")
	if a.cl.Registered("r") || len(a.cl.Relays()) != 0 {
		t.Fatalf("after RemoveRelay: %+v", a.cl.Relays())
	}
	if _, err := a.cl.Endpoint("r", b.id); err == nil {
		t.Fatal("Endpoint through a removed relay succeeded")
	}
	freed, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(epB))
	if err != nil {
		t.Fatalf("b's local socket on a (%v) is still open: %v", epB, err)
	}
	freed.Close()
}

func TestRelayMovedKeepsEndpoints(t *testing.T) {
	s1, addr1 := startServer(t, ServerConfig{})
	s2, addr2 := startServer(t, ServerConfig{})
	a, b := pairOn(t, addr1, func() *Server { return s1 }, 100*time.Millisecond)
	epB, _ := a.cl.Endpoint("r", b.id)
	send(t, a.wg, wgTransport(64), epB)
	_, epA, err := recv(b.wg, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a.use(t, addr2, func() *Server { return s2 })
	b.use(t, addr2, func() *Server { return s2 })
	waitRegistered(t, a, b)
	if st := a.cl.Relays(); len(st) != 1 || st[0].Addr != addr2 {
		t.Fatalf("a's relays %+v, want r at %v", st, addr2)
	}
	if ep, _ := a.cl.Endpoint("r", b.id); ep != epB {
		t.Fatalf("the endpoint changed from %v to %v with the relay's address", epB, ep)
	}
	msg := wgTransport(64)
	send(t, b.wg, msg, epA)
	if got, _, err := recv(a.wg, 2*time.Second); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("b → a through the moved relay: %x (%v)", got, err)
	}
	if s2.Stats().ForwardedPackets != 1 || s1.Stats().ForwardedPackets != 1 {
		t.Fatalf("forwarded: first relay %d, second %d; want 1 each", s1.Stats().ForwardedPackets, s2.Stats().ForwardedPackets)
	}
}

// The agent listens on all addresses: a dual-stack socket, where IPv4
// peers are v4-mapped IPv6 addresses.
func TestDualStackSockets(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Skipf("no dual-stack UDP socket: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	if ua := pc.LocalAddr().(*net.UDPAddr); ua.IP.To4() != nil {
		t.Skipf("the system gave an IPv4 socket (%v) for the unspecified address", ua)
	}
	s, _ := serveOn(t, pc, ServerConfig{})
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), addrOf(pc).Port())
	var ns []*node
	for _, name := range []string{"a", "b"} {
		n := &node{id: NodeID("lab", name), wg: loopback(t)}
		cl, err := NewClient(ClientConfig{Self: n.id, WireGuard: addrOf(n.wg), ListenAddr: ":0", Keepalive: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		n.cl = cl
		ns = append(ns, n)
	}
	a, b := ns[0], ns[1]
	a.cl.SetPeers([]ID{b.id})
	b.cl.SetPeers([]ID{a.id})
	a.use(t, addr, func() *Server { return s })
	b.use(t, addr, func() *Server { return s })
	waitRegistered(t, a, b)
	epB, _ := a.cl.Endpoint("r", b.id)
	msg := wgTransport(1452)
	send(t, a.wg, msg, epB)
	got, epA, err := recv(b.wg, 2*time.Second)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("a → b: %d bytes (%v)", len(got), err)
	}
	send(t, b.wg, msg, epA)
	if got, _, err := recv(a.wg, 2*time.Second); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("b → a: %d bytes (%v)", len(got), err)
	}
}

func TestConfigErrors(t *testing.T) {
	pc := loopback(t)
	for _, cfg := range []ServerConfig{
		{},
		{Conn: pc, Rate: -1},
		{Conn: pc, Burst: 1000},
		{Conn: pc, BindingTTL: -time.Second},
		{Conn: pc, MaxTickets: -1},
	} {
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("NewServer(%+v) succeeded", cfg)
		}
	}
	wg := addrOf(pc)
	for _, cfg := range []ClientConfig{
		{},
		{WireGuard: netip.AddrPortFrom(wg.Addr(), 0)},
		{WireGuard: wg, Keepalive: -time.Second},
		{WireGuard: wg, ListenAddr: "not an address"},
	} {
		if c, err := NewClient(cfg); err == nil {
			c.Close()
			t.Errorf("NewClient(%+v) succeeded", cfg)
		}
	}
	cl, err := NewClient(ClientConfig{Self: NodeID("lab", "a"), WireGuard: wg, ListenAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tk := func(context.Context) (Ticket, error) { return Ticket{}, errors.New("no tickets here") }
	relay := netip.MustParseAddrPort("127.0.0.1:9")
	for _, c := range []struct {
		name string
		addr netip.AddrPort
		tk   func(context.Context) (Ticket, error)
	}{
		{"", relay, tk},
		{"r", netip.AddrPort{}, tk},
		{"r", netip.MustParseAddrPort("0.0.0.0:9"), tk},
		{"r", netip.MustParseAddrPort("127.0.0.1:0"), tk},
		{"r", netip.MustParseAddrPort("[::1]:9"), tk}, // an IPv4 socket
		{"r", relay, nil},
	} {
		if err := cl.AddRelay(c.name, c.addr, c.tk); err == nil {
			t.Errorf("AddRelay(%q, %v) succeeded", c.name, c.addr)
		}
	}
	if len(cl.Relays()) != 0 {
		t.Fatalf("refused relays were added: %+v", cl.Relays())
	}
	if err := cl.AddRelay("r", relay, tk); err != nil {
		t.Fatal(err)
	}
	if err := cl.AddRelay("other", relay, tk); err == nil {
		t.Error("two relays at one address")
	}
	b := NodeID("lab", "b")
	if _, err := cl.Endpoint("nope", b); err == nil {
		t.Error("Endpoint through an unknown relay")
	}
	if _, err := cl.Endpoint("r", b); err == nil {
		t.Error("Endpoint for a node not among the peers")
	}
	cl.SetPeers([]ID{b, NodeID("lab", "a")})
	if _, err := cl.Endpoint("r", NodeID("lab", "a")); err == nil {
		t.Error("Endpoint for the node itself")
	}
	if _, err := cl.Endpoint("r", b); err != nil {
		t.Errorf("Endpoint for a peer: %v", err)
	}
	cl.Close()
	if _, err := cl.Endpoint("r", b); !errors.Is(err, ErrClosed) {
		t.Errorf("Endpoint after Close: %v", err)
	}
	if err := cl.AddRelay("r2", netip.MustParseAddrPort("127.0.0.1:10"), tk); !errors.Is(err, ErrClosed) {
		t.Errorf("AddRelay after Close: %v", err)
	}
}

func TestServeReturnsOnCancelAndLeavesTheSocket(t *testing.T) {
	pc := loopback(t)
	s, err := NewServer(ServerConfig{Conn: pc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	testutil.Eventually(t, 2*time.Second, "Serve running", func() bool { return s.serving.Load() })
	if err := s.Serve(ctx); err == nil {
		t.Fatal("a second Serve at the same time succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	// The socket is open, without the deadline that woke Serve.
	other := loopback(t)
	send(t, other, []byte("still there"), addrOf(pc))
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		_, _, err := pc.ReadFrom(buf)
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("reading the socket after Serve: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the socket got nothing after Serve")
	}
}

// The forwarding path (a DATA datagram from a registered node to another)
// allocates nothing.
func TestForwardingAllocatesNothing(t *testing.T) {
	s, err := NewServer(ServerConfig{Conn: loopback(t)})
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.1:2000")
	ida, idb := NodeID("lab", "a"), NodeID("lab", "b")
	now := time.Now().UnixNano()
	for _, n := range []struct {
		id   ID
		addr netip.AddrPort
	}{{ida, a}, {idb, b}} {
		tk, _ := s.Ticket(n.id)
		if _, ok := s.register(tk, n.addr, now); !ok {
			t.Fatal("registering")
		}
	}
	msg := AppendData(nil, idb, wgTransport(1452))
	out := make([]datagram, 0, 4)
	var st batchStats
	allocs := testing.AllocsPerRun(1000, func() {
		copy(msg[MsgHeaderLen:HeaderLen], idb[:])
		d := datagram{buf: msg, addr: a}
		out = s.handle(&d, now, out[:0], &st)
	})
	if allocs != 0 {
		t.Fatalf("forwarding allocates %.1f times per datagram", allocs)
	}
	if len(out) != 1 || out[0].addr != b || !bytes.Equal(out[0].buf[MsgHeaderLen:HeaderLen], ida[:]) {
		t.Fatalf("forwarded %+v, want one datagram to %v from %s", out, b, ida)
	}
	// Junk from a stranger costs nothing either.
	junk := []byte{TypeData, 9, 9, 9, 1}
	if allocs := testing.AllocsPerRun(1000, func() {
		d := datagram{buf: junk, addr: netip.MustParseAddrPort("127.0.0.1:3000")}
		out = s.handle(&d, now, out[:0], &st)
	}); allocs != 0 {
		t.Fatalf("dropping junk allocates %.1f times per datagram", allocs)
	}
}
