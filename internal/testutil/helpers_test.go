package testutil

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fatalTB records the failure of a helper instead of failing the test.
type fatalTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// failure runs fn with a fatalTB and returns what it failed with ("" if
// it did not).
func failure(t *testing.T, fn func(tb testing.TB)) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.msg
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, time.Minute, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Errorf("polled %d times, want 3", n)
	}
	n = 0
	Eventually(t, time.Minute, "the third poll", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})

	msg := failure(t, func(tb testing.TB) {
		Eventually(tb, 50*time.Millisecond, "the moon", func() bool { return false })
	})
	if msg != "gave up after 50ms waiting for the moon" {
		t.Errorf("bool failure: %q", msg)
	}
	msg = failure(t, func(tb testing.TB) {
		Eventually(tb, 50*time.Millisecond, "vm-1 -> vm-2", func() error { return errors.New("dial: connection refused") })
	})
	if msg != "gave up after 50ms waiting for vm-1 -> vm-2: dial: connection refused" {
		t.Errorf("error failure: %q", msg)
	}
}

func TestEcho(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	EchoTCP(t, l)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	EchoUDP(t, pc)
	for _, addr := range []net.Addr{l.Addr(), pc.LocalAddr()} {
		for i := range 2 { // each connection (or datagram) is answered
			c, err := net.Dial(addr.Network(), addr.String())
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := fmt.Sprintf("hello %d", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Errorf("%s echo: %q, %v", addr.Network(), buf[:n], err)
			}
			c.Close()
		}
	}
}

const exposition = `# TYPE weft_peers gauge
weft_peers{state="up"} 2
weft_peers{state="down"} 1
# TYPE weft_packets_total counter
weft_packets_total{dir="in",verdict="dropped"} 3
weft_packets_total{dir="out",verdict="dropped"} 4
weft_packets_total{dir="out",verdict="forwarded"} 0
# TYPE weft_reconcile_seconds histogram
weft_reconcile_seconds_bucket{le="+Inf"} 5
weft_reconcile_seconds_sum 0.1
weft_reconcile_seconds_count 5
`

func TestMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(exposition))
	}))
	defer srv.Close()
	fams := ScrapeMetrics(t, nil, srv.URL)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
		ok     bool
	}{
		{"weft_peers", map[string]string{"state": "up"}, 2, true},
		{"weft_peers", nil, 3, true},
		{"weft_packets_total", map[string]string{"verdict": "dropped"}, 7, true},
		{"weft_packets_total", map[string]string{"verdict": "forwarded"}, 0, true},
		{"weft_packets_total", map[string]string{"verdict": "lost"}, 0, false},
		{"weft_reconcile_seconds", nil, 5, true},
		{"weft_absent", nil, 0, false},
	} {
		if v, ok := MetricValue(fams, tc.name, tc.labels); v != tc.want || ok != tc.ok {
			t.Errorf("%s%v = %v, %v; want %v, %v", tc.name, tc.labels, v, ok, tc.want, tc.ok)
		}
	}

	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("weft_peers{state=up 2\n"))
	}))
	defer broken.Close()
	if msg := failure(t, func(tb testing.TB) { ScrapeMetrics(tb, nil, broken.URL) }); !strings.Contains(msg, "parsing the metrics of") {
		t.Errorf("a broken exposition must fail the test: %q", msg)
	}
}
