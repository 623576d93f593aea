package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
)

// tracker follows every churn update from its write to the remote etcd
// until every simulated agent's cache holds it (or a newer update of the
// same record: a mirror that finds a record changed twice before it
// writes copies only the newer value, and an agent holding that is as
// current as it can be).
//
// Update seq changes endpoint seq % len(endpoints), so the updates of one
// record are seq, seq+E, seq+2E, …
type tracker struct {
	base     time.Time
	agents   int32
	n        int
	nEndp    int
	sent     []atomic.Int64 // ns since base, just before the put
	putDone  []atomic.Int64 // ns since base, the put answered
	count    []atomic.Int32 // agents holding the update
	done     []atomic.Int64 // ns since base, the last agent got it; 0 = not yet
	left     atomic.Int64
	complete chan struct{}
	once     sync.Once
}

func newTracker(updates, endpoints, agents int) *tracker {
	t := &tracker{
		base: time.Now(), agents: int32(agents), n: updates, nEndp: endpoints,
		sent: make([]atomic.Int64, updates), putDone: make([]atomic.Int64, updates),
		count: make([]atomic.Int32, updates), done: make([]atomic.Int64, updates),
		complete: make(chan struct{}),
	}
	t.left.Store(int64(updates))
	if updates == 0 {
		close(t.complete)
	}
	return t
}

func (t *tracker) now() int64 { return max(int64(time.Since(t.base)), 1) }

func (t *tracker) finish(seq int) {
	t.done[seq].Store(t.now())
	if t.left.Add(-1) == 0 {
		t.once.Do(func() { close(t.complete) })
	}
}

// agentView is one simulated agent's progress through the updates: the
// newest update it holds of each record (-1: none).
type agentView struct {
	t    *tracker
	last []int32
}

func (t *tracker) newAgent() *agentView {
	v := &agentView{t: t, last: make([]int32, t.nEndp)}
	for i := range v.last {
		v.last[i] = -1
	}
	return v
}

// saw records that the agent's cache now holds update seq; called from
// the agent's endpoint cache, one call at a time. An update older than one
// already held (etcd delivers in order, so only a bug would do that) is
// ignored.
func (v *agentView) saw(seq int) {
	t := v.t
	if seq < 0 || seq >= t.n {
		return
	}
	j := seq % t.nEndp
	first := j
	if l := v.last[j]; l >= 0 {
		first = int(l) + t.nEndp
	}
	if seq < first {
		return
	}
	v.last[j] = int32(seq)
	for s := first; s <= seq; s += t.nEndp {
		if t.count[s].Add(1) == t.agents {
			t.finish(s)
		}
	}
}

// churn writes t.n updates at rate per second to the endpoints of r
// through kv, each on its own goroutine (at most 64 in flight) so that a
// slow put does not slow the rate; it returns when every put answered.
func (t *tracker) churn(ctx context.Context, kv clientv3.KV, r records, rate int) error {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for seq := range t.n {
		select {
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		case <-tick.C:
		}
		e := r.endpoints[seq%t.nEndp]
		e.Name = endpointName(seq%t.nEndp, seq)
		data, err := kvstore.Encode(&e)
		if err != nil {
			return fmt.Errorf("encoding update %d: %w", seq, err)
		}
		sem <- struct{}{}
		wg.Add(1)
		t.sent[seq].Store(t.now())
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := kv.Put(rctx, e.Key(), string(data))
			cancel()
			t.putDone[seq].Store(t.now())
			if err != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, fmt.Errorf("update %d: %w", seq, err))
				mu.Unlock()
				return
			}
			if t.agents == 0 { // the baseline: written is all there is
				t.finish(seq)
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// latencies are the propagation times of the complete updates (write to
// every agent holding it) and the put times of all, in order, and the
// number of updates not complete.
func (t *tracker) latencies() (prop, put []time.Duration, missing int) {
	for i := range t.n {
		s := t.sent[i].Load()
		if p := t.putDone[i].Load(); p > 0 && s > 0 {
			put = append(put, time.Duration(p-s))
		}
		if d := t.done[i].Load(); d > 0 && s > 0 {
			prop = append(prop, time.Duration(max(d-s, 0)))
		} else {
			missing++
		}
	}
	slices.Sort(prop)
	slices.Sort(put)
	return prop, put, missing
}

// quantile of sorted ds (nearest rank); 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(q*float64(len(ds))+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}
