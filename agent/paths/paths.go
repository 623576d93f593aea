// Package paths decides, for every peer of a node, which path its
// WireGuard packets take: direct to one of the peer's candidate endpoints,
// or through a relay. It is pure logic over what the tunnel reports (the
// bytes received from each peer): the agent feeds it observations on a
// tick and applies the decisions (an endpoint per peer, probes to send).
//
// The rules (docs/nat.md):
//
//   - A path is alive while packets authenticated by the peer arrive. A
//     peer quiet for ProbeAfter is probed through the tunnel (an echo
//     comes back through it), so an idle but healthy peer is never taken
//     for dead; one quiet for DeadAfter despite the probes is.
//   - A peer that was never reached is tried at each direct candidate in
//     turn, TryFor each (both sides do the same at the same time, which
//     opens endpoint-independent NATs); when all failed, or when both
//     sides are behind NAT and one of them maps symmetrically (nobody can
//     reach it at a published address), the pair goes through a relay.
//   - A direct path that dies moves to a relay at once; the direct path
//     keeps being tried (Recover says so; backoff doubles after each
//     failed return) and the pair moves back when it carries packets.
//   - While a path is alive its endpoint is never changed: WireGuard may
//     have roamed to an address that works better than any candidate.
package paths

import (
	"net/netip"
	"slices"
	"sort"
	"time"
)

// Kind is how a peer is reached.
type Kind string

// The path kinds.
const (
	Direct Kind = "direct"
	Relay  Kind = "relay"
)

// Path is the way a peer is reached now.
type Path struct {
	Kind Kind
	// Endpoint is the direct candidate in use; invalid when the peer has
	// none (its endpoint is learned from its own handshakes).
	Endpoint netip.AddrPort
	// Relay names the relay node in use.
	Relay string
}

// String is what `meshctl status` shows: "direct 198.18.1.10:51833",
// "direct (learned)" or "relay via site3-n1".
func (p Path) String() string {
	switch {
	case p.Kind == Relay:
		return "relay via " + p.Relay
	case p.Endpoint.IsValid():
		return "direct " + p.Endpoint.String()
	}
	return "direct (learned)"
}

// Peer is one peer as the selector needs it.
type Peer struct {
	// Key identifies the peer (its node key).
	Key string
	// Candidates are its direct endpoints, in the order to try them.
	Candidates []netip.AddrPort
	// RelayFirst says direct cannot work (both behind NAT, one mapping
	// symmetrically): go through a relay at once when one is ready.
	RelayFirst bool
}

// Observation is what the tunnel reports for one peer.
type Observation struct {
	RxBytes   int64
	Handshake time.Time
	// Endpoint is where the device sends to now; Relay names the relay
	// when that is a relay's local socket. The device follows the peer
	// (endpoint learning): a peer that moved to a relay, or back, takes
	// this side with it, and the path says so.
	Endpoint netip.AddrPort
	Relay    string
}

// Config holds the timings; zero values take the defaults.
type Config struct {
	ProbeAfter time.Duration // default 1s
	DeadAfter  time.Duration // default 3s
	TryFor     time.Duration // per direct candidate before the next, default 6s
	// RecoverAfter is the first pause before a relayed pair tries its
	// direct path again; it doubles after each failed try, up to
	// RecoverMax.
	RecoverAfter time.Duration // default 5s
	RecoverMax   time.Duration // default 2m
	// TrialFor is how long a return to direct may go without packets
	// before the pair goes back to the relay.
	TrialFor time.Duration // default 4s
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ProbeAfter, time.Second)
	def(&c.DeadAfter, 3*time.Second)
	def(&c.TryFor, 6*time.Second)
	def(&c.RecoverAfter, 5*time.Second)
	def(&c.RecoverMax, 2*time.Minute)
	def(&c.TrialFor, 4*time.Second)
}

// Change is one decision to move a peer to another path.
type Change struct {
	Peer     string
	From, To Path
	Reason   string
}

// Actions is what a tick asks the agent to do.
type Actions struct {
	// Probe lists the peers to send a probe to through the tunnel.
	Probe []string
	// Recover lists relayed peers whose direct candidates should be
	// checked now (Selector.DirectWorks reports the answer).
	Recover []string
	// Changes are the path moves decided in this tick; apply them
	// (Selector.Path gives the current path of every peer).
	Changes []Change
}

