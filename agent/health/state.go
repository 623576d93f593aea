// Package health tells which nodes of the mesh are alive and reachable:
// memberlist gossip among the agents (encrypted with a mesh-wide key) for
// membership, and a UDP probe from every node to every other node through
// the tunnel, which measures the round trip and notices within a couple of
// probe intervals when a node stops answering.
//
// Everything binds to the node's mesh address, so gossip and probes travel
// through WireGuard like workload traffic: a probe that succeeds proves the
// tunnel between the two nodes works.
package health

import (
	"time"
)

// Probe states.
const (
	StateUnknown = "unknown" // not probed yet
	StateUp      = "up"
	StateDown    = "down"
)

// Gossip membership states.
const (
	MemberUnknown = "unknown" // never seen
	MemberAlive   = "alive"
	MemberSuspect = "suspect"
	MemberDead    = "dead"
	MemberLeft    = "left"
)

// peerState is the probe history of one target. It is pure logic: the
// prober feeds it results, the view reads it.
type peerState struct {
	state       string
	rtt         time.Duration
	lastSuccess time.Time
	failures    int
	lastErr     string
}

// observe records one probe. A success makes the peer up; downAfter
// failures in a row make it down.
func (p *peerState) observe(ok bool, rtt time.Duration, now time.Time, errMsg string, downAfter int) {
	if p.state == "" {
		p.state = StateUnknown
	}
	if ok {
		p.state, p.rtt, p.lastSuccess, p.failures, p.lastErr = StateUp, rtt, now, 0, ""
		return
	}
	p.failures++
	p.lastErr = errMsg
	if p.failures >= downAfter {
		p.state = StateDown
	}
}

// combined is what a node is shown as: down when its probes fail or the
// gossip says it is dead or gone, whichever notices first.
func combined(probe, member string) string {
	if member == MemberDead || member == MemberLeft {
		return StateDown
	}
	if probe == "" {
		return StateUnknown
	}
	return probe
}
