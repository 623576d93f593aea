package health

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// Handshake thresholds of the peers check.
const (
	// HandshakeGrace is how long a peer just added may go without a first
	// handshake before it counts as unreachable: two WireGuard handshake
	// attempts (they are 5 s apart), so `meshctl up` followed by a join
	// does not flap, while a node whose UDP is blocked is named within
	// seconds.
	HandshakeGrace = 10 * time.Second
	// HandshakeStale is the age past which a peer's last handshake counts
	// as lost: WireGuard renews a session's keys every 2 minutes while
	// packets flow (the health probes send one every second), so a
	// handshake older than 3 minutes means the peer stopped answering.
	HandshakeStale = 3 * time.Minute
)

// Peer handshake states (api.PeerHealth.State).
const (
	PeerOK      = "ok"      // handshake within HandshakeStale
	PeerWaiting = "waiting" // added less than HandshakeGrace ago, no handshake yet
	PeerNever   = "never"   // no handshake since it was added, for longer than the grace
	PeerStale   = "stale"   // last handshake older than HandshakeStale
)

// TunnelPeer is one peer entry of the WireGuard device, named after the
// node record holding its key (a node rotating its key has two entries).
type TunnelPeer struct {
	Node, Cluster string
	PublicKey     string
	Endpoint      string
	// LastHandshake is zero when none completed.
	LastHandshake time.Time
}

// AddedTimes remembers when this agent first saw each peer key on its
// device, which is where a new peer's grace period starts. It is fed by a
// loop reading the device (Observe) rather than by the status requests,
// so a peer added an hour ago is not new to the first `meshctl status`.
type AddedTimes struct {
	mu    sync.Mutex
	start time.Time
	seen  map[string]time.Time
}

// NewAddedTimes starts remembering; start is the agent's start, the
// earliest a peer can have been added as far as this agent knows.
func NewAddedTimes(start time.Time) *AddedTimes {
	return &AddedTimes{start: start, seen: map[string]time.Time{}}
}

// Observe records the keys on the device now and forgets those gone (a
// node that rejoins with the same key gets a new grace period).
func (a *AddedTimes) Observe(keys []string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	keep := make(map[string]bool, len(keys))
	for _, k := range keys {
		keep[k] = true
		if _, ok := a.seen[k]; !ok {
			a.seen[k] = now
		}
	}
	for k := range a.seen {
		if !keep[k] {
			delete(a.seen, k)
		}
	}
}

// Added returns when key was first seen (now for a key not seen yet: it
// is being added as we look).
func (a *AddedTimes) Added(key string, now time.Time) time.Time {
	if a == nil {
		return now
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.seen[key]; ok {
		if t.Before(a.start) {
			return a.start
		}
		return t
	}
	return now
}

// JudgePeers is the peers check: every peer node must have completed a
// WireGuard handshake within HandshakeStale, and a peer added less than
// HandshakeGrace ago is given that long for its first one. A node with no
// peers is healthy (a new single-node mesh). It returns the check and one
// verdict per peer node, sorted by name.
func JudgePeers(peers []TunnelPeer, added func(key string) time.Time, now time.Time) (api.HealthCheck, []api.PeerHealth) {
	type acc struct {
		ph    api.PeerHealth
		added time.Time
	}
	byNode := map[string]*acc{}
	var order []string
	for _, p := range peers {
		name := p.Cluster + "/" + p.Node
		if p.Node == "" {
			// A key no node record holds (yet): named by its key.
			name = p.PublicKey
		}
		a := byNode[name]
		if a == nil {
			a = &acc{ph: api.PeerHealth{Node: p.Node, Cluster: p.Cluster, Endpoint: p.Endpoint}}
			if p.Node == "" {
				a.ph.Node = p.PublicKey
			}
			byNode[name] = a
			order = append(order, name)
		}
		// A node with two entries (a key rotation) is as reachable as
		// its freshest one.
		if p.LastHandshake.After(a.ph.LastHandshake) {
			a.ph.LastHandshake = p.LastHandshake
			if p.Endpoint != "" {
				a.ph.Endpoint = p.Endpoint
			}
		}
		if t := added(p.PublicKey); a.added.IsZero() || t.Before(a.added) {
			a.added = t
		}
	}
	sort.Strings(order)
	out := make([]api.PeerHealth, 0, len(order))
	var bad, waiting []string
	for _, name := range order {
		a := byNode[name]
		ph := a.ph
		ph.Added = a.added
		switch {
		case !ph.LastHandshake.IsZero() && now.Sub(ph.LastHandshake) <= HandshakeStale:
			ph.State = PeerOK
		case !ph.LastHandshake.IsZero():
			ph.State = PeerStale
			ph.Message = fmt.Sprintf("last handshake %s ago (more than %s)", ago(now.Sub(ph.LastHandshake)), ago(HandshakeStale))
		case now.Sub(a.added) < HandshakeGrace:
			ph.State = PeerWaiting
			ph.Message = fmt.Sprintf("no handshake yet (added %s ago)", ago(now.Sub(a.added)))
		default:
			ph.State = PeerNever
			ph.Message = fmt.Sprintf("no handshake since it was added %s ago", ago(now.Sub(a.added)))
		}
		switch ph.State {
		case PeerStale, PeerNever:
			bad = append(bad, ph.Node+": "+ph.Message)
		case PeerWaiting:
			waiting = append(waiting, ph.Node)
		}
		out = append(out, ph)
	}
	check := api.HealthCheck{Name: "peers", OK: len(bad) == 0}
	switch {
	case len(out) == 0:
		check.Message = "no peers yet"
	case len(bad) > 0:
		check.Message = fmt.Sprintf("%d of %d peers unreachable: %s", len(bad), len(out), strings.Join(bad, "; "))
	case len(waiting) > 0:
		check.Message = fmt.Sprintf("waiting for a first handshake with %s", strings.Join(waiting, ", "))
	default:
		check.Message = fmt.Sprintf("%d of %d peers handshook", len(out), len(out))
	}
	return check, out
}

// ago rounds a duration for a sentence: "12s", "4m10s".
func ago(d time.Duration) string { return d.Round(time.Second).String() }
