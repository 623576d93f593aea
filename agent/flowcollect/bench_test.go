package flowcollect

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/bpf"
)

// BenchmarkFlowPipeline is the agent's cost per datapath event: enrich both
// ends, store in the ring, hand to a following subscriber (drained) and
// match its filter. The baseline is storing a prepared flow only, so the
// ratio shows what enrichment and fan-out add.
func BenchmarkFlowPipeline(b *testing.B) {
	ev := bpf.Event{Type: bpf.EventDrop, Reason: bpf.ReasonPolicyDeny, Direction: bpf.Ingress,
		Src: netip.MustParseAddr("100.64.1.2"), Dst: netip.MustParseAddr("198.51.100.7"), SrcIdentity: 300, DstIdentity: 2,
		Protocol: 6, SrcPort: 40000, DstPort: 5432, TCPFlags: 0x02, Time: time.Now()}
	en := &Enricher{Dir: fakeDir{}, Node: "n2", Cluster: "east"}
	b.Run("baseline store only", func(b *testing.B) {
		r := flows.NewRing(flows.DefaultSize)
		f := en.Flow(ev)
		for b.Loop() {
			r.Add(f)
		}
	})
	b.Run("enrich store and follow", func(b *testing.B) {
		r := flows.NewRing(flows.DefaultSize)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go r.Stream(ctx, api.FlowRequest{Follow: true, Filter: api.FlowFilter{Verdict: flows.Dropped, FromLabels: []string{"app=web"}}},
			func(api.FlowLine) error { return nil })
		for r.Subscribers() == 0 {
			time.Sleep(time.Millisecond)
		}
		for b.Loop() {
			r.Add(en.Flow(ev))
		}
	})
}
