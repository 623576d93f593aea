package kvstore_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

const benchNodes = 10_000

// writeNodes writes n node records of cluster with c from 8 concurrent
// writers, in transactions of 100 puts, as a busy control plane would, and
// returns how long that took. The writes bypass kvstore.Client (which
// writes one record per request) to load etcd as hard as it takes.
func writeNodes(b *testing.B, ec *clientv3.Client, cluster string, n int) time.Duration {
	b.Helper()
	const writers, batch = 8, 100
	start := time.Now()
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			var err error
			defer func() { errs <- err }()
			ops := make([]clientv3.Op, 0, batch)
			flush := func() error {
				if len(ops) == 0 {
					return nil
				}
				_, err := ec.Txn(context.Background()).Then(ops...).Commit()
				ops = ops[:0]
				return err
			}
			for i := w; i < n; i += writers {
				nd := node(cluster, i)
				data, eerr := kvstore.Encode(&nd)
				if eerr != nil {
					err = eerr
					return
				}
				ops = append(ops, clientv3.OpPut(nd.Key(), string(data)))
				if len(ops) == batch {
					if err = flush(); err != nil {
						return
					}
				}
			}
			err = flush()
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// BenchmarkCacheSees10kNodes measures how long a watching cache needs to
// hold 10,000 node records another client writes, from the first write on.
// The baseline is the writer's own time for the same writes: the ratio says
// how far the cache trails the writes.
func BenchmarkCacheSees10kNodes(b *testing.B) {
	srv := kvstoretest.StartServer(b)
	writer := kvstoretest.Etcd(b, srv)
	reader := kvstoretest.Connect(b, srv, nil)
	var see, write time.Duration
	for i := 0; i < b.N; i++ {
		cluster := fmt.Sprintf("bench-%d", i)
		done := make(chan struct{})
		count := 0
		cache, err := kvstore.NewCache(reader.Source(), kvstore.CacheConfig[kvstore.Node]{
			Name: "nodes", Prefix: kvstore.NodesPrefix + cluster + "/", Decode: kvstore.NodeDecoder,
			OnEvent: func(ev kvstore.Event[kvstore.Node]) {
				if ev.Kind == kvstore.EventAdd {
					count++
					if count == benchNodes {
						close(done)
					}
				}
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _ = cache.Run(ctx) }()
		<-cache.Synced()
		start := time.Now()
		write += writeNodes(b, writer, cluster, benchNodes)
		<-done
		see += time.Since(start)
		cancel()
	}
	b.ReportMetric(float64(see.Milliseconds())/float64(b.N), "ms-to-see-10k")
	b.ReportMetric(float64(write.Milliseconds())/float64(b.N), "ms-baseline-write-10k")
	b.ReportMetric((see-write).Seconds()*1000/float64(b.N), "ms-lag-after-last-write")
	b.ReportMetric(float64(see)/float64(write), "ratio-see/write")
}

// BenchmarkCacheMemory10kNodes reports the heap a cache holding 10,000 node
// records keeps, against the baseline of the raw stored bytes.
func BenchmarkCacheMemory10kNodes(b *testing.B) {
	srv := kvstoretest.StartServer(b)
	c := kvstoretest.Connect(b, srv, nil)
	ec := kvstoretest.Etcd(b, srv)
	writeNodes(b, ec, "mem", benchNodes)
	resp, err := ec.Get(context.Background(), kvstore.NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		b.Fatal(err)
	}
	raw := 0
	for _, kv := range resp.Kvs {
		raw += len(kv.Key) + len(kv.Value)
	}
	resp = nil
	var heap float64
	for i := 0; i < b.N; i++ {
		cache, err := kvstore.NewCache(c.Source(), kvstore.CacheConfig[kvstore.Node]{
			Name: "nodes", Prefix: kvstore.NodesPrefix, Decode: kvstore.NodeDecoder,
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = cache.Run(ctx) }()
		<-cache.Synced()
		cancel()
		<-done
		if cache.Len() != benchNodes {
			b.Fatalf("cache holds %d nodes", cache.Len())
		}
		// The embedded server shares this heap, so measure what dropping
		// the cache frees, with nothing else running in between.
		var with, without runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&with)
		runtime.KeepAlive(cache)
		cache = nil
		runtime.GC()
		runtime.ReadMemStats(&without)
		heap += float64(with.HeapAlloc) - float64(without.HeapAlloc)
	}
	heap /= float64(b.N)
	b.ReportMetric(heap/(1<<20), "MiB-per-10k-nodes")
	b.ReportMetric(heap/benchNodes, "B-per-node")
	b.ReportMetric(float64(raw)/benchNodes, "B-raw-per-node")
	b.ReportMetric(heap/float64(raw), "ratio-heap/raw")
}
