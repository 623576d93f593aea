package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// TestAgentKeepsPeersThroughALostLease: a node's lease is lost (as in an
// etcd outage longer than the TTL) or its record is deleted by someone
// else; its records go and come back, and the other node never drops its
// peer nor its address's identity meanwhile, because its tunnel is alive.
func TestAgentKeepsPeersThroughALostLease(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "o1", 10)
	b := newTestNode(t, srv, "o2", 11)
	a.start(t)
	b.start(t)
	ctx := context.Background()
	ec := kvstoretest.Etcd(t, srv)
	bKey := b.dev.PublicKey().String()
	sb, err := b.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bMesh := netip.MustParsePrefix(sb.MeshIP + "/32")
	testutil.Eventually(t, 10*time.Second, "a to have b as a peer and b's mesh IP in its ipcache", func() bool {
		_, ok := peerFor(a.dev, bKey)
		return ok && a.dp.IPCache()[bMesh] != 0
	})

	// b's tunnel is alive: a keeps receiving from it. Meanwhile watch for
	// any moment a lacks b.
	var lostPeer, lostIdentity atomic.Int32
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sctx.Err() == nil {
			a.dev.AddRx(bKey, 32)
			if _, ok := peerFor(a.dev, bKey); !ok {
				lostPeer.Add(1)
			}
			if a.dp.IPCache()[bMesh] == 0 {
				lostIdentity.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { stop(); <-done }()

	nodeKey := kvstore.NodeKey("default", "o2")
	recordBack := func(what string, pred func(*clientv3.GetResponse) error) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, what, func() error {
			resp, err := ec.Get(ctx, nodeKey)
			if err != nil {
				return err
			}
			return pred(resp)
		})
	}
	resp, err := ec.Get(ctx, nodeKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("b's record: %v %v", resp, err)
	}
	oldLease := clientv3.LeaseID(resp.Kvs[0].Lease)

	// 1. The lease is lost: etcd deletes all of b's keys at once.
	if _, err := ec.Revoke(ctx, oldLease); err != nil {
		t.Fatal(err)
	}
	recordBack("b's session to write its record under a new lease", func(r *clientv3.GetResponse) error {
		if len(r.Kvs) != 1 || clientv3.LeaseID(r.Kvs[0].Lease) == oldLease {
			return errors.New("not back yet")
		}
		return nil
	})
	// 2. Someone deletes b's record: b writes it again.
	if _, err := ec.Delete(ctx, nodeKey); err != nil {
		t.Fatal(err)
	}
	recordBack("b to write its deleted record again", func(r *clientv3.GetResponse) error {
		if len(r.Kvs) != 1 {
			return errors.New("not back yet")
		}
		return nil
	})
	// The endpoint deletions settle for a few seconds before they are
	// judged: wait past that, still watching.
	time.Sleep(4 * time.Second)
	stop()
	<-done
	if n := lostPeer.Load(); n != 0 {
		t.Fatalf("a lacked b as a peer in %d samples", n)
	}
	if n := lostIdentity.Load(); n != 0 {
		t.Fatalf("b's mesh IP lacked its identity in a's ipcache in %d samples", n)
	}
	if _, ok := peerFor(a.dev, bKey); !ok {
		t.Fatal("a dropped b in the end")
	}
}

// TestAgentDropsASilentNodeWhoseRecordWent: a node that dies (no leave,
// its tunnel silent) is dropped once its record is gone and the silence
// limit passes.
func TestAgentDropsASilentNodeWhoseRecordWent(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "d1", 12)
	b := newTestNode(t, srv, "d2", 13)
	// Keepalive 1 s: the silence limit is 7 s.
	a.cfg.WireGuard.PersistentKeepalive = 1e9
	a.start(t)
	b.start(t)
	ctx := context.Background()
	bKey := b.dev.PublicKey().String()
	testutil.Eventually(t, 10*time.Second, "a to have b as a peer", func() bool { _, ok := peerFor(a.dev, bKey); return ok })
	// b dies: its agent stops (its lease is no longer kept alive) and its
	// record is deleted as its lease would expire; nothing arrives from it.
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}
	ec := kvstoretest.Etcd(t, srv)
	resp, err := ec.Get(ctx, kvstore.NodeKey("default", "d2"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("b's record: %v %v", resp, err)
	}
	if _, err := ec.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testutil.Eventually(t, 30*time.Second, "a to drop the silent b", func() error {
		if _, ok := peerFor(a.dev, bKey); ok {
			return fmt.Errorf("b is still a peer after %v", time.Since(start).Round(time.Second))
		}
		return nil
	})
	if took := time.Since(start); took < 5*time.Second {
		t.Fatalf("b was dropped after %v, before its silence limit", took)
	}
}
