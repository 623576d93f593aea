package relay

import (
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

// batchIO is one goroutine's scratch space for batched reads or writes:
// the kernel's message headers, their iovecs and addresses. It is reused
// for every call, so a batch costs no allocation.
type batchIO struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // big enough for either family

	// The call in progress, for the functions run by RawConn.
	vlen, off int
	n         int
	err       error
	readFn    func(fd uintptr) bool
	writeFn   func(fd uintptr) bool
}

func newBatchIO(size int) *batchIO {
	b := &batchIO{hdrs: make([]unix.Mmsghdr, size), iovs: make([]unix.Iovec, size), names: make([]unix.RawSockaddrInet6, size)}
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
// of the batch may go elsewhere.
func (b *batchIO) sendmmsg(fd uintptr) bool {
	for b.off < b.vlen {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.off])), uintptr(b.vlen-b.off), 0, 0, 0)
		switch e {
		case 0:
			b.off += int(r)
			b.n += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false // RawConn waits for the socket to be writable
		default:
			b.off++
			b.err = e
		}
	}
	return true
}

// read reads up to len(ds) datagrams (at least one; it blocks until then).
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
		l := int(b.hdrs[i].Len)
		if b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
			l = 0 // larger than the buffer: an empty datagram is dropped as malformed
		}
		ds[i].buf = ds[i].buf[:l]
		ds[i].addr = sockaddrAddrPort(&b.names[i])
	}
	return b.n, nil
}

// write sends every datagram of ds; one the kernel refuses is dropped. Only
// a socket that cannot be used any more (closed) is an error.
func (b *batchIO) write(s *sock, ds []datagram) error {
	if s.rc == nil {
		return s.writeOne(ds)
	}
	for len(ds) > 0 {
		n := min(len(ds), len(b.hdrs))
		k := 0
		for i := range n {
			d := &ds[i]
			if len(d.buf) == 0 {
				continue
			}
			h := &b.hdrs[k]
			h.Len = 0
			h.Hdr = unix.Msghdr{Iov: &b.iovs[k]}
			h.Hdr.SetIovlen(1)
			if !s.connected {
				l := putSockaddr(&b.names[k], d.addr, s.ipv4)
				if l == 0 {
					continue // an IPv6 peer on an IPv4 socket: unreachable
				}
				h.Hdr.Name, h.Hdr.Namelen = (*byte)(unsafe.Pointer(&b.names[k])), l
			}
			b.iovs[k].Base = unsafe.SliceData(d.buf)
			b.iovs[k].SetLen(len(d.buf))
			k++
		}
		ds = ds[n:]
		if k == 0 {
			continue
		}
		b.vlen, b.off, b.n, b.err = k, 0, 0, nil
		if err := s.rc.Write(b.writeFn); err != nil {
			return err
		}
	}
	return nil
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
