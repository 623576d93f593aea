//go:build !linux

package relay

import (
	"net"
	"syscall"
)

// Without recvmmsg/sendmmsg a batch is one datagram, without offload.
func rawConn(*net.UDPConn) (syscall.RawConn, bool) { return nil, false }

func offload(syscall.RawConn) (gro, gso bool) { return false, false }

func forceBuffers(*net.UDPConn, int) {}

type batchIO struct{}

func newBatchIO(int) *batchIO { return &batchIO{} }

func (b *batchIO) read(s *sock, ds []datagram) (int, error) { return s.readOne(ds) }

func (b *batchIO) write(s *sock, ds []datagram) error { return s.writeOne(ds) }
