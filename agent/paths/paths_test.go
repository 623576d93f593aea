package paths

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	t0   = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	epA  = netip.MustParseAddrPort("198.18.1.10:51833")
	epA2 = netip.MustParseAddrPort("198.18.9.1:40000")
)

// sim drives a selector with a fake clock and a peer's rx counter.
type sim struct {
	t   *testing.T
	s   *Selector
	now time.Time
	rx  map[string]int64
	// flowing peers send something every tick; answering ones echo probes.
	flowing   map[string]bool
	answering map[string]bool
	changes   []Change
	probes    map[string]int
	recover   map[string]int
}

func newSim(t *testing.T, peers ...Peer) *sim {
	m := &sim{t: t, s: New(Config{}), now: t0, rx: map[string]int64{}, flowing: map[string]bool{}, answering: map[string]bool{}, probes: map[string]int{}, recover: map[string]int{}}
	m.s.SetRelays([]string{"lab/relay"})
	m.s.SetPeers(m.now, peers)
	return m
}

// run advances the clock by d in 250 ms ticks.
func (m *sim) run(d time.Duration) {
	for end := m.now.Add(d); m.now.Before(end); {
		m.now = m.now.Add(250 * time.Millisecond)
		obs := map[string]Observation{}
		for k := range m.s.peers {
			if m.flowing[k] {
				m.rx[k] += 100
			}
			obs[k] = Observation{RxBytes: m.rx[k]}
		}
		a := m.s.Tick(m.now, obs)
		m.changes = append(m.changes, a.Changes...)
		for _, p := range a.Probe {
			m.probes[p]++
			if m.answering[p] {
				m.rx[p] += 60
			}
		}
		for _, p := range a.Recover {
			m.recover[p]++
		}
	}
}

func (m *sim) path(k string) Path {
	p, ok := m.s.Path(k)
	if !ok {
		m.t.Fatalf("no path for %s", k)
	}
	return p
}

func TestAliveDirectPathStaysAndQuietPeerIsProbed(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA}})
	m.flowing["lab/b"] = true
	m.run(30 * time.Second)
	if p := m.path("lab/b"); p != (Path{Kind: Direct, Endpoint: epA}) || len(m.changes) != 0 {
		t.Fatalf("a live direct path moved: %v, changes %v", p, m.changes)
	}
	if m.probes["lab/b"] != 0 {
		t.Fatalf("a peer that keeps sending was probed %d times", m.probes["lab/b"])
	}
	// Idle but answering probes (rx moves once a second): still direct.
	m.flowing["lab/b"], m.answering["lab/b"] = false, true
	m.run(20 * time.Second)
	if p := m.path("lab/b"); p.Kind != Direct || len(m.changes) != 0 {
		t.Fatalf("an idle peer answering probes moved to %v", p)
	}
	if m.probes["lab/b"] < 15 {
		t.Fatalf("an idle peer was probed %d times in 20 s, want about one a second", m.probes["lab/b"])
	}
}

func TestDeadDirectPathFailsOverWithinDeadAfterAndComesBack(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA}})
	m.flowing["lab/b"] = true
	m.run(5 * time.Second)
	m.flowing["lab/b"] = false // the cut
	cut := m.now
	for m.path("lab/b").Kind == Direct && m.now.Sub(cut) < 10*time.Second {
		m.run(250 * time.Millisecond)
	}
	if took := m.now.Sub(cut); m.path("lab/b").Kind != Relay || took > 3500*time.Millisecond {
		t.Fatalf("after the cut: path %v after %v, want the relay within 3.5s", m.path("lab/b"), took)
	}
	if m.path("lab/b").Relay != "lab/relay" {
		t.Fatalf("relay %q", m.path("lab/b").Relay)
	}
	m.flowing["lab/b"] = true // the relay carries
	m.run(12 * time.Second)
	if m.recover["lab/b"] < 2 || m.path("lab/b").Kind != Relay {
		t.Fatalf("relayed peer: %d direct checks in 12s (want about one per 5s), path %v", m.recover["lab/b"], m.path("lab/b"))
	}
	// The direct path answers its check: back to direct, and it carries.
	ch := m.s.DirectWorks(m.now, "lab/b", epA)
	if len(ch) != 1 || ch[0].To != (Path{Kind: Direct, Endpoint: epA}) {
		t.Fatalf("DirectWorks: %v", ch)
	}
	m.run(10 * time.Second)
	if p := m.path("lab/b"); p.Kind != Direct {
		t.Fatalf("a working direct path was left for %v", p)
	}
	if st := m.s.States(m.now)["lab/b"]; st.Changes != 2 || !st.Alive {
		t.Fatalf("state %+v, want 2 changes and alive", st)
	}
}

func TestFailedReturnGoesBackToTheRelayAndWaitsLonger(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA}})
	m.flowing["lab/b"] = true
	m.run(3 * time.Second)
	m.flowing["lab/b"] = false
	m.run(4 * time.Second)
	if m.path("lab/b").Kind != Relay {
		t.Fatal("no failover")
	}
	m.flowing["lab/b"] = true
	m.run(2 * time.Second)
	m.s.DirectWorks(m.now, "lab/b", epA)
	m.flowing["lab/b"] = false // the direct path still does not carry
	m.run(5 * time.Second)
	if m.path("lab/b").Kind != Relay {
		t.Fatalf("a return to direct that carried nothing stayed: %v", m.path("lab/b"))
	}
	if w := m.s.peers["lab/b"].recoverWait; w < 10*time.Second {
		t.Fatalf("after a failed return the next wait is %v, want it doubled from 5s", w)
	}
}

