package testutil

import (
	"io"
	"net"
	"testing"
)

// EchoTCP answers every connection accepted on l with what it reads, until
// l is closed; the test's end closes it. Open l where the test needs it (a
// lab namespace, loopback): the echo does not care.
func EchoTCP(t testing.TB, l net.Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// EchoUDP sends every datagram read on pc back to its sender, until pc is
// closed; the test's end closes it.
func EchoUDP(t testing.TB, pc net.PacketConn) {
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}
