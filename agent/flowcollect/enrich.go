package flowcollect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
)

// EndpointInfo names a mesh endpoint.
type EndpointInfo struct {
	Name, Node, Cluster string
	Identity            uint32
	Labels              []string
}

// NodeInfo names a node of the mesh (this cluster's or a connected one's).
type NodeInfo struct {
	Name, Cluster string
}

// Directory is what enrichment needs from the agent's caches.
type Directory interface {
	// EndpointByIP returns the mesh endpoint holding ip.
	EndpointByIP(ip netip.Addr) (EndpointInfo, bool)
	// NodeByIP returns the node whose mesh address is ip or whose CIDRs
	// hold it: an address that is no endpoint (a node's own address, a
	// workload its agent has not published) still has a node.
	NodeByIP(ip netip.Addr) (NodeInfo, bool)
	// IdentityLabels returns the labels of a numeric identity (reserved
	// ones included).
	IdentityLabels(id uint32) ([]string, bool)
}

// Enricher turns datapath events into flow records of one node.
type Enricher struct {
	Dir           Directory
	Node, Cluster string
}

// Flow builds the record of one event.
func (e *Enricher) Flow(ev bpf.Event) api.Flow {
	f := api.Flow{
		Time: ev.Time, Node: e.Node, Cluster: e.Cluster,
		Type: ev.Type.String(), Direction: ev.Direction.String(),
		Protocol: flows.ProtocolName(ev.Protocol), Length: ev.Length,
		Source:      e.end(ev.Src, ev.SrcPort, ev.SrcIdentity),
		Destination: e.end(ev.Dst, ev.DstPort, ev.DstIdentity),
	}
	if ev.Type == bpf.EventDrop {
		f.Verdict = flows.Dropped
		f.Reason = ev.Reason.String()
	} else {
		f.Verdict = flows.Forwarded
		f.NodeControl = ev.NodeControl
	}
	if ev.Protocol == 6 {
		f.TCPFlags = flows.TCPFlags(ev.TCPFlags)
	}
	return f
}

func (e *Enricher) end(ip netip.Addr, port uint16, id uint32) api.FlowEndpoint {
	fe := api.FlowEndpoint{Port: port, Identity: id}
	if ip.IsValid() {
		ip = ip.Unmap()
		fe.IP = ip.String()
		if info, ok := e.Dir.EndpointByIP(ip); ok {
			fe.Name, fe.Node, fe.Cluster, fe.Labels = info.Name, info.Node, info.Cluster, info.Labels
			if fe.Identity == 0 {
				fe.Identity = info.Identity
			}
		}
	}
	if fe.Node == "" && ip.IsValid() {
		if n, ok := e.Dir.NodeByIP(ip); ok {
			fe.Node, fe.Cluster = n.Name, n.Cluster
		}
	}
	if len(fe.Labels) == 0 && fe.Identity != 0 {
		if l, ok := e.Dir.IdentityLabels(fe.Identity); ok {
			fe.Labels = l
		}
	}
	if fe.Cluster == "" {
		fe.Cluster = clusterOf(fe.Labels)
	}
	return fe
}

// clusterOf is the cluster an identity's labels name (every endpoint
// carries mesh:cluster=<name>), or "".
func clusterOf(labels []string) string {
	const prefix = identity.SourceMesh + ":cluster="
	for _, l := range labels {
		if c, ok := strings.CutPrefix(l, prefix); ok {
			return c
		}
	}
	return ""
}

// EventSource is the datapath's event reader.
type EventSource interface {
	Read() (bpf.Event, error)
	Close() error
}

// Collector reads events, enriches them and stores them in a ring.
type Collector struct {
	Source   EventSource
	Enricher *Enricher
	Ring     *flows.Ring
	// OnFlow, when set, sees every flow (metrics).
	OnFlow func(api.Flow)
}

// Run reads until ctx ends (it then closes the source) or the source
// fails.
func (c *Collector) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = c.Source.Close() })
	defer stop()
	for {
		ev, err := c.Source.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reading datapath events: %w", err)
		}
		f := c.Ring.Add(c.Enricher.Flow(ev))
		if c.OnFlow != nil {
			c.OnFlow(f)
		}
	}
}
