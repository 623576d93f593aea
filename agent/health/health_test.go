package health

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/testutil"
)

func TestPeerStateMachine(t *testing.T) {
	now := time.Unix(1000, 0)
	var p peerState
	p.observe(false, 0, now, "timeout", 2)
	if p.state != StateUnknown || p.failures != 1 {
		t.Fatalf("one failure of a new peer: %+v, want unknown with 1 failure", p)
	}
	p.observe(true, 3*time.Millisecond, now, "", 2)
	if p.state != StateUp || p.failures != 0 || p.rtt != 3*time.Millisecond || !p.lastSuccess.Equal(now) {
		t.Fatalf("after a success: %+v", p)
	}
	p.observe(false, 0, now, "timeout", 2)
	if p.state != StateUp {
		t.Fatalf("one failure must not make an up peer down: %+v", p)
	}
	p.observe(false, 0, now, "timeout", 2)
	if p.state != StateDown || p.lastErr != "timeout" {
		t.Fatalf("two failures in a row: %+v, want down", p)
	}
	p.observe(true, time.Millisecond, now, "", 2)
	if p.state != StateUp {
		t.Fatalf("a success brings it back: %+v", p)
	}
}

func TestCombined(t *testing.T) {
	cases := []struct{ probe, member, want string }{
		{"", MemberUnknown, StateUnknown},
		{StateUp, MemberAlive, StateUp},
		{StateUp, MemberDead, StateDown},
		{StateUp, MemberLeft, StateDown},
		{StateDown, MemberAlive, StateDown},
		{StateUp, MemberSuspect, StateUp},
	}
	for _, c := range cases {
		if got := combined(c.probe, c.member); got != c.want {
			t.Errorf("combined(%q, %q) = %q, want %q", c.probe, c.member, got, c.want)
		}
	}
}

func TestConfigIsChecked(t *testing.T) {
	good := Config{Self: Target{Node: "a", Cluster: "c", MeshIP: netip.MustParseAddr("127.0.0.1")}, Key: make([]byte, 32), Targets: func() []Target { return nil }}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"no ip":       func(c *Config) { c.Self.MeshIP = netip.Addr{} },
		"short key":   func(c *Config) { c.Key = make([]byte, 10) },
		"no targets":  func(c *Config) { c.Targets = nil },
		"no name":     func(c *Config) { c.Self.Node = "" },
		"slow probes": func(c *Config) { c.ProbeTimeout = 2 * time.Second },
	} {
		c := good
		mutate(&c)
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", name, err)
		}
	}
}

func TestProbeRoundMeasuresAnsweringAndSilentTargets(t *testing.T) {
	resp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()
	go serveProbes(resp)
	port := resp.LocalAddr().(*net.UDPAddr).Port
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pr := newProber(pc, port)
	go pr.receive()
	up, silent := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	res := pr.round(context.Background(), []netip.Addr{up, silent}, 300*time.Millisecond)
	if !res[up].ok || res[up].rtt <= 0 {
		t.Fatalf("answering target: %+v", res[up])
	}
	if res[silent].ok || res[silent].err == "" {
		t.Fatalf("silent target: %+v", res[silent])
	}
}

// loopbackBase picks 127.x.y.0 so concurrent runs on one machine do not
// share addresses.
func loopbackBase() [3]byte {
	return [3]byte{127, byte(100 + rand.IntN(100)), byte(rand.IntN(250))}
}

// TestMonitorsSeeEachOtherAndNoticeADeadNode runs three monitors on
// loopback addresses: they gossip, probe each other, and when one stops
// the others show it down.
func TestMonitorsSeeEachOtherAndNoticeADeadNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs gossip for a few seconds")
	}
	base := loopbackBase()
	key := make([]byte, 32)
	crand.Read(key)
	var targets []Target
	for i := range 3 {
		targets = append(targets, Target{Node: fmt.Sprintf("n%d", i+1), Cluster: "c", MeshIP: netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(10 + i)})})
	}
	gossip, probe := 20000+rand.IntN(20000), 0
	for probe == 0 || probe == gossip {
		probe = 20000 + rand.IntN(20000)
	}
	var (
		mons    []*Monitor
		cancels []context.CancelFunc
		dones   []chan error
	)
	for _, self := range targets {
		m, err := New(Config{Self: self, Key: key, GossipPort: gossip, ProbePort: probe,
			Targets: func() []Target { return targets }, ProbeInterval: 300 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		mons, cancels, dones = append(mons, m), append(cancels, cancel), append(dones, done)
	}
	t.Cleanup(func() {
		for i, c := range cancels {
			c()
			<-dones[i]
		}
	})
	testutil.Eventually(t, 30*time.Second, "every node up and alive in every view", func() bool {
		for _, m := range mons {
			v := m.View()
			if len(v.Probes) != 2 {
				return false
			}
			for _, p := range v.Probes {
				if p.State != StateUp || p.Member != MemberAlive || p.RTT <= 0 {
					return false
				}
			}
		}
		return true
	})
	cancels[2]()
	if err := <-dones[2]; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	dones[2] <- nil
	testutil.Eventually(t, 30*time.Second, "n3 down in the views of n1 and n2", func() bool {
		for _, m := range mons[:2] {
			if probeOf(m.View(), "n3").State != StateDown {
				return false
			}
		}
		return true
	})
	if p := probeOf(mons[0].View(), "n2"); p.State != StateUp {
		t.Fatalf("n2 seen by n1 after n3 stopped: %+v", p)
	}
}

func probeOf(v api.NodeHealth, node string) api.Probe {
	for _, p := range v.Probes {
		if p.Node == node {
			return p
		}
	}
	return api.Probe{}
}
