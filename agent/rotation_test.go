package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

func TestRotationOnFakes(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "k1", 8)
	b := newTestNode(t, srv, "k2", 9)
	a.start(t)
	b.start(t)
	ctx := context.Background()
	kv := kvstoretest.Connect(t, srv, nil)
	old := a.dev.PublicKey().String()
	testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
		if _, ok := peerFor(b.dev, old); !ok {
			return errors.New("b has no peer for a yet")
		}
		return nil
	})

	// Without the agent-to-agent API no peer can confirm the next key:
	// the rotation is refused, the key stays and the announcement is
	// withdrawn.
	_, err := a.client.RotateKey(ctx, api.RotateKeyRequest{})
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "keeps its key") {
		t.Fatalf("unconfirmed rotation = %v, want it aborted", err)
	}
	if a.dev.PublicKey().String() != old {
		t.Fatal("an aborted rotation changed the device's key")
	}
	rec, _, err := kvstore.Get(ctx, kv, kvstore.NodeKey("default", "k1"), kvstore.DecodeNode)
	if err != nil || rec.WGPublicKey != old || rec.WGNextPublicKey != "" {
		t.Fatalf("record after an aborted rotation: %+v, %v", rec, err)
	}

	// Forced: the device switches, the record follows, b's peer moves to
	// the new key with a's prefixes.
	res, err := a.client.RotateKey(ctx, api.RotateKeyRequest{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.OldPublicKey != old || res.NewPublicKey == old || res.NewPublicKey != a.dev.PublicKey().String() {
		t.Fatalf("rotation result %+v, device key %s", res, a.dev.PublicKey())
	}
	if len(res.Peers) != 1 || res.Peers[0].Node != "k2" || res.Peers[0].Installed {
		t.Fatalf("rotation peers = %+v", res.Peers)
	}
	testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
		if _, ok := peerFor(b.dev, old); ok {
			return errors.New("b still has a's old key")
		}
		p, ok := peerFor(b.dev, res.NewPublicKey)
		if !ok || len(p.AllowedIPs) == 0 {
			return fmt.Errorf("b's peer for a's new key: %+v, %v", p, ok)
		}
		return nil
	})
	rec, _, err = kvstore.Get(ctx, kv, kvstore.NodeKey("default", "k1"), kvstore.DecodeNode)
	if err != nil || rec.WGPublicKey != res.NewPublicKey || rec.WGNextPublicKey != "" {
		t.Fatalf("record after the rotation: %+v, %v", rec, err)
	}
}
