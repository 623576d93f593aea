package kvstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// BenchmarkMultiCacheVsCache measures what a MultiCache costs over a plain
// Cache, in the same run on the same etcd: the events per second of each
// while it lists 10,000 node records (where the cache, not etcd, is the
// bottleneck), and the time each needs to see 10,000 records written while
// both watch. The ratios are MultiCache over Cache.
func BenchmarkMultiCacheVsCache(b *testing.B) {
	srv := kvstoretest.StartServer(b)
	writer := kvstoretest.Etcd(b, srv)
	reader := kvstoretest.Connect(b, srv, nil)
	writeNodes(b, writer, "listed", benchNodes)
	listPrefix := kvstore.NodesPrefix + "listed/"

	plain := func(prefix string, seen *atomic.Int64) (*kvstore.Cache[kvstore.Node], func()) {
		c, err := kvstore.NewCache(reader.Source(), kvstore.CacheConfig[kvstore.Node]{
			Name: "nodes", Prefix: prefix, Decode: kvstore.NodeDecoder,
			OnEvent: func(kvstore.Event[kvstore.Node]) { seen.Add(1) },
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(ctx) }()
		return c, func() { cancel(); <-done }
	}
	multi := func(prefix string, seen *atomic.Int64) (*kvstore.MultiCache[kvstore.Node], func()) {
		mc, err := kvstore.NewMultiCache(kvstore.MultiCacheConfig[kvstore.Node]{
			Name: "nodes", Decode: kvstore.NodeDecoder,
			OnEvent: func(kvstore.Event[kvstore.Node]) { seen.Add(1) },
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := mc.Add(context.Background(), kvstore.MemberConfig[kvstore.Node]{Name: "local", Source: reader.Source(), Prefix: prefix, ProbeInterval: -1}); err != nil {
			b.Fatal(err)
		}
		return mc, mc.Close
	}
	waitFor := func(seen *atomic.Int64, n int64) {
		for seen.Load() < n {
			time.Sleep(200 * time.Microsecond)
		}
	}

	var listPlain, listMulti, watchPlain, watchMulti time.Duration
	for i := 0; i < b.N; i++ {
		// Listing: one after the other, each alone.
		var s1, s2 atomic.Int64
		t0 := time.Now()
		c, stop := plain(listPrefix, &s1)
		<-c.Synced()
		waitFor(&s1, benchNodes)
		listPlain += time.Since(t0)
		stop()
		t0 = time.Now()
		mc, stopM := multi(listPrefix, &s2)
		<-mc.Synced("local")
		waitFor(&s2, benchNodes)
		listMulti += time.Since(t0)
		stopM()

		// Watching: both at once, on the same writes.
		cluster := fmt.Sprintf("watched-%d", i)
		prefix := kvstore.NodesPrefix + cluster + "/"
		var w1, w2 atomic.Int64
		c, stop = plain(prefix, &w1)
		mc, stopM = multi(prefix, &w2)
		<-c.Synced()
		<-mc.Synced("local")
		t0 = time.Now()
		donePlain, doneMulti := make(chan time.Duration), make(chan time.Duration)
		go func() { waitFor(&w1, benchNodes); donePlain <- time.Since(t0) }()
		go func() { waitFor(&w2, benchNodes); doneMulti <- time.Since(t0) }()
		writeNodes(b, writer, cluster, benchNodes)
		watchPlain += <-donePlain
		watchMulti += <-doneMulti
		stop()
		stopM()
	}
	perSec := func(d time.Duration) float64 { return float64(benchNodes) * float64(b.N) / d.Seconds() }
	b.ReportMetric(perSec(listPlain), "cache-list-events/s")
	b.ReportMetric(perSec(listMulti), "multicache-list-events/s")
	b.ReportMetric(float64(listMulti)/float64(listPlain), "ratio-list-time-multi/plain")
	b.ReportMetric(float64(watchPlain.Milliseconds())/float64(b.N), "cache-ms-to-see-10k-writes")
	b.ReportMetric(float64(watchMulti.Milliseconds())/float64(b.N), "multicache-ms-to-see-10k-writes")
	b.ReportMetric(float64(watchMulti)/float64(watchPlain), "ratio-watch-time-multi/plain")
}
