package paths

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

func listenProber(t *testing.T, key string) (*Prober, netip.AddrPort) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewProber(pc, []byte(key))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p, pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestProberAnswersOnlyTheMesh(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef"
	a, _ := listenProber(t, key)
	_, bAddr := listenProber(t, key)
	_, strangerAddr := listenProber(t, "another mesh's key, 32 bytes...")
	ctx := context.Background()
	dead := netip.MustParseAddrPort("127.0.0.1:9") // discard: nobody answers
	got, ok := a.Check(ctx, []netip.AddrPort{dead, bAddr}, time.Second)
	if !ok || got != bAddr {
		t.Fatalf("check of a mesh node: %v %v, want an answer from %v", got, ok, bAddr)
	}
	start := time.Now()
	if _, ok := a.Check(ctx, []netip.AddrPort{strangerAddr}, 600*time.Millisecond); ok {
		t.Fatal("a node with another key answered")
	}
	if time.Since(start) < 500*time.Millisecond {
		t.Fatal("an unanswered check returned before its timeout")
	}
	// A stranger without the key sending a check gets nothing back.
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(bAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, ProbeLen)
	copy(msg, probeMagic)
	msg[4] = probeReq
	_, _ = c.Write(msg)
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatalf("a check without the key's MAC was answered (%d bytes)", n)
	}
}

func TestNewProberRefusesAShortKey(t *testing.T) {
	if _, err := NewProber(nil, []byte("short")); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}

func FuzzParseProbe(f *testing.F) {
	p := &Prober{key: []byte("0123456789abcdef")}
	b := make([]byte, ProbeLen)
	p.encode(b, probeReq, 42)
	f.Add(b)
	f.Add([]byte("WFPC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, _, err := ParseProbe(b)
		if err == nil && (len(b) != ProbeLen || (kind != probeReq && kind != probeResp)) {
			t.Fatalf("accepted %x", b)
		}
	})
}
