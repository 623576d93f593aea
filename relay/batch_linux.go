package relay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawConn returns the socket's raw connection for recvmmsg/sendmmsg and
// whether it is an IPv4 socket (a dual-stack IPv6 socket carries IPv4 peers
// as v4-mapped addresses).
func rawConn(uc *net.UDPConn) (syscall.RawConn, bool) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, false
	}
	domain := -1
	if err := rc.Control(func(fd uintptr) {
		domain, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil || (domain != unix.AF_INET && domain != unix.AF_INET6) {
		return nil, false
	}
	return rc, domain == unix.AF_INET
}

// offload turns on UDP receive offload (GRO: the kernel hands over runs of
// same-sized datagrams of one sender at once) and says whether the socket
// can send with segmentation offload (GSO), as the kernel has since 5.0.
func offload(rc syscall.RawConn) (gro, gso bool) {
	_ = rc.Control(func(fd uintptr) {
		gro = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) == nil
		_, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
		gso = err == nil
	})
	return gro, gso
}

// forceBuffers sets the buffers beyond net.core.[rw]mem_max when the
// process may (CAP_NET_ADMIN, as the agent has); otherwise the capped
// setting stays.
func forceBuffers(uc *net.UDPConn, size int) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size)
	})
}

// ctrlSpace is the control message room per datagram: one int (UDP_GRO
// on reads, UDP_SEGMENT on writes) with its header.
var ctrlSpace = unix.CmsgSpace(4)

// batchIO is one goroutine's scratch space for batched reads or writes:
// the kernel's message headers, their iovecs, addresses and control
// messages. It is reused for every call, so a batch costs no allocation.
type batchIO struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // big enough for either family
	ctrl  []byte
	msgs  []datagram // what each header sends, for a GSO send to redo
	retry []datagram // GSO sends the kernel refused, to send unsegmented
	sock  *sock

	// The call in progress, for the functions run by RawConn.
	k, vlen, off, n int
	err             error
	readFn, writeFn func(fd uintptr) bool
}

func newBatchIO(size int) *batchIO {
	b := &batchIO{hdrs: make([]unix.Mmsghdr, size), iovs: make([]unix.Iovec, size), names: make([]unix.RawSockaddrInet6, size),
		ctrl: make([]byte, size*ctrlSpace), msgs: make([]datagram, size), retry: make([]datagram, 0, size)}
	// Bound once: a method value made per call would allocate.
	b.readFn = b.recvmmsg
	b.writeFn = b.sendmmsg
	return b
}

func (b *batchIO) recvmmsg(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.vlen), 0, 0, 0)
		switch e {
		case 0:
			b.n, b.err = int(r), nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // RawConn waits for the socket to be readable
		default:
			b.n, b.err = 0, e
			return true
		}
	}
}

// sendmmsg sends hdrs[off:vlen]. A datagram the kernel refuses (no route,
// a refused port on a connected socket) is skipped, not retried: the rest
// of the batch may go elsewhere. A GSO send it refuses is sent again
// unsegmented after the call.
func (b *batchIO) sendmmsg(fd uintptr) bool {
	for b.off < b.vlen {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.off])), uintptr(b.vlen-b.off), 0, 0, 0)
		switch e {
		case 0:
			b.off += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false // RawConn waits for the socket to be writable
		default:
			if m := b.msgs[b.off]; m.seg > 0 {
				// EIO: the device cannot checksum for GSO; EINVAL or
				// EMSGSIZE: a segment larger than the route's MTU.
				if e == unix.EIO {
					b.sock.gsoMax.Store(0)
				} else {
					if int32(m.seg) <= b.sock.gsoMax.Load() {
						b.sock.gsoMax.Store(int32(m.seg) - 1)
					}
					b.sock.tooBig.Store(int32(m.seg))
				}
				b.retry = append(b.retry, m)
			}
			b.off++
			b.err = e
		}
	}
	return true
}

// read reads up to len(ds) datagrams (at least one; it blocks until then).
// On a GRO socket each may hold several (seg).
func (b *batchIO) read(s *sock, ds []datagram) (int, error) {
	if s.rc == nil {
		return s.readOne(ds)
	}
	n := min(len(ds), len(b.hdrs))
	for i := range n {
		b.iovs[i].Base = unsafe.SliceData(ds[i].buf)
		b.iovs[i].SetLen(len(ds[i].buf))
		h := &b.hdrs[i]
		h.Len = 0
		h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&b.names[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &b.iovs[i]}
		h.Hdr.SetIovlen(1)
		if s.gro {
			h.Hdr.Control = &b.ctrl[i*ctrlSpace]
			h.Hdr.SetControllen(ctrlSpace)
		}
	}
	b.vlen, b.n, b.err = n, 0, nil
	err := s.rc.Read(b.readFn)
	if err == nil {
		err = b.err
	}
	if err != nil {
		return 0, err
	}
	for i := range b.n {
		h := &b.hdrs[i]
		l := int(h.Len)
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			l = 0 // larger than the buffer: an empty datagram is dropped as malformed
		}
		ds[i].buf = ds[i].buf[:l]
		ds[i].addr = sockaddrAddrPort(&b.names[i])
		ds[i].seg = 0
		if s.gro {
			ds[i].seg = groSize(b.ctrl[i*ctrlSpace : i*ctrlSpace+int(h.Hdr.Controllen)])
		}
	}
	return b.n, nil
}

