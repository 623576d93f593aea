package relay

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// The benchmarks echo WireGuard-sized datagrams (1420 bytes) over
// loopback: the sender keeps `window` datagrams in flight and the far side
// sends each one back. window=1 is the round trip (latency); a wider
// window measures throughput. BenchmarkDirectUDP is plain UDP socket to
// socket; BenchmarkRelayForward goes device → client → relay → client →
// device and back, so each direction takes three more hops.

const benchSize = 1420

var benchWindows = []int{1, 32}

// echo sends every datagram c gets back to where it came from.
func echo(c *net.UDPConn) {
	buf := make([]byte, MaxDatagram)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// runEcho sends b.N datagrams from c to dst, at most window in flight, and
// counts the echoes; a datagram not back within 200ms is lost (reported as
// lost/op, and its slot is freed).
func runEcho(b *testing.B, c *net.UDPConn, dst netip.AddrPort, window int) {
	pkt := wgTransport(benchSize)
	credits := make(chan struct{}, window)
	for range window {
		credits <- struct{}{}
	}
	sent := make(chan int, 1)
	lost := 0
	b.SetBytes(benchSize)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			<-credits
			if _, err := c.WriteToUDPAddrPort(pkt, dst); err != nil {
				b.Error(err)
			}
		}
		sent <- b.N
	}()
	buf := make([]byte, MaxDatagram)
	for back := 0; back+lost < b.N; {
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			// Everything in flight is lost; free the slots.
			inflight := window - len(credits)
			lost += inflight
			for range inflight {
				credits <- struct{}{}
			}
			continue
		}
		back++
		credits <- struct{}{}
	}
	b.StopTimer()
	<-sent
	b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
}

func BenchmarkDirectUDP(b *testing.B) {
	for _, w := range benchWindows {
		b.Run(fmt.Sprintf("window=%d", w), func(b *testing.B) {
			from, to := loopback(b), loopback(b)
			_ = to.SetWriteBuffer(4 << 20)
			go echo(to)
			runEcho(b, from, addrOf(to), w)
		})
	}
}

func BenchmarkRelayForward(b *testing.B) {
	for _, w := range benchWindows {
		b.Run(fmt.Sprintf("window=%d", w), func(b *testing.B) {
			s, addr := startServer(b, ServerConfig{})
			na, nb := pairOn(b, addr, func() *Server { return s }, time.Minute)
			epB, err := na.cl.Endpoint("r", nb.id)
			if err != nil {
				b.Fatal(err)
			}
			go echo(nb.wg)
			runEcho(b, na.wg, epB, w)
			if st := s.Stats(); st.DroppedRateLimited+st.DroppedUnknownPeer+st.DroppedUnregistered > 0 {
				b.Fatalf("the relay dropped datagrams: %+v", st)
			}
		})
	}
}
