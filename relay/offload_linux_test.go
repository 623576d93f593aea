package relay

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gsoRun is n WireGuard transport messages of size bytes (the last one
// last bytes) back to back, numbered, as WireGuard sends a run with GSO.
func gsoRun(n, size, last int) ([]byte, [][]byte) {
	var run []byte
	var msgs [][]byte
	for i := range n {
		m := wgTransport(size)
		if i == n-1 {
			m = wgTransport(last)
		}
		binary.BigEndian.PutUint32(m[8:], uint32(i))
		msgs = append(msgs, m)
		run = append(run, m...)
	}
	return run, msgs
}

// The kernel hands a GSO send to a GRO socket as one: one read holds the
// run, and its segment size says where each datagram begins.
func TestGSOToGROIsOneRead(t *testing.T) {
	from, to := newSock(loopback(t), false), newSock(loopback(t), false)
	if !to.gro || from.gsoMax.Load() == 0 {
		t.Skip("no UDP GRO/GSO on this kernel")
	}
	run, msgs := gsoRun(10, 1200, 700)
	if err := newBatchIO(4).write(from, []datagram{{buf: run, addr: to.localAddr(), seg: 1200}}); err != nil {
		t.Fatal(err)
	}
	rs := newReadState(4)
	rs.reset()
	_ = to.uc.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := rs.rb.read(to, rs.ds)
	if err != nil {
		t.Fatal(err)
	}
	if d := rs.ds[0]; n != 1 || d.seg != 1200 || !bytes.Equal(d.buf, run) || d.addr != from.localAddr() {
		t.Fatalf("read %d datagrams, the first %d bytes in segments of %d from %v; want one of %d in segments of 1200 from %v",
			n, len(d.buf), d.seg, d.addr, len(run), from.localAddr())
	}
	var got [][]byte
	rs.ds[0].segments(func(b []byte) { got = append(got, b) })
	if len(got) != len(msgs) || !bytes.Equal(got[9], msgs[9]) {
		t.Fatalf("split into %d datagrams, want %d", len(got), len(msgs))
	}
}

// Without GSO (or when the route refuses it) a run goes out datagram by
// datagram.
func TestRunWithoutGSOIsSentOneByOne(t *testing.T) {
	from, to := newSock(loopback(t), false), loopback(t)
	from.gsoMax.Store(0)
	run, msgs := gsoRun(5, 300, 100)
	if err := newBatchIO(2).write(from, []datagram{{buf: run, addr: addrOf(to), seg: 300}}); err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		got, _, err := recv(to, 2*time.Second)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("datagram %d: %d bytes (%v), want %d", i, len(got), err, len(m))
		}
	}
}

// recvRun reads n datagrams from s (a GRO socket, as WireGuard's is).
func recvRun(t *testing.T, s *sock, n int) [][]byte {
	t.Helper()
	rs := newReadState(8)
	var got [][]byte
	for len(got) < n {
		rs.reset()
		_ = s.uc.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := rs.rb.read(s, rs.ds)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), n, err)
		}
		for i := range k {
			rs.ds[i].segments(func(b []byte) { got = append(got, bytes.Clone(b)) })
		}
	}
	return got
}

