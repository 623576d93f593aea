package allocator_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// BenchmarkAllocateNew measures new identity allocations per second on one
// node with 16 concurrent callers (an agent starting many workloads). The
// baseline, measured in the same run with the same concurrency, is the
// server's rate of plain create-if-absent transactions writing three keys,
// the least work a correct allocation must do.
func BenchmarkAllocateNew(b *testing.B) {
	srv := kvstoretest.StartServer(b)
	n := newNode(b, srv, "bench", allocator.Config{})
	const parallelism = 8 // x GOMAXPROCS goroutines
	baseline := kvstoretest.CreateIfAbsentRate(b, srv, 2000, parallelism*2)

	var seq atomic.Int64
	b.SetParallelism(parallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			l := identity.MustLabels(fmt.Sprintf("k8s:app=bench-%d", i), "mesh:cluster=east")
			if _, err := n.alloc.Allocate(context.Background(), l); err != nil {
				b.Error(err)
				return
			}
		}
	})
	rate := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(rate, "allocs/s")
	b.ReportMetric(baseline, "baseline-txn/s")
	b.ReportMetric(rate/baseline, "ratio-allocs/txn")
}
