package flows

import (
	"container/heap"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// Merger merges the flow streams of several nodes into one ordered by
// time. A flow is released once every open stream has promised nothing
// older is still to come, by a later flow or a heartbeat; a closed stream
// promises nothing more. Streams are numbered 0..n-1.
type Merger struct {
	mark    []time.Time // per stream: nothing older will come
	open    []bool
	pending flowHeap
	lost    uint64
}

// NewMerger returns a merger of n streams, all open.
func NewMerger(n int) *Merger {
	m := &Merger{mark: make([]time.Time, n), open: make([]bool, n)}
	for i := range m.open {
		m.open[i] = true
	}
	return m
}

// Push takes one line of stream i and returns the flows it releases, in
// time order.
func (m *Merger) Push(i int, l api.FlowLine) []api.Flow {
	switch {
	case l.Flow != nil:
		heap.Push(&m.pending, *l.Flow)
		if l.Flow.Time.After(m.mark[i]) {
			m.mark[i] = l.Flow.Time
		}
	case !l.Time.IsZero():
		if l.Time.After(m.mark[i]) {
			m.mark[i] = l.Time
		}
	}
	m.lost += l.Lost
	return m.release()
}

// Close marks stream i finished and returns the flows that releases.
func (m *Merger) Close(i int) []api.Flow {
	m.open[i] = false
	return m.release()
}

// Lost is the number of flows the streams reported missing.
func (m *Merger) Lost() uint64 { return m.lost }

// Flush returns every pending flow, in time order.
func (m *Merger) Flush() []api.Flow {
	var out []api.Flow
	for m.pending.Len() > 0 {
		out = append(out, heap.Pop(&m.pending).(api.Flow))
	}
	return out
}

func (m *Merger) release() []api.Flow {
	var (
		low     time.Time
		anyOpen bool
	)
	for i, open := range m.open {
		if !open {
			continue
		}
		if !anyOpen || m.mark[i].Before(low) {
			low = m.mark[i]
		}
		anyOpen = true
	}
	if !anyOpen {
		return m.Flush()
	}
	var out []api.Flow
	for m.pending.Len() > 0 && !m.pending[0].Time.After(low) {
		out = append(out, heap.Pop(&m.pending).(api.Flow))
	}
	return out
}

// flowHeap orders flows by time, then node, then sequence, so equal times
// come out in a stable order.
type flowHeap []api.Flow

func (h flowHeap) Len() int { return len(h) }
func (h flowHeap) Less(i, j int) bool {
	if !h[i].Time.Equal(h[j].Time) {
		return h[i].Time.Before(h[j].Time)
	}
	if h[i].Cluster+"/"+h[i].Node != h[j].Cluster+"/"+h[j].Node {
		return h[i].Cluster+"/"+h[i].Node < h[j].Cluster+"/"+h[j].Node
	}
	return h[i].Seq < h[j].Seq
}
func (h flowHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *flowHeap) Push(x any)   { *h = append(*h, x.(api.Flow)) }
func (h *flowHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
