package kvstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// An etcd that does not answer gives an error that says so and what to
// check, not a bare "context deadline exceeded"; one that answers is no
// such error, and a caller's own cancellation is not either.
func TestUnavailableEtcdIsNamed(t *testing.T) {
	r := kvstoretest.StartRestartable(t)
	cfg := r.Config
	cfg.RequestTimeout = 2 * time.Second
	c, err := kvstore.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, _, err := kvstore.Get(ctx, c, kvstore.ClusterKey("a"), kvstore.DecodeCluster); kvstore.IsUnavailable(err) {
		t.Fatalf("a running etcd: %v", err)
	}
	r.Stop()
	_, _, err = kvstore.Get(ctx, c, kvstore.ClusterKey("a"), kvstore.DecodeCluster)
	if !kvstore.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a stopped etcd: %v, want ErrUnavailable keeping the deadline", err)
	}
	if !strings.Contains(err.Error(), "quorum") {
		t.Errorf("the error does not say what is wrong: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := kvstore.Get(cctx, c, kvstore.ClusterKey("a"), kvstore.DecodeCluster); kvstore.IsUnavailable(err) {
		t.Errorf("a cancelled request is named etcd unavailable: %v", err)
	}
	r.Start()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("etcd back: %v", err)
	}
}
