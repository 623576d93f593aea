package health

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestJudgePeers(t *testing.T) {
	now := time.Unix(10_000, 0)
	longAgo := func(string) time.Time { return now.Add(-time.Hour) }
	justNow := func(string) time.Time { return now.Add(-2 * time.Second) }
	for _, tt := range []struct {
		name    string
		peers   []TunnelPeer
		added   func(string) time.Time
		ok      bool
		message string
		states  []string
	}{
		{"a new single-node mesh", nil, longAgo, true, "no peers yet", nil},
		{"every peer handshook", []TunnelPeer{{Node: "b", Cluster: "c", LastHandshake: now.Add(-time.Minute)}}, longAgo, true, "1 of 1 peers handshook", []string{PeerOK}},
		// The defect: a node whose peers never answered said "ok".
		{"no handshake with anyone", []TunnelPeer{{Node: "b", Cluster: "c"}, {Node: "d", Cluster: "c"}}, longAgo, false,
			"2 of 2 peers unreachable: b: no handshake since it was added 1h0m0s ago; d: no handshake since it was added 1h0m0s ago", []string{PeerNever, PeerNever}},
		{"peers just added wait", []TunnelPeer{{Node: "b", Cluster: "c"}}, justNow, true, "waiting for a first handshake with b", []string{PeerWaiting}},
		{"a stale handshake", []TunnelPeer{{Node: "b", Cluster: "c", LastHandshake: now.Add(-4 * time.Minute)}, {Node: "d", Cluster: "c", LastHandshake: now}}, longAgo, false,
			"1 of 2 peers unreachable: b: last handshake 4m0s ago (more than 3m0s)", []string{PeerStale, PeerOK}},
		// A node rotating its key has two entries; the next key has not
		// handshaken yet, and the node is fine.
		{"a rotating node", []TunnelPeer{{Node: "b", Cluster: "c", PublicKey: "old", LastHandshake: now}, {Node: "b", Cluster: "c", PublicKey: "next"}}, longAgo, true, "1 of 1 peers handshook", []string{PeerOK}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			check, peers := JudgePeers(tt.peers, tt.added, now)
			if check.Name != "peers" || check.OK != tt.ok || check.Message != tt.message {
				t.Errorf("check = %+v, want ok=%v message %q", check, tt.ok, tt.message)
			}
			var states []string
			for _, p := range peers {
				states = append(states, p.State)
			}
			if strings.Join(states, ",") != strings.Join(tt.states, ",") {
				t.Errorf("states = %v, want %v (%+v)", states, tt.states, peers)
			}
		})
	}
}

func TestAddedTimesStartAtTheFirstSightingAndForgetRemovedKeys(t *testing.T) {
	start := time.Unix(1000, 0)
	a := NewAddedTimes(start)
	if got := a.Added("k", start.Add(time.Hour)); !got.Equal(start.Add(time.Hour)) {
		t.Errorf("a key never observed is added now, got %v", got)
	}
	a.Observe([]string{"k"}, start.Add(time.Second))
	a.Observe([]string{"k"}, start.Add(time.Minute))
	if got := a.Added("k", start.Add(time.Hour)); !got.Equal(start.Add(time.Second)) {
		t.Errorf("added = %v, want the first sighting", got)
	}
	a.Observe(nil, start.Add(2*time.Minute))
	a.Observe([]string{"k"}, start.Add(3*time.Minute))
	if got := a.Added("k", start.Add(time.Hour)); !got.Equal(start.Add(3 * time.Minute)) {
		t.Errorf("a key removed and added again: added = %v, want its new sighting", got)
	}
}

func TestPingAnswersThroughTheProbeEcho(t *testing.T) {
	resp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()
	go serveProbes(resp)
	m, err := New(Config{Self: Target{Node: "a", Cluster: "c", MeshIP: netip.MustParseAddr("127.0.0.1")}, Key: make([]byte, 32), Targets: func() []Target { return nil },
		ProbePort: resp.LocalAddr().(*net.UDPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ping(context.Background(), netip.MustParseAddr("127.0.0.1"), time.Second); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Ping before Run: %v, want ErrNotRunning", err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	m.pr = newProber(pc, m.cfg.ProbePort)
	go m.pr.receive()
	if rtt, err := m.Ping(context.Background(), netip.MustParseAddr("127.0.0.1"), 5*time.Second); err != nil || rtt <= 0 {
		t.Fatalf("Ping an answering echo: %v, %v", rtt, err)
	}
	if _, err := m.Ping(context.Background(), netip.MustParseAddr("127.0.0.3"), 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Fatalf("Ping a silent address: %v", err)
	}
}
