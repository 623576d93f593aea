package flowcollect

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/bpf"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

type fakeDir struct{}

func (fakeDir) EndpointByIP(ip netip.Addr) (EndpointInfo, bool) {
	if ip == netip.MustParseAddr("100.64.1.2") {
		return EndpointInfo{Name: "web-1", Node: "n1", Cluster: "east", Identity: 300, Labels: []string{"vm:app=web"}}, true
	}
	return EndpointInfo{}, false
}

// NodeByIP knows b1 of the connected cluster west: its mesh address and
// its CIDR.
func (fakeDir) NodeByIP(ip netip.Addr) (NodeInfo, bool) {
	if ip == netip.MustParseAddr("100.65.0.1") || netip.MustParsePrefix("100.65.1.0/24").Contains(ip) {
		return NodeInfo{Name: "b1", Cluster: "west"}, true
	}
	return NodeInfo{}, false
}

func (fakeDir) IdentityLabels(id uint32) ([]string, bool) {
	switch id {
	case 2:
		return []string{"reserved:world"}, true
	case 3<<16 | 300:
		return []string{"vm:app=db", "mesh:cluster=south"}, true
	}
	return nil, false
}

type fakeSource struct {
	mu     sync.Mutex
	events chan bpf.Event
	closed chan struct{}
}

func (s *fakeSource) Read() (bpf.Event, error) {
	select {
	case ev := <-s.events:
		return ev, nil
	case <-s.closed:
		return bpf.Event{}, os.ErrClosed
	}
}

func (s *fakeSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	return nil
}

func TestCollectorEnrichesBothEnds(t *testing.T) {
	src := &fakeSource{events: make(chan bpf.Event, 1), closed: make(chan struct{})}
	ring := flows.NewRing(8)
	got := make(chan api.Flow, 1)
	c := &Collector{Source: src, Enricher: &Enricher{Dir: fakeDir{}, Node: "n2", Cluster: "east"}, Ring: ring,
		OnFlow: func(f api.Flow) { got <- f }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	src.events <- bpf.Event{Type: bpf.EventDrop, Reason: bpf.ReasonPolicyDeny, Direction: bpf.Ingress,
		Src: netip.MustParseAddr("100.64.1.2"), Dst: netip.MustParseAddr("198.51.100.7"), SrcIdentity: 300, DstIdentity: 2,
		Protocol: 6, SrcPort: 40000, DstPort: 5432, TCPFlags: 0x02, Time: t0}
	f := <-got
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if f.Verdict != flows.Dropped || f.Reason != bpf.ReasonPolicyDeny.String() || f.Node != "n2" || f.Protocol != "tcp" || f.TCPFlags != "SYN" {
		t.Fatalf("flow = %+v", f)
	}
	if f.Source.Name != "web-1" || f.Source.Node != "n1" || !slices.Equal(f.Source.Labels, []string{"vm:app=web"}) {
		t.Fatalf("source = %+v", f.Source)
	}
	if f.Destination.Identity != 2 || !slices.Equal(f.Destination.Labels, []string{"reserved:world"}) {
		t.Fatalf("destination = %+v", f.Destination)
	}
	if ring.Len() != 1 || f.Seq != 1 {
		t.Fatalf("ring holds %d, seq %d", ring.Len(), f.Seq)
	}
}

// TestEnricherMarksNodeControl: a connection the datapath passed as
// agent-to-agent control traffic says so in its flow record; other
// forwarded flows and drops do not.
func TestEnricherMarksNodeControl(t *testing.T) {
	e := &Enricher{Dir: fakeDir{}, Node: "n2", Cluster: "east"}
	ev := bpf.Event{Type: bpf.EventNewConn, Direction: bpf.Ingress, Protocol: 6, DstPort: 51835, Time: t0,
		Src: netip.MustParseAddr("100.64.1.1"), Dst: netip.MustParseAddr("100.64.2.1"), NodeControl: true}
	if f := e.Flow(ev); !f.NodeControl || f.Verdict != flows.Forwarded {
		t.Fatalf("control connection: %+v", f)
	}
	ev.NodeControl = false
	if f := e.Flow(ev); f.NodeControl {
		t.Fatalf("ordinary connection marked node-control: %+v", f)
	}
}

// Both ends name their cluster and node: an endpoint by its record, a
// node's own address or an unpublished address in a node's CIDR by that
// node (of a connected cluster here), an address known only by its
// identity by the identity's mesh:cluster label; the world by nothing.
func TestEnricherNamesClusterAndNodeOfBothEnds(t *testing.T) {
	e := &Enricher{Dir: fakeDir{}, Node: "n2", Cluster: "east"}
	for _, c := range []struct {
		ip            string
		id            uint32
		node, cluster string
	}{
		{"100.64.1.2", 300, "n1", "east"},
		{"100.65.0.1", 6, "b1", "west"},
		{"100.65.1.9", 0, "b1", "west"},
		{"100.66.1.2", 3<<16 | 300, "", "south"},
		{"198.51.100.7", 2, "", ""},
	} {
		f := e.Flow(bpf.Event{Type: bpf.EventNewConn, Direction: bpf.Egress, Protocol: 17, Time: t0,
			Src: netip.MustParseAddr("100.64.1.2"), Dst: netip.MustParseAddr(c.ip), SrcIdentity: 300, DstIdentity: c.id})
		if d := f.Destination; d.Node != c.node || d.Cluster != c.cluster {
			t.Errorf("%s: destination node %q cluster %q, want %q %q", c.ip, d.Node, d.Cluster, c.node, c.cluster)
		}
		if s := f.Source; s.Node != "n1" || s.Cluster != "east" || s.Name != "web-1" {
			t.Errorf("%s: source %+v, want web-1 on east/n1", c.ip, s)
		}
	}
}
