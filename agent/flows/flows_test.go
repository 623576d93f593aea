package flows

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/testutil"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func flowAt(ms int, verdict string) api.Flow {
	return api.Flow{Time: t0.Add(time.Duration(ms) * time.Millisecond), Verdict: verdict, Protocol: "tcp",
		Source:      api.FlowEndpoint{IP: "100.64.1.2", Port: 40000, Labels: []string{"vm:app=web", "mesh:cluster=east"}},
		Destination: api.FlowEndpoint{IP: "100.64.2.2", Port: 5432, Labels: []string{"k8s:app=db", "mesh:cluster=east"}}}
}

func collect(t *testing.T, r *Ring, req api.FlowRequest) []api.Flow {
	t.Helper()
	var out []api.Flow
	err := r.Stream(context.Background(), req, func(l api.FlowLine) error {
		if l.Flow != nil {
			out = append(out, *l.Flow)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func seqs(fs []api.Flow) []uint64 {
	var out []uint64
	for _, f := range fs {
		out = append(out, f.Seq)
	}
	return out
}

func TestRingKeepsTheNewestAndNumbersThem(t *testing.T) {
	r := NewRing(4)
	for i := range 10 {
		r.Add(flowAt(i, Forwarded))
	}
	if got := seqs(r.Snapshot()); !slices.Equal(got, []uint64{7, 8, 9, 10}) {
		t.Fatalf("ring of 4 after 10 flows holds %v, want 7..10", got)
	}
	if got := seqs(collect(t, r, api.FlowRequest{Last: 2})); !slices.Equal(got, []uint64{9, 10}) {
		t.Fatalf("last 2 = %v", got)
	}
	if got := collect(t, r, api.FlowRequest{Last: 0}); len(got) != 0 {
		t.Fatalf("last 0 sent %d flows", len(got))
	}
	if got := seqs(collect(t, r, api.FlowRequest{Last: -1, Since: t0.Add(8 * time.Millisecond)})); !slices.Equal(got, []uint64{9, 10}) {
		t.Fatalf("since 8ms = %v", got)
	}
	if NewRing(0).Size() != DefaultSize {
		t.Fatal("size 0 must mean the default")
	}
}

func TestLastAppliesAfterTheFilter(t *testing.T) {
	r := NewRing(16)
	for i := range 8 {
		v := Forwarded
		if i%2 == 0 {
			v = Dropped
		}
		r.Add(flowAt(i, v))
	}
	got := collect(t, r, api.FlowRequest{Last: 2, Filter: api.FlowFilter{Verdict: Dropped}})
	if !slices.Equal(seqs(got), []uint64{5, 7}) {
		t.Fatalf("last 2 dropped = %v, want the two newest drops 5 and 7", seqs(got))
	}
}

func TestMatcher(t *testing.T) {
	f := flowAt(0, Dropped)
	cases := []struct {
		name   string
		filter api.FlowFilter
		want   bool
	}{
		{"empty", api.FlowFilter{}, true},
		{"from label any source", api.FlowFilter{FromLabels: []string{"app=web"}}, true},
		{"from label with source", api.FlowFilter{FromLabels: []string{"vm:app=web"}}, true},
		{"from label wrong source", api.FlowFilter{FromLabels: []string{"k8s:app=web"}}, false},
		{"from label of the other end", api.FlowFilter{FromLabels: []string{"app=db"}}, false},
		{"to label", api.FlowFilter{ToLabels: []string{"app=db"}}, true},
		{"two labels, one missing", api.FlowFilter{ToLabels: []string{"app=db", "tier=x"}}, false},
		{"from ip", api.FlowFilter{FromIP: "100.64.1.2"}, true},
		{"from ip other", api.FlowFilter{FromIP: "100.64.1.3"}, false},
		{"to ip", api.FlowFilter{ToIP: "100.64.2.2"}, true},
		{"port destination", api.FlowFilter{Port: 5432}, true},
		{"port source", api.FlowFilter{Port: 40000}, true},
		{"port other", api.FlowFilter{Port: 80}, false},
		{"protocol", api.FlowFilter{Protocol: "TCP"}, true},
		{"protocol other", api.FlowFilter{Protocol: "udp"}, false},
		{"verdict", api.FlowFilter{Verdict: Dropped}, true},
		{"verdict other", api.FlowFilter{Verdict: Forwarded}, false},
		{"cluster by label", api.FlowFilter{Cluster: "east"}, true},
		{"cluster other", api.FlowFilter{Cluster: "west"}, false},
		{"cluster is not a label prefix", api.FlowFilter{Cluster: "eas"}, false},
	}
	for _, c := range cases {
		m, err := NewMatcher(c.filter)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := m.Match(&f); got != c.want {
			t.Errorf("%s: match = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestMatcherRefusesBadFilters(t *testing.T) {
	for _, f := range []api.FlowFilter{
		{FromLabels: []string{"app"}},
		{ToLabels: []string{"=x"}},
		{FromIP: "10.0.0"},
		{Protocol: "http"},
		{Verdict: "denied"},
		{Cluster: "West"},
		{Cluster: "a/b"},
	} {
		if _, err := NewMatcher(f); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%+v: err = %v, want ErrInvalid", f, err)
		}
	}
}

func TestFollowSeesHeldThenNewFlowsWithoutGapOrDuplicate(t *testing.T) {
	r := NewRing(64)
	for i := range 3 {
		r.Add(flowAt(i, Forwarded))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lines := make(chan api.FlowLine, 100)
	done := make(chan error, 1)
	go func() {
		done <- r.Stream(ctx, api.FlowRequest{Last: -1, Follow: true, Filter: api.FlowFilter{Verdict: Dropped}}, func(l api.FlowLine) error {
			lines <- l
			return nil
		})
	}()
	// The first heartbeat comes after the held flows (none match).
	if l := <-lines; l.Flow != nil || l.Time.IsZero() {
		t.Fatalf("first line = %+v, want a heartbeat", l)
	}
	testutil.Eventually(t, time.Minute, "the stream subscribes", func() bool { return r.Subscribers() > 0 })
	r.Add(flowAt(10, Forwarded))
	r.Add(flowAt(11, Dropped))
	for l := range lines {
		if l.Flow == nil {
			continue
		}
		if l.Flow.Seq != 5 || l.Flow.Verdict != Dropped {
			t.Fatalf("followed flow = %+v, want the drop (seq 5)", l.Flow)
		}
		break
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r.Subscribers() != 0 {
		t.Fatal("the subscription outlived its stream")
	}
}

func TestSlowFollowerIsToldWhatItMissed(t *testing.T) {
	r := NewRing(8)
	held, sub := r.subscribe()
	defer r.unsubscribe(sub)
	if len(held) != 0 {
		t.Fatal("empty ring returned flows")
	}
	for i := range subscriberBuffer + 5 {
		r.Add(flowAt(i, Forwarded))
	}
	if got := sub.lost.Load(); got != 5 {
		t.Fatalf("lost = %d, want 5", got)
	}
}

func TestMergerReleasesInTimeOrderOnlyWhenEveryStreamHasCaughtUp(t *testing.T) {
	m := NewMerger(3)
	f := func(node string, ms int) api.FlowLine {
		fl := flowAt(ms, Forwarded)
		fl.Node = node
		return api.FlowLine{Flow: &fl}
	}
	hb := func(ms int) api.FlowLine { return api.FlowLine{Time: t0.Add(time.Duration(ms) * time.Millisecond)} }
	var out []api.Flow
	out = append(out, m.Push(0, f("a", 10))...)
	out = append(out, m.Push(1, f("b", 5))...)
	if len(out) != 0 {
		t.Fatalf("released %d flows before stream 2 said anything", len(out))
	}
	out = append(out, m.Push(2, hb(7))...)
	if len(out) != 1 || out[0].Node != "b" {
		t.Fatalf("after stream 2 reached 7ms released %+v, want b@5ms only", out)
	}
	out = append(out, m.Push(2, f("c", 8))...)
	out = append(out, m.Push(1, hb(20))...)
	out = append(out, m.Push(2, hb(20))...)
	out = append(out, m.Push(0, hb(20))...)
	var order []string
	for _, fl := range out {
		order = append(order, fl.Node)
	}
	if !slices.Equal(order, []string{"b", "c", "a"}) {
		t.Fatalf("order = %v, want b c a", order)
	}
	// A closed stream no longer holds the others back.
	out = m.Push(0, f("a", 30))
	out = append(out, m.Close(1)...)
	if len(out) != 0 {
		t.Fatal("released a flow stream 2 has not caught up with")
	}
	out = m.Close(2)
	if len(out) != 1 || out[0].Node != "a" {
		t.Fatalf("closing the laggards released %+v", out)
	}
	m.Push(0, api.FlowLine{Lost: 3})
	if m.Lost() != 3 {
		t.Fatal("lost flows not counted")
	}
}

// --cluster matches a flow either end of which is of the cluster, named by
// the end's node or endpoint, or only by its identity's labels; the
// observing node's own cluster does not count.
func TestMatcherClusterMatchesEitherEnd(t *testing.T) {
	local := api.FlowEndpoint{IP: "100.64.1.2", Cluster: "a", Node: "a1", Labels: []string{"vm:app=web", "mesh:cluster=a"}}
	remote := api.FlowEndpoint{IP: "100.65.1.2", Cluster: "b", Node: "b1", Name: "db"}
	byLabel := api.FlowEndpoint{IP: "100.66.1.2", Identity: 3<<16 | 300, Labels: []string{"vm:app=db", "mesh:cluster=c"}}
	m, err := NewMatcher(api.FlowFilter{Cluster: "b"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		src, dst api.FlowEndpoint
		cluster  string
		want     bool
	}{
		{"destination of cluster b", local, remote, "a", true},
		{"source of cluster b", remote, local, "a", true},
		{"neither end, seen by a node of b", local, byLabel, "b", false},
	} {
		f := api.Flow{Cluster: c.cluster, Source: c.src, Destination: c.dst}
		if got := m.Match(&f); got != c.want {
			t.Errorf("%s: match = %v, want %v", c.name, got, c.want)
		}
	}
	mc, _ := NewMatcher(api.FlowFilter{Cluster: "c", FromLabels: []string{"app=web"}})
	if f := (api.Flow{Source: local, Destination: byLabel}); !mc.Match(&f) {
		t.Error("an end known only by its identity's mesh:cluster label does not match --cluster c")
	}
}
