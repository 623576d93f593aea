package relay

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// UDP segmentation offload bounds: a GSO send carries at most 64 segments
// (older kernels' UDP_MAX_SEGMENTS) and must fit one IP packet's length.
const (
	maxSegments     = 64
	maxSegmentBytes = 65000
	// kernelMaxSegments is the most a GSO send may carry (the kernel's
	// UDP_MAX_SEGMENTS), so the most segments one read may hold: a sender
	// need not keep to maxSegments.
	kernelMaxSegments = 128
)

// datagram is one UDP datagram of a batch, or several of the same size
// back to back (seg > 0: each seg bytes, the last one possibly shorter),
// as the kernel's receive offload (GRO) delivers them and its segmentation
// offload (GSO) sends them: one syscall and one trip through the stack for
// up to 64 datagrams. For a read, buf is the space to read into and becomes
// the datagram(s); for a write, it is what to send.
type datagram struct {
	buf  []byte
	addr netip.AddrPort // the peer; unused on a connected socket
	seg  int            // 0: one datagram
}

// segments calls fn for each datagram in d, in order.
func (d *datagram) segments(fn func(b []byte)) {
	if d.seg <= 0 || d.seg >= len(d.buf) {
		fn(d.buf)
		return
	}
	for off := 0; off < len(d.buf); off += d.seg {
		fn(d.buf[off:min(off+d.seg, len(d.buf))])
	}
}

// sock is a UDP socket read and written in batches: recvmmsg/sendmmsg with
// GRO and GSO on Linux, one datagram per call elsewhere or when the socket
// is no *net.UDPConn. Per packet, syscalls and wake-ups are most of what a
// relay costs; batches and offload divide them by up to the batch size.
type sock struct {
	pc        net.PacketConn
	uc        *net.UDPConn    // nil: pc is another PacketConn
	rc        syscall.RawConn // nil: no batched I/O
	ipv4      bool            // an AF_INET socket (no IPv6 peers)
	connected bool            // writes go to the connected peer
	gro       bool            // reads may return several datagrams (seg)
	// gsoMax is the largest segment a GSO send may use: 0 when the socket
	// or its route cannot segment (set on the first refusal).
	gsoMax atomic.Int32
	// tooBig is a segment size the kernel refused for the route's MTU, for
	// the socket's owner to report (fragmented datagrams are slow).
	tooBig atomic.Int32
}

// oversized returns a datagram size that did not fit the path MTU since
// the last call, or 0.
func (s *sock) oversized() int { return int(s.tooBig.Swap(0)) }

func newSock(pc net.PacketConn, connected bool) *sock {
	s := &sock{pc: pc, connected: connected}
	s.uc, _ = pc.(*net.UDPConn)
	if s.uc != nil {
		s.rc, s.ipv4 = rawConn(s.uc)
		if s.rc != nil {
			var gso bool
			s.gro, gso = offload(s.rc)
			if gso {
				s.gsoMax.Store(MaxDatagram)
			}
		}
	}
	return s
}

// readState is a reader goroutine's buffers, made before it starts: a
// batch of datagram buffers, the batch I/O scratch for reading and for
// writing, and room for what it writes (a datagram per segment read).
type readState struct {
	rb, wb *batchIO
	bufs   [][]byte
	ds     []datagram
	out    []datagram
}

func newReadState(n int) *readState {
	rs := &readState{rb: newBatchIO(n), wb: newBatchIO(n), bufs: make([][]byte, n), ds: make([]datagram, n), out: make([]datagram, 0, n*maxSegments)}
	// One slab, a byte between buffers: datagrams of two buffers are never
	// back to back, so coalesce never joins them.
	slab := make([]byte, n*(MaxDatagram+1))
	for i := range rs.bufs {
		rs.bufs[i] = slab[i*(MaxDatagram+1) : i*(MaxDatagram+1)+MaxDatagram : i*(MaxDatagram+1)+MaxDatagram]
	}
	return rs
}

// reset points the read batch at its buffers again.
func (rs *readState) reset() {
	for i := range rs.ds {
		rs.ds[i] = datagram{buf: rs.bufs[i]}
	}
}