func TestUnreachedPeerTriesEachCandidateThenTheRelay(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA2, epA}})
	if p := m.path("lab/b"); p.Endpoint != epA2 {
		t.Fatalf("first path %v, want the first candidate", p)
	}
	m.run(6500 * time.Millisecond)
	if p := m.path("lab/b"); p.Endpoint != epA {
		t.Fatalf("after TryFor: %v, want the second candidate", p)
	}
	m.run(6500 * time.Millisecond)
	if p := m.path("lab/b"); p.Kind != Relay {
		t.Fatalf("after all candidates: %v, want the relay", p)
	}
	if m.probes["lab/b"] < 10 {
		t.Fatalf("an unreached peer was probed %d times (probes make WireGuard handshake)", m.probes["lab/b"])
	}
}

func TestNoRelayKeepsCyclingCandidates(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA2, epA}})
	m.s.SetRelays(nil)
	m.run(20 * time.Second)
	var eps []netip.AddrPort
	for _, c := range m.changes {
		if c.To.Kind != Direct {
			t.Fatalf("moved to %v without a relay", c.To)
		}
		eps = append(eps, c.To.Endpoint)
	}
	if !slices.Equal(eps, []netip.AddrPort{epA, epA2, epA}) {
		t.Fatalf("candidates tried %v", eps)
	}
}

func TestRelayFirstAndNeverThroughThePeerItself(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", RelayFirst: true, Candidates: []netip.AddrPort{epA2}},
		Peer{Key: "lab/relay", Candidates: []netip.AddrPort{epA}})
	if p := m.path("lab/b"); p.Kind != Relay {
		t.Fatalf("a symmetric-NAT pair starts %v, want the relay", p)
	}
	m.flowing["lab/relay"] = true
	m.run(2 * time.Second)
	m.flowing["lab/relay"] = false
	m.run(10 * time.Second)
	if p := m.path("lab/relay"); p.Kind == Relay {
		t.Fatalf("the relay node's own path went through itself: %v", p)
	}
	m.run(time.Minute)
	if m.recover["lab/b"] != 0 {
		t.Fatalf("a pair that cannot go direct was checked %d times", m.recover["lab/b"])
	}
}

func TestLivePathKeepsItsEndpointWhenCandidatesChange(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA}})
	m.flowing["lab/b"] = true
	m.run(2 * time.Second)
	m.s.SetPeers(m.now, []Peer{{Key: "lab/b", Candidates: []netip.AddrPort{epA2}}})
	m.run(2 * time.Second)
	if p := m.path("lab/b"); p.Endpoint != epA {
		t.Fatalf("a live path moved to %v when the record changed", p)
	}
	m.s.SetPeers(m.now, nil)
	if _, ok := m.s.Path("lab/b"); ok {
		t.Fatal("a removed peer kept a path")
	}
}

func TestPathStrings(t *testing.T) {
	for p, want := range map[Path]string{
		{Kind: Direct, Endpoint: epA}:        "direct 198.18.1.10:51833",
		{Kind: Direct}:                       "direct (learned)",
		{Kind: Relay, Relay: "lab/site3-n1"}: "relay via lab/site3-n1",
	} {
		if got := p.String(); got != want {
			t.Errorf("%#v: %q, want %q", p, got, want)
		}
	}
}

func TestFollowsAPeerThatMovedToTheRelayAndBack(t *testing.T) {
	m := newSim(t, Peer{Key: "lab/b", Candidates: []netip.AddrPort{epA}})
	m.flowing["lab/b"] = true
	m.run(3 * time.Second)
	relayed := netip.MustParseAddrPort("127.0.0.1:40001")
	// The device's endpoint moved to the relay's local socket: the peer
	// switched, and its packets keep arriving.
	for range 4 {
		m.now = m.now.Add(250 * time.Millisecond)
		m.rx["lab/b"] += 100
		m.s.Tick(m.now, map[string]Observation{"lab/b": {RxBytes: m.rx["lab/b"], Endpoint: relayed, Relay: "lab/relay"}})
	}
	if p := m.path("lab/b"); p != (Path{Kind: Relay, Relay: "lab/relay"}) {
		t.Fatalf("after the peer moved to the relay: %v", p)
	}
	m.now = m.now.Add(3 * time.Second)
	m.rx["lab/b"] += 100
	m.s.Tick(m.now, map[string]Observation{"lab/b": {RxBytes: m.rx["lab/b"], Endpoint: epA}})
	m.now = m.now.Add(250 * time.Millisecond)
	m.rx["lab/b"] += 100
	m.s.Tick(m.now, map[string]Observation{"lab/b": {RxBytes: m.rx["lab/b"], Endpoint: epA}})
	if p := m.path("lab/b"); p != (Path{Kind: Direct, Endpoint: epA}) {
		t.Fatalf("after the peer came back direct: %v", p)
	}
}
