package mirror_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/kvstore/mirror"
)

const benchEndpoints = 10_000

// writeEndpoints writes n endpoint records of west in transactions of 100.
func writeEndpoints(b *testing.B, ec *clientv3.Client, n int) {
	b.Helper()
	var ops []clientv3.Op
	flush := func() {
		if _, err := ec.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range n {
		e := endpoint("west", i, clusterIdentity(westID, i%1000))
		data, err := kvstore.Encode(&e)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(e.Key(), string(data)))
		if len(ops) == 100 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
}

// rawCopy is the baseline: what any copy of the prefix must do, without
// validation, watches or bookkeeping: list it in pages and write it in
// transactions of 100.
func rawCopy(b *testing.B, remote, local *clientv3.Client, prefix, to string) int {
	b.Helper()
	end := clientv3.GetPrefixRangeEnd(prefix)
	key, n := prefix, 0
	for {
		resp, err := remote.Get(context.Background(), key, clientv3.WithRange(end), clientv3.WithLimit(1000))
		if err != nil {
			b.Fatal(err)
		}
		var ops []clientv3.Op
		for _, kv := range resp.Kvs {
			ops = append(ops, clientv3.OpPut(to+string(kv.Key), string(kv.Value)))
			if len(ops) == 100 {
				if _, err := local.Txn(context.Background()).Then(ops...).Commit(); err != nil {
					b.Fatal(err)
				}
				ops = ops[:0]
			}
		}
		if len(ops) > 0 {
			if _, err := local.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				b.Fatal(err)
			}
		}
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return n
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// BenchmarkMirrorInitialSync10kEndpoints measures a mirror's first copy of
// a remote cluster with 10,000 endpoints into an empty local prefix, from
// Run to a synced status, in records per second, against the baseline of
// a raw paged copy between the same two etcds.
func BenchmarkMirrorInitialSync10kEndpoints(b *testing.B) {
	remoteSrv := kvstoretest.StartServer(b)
	remote := kvstoretest.Etcd(b, remoteSrv)
	remoteKV := kvstoretest.Connect(b, remoteSrv, nil)
	localSrv := kvstoretest.StartServer(b)
	local := kvstoretest.Etcd(b, localSrv)
	writeEndpoints(b, remote, benchEndpoints)
	empty := func() {
		if _, err := local.Delete(context.Background(), kvstore.Prefix+"mirror/", clientv3.WithPrefix()); err != nil {
			b.Fatal(err)
		}
		if _, err := local.Delete(context.Background(), "bench/", clientv3.WithPrefix()); err != nil {
			b.Fatal(err)
		}
	}
	var synced, raw time.Duration
	for i := 0; i < b.N; i++ {
		empty()
		m, err := mirror.New(mirror.Config{Cluster: "west", ClusterID: westID, Remote: remoteKV.Source(), Local: local})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		t0 := time.Now()
		go func() { defer close(done); _ = m.Run(ctx) }()
		for st := m.Status(); !st.Synced || st.Counts.Endpoints != benchEndpoints; st = m.Status() {
			time.Sleep(time.Millisecond)
		}
		synced += time.Since(t0)
		cancel()
		<-done
		resp, err := local.Get(context.Background(), kvstore.MirrorPrefix("west")+"endpoints/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != benchEndpoints {
			b.Fatalf("the copy holds %d endpoints (%v)", resp.Count, err)
		}

		t0 = time.Now()
		if n := rawCopy(b, remote, local, kvstore.EndpointsPrefix+"west/", "bench/"); n != benchEndpoints {
			b.Fatalf("raw copy of %d records", n)
		}
		raw += time.Since(t0)
	}
	b.ReportMetric(float64(benchEndpoints*b.N)/synced.Seconds(), "mirror-records/s")
	b.ReportMetric(float64(benchEndpoints*b.N)/raw.Seconds(), "baseline-raw-copy-records/s")
	b.ReportMetric(float64(synced)/float64(raw), "ratio-mirror/raw")
}
