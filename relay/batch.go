package relay

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
)

// datagram is one UDP datagram of a batch. For a read, buf is the space to
// read into and becomes the datagram; for a write, it is the datagram.
type datagram struct {
	buf  []byte
	addr netip.AddrPort // the peer; unused on a connected socket
}

// sock is a UDP socket read and written in batches: recvmmsg/sendmmsg on
// Linux, one datagram per call elsewhere or when the socket is no
// *net.UDPConn. One syscall then moves up to a batch of datagrams, which is
// most of what a relay costs per packet.
type sock struct {
	pc        net.PacketConn
	uc        *net.UDPConn    // nil: pc is another PacketConn
	rc        syscall.RawConn // nil: no batched I/O
	ipv4      bool            // an AF_INET socket (no IPv6 peers)
	connected bool            // writes go to the connected peer
}

func newSock(pc net.PacketConn, connected bool) *sock {
	s := &sock{pc: pc, connected: connected}
	s.uc, _ = pc.(*net.UDPConn)
	if s.uc != nil {
		s.rc, s.ipv4 = rawConn(s.uc)
	}
	return s
}

// readState is a reader goroutine's buffers, made before it starts: a
// batch of datagram buffers (each headroom bytes, then MaxDatagram), the
// batch I/O scratch for reading and for writing, and the batch to write.
type readState struct {
	rb, wb *batchIO
	bufs   [][]byte
	ds     []datagram
	out    []datagram
}

func newReadState(n, headroom int) *readState {
	rs := &readState{rb: newBatchIO(n), wb: newBatchIO(n), bufs: make([][]byte, n), ds: make([]datagram, n), out: make([]datagram, 0, n)}
	for i := range rs.bufs {
		rs.bufs[i] = make([]byte, headroom+MaxDatagram)
	}
	return rs
}

// localAddr is the socket's address, without zone or v4-in-v6 mapping.
func (s *sock) localAddr() netip.AddrPort {
	if ua, ok := s.pc.LocalAddr().(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
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
	ds[0].buf, ds[0].addr = ds[0].buf[:n], unmap(from)
	return 1, nil
}

// writeOne is the unbatched write. A datagram that cannot be sent (no
// route, a refused port) is dropped: the next one may go elsewhere. Only a
// closed socket is an error.
func (s *sock) writeOne(ds []datagram) error {
	for _, d := range ds {
		var err error
		switch {
		case s.connected:
			_, err = s.pc.(interface{ Write([]byte) (int, error) }).Write(d.buf)
		case s.uc != nil:
			_, err = s.uc.WriteToUDPAddrPort(d.buf, d.addr)
		default:
			_, err = s.pc.WriteTo(d.buf, net.UDPAddrFromAddrPort(d.addr))
		}
		if errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return nil
}

// transient says whether a read error leaves the socket usable: a refused
// port reported for an earlier write (ICMP), an interrupted call.
func transient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EINTR) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EMSGSIZE)
}