// State is a peer's path with its history, for status and metrics.
type State struct {
	Path    Path
	Since   time.Time // when the path last changed
	Changes int       // how often it changed
	Alive   bool
	LastRx  time.Time
}

type peerState struct {
	peer    Peer
	path    Path
	since   time.Time
	changes int

	rx        int64
	handshake time.Time
	lastRx    time.Time // zero: never
	lastProbe time.Time
	everAlive bool // on the current path

	cand      int       // index of the candidate tried (direct)
	candSince time.Time // when it started
	triedAll  bool

	recoverAt   time.Time
	recoverWait time.Duration
	trial       bool // a return to direct under trial
}

// Selector keeps the path of every peer. It is not safe for concurrent
// use: the agent calls it from one loop.
type Selector struct {
	cfg    Config
	peers  map[string]*peerState
	relays []string // ready relays, in preference order
}

// New returns an empty selector.
func New(cfg Config) *Selector {
	cfg.defaults()
	return &Selector{cfg: cfg, peers: map[string]*peerState{}}
}

// SetRelays sets the relays this node is registered with and may use, in
// preference order (both sides of a pair pick the first they share).
func (s *Selector) SetRelays(names []string) { s.relays = slices.Clone(names) }

// SetPeers replaces the set of peers. A peer whose candidates changed
// while it is not alive starts over at its first candidate.
func (s *Selector) SetPeers(now time.Time, peers []Peer) {
	keep := map[string]bool{}
	for _, p := range peers {
		keep[p.Key] = true
		st, ok := s.peers[p.Key]
		if !ok {
			st = &peerState{peer: p, since: now, candSince: now, rx: -1}
			st.path = s.firstPath(p)
			s.peers[p.Key] = st
			continue
		}
		changed := !slices.Equal(st.peer.Candidates, p.Candidates) || st.peer.RelayFirst != p.RelayFirst
		if changed && st.path.Kind == Relay && !p.RelayFirst {
			// New candidates (or direct became possible): check them soon.
			st.recoverAt, st.recoverWait = now, s.cfg.RecoverAfter
		}
		st.peer = p
		if changed && st.path.Kind == Direct && !s.alive(now, st) {
			st.cand, st.candSince, st.triedAll = 0, now, false
			st.path.Endpoint = candidate(p, 0)
		}
		if st.path.Kind == Direct && st.path.Endpoint.IsValid() && !slices.Contains(p.Candidates, st.path.Endpoint) && !s.alive(now, st) {
			st.path.Endpoint = candidate(p, 0)
			st.cand = 0
		}
	}
	for k := range s.peers {
		if !keep[k] {
			delete(s.peers, k)
		}
	}
}

func candidate(p Peer, i int) netip.AddrPort {
	if i < len(p.Candidates) {
		return p.Candidates[i]
	}
	return netip.AddrPort{}
}

func (s *Selector) firstPath(p Peer) Path {
	if r, ok := s.relayFor(&peerState{peer: p}); ok && p.RelayFirst {
		return Path{Kind: Relay, Relay: r}
	}
	return Path{Kind: Direct, Endpoint: candidate(p, 0)}
}

// Path returns the peer's current path.
func (s *Selector) Path(key string) (Path, bool) {
	st, ok := s.peers[key]
	if !ok {
		return Path{}, false
	}
	return st.path, true
}

// States returns every peer's state, by key.
func (s *Selector) States(now time.Time) map[string]State {
	out := make(map[string]State, len(s.peers))
	for k, st := range s.peers {
		out[k] = State{Path: st.path, Since: st.since, Changes: st.changes, Alive: s.alive(now, st), LastRx: st.lastRx}
	}
	return out
}

func (s *Selector) alive(now time.Time, st *peerState) bool {
	return !st.lastRx.IsZero() && now.Sub(st.lastRx) < s.cfg.DeadAfter
}

