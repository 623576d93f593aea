package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// fakeNodeRevisions is a node cache whose revision moves on every change.
type fakeNodeRevisions struct {
	mu    sync.Mutex
	nodes map[string]kvstore.Node
	rev   int64
}

func (f *fakeNodeRevisions) put(n kvstore.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.nodes == nil {
		f.nodes = map[string]kvstore.Node{}
	}
	f.nodes[n.Key()] = n
	f.rev++
}

func (f *fakeNodeRevisions) del(cluster, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.nodes, kvstore.NodeKey(cluster, name))
	f.rev++
}

func (f *fakeNodeRevisions) Range(fn func(string, kvstore.Node) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, n := range f.nodes {
		if !fn(k, n) {
			return
		}
	}
}

func (f *fakeNodeRevisions) Revision() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

func underlayNode(name string, eps ...string) kvstore.Node {
	n := kvstore.Node{Name: name, Cluster: "default"}
	for _, e := range eps {
		n.Endpoints = append(n.Endpoints, netip.MustParseAddrPort(e))
	}
	return n
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// TestUnderlayNodeReconciler: the strict-mode table holds the other nodes'
// underlay addresses, never this node's own, and each pass writes only
// what changed.
func TestUnderlayNodeReconciler(t *testing.T) {
	dp := bpftest.New()
	nodes := &fakeNodeRevisions{}
	nodes.put(underlayNode("self", "198.18.1.10:51833"))
	nodes.put(underlayNode("a1", "198.18.1.11:51833"))
	nodes.put(underlayNode("b1", "198.18.2.10:51833", "[2001:db8::b1]:51833"))
	r := newUnderlayNodeReconciler(dp, nodes, kvstore.NodeKey("default", "self"), slog.New(slog.DiscardHandler))

	check := func(want ...string) {
		t.Helper()
		got, _ := dp.UnderlayNodes()
		if !slices.Equal(got, addrs(want...)) {
			t.Fatalf("underlay nodes %v, want %v", got, want)
		}
	}
	must(t, r.reconcile())
	check("198.18.1.11", "198.18.2.10", "2001:db8::b1")
	dp.Writes()

	// b1 moves one address; a1 leaves: only those are written.
	nodes.put(underlayNode("b1", "198.18.2.20:51833", "[2001:db8::b1]:51833"))
	nodes.del("default", "a1")
	must(t, r.reconcile())
	check("198.18.2.20", "2001:db8::b1")
	w := dp.Writes()
	slices.Sort(w)
	if want := []string{"underlay+ 198.18.2.20", "underlay- 198.18.1.11", "underlay- 198.18.2.10"}; !slices.Equal(w, want) {
		t.Fatalf("writes %v, want %v", w, want)
	}
	// Nothing changed: nothing written.
	must(t, r.reconcile())
	if w := dp.Writes(); len(w) != 0 {
		t.Fatalf("an unchanged node set wrote %v", w)
	}
}

// TestUnderlayNodeReconcilerFollowsTheCache: the loop picks up a change of
// the node cache on its own.
func TestUnderlayNodeReconcilerFollowsTheCache(t *testing.T) {
	dp := bpftest.New()
	nodes := &fakeNodeRevisions{}
	r := newUnderlayNodeReconciler(dp, nodes, kvstore.NodeKey("default", "self"), slog.New(slog.DiscardHandler))
	r.every = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.run(ctx) }()
	defer func() { cancel(); <-done }()
	nodes.put(underlayNode("c1", "198.18.3.10:51833"))
	testutil.Eventually(t, 5*time.Second, "c1 in the table", func() error {
		got, _ := dp.UnderlayNodes()
		if !slices.Equal(got, addrs("198.18.3.10")) {
			return fmt.Errorf("underlay nodes %v", got)
		}
		return nil
	})
}

// TestStrictModeOnFakes: an agent with `strict: true` turns strict mode
// on with its WireGuard port and fills the table with the other node's
// underlay address; one without turns a pinned strict mode off again, and
// both attach the underlay program.
func TestStrictModeOnFakes(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "s1", 5)
	b := newTestNode(t, srv, "s2", 6)
	// A node's own announced address is its underlay; give b a distinct
	// one so that a's table shows it.
	b.cfg.Underlay.Endpoints = []string{"127.0.0.2:40006"}
	a.cfg.Strict = true
	must(t, b.dp.SetStrict(true, 1)) // left by an earlier strict run
	b.start(t)
	a.start(t)
	if on, port := a.dp.Strict(); !on || int(port) != a.agent.tun.ListenPort() {
		t.Errorf("strict node: strict=%v port=%d, want true %d (its WireGuard port)", on, port, a.agent.tun.ListenPort())
	}
	if on, _ := b.dp.Strict(); on {
		t.Error("a node without strict kept strict mode on")
	}
	testutil.Eventually(t, 10*time.Second, "s2's underlay address in s1's table", func() error {
		got, _ := a.dp.UnderlayNodes()
		if !slices.Equal(got, addrs("127.0.0.2")) {
			return fmt.Errorf("underlay nodes %v, want [127.0.0.2]", got)
		}
		return nil
	})
	if len(a.dp.Underlay()) == 0 {
		t.Error("the underlay program was attached nowhere")
	}
}

// TestHostDeviceWatch: a recreated tunnel device (a new ifindex) gets the
// host-device programs again, once; a device that is gone is left to the
// tunnel, and a failed attach is tried again.
func TestHostDeviceWatch(t *testing.T) {
	idx, err := 7, error(nil)
	var attached []string
	fail := false
	w := &hostDeviceWatch{name: "weft0", last: 7, log: slog.New(slog.DiscardHandler),
		ifindex: func(string) (int, error) { return idx, err },
		attach: func(n string) error {
			if fail {
				return fmt.Errorf("no")
			}
			attached = append(attached, n)
			return nil
		}}
	w.check()
	if len(attached) != 0 {
		t.Fatalf("an unchanged device was attached again: %v", attached)
	}
	idx, err = 0, fmt.Errorf("gone")
	w.check()
	idx, err, fail = 9, nil, true
	w.check()
	fail = false
	w.check()
	w.check()
	if !slices.Equal(attached, []string{"weft0"}) || w.last != 9 {
		t.Fatalf("attached %v (last ifindex %d), want once, ifindex 9", attached, w.last)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