// localAddr is the socket's address, without zone or v4-in-v6 mapping.
func (s *sock) localAddr() netip.AddrPort {
	if ua, ok := s.pc.LocalAddr().(*net.UDPAddr); ok {
		return unmap(ua.AddrPort())
	}
	ap, _ := netip.ParseAddrPort(s.pc.LocalAddr().String())
	return ap
}

// tuneBuffers raises the socket's buffers so that bursts at full speed are
// not dropped while the reader is descheduled; best effort (the system caps
// it at net.core.rmem_max unless the process may exceed that).
func tuneBuffers(uc *net.UDPConn) {
	const size = 4 << 20
	_ = uc.SetReadBuffer(size)
	_ = uc.SetWriteBuffer(size)
	forceBuffers(uc, size)
}

// unmap normalizes an address read from a dual-stack socket.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// coalesce merges runs of datagrams that lie back to back in memory, go to
// the same address and have one size (the last of a run may be shorter)
// into GSO datagrams, in place: the relay rewrites what GRO gave it in
// place, so a run read as one comes out as one.
func coalesce(ds []datagram) []datagram {
	n := 0
	for i := 0; i < len(ds); {
		d := ds[i]
		size, total, j := len(d.buf), len(d.buf), i+1
		for j < len(ds) && j-i < maxSegments && d.seg == 0 && ds[j].seg == 0 && ds[j].addr == d.addr &&
			len(ds[j].buf) <= size && total+len(ds[j].buf) <= maxSegmentBytes && follows(ds[j-1].buf, ds[j].buf) {
			total += len(ds[j].buf)
			j++
			if len(ds[j-1].buf) < size {
				break // a shorter datagram ends a run
			}
		}
		if j-i > 1 {
			d = datagram{buf: unsafe.Slice(unsafe.SliceData(d.buf), total), addr: d.addr, seg: size}
		}
		ds[n] = d
		n++
		i = j
	}
	return ds[:n]
}

// follows says whether b starts where a ends.
func follows(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.Pointer(unsafe.SliceData(b)) == unsafe.Add(unsafe.Pointer(unsafe.SliceData(a)), len(a))
}

// readOne is the unbatched read: one datagram into ds[0].
func (s *sock) readOne(ds []datagram) (int, error) {
	var (
		n    int
		from netip.AddrPort
		err  error
	)
	switch {
	case s.uc != nil:
		n, from, err = s.uc.ReadFromUDPAddrPort(ds[0].buf)
	default:
		var a net.Addr
		n, a, err = s.pc.ReadFrom(ds[0].buf)
		if err == nil {
			if ua, ok := a.(*net.UDPAddr); ok {
				from = ua.AddrPort()
			} else {
				from, _ = netip.ParseAddrPort(a.String())
			}
		}
	}
	if err != nil {
		return 0, err
	}
	ds[0].buf, ds[0].addr, ds[0].seg = ds[0].buf[:n], unmap(from), 0
	return 1, nil
}

// writeOne is the unbatched write, one datagram (segment) per call. One
// that cannot be sent (no route, a refused port) is dropped: the next may
// go elsewhere. Only a closed socket is an error.
func (s *sock) writeOne(ds []datagram) error {
	var err error
	for i := range ds {
		ds[i].segments(func(b []byte) {
			if err != nil {
				return
			}
			var werr error
			switch {
			case s.connected:
				_, werr = s.pc.(interface{ Write([]byte) (int, error) }).Write(b)
			case s.uc != nil:
				_, werr = s.uc.WriteToUDPAddrPort(b, ds[i].addr)
			default:
				_, werr = s.pc.WriteTo(b, net.UDPAddrFromAddrPort(ds[i].addr))
			}
			if errors.Is(werr, net.ErrClosed) {
				err = werr
			}
		})
	}
	return err
}

// transient says whether a read error leaves the socket usable: a refused
// port reported for an earlier write (ICMP), an interrupted call.
func transient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EINTR) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EMSGSIZE)
}