func (s *Selector) move(now time.Time, st *peerState, to Path, reason string, out *Actions) {
	if to == st.path {
		return
	}
	out.Changes = append(out.Changes, Change{Peer: st.peer.Key, From: st.path, To: to, Reason: reason})
	st.path, st.since = to, now
	st.changes++
	st.everAlive = false
	// The new path gets a full DeadAfter to show life, counted from now.
	st.lastRx = time.Time{}
	st.lastProbe = time.Time{}
	st.candSince = now
}

// relayFor picks the first ready relay that is not the peer itself (a
// peer whose direct path died is no relay to itself).
func (s *Selector) relayFor(st *peerState) (string, bool) {
	for _, r := range s.relays {
		if r != st.peer.Key {
			return r, true
		}
	}
	return "", false
}

// Tick feeds the tunnel's observations (by peer key; a peer missing from
// obs is not on the device yet) and returns what to do.
func (s *Selector) Tick(now time.Time, obs map[string]Observation) Actions {
	var out Actions
	keys := make([]string, 0, len(s.peers))
	for k := range s.peers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		st := s.peers[k]
		o, ok := obs[k]
		if !ok {
			continue
		}
		if st.rx >= 0 && (o.RxBytes > st.rx || o.Handshake.After(st.handshake)) {
			st.lastRx = now
			st.everAlive = true
		}
		if o.RxBytes < st.rx {
			// The device restarted or the peer was re-added: a new baseline.
			st.lastRx = time.Time{}
		}
		st.rx, st.handshake = o.RxBytes, o.Handshake
		alive := s.alive(now, st)
		if alive && o.Endpoint.IsValid() && now.Sub(st.since) >= 2*time.Second {
			switch {
			case o.Relay != "" && (st.path.Kind != Relay || st.path.Relay != o.Relay):
				s.follow(now, st, Path{Kind: Relay, Relay: o.Relay}, "the peer moved to relay "+o.Relay, &out)
			case o.Relay == "" && st.path.Kind == Relay:
				s.follow(now, st, Path{Kind: Direct, Endpoint: o.Endpoint}, "the peer came back direct", &out)
			}
		}
		if alive {
			st.trial = false
			if st.path.Kind == Relay && st.recoverWait == 0 {
				st.recoverWait = s.cfg.RecoverAfter
				st.recoverAt = now.Add(st.recoverWait)
			}
		}
		// Probe a quiet peer once per ProbeAfter: its echo is what keeps an
		// idle path alive.
		quietSince := st.lastRx
		if quietSince.IsZero() {
			quietSince = st.candSince
		}
		if now.Sub(quietSince) >= s.cfg.ProbeAfter && now.Sub(st.lastProbe) >= s.cfg.ProbeAfter {
			st.lastProbe = now
			out.Probe = append(out.Probe, k)
		}
		switch st.path.Kind {
		case Direct:
			s.tickDirect(now, st, alive, &out)
		case Relay:
			s.tickRelay(now, st, alive, &out)
		}
	}
	return out
}

func (s *Selector) tickDirect(now time.Time, st *peerState, alive bool, out *Actions) {
	if alive {
		return
	}
	if st.trial && now.Sub(st.since) >= s.cfg.TrialFor {
		if r, ok := s.relayFor(st); ok {
			st.trial = false
			s.move(now, st, Path{Kind: Relay, Relay: r}, "the direct path did not carry packets again", out)
			st.recoverWait = min(2*max(st.recoverWait, s.cfg.RecoverAfter/2), s.cfg.RecoverMax)
			st.recoverAt = now.Add(st.recoverWait)
			return
		}
	}
	if st.everAlive || (!st.lastRx.IsZero() && !alive) {
		// It carried packets and stopped: fail over at once.
		if r, ok := s.relayFor(st); ok {
			s.move(now, st, Path{Kind: Relay, Relay: r}, "no packets from the peer for "+s.cfg.DeadAfter.String()+" despite probes", out)
			st.recoverWait = s.cfg.RecoverAfter
			st.recoverAt = now.Add(st.recoverWait)
			return
		}
		st.everAlive = false
	}
	if st.peer.RelayFirst {
		if r, ok := s.relayFor(st); ok {
			s.move(now, st, Path{Kind: Relay, Relay: r}, "both behind NAT and one maps symmetrically", out)
			return
		}
	}
	if now.Sub(st.candSince) < s.cfg.TryFor {
		return
	}
	// This candidate did not answer in time: the next, and after the
	// last a relay (or the first again when there is none).
	next := st.cand + 1
	if next >= len(st.peer.Candidates) {
		st.triedAll = true
		if r, ok := s.relayFor(st); ok {
			s.move(now, st, Path{Kind: Relay, Relay: r}, "no direct candidate answered", out)
			st.recoverWait = s.cfg.RecoverAfter
			st.recoverAt = now.Add(st.recoverWait)
			return
		}
		next = 0
	}
	st.cand = next
	to := Path{Kind: Direct, Endpoint: candidate(st.peer, next)}
	if to == st.path {
		st.candSince = now
		return
	}
	s.move(now, st, to, "trying the next direct candidate", out)
}

