package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// fakeVeths is a vethPlumber over made-up namespaces.
type fakeVeths struct {
	mu      sync.Mutex
	ns      map[string]bool
	plumbed map[string]int
	removed map[string]bool
	fail    error
}

func newFakeVeths() *fakeVeths {
	return &fakeVeths{ns: map[string]bool{}, plumbed: map[string]int{}, removed: map[string]bool{}}
}

func (f *fakeVeths) add(ns string) {
	f.mu.Lock()
	f.ns[ns] = true
	f.mu.Unlock()
}

func (f *fakeVeths) NetnsExists(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ns[name]
}

func (f *fakeVeths) Plumb(w *workload, _ int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.plumbed[w.Netns]++
	delete(f.removed, w.Netns)
	return nil
}

func (f *fakeVeths) Unplumb(w *workload) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed[w.Netns] = true
	return nil
}

func (f *fakeVeths) plumbs(ns string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.plumbed[ns]
}

func (f *fakeVeths) unplumbed(ns string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removed[ns]
}

// fakeNodes is a node cache.
type fakeNodes map[string]kvstore.Node

func (f fakeNodes) Range(fn func(string, kvstore.Node) bool) {
	for k, n := range f {
		if !fn(k, n) {
			return
		}
	}
}

func (f fakeNodes) Get(key string) (kvstore.Node, bool) { n, ok := f[key]; return n, ok }

func (f fakeNodes) put(n kvstore.Node) { f[kvstore.NodeKey(n.Cluster, n.Name)] = n }

// fakeAllocator hands out identities by label set and counts references.
type fakeAllocator struct {
	mu   sync.Mutex
	ids  map[string]identity.NumericIdentity
	refs map[identity.NumericIdentity]int
	next identity.NumericIdentity
	fail error
}

func newFakeAllocator() *fakeAllocator {
	return &fakeAllocator{ids: map[string]identity.NumericIdentity{}, refs: map[identity.NumericIdentity]int{}, next: 1<<identity.ClusterLocalBits | identity.MinAllocated} // cluster 1's first
}

func (f *fakeAllocator) Allocate(_ context.Context, l identity.Labels) (identity.NumericIdentity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, f.fail
	}
	id, ok := f.ids[l.String()]
	if !ok {
		id = f.next
		f.next++
		f.ids[l.String()] = id
	}
	f.refs[id]++
	return id, nil
}

func (f *fakeAllocator) Release(_ context.Context, id identity.NumericIdentity) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refs[id] == 0 {
		return fmt.Errorf("identity %d released more often than allocated", id)
	}
	f.refs[id]--
	return nil
}

func (f *fakeAllocator) references() map[identity.NumericIdentity]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[identity.NumericIdentity]int{}
	for id, n := range f.refs {
		if n > 0 {
			out[id] = n
		}
	}
	return out
}

// fakeRecords is a session's leased records.
type fakeRecords struct {
	mu   sync.Mutex
	recs map[string]kvstore.Record
	fail error
}

func newFakeRecords() *fakeRecords { return &fakeRecords{recs: map[string]kvstore.Record{}} }

func (f *fakeRecords) Put(_ context.Context, key string, rec kvstore.Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.recs[key] = rec
	return nil
}

func (f *fakeRecords) Delete(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.recs[key]; !ok {
		return errors.New("no such record")
	}
	delete(f.recs, key)
	return nil
}

func (f *fakeRecords) endpoint(ip string) (*kvstore.Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.recs {
		if e, ok := r.(*kvstore.Endpoint); ok && e.IP == netip.MustParseAddr(ip) {
			return e, true
		}
	}
	return nil, false
}

func (f *fakeRecords) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return sortedKeys(maps.Keys(f.recs))
}

func sortedKeys(seq func(func(string) bool)) []string {
	var out []string
	seq(func(k string) bool { out = append(out, k); return true })
	slices.Sort(out)
	return out
}
