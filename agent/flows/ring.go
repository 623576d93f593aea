package flows

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// DefaultSize is the number of flows a ring keeps unless configured.
const DefaultSize = 8192

// subscriberBuffer is how many flows a slow subscriber may lag behind
// before it misses some (it is told how many).
const subscriberBuffer = 1024

// Heartbeat is how often a following stream says "nothing older than this
// is still to come", so a reader merging nodes can move on.
const Heartbeat = 500 * time.Millisecond

// heartbeatSlack covers the time between the datapath seeing a packet and
// the agent reading its event: a heartbeat promises only flows newer than
// now minus the slack.
const heartbeatSlack = 250 * time.Millisecond

// Ring keeps the last flows in memory and fans new ones out to
// subscribers. Its methods are safe for concurrent use.
type Ring struct {
	mu   sync.Mutex
	buf  []api.Flow
	next uint64 // sequence number of the next flow (1-based)
	subs map[*subscription]struct{}
	// now is the clock of heartbeats; tests replace it.
	now func() time.Time
}

type subscription struct {
	ch   chan api.Flow
	lost atomic.Uint64
}

// NewRing returns a ring keeping the last size flows (DefaultSize when
// size <= 0).
func NewRing(size int) *Ring {
	if size <= 0 {
		size = DefaultSize
	}
	return &Ring{buf: make([]api.Flow, size), next: 1, subs: map[*subscription]struct{}{}, now: time.Now}
}

// Size is the ring's capacity.
func (r *Ring) Size() int { return len(r.buf) }

// Add stores a flow, numbering it, and hands it to every subscriber. A
// subscriber whose buffer is full misses it and is told later.
func (r *Ring) Add(f api.Flow) api.Flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	f.Seq = r.next
	r.buf[(r.next-1)%uint64(len(r.buf))] = f
	r.next++
	for s := range r.subs {
		select {
		case s.ch <- f:
		default:
			s.lost.Add(1)
		}
	}
	return f
}

// Len is the number of flows held.
func (r *Ring) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lenLocked()
}

func (r *Ring) lenLocked() int {
	n := int(r.next - 1)
	if n > len(r.buf) {
		n = len(r.buf)
	}
	return n
}

// snapshotLocked copies the held flows, oldest first.
func (r *Ring) snapshotLocked() []api.Flow {
	n := r.lenLocked()
	out := make([]api.Flow, 0, n)
	for seq := r.next - uint64(n); seq < r.next; seq++ {
		out = append(out, r.buf[(seq-1)%uint64(len(r.buf))])
	}
	return out
}

// Snapshot returns the held flows, oldest first.
func (r *Ring) Snapshot() []api.Flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotLocked()
}

// subscribe returns the held flows and a subscription to every later one,
// atomically: no flow is missed or seen twice between the two.
func (r *Ring) subscribe() ([]api.Flow, *subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &subscription{ch: make(chan api.Flow, subscriberBuffer)}
	r.subs[s] = struct{}{}
	return r.snapshotLocked(), s
}

func (r *Ring) unsubscribe(s *subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.subs, s)
}

// Subscribers counts the open follow streams.
func (r *Ring) Subscribers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.subs)
}

// Stream implements api.FlowSource: the held flows that match req (the
// newest req.Last of them), then, with req.Follow, new matching flows and
// heartbeats until ctx ends or emit fails.
func (r *Ring) Stream(ctx context.Context, req api.FlowRequest, emit func(api.FlowLine) error) error {
	m, err := NewMatcher(req.Filter)
	if err != nil {
		return err
	}
	var (
		held []api.Flow
		sub  *subscription
	)
	if req.Follow {
		held, sub = r.subscribe()
		defer r.unsubscribe(sub)
	} else {
		held = r.Snapshot()
	}
	for _, f := range selectHeld(held, m, req) {
		if err := emit(api.FlowLine{Flow: &f}); err != nil {
			return err
		}
	}
	if !req.Follow {
		return nil
	}
	tick := time.NewTicker(Heartbeat)
	defer tick.Stop()
	if err := emit(api.FlowLine{Time: r.now().Add(-heartbeatSlack)}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-sub.ch:
			if lost := sub.lost.Swap(0); lost > 0 {
				if err := emit(api.FlowLine{Lost: lost}); err != nil {
					return err
				}
			}
			if !m.Match(&f) || (!req.Since.IsZero() && f.Time.Before(req.Since)) {
				continue
			}
			if err := emit(api.FlowLine{Flow: &f}); err != nil {
				return err
			}
		case <-tick.C:
			if err := emit(api.FlowLine{Time: r.now().Add(-heartbeatSlack)}); err != nil {
				return err
			}
		}
	}
}

// selectHeld filters held flows and keeps the newest req.Last.
func selectHeld(held []api.Flow, m *Matcher, req api.FlowRequest) []api.Flow {
	if req.Last == 0 {
		return nil
	}
	var out []api.Flow
	for _, f := range held {
		if !req.Since.IsZero() && f.Time.Before(req.Since) {
			continue
		}
		if m.Match(&f) {
			out = append(out, f)
		}
	}
	if req.Last > 0 && len(out) > req.Last {
		out = out[len(out)-req.Last:]
	}
	return out
}