// WireGuard sends runs with GSO; the relay path keeps them runs and every
// datagram arrives, unchanged and in order, both ways.
func TestRelayCarriesGSORuns(t *testing.T) {
	s, _, a, b := pair(t)
	wa := newSock(a.wg, false)
	if wa.gsoMax.Load() == 0 {
		t.Skip("no UDP GSO on this kernel")
	}
	wb := newSock(b.wg, false)
	epB, _ := a.cl.Endpoint("r", b.id)
	send(t, a.wg, wgTransport(64), epB) // b learns a's local socket
	_, epA, err := recv(b.wg, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		from, rx *sock
		to       netip.AddrPort
		n, size  int
		lastSize int
	}{
		{wa, wb, epB, 64, 1460, 1460},
		{wa, wb, epB, 45, 1452, 600},
		{wb, wa, epA, 30, 1460, 33},
		{wb, wa, epA, 3, 32, 32}, // keepalive-sized
	} {
		run, msgs := gsoRun(c.n, c.size, c.lastSize)
		if err := newBatchIO(1).write(c.from, []datagram{{buf: run, addr: c.to, seg: c.size}}); err != nil {
			t.Fatal(err)
		}
		for i, got := range recvRun(t, c.rx, len(msgs)) {
			if !bytes.Equal(got, msgs[i]) {
				t.Fatalf("run of %d×%d: datagram %d: %d bytes, want %d", c.n, c.size, i, len(got), len(msgs[i]))
			}
		}
	}
	// A datagram in a run that is no WireGuard message is dropped, the
	// others go on.
	run, msgs := gsoRun(5, 500, 500)
	copy(run[2*500:], "not WireGuard")
	if err := newBatchIO(1).write(wa, []datagram{{buf: run, addr: epB, seg: 500}}); err != nil {
		t.Fatal(err)
	}
	got := recvRun(t, wb, 4)
	for k, i := range []int{0, 1, 3, 4} {
		if !bytes.Equal(got[k], msgs[i]) {
			t.Fatalf("datagram %d of a run with a bad one: %d bytes", i, len(got[k]))
		}
	}
	if st := a.cl.Stats(); st.DroppedNotWireGuard != 1 {
		t.Fatalf("a's stats %+v: want the bad datagram dropped", st)
	}
	want := uint64(1 + 64 + 45 + 30 + 3 + 4)
	if st := s.Stats(); st.ForwardedPackets != want {
		t.Fatalf("relay forwarded %d datagrams, want %d", st.ForwardedPackets, want)
	}
}

func TestCoalesce(t *testing.T) {
	buf := make([]byte, 1000)
	x, y := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")
	other := make([]byte, 100)
	ds := []datagram{
		{buf: buf[0:100], addr: x}, {buf: buf[100:200], addr: x}, {buf: buf[200:250], addr: x}, // a run, short last
		{buf: buf[250:350], addr: x}, // after a short one: a new run
		{buf: buf[350:450], addr: y}, // another address
		{buf: buf[450:550], addr: y},
		{buf: other, addr: y},        // not back to back
		{buf: buf[600:700], addr: y}, // a gap before it
		{buf: buf[700:710], addr: y},
	}
	got := coalesce(ds)
	want := []struct {
		off, n, seg int
		addr        netip.AddrPort
	}{{0, 250, 100, x}, {250, 100, 0, x}, {350, 200, 100, y}, {-1, 100, 0, y}, {600, 110, 100, y}}
	if len(got) != len(want) {
		t.Fatalf("coalesced into %d datagrams, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if len(g.buf) != w.n || g.seg != w.seg || g.addr != w.addr || (w.off >= 0 && &g.buf[0] != &buf[w.off]) {
			t.Errorf("datagram %d: %d bytes, segments of %d, to %v; want %d at %d, segments of %d, to %v", i, len(g.buf), g.seg, g.addr, w.n, w.off, w.seg, w.addr)
		}
	}
	// At most 64 segments in one.
	ds = ds[:0]
	for i := range 100 {
		ds = append(ds, datagram{buf: buf[i*10 : i*10+10], addr: x})
	}
	if got := coalesce(ds); len(got) != 2 || len(got[0].buf) != 640 || len(got[1].buf) != 360 {
		t.Fatalf("100 segments coalesced into %d datagrams", len(got))
	}
}

// A GSO send may carry up to 128 segments (UDP_MAX_SEGMENTS), more than the
// 64 WireGuard uses: the client's local socket takes the whole run (it
// once overran its buffer here, a panic that took the agent down) and
// every datagram reaches the peer.
func TestProxyTakesAKernelMaxRun(t *testing.T) {
	_, _, a, b := pair(t)
	if newSock(a.wg, false).gsoMax.Load() == 0 {
		t.Skip("no UDP GSO on this kernel")
	}
	epB, _ := a.cl.Endpoint("r", b.id)
	const n, size = 128, 510
	run, msgs := gsoRun(n, size, size)
	rc, err := a.wg.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], size)
	var serr error
	if err := rc.Control(func(fd uintptr) {
		sa := &unix.SockaddrInet4{Port: int(epB.Port()), Addr: epB.Addr().As4()}
		_, serr = unix.SendmsgN(int(fd), run, oob, sa, 0)
	}); err != nil || serr != nil {
		t.Skipf("a %d-segment GSO send is refused here: %v %v", n, err, serr)
	}
	got := recvRun(t, newSock(b.wg, false), n)
	for i := range got {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(msgs[i]))
		}
	}
	if st := a.cl.Stats(); st.DroppedMalformed != 0 {
		t.Fatalf("a's stats %+v: nothing should be dropped", st)
	}
}