// groSize returns the segment size of a UDP_GRO control message, 0 when
// there is none (one datagram).
func groSize(ctrl []byte) int {
	hl := unix.CmsgLen(0)
	for len(ctrl) >= hl {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		if int(h.Len) < hl || int(h.Len) > len(ctrl) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && int(h.Len) >= hl+4 {
			return int(binary.NativeEndian.Uint32(ctrl[hl:]))
		}
		ctrl = ctrl[min(unix.CmsgSpace(int(h.Len)-hl), len(ctrl)):]
	}
	return 0
}

// write sends every datagram of ds: a run of segments with one GSO send
// where the socket and route allow, else one by one. One the kernel refuses
// is dropped. Only a socket that cannot be used any more (closed) is an
// error.
func (b *batchIO) write(s *sock, ds []datagram) error {
	if s.rc == nil {
		return s.writeOne(ds)
	}
	b.sock, b.k = s, 0
	for i := range ds {
		d := &ds[i]
		if d.seg <= 0 || d.seg >= len(d.buf) {
			if err := b.add(s, d.buf, d.addr, 0); err != nil {
				return err
			}
			continue
		}
		step := d.seg
		if int32(d.seg) <= s.gsoMax.Load() {
			step = d.seg * min(maxSegments, maxSegmentBytes/d.seg)
		}
		for off := 0; off < len(d.buf); off += step {
			chunk := d.buf[off:min(off+step, len(d.buf))]
			seg := d.seg
			if len(chunk) <= seg {
				seg = 0
			}
			if err := b.add(s, chunk, d.addr, seg); err != nil {
				return err
			}
		}
	}
	return b.flush(s)
}

// add queues one send (a GSO one when seg > 0), flushing a full batch.
func (b *batchIO) add(s *sock, buf []byte, to netip.AddrPort, seg int) error {
	if len(buf) == 0 {
		return nil
	}
	if b.k == len(b.hdrs) {
		if err := b.flush(s); err != nil {
			return err
		}
	}
	k := b.k
	h := &b.hdrs[k]
	h.Len = 0
	h.Hdr = unix.Msghdr{Iov: &b.iovs[k]}
	h.Hdr.SetIovlen(1)
	if !s.connected {
		l := putSockaddr(&b.names[k], to, s.ipv4)
		if l == 0 {
			return nil // an IPv6 peer on an IPv4 socket: unreachable
		}
		h.Hdr.Name, h.Hdr.Namelen = (*byte)(unsafe.Pointer(&b.names[k])), l
	}
	if seg > 0 {
		c := b.ctrl[k*ctrlSpace : (k+1)*ctrlSpace]
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
		ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		ch.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(seg))
		h.Hdr.Control = &c[0]
		h.Hdr.SetControllen(unix.CmsgSpace(2))
	}
	b.iovs[k].Base = unsafe.SliceData(buf)
	b.iovs[k].SetLen(len(buf))
	b.msgs[k] = datagram{buf: buf, addr: to, seg: seg}
	b.k++
	return nil
}

// flush sends what add queued, then unsegmented what the kernel refused
// to segment.
func (b *batchIO) flush(s *sock) error {
	if b.k == 0 {
		return nil
	}
	b.vlen, b.off, b.n, b.err = b.k, 0, 0, nil
	b.retry = b.retry[:0]
	err := s.rc.Write(b.writeFn)
	b.k = 0
	if err != nil || len(b.retry) == 0 {
		return err
	}
	// The retries are single datagrams: sending them refuses no GSO, so
	// this flush does not come back here with b.retry in use.
	retry := b.retry
	for _, m := range retry {
		for off := 0; off < len(m.buf); off += m.seg {
			if err := b.add(s, m.buf[off:min(off+m.seg, len(m.buf))], m.addr, 0); err != nil {
				return err
			}
		}
	}
	return b.flush(s)
}

// sockaddrAddrPort decodes the address recvmmsg wrote.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// putSockaddr encodes ap for sendmmsg and returns its length; 0 when the
// socket's family cannot carry it.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, ipv4 bool) uint32 {
	a := ap.Addr()
	port := ap.Port()
	if ipv4 {
		a = a.Unmap()
		if !a.Is4() {
			return 0
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return unix.SizeofSockaddrInet4
	}
	if !a.IsValid() {
		return 0
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return unix.SizeofSockaddrInet6
}