func (s *Selector) tickRelay(now time.Time, st *peerState, alive bool, out *Actions) {
	if !slices.Contains(s.relays, st.path.Relay) {
		// The relay went away: another, or direct again.
		if r, ok := s.relayFor(st); ok {
			s.move(now, st, Path{Kind: Relay, Relay: r}, "relay "+st.path.Relay+" is not available", out)
		} else {
			st.cand = 0
			s.move(now, st, Path{Kind: Direct, Endpoint: candidate(st.peer, 0)}, "relay "+st.path.Relay+" is not available", out)
		}
		return
	}
	if !alive && now.Sub(st.candSince) >= s.cfg.DeadAfter+s.cfg.ProbeAfter {
		// The relayed path is dead too: another relay, else direct.
		for _, r := range s.relays {
			if r != st.path.Relay && r != st.peer.Key {
				s.move(now, st, Path{Kind: Relay, Relay: r}, "no packets through relay "+st.path.Relay, out)
				return
			}
		}
	}
	if len(st.peer.Candidates) == 0 && !st.peer.RelayFirst {
		// Nothing to try directly but waiting for the peer's handshakes.
		if !st.recoverAt.IsZero() && now.After(st.recoverAt) {
			s.recoverTrial(now, st, netip.AddrPort{}, out)
		}
		return
	}
	if st.peer.RelayFirst {
		return // direct cannot work; SetPeers says when that changes
	}
	if !st.recoverAt.IsZero() && !now.Before(st.recoverAt) {
		// A check costs nothing (the relay keeps carrying): every
		// recoverWait, which only failed returns make longer.
		out.Recover = append(out.Recover, st.peer.Key)
		st.recoverAt = now.Add(max(st.recoverWait, s.cfg.RecoverAfter))
	}
}

// follow adopts the path the device took after the peer (it is alive on
// it): no new life is waited for.
func (s *Selector) follow(now time.Time, st *peerState, to Path, reason string, out *Actions) {
	last := st.lastRx
	s.move(now, st, to, reason, out)
	st.lastRx, st.everAlive, st.trial = last, true, false
	if to.Kind == Relay {
		st.recoverWait = s.cfg.RecoverAfter
		st.recoverAt = now.Add(st.recoverWait)
	} else if i := slices.Index(st.peer.Candidates, to.Endpoint); i >= 0 {
		st.cand = i
	}
}

// DirectWorks tells the selector that a relayed peer's direct candidate
// ep answered a check (Actions.Recover): the pair moves back to it on
// trial; if it carries no packets within TrialFor it returns to the
// relay and waits twice as long before the next try.
func (s *Selector) DirectWorks(now time.Time, key string, ep netip.AddrPort) []Change {
	st, ok := s.peers[key]
	if !ok || st.path.Kind != Relay {
		return nil
	}
	var out Actions
	s.recoverTrial(now, st, ep, &out)
	return out.Changes
}

func (s *Selector) recoverTrial(now time.Time, st *peerState, ep netip.AddrPort, out *Actions) {
	if !ep.IsValid() {
		ep = candidate(st.peer, 0)
	}
	if i := slices.Index(st.peer.Candidates, ep); i >= 0 {
		st.cand = i
	}
	s.move(now, st, Path{Kind: Direct, Endpoint: ep}, "the direct path answers again", out)
	st.trial = true
}
