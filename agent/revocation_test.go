package agent

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// TestRevokedNodeIsDroppedAtOnceAndStaysOut: a1 revokes b1; a1's device
// loses b1's peer and its ipcache b1's addresses within a second, although
// b1's agent (which holds an admin credential here, so etcd does not stop
// it) and an admin client write b1's record back; a1 refuses b1's
// certificate. Clearing the revocation lets the records count again.
func TestRevokedNodeIsDroppedAtOnceAndStaysOut(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "a1", 1)
	b := newTestNode(t, srv, "b1", 2)
	a.start(t)
	b.start(t)
	ctx := context.Background()
	sb, err := b.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bMesh := netip.MustParsePrefix(sb.MeshIP + "/32")
	testutil.Eventually(t, 10*time.Second, "a1 has b1 as a peer", func() error {
		if _, ok := peerFor(a.dev, sb.Tunnel.PublicKey); !ok {
			return errors.New("no peer for b1 yet")
		}
		if _, ok := a.dp.IPCache()[bMesh]; !ok {
			return errors.New("b1's mesh IP not in a1's ipcache yet")
		}
		return nil
	})
	rec, _, err := kvstore.Get(ctx, kvstoretest.Connect(t, srv, nil), kvstore.NodeKey("default", "b1"), kvstore.DecodeNode)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := a.client.RemoveNode(ctx, api.NodeRemoveRequest{Node: "nobody"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("removing an unknown node: %v, want not found", err)
	}
	if _, err := a.client.RevokeNode(ctx, api.NodeRemoveRequest{Node: "a1"}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("revoking itself: %v, want invalid", err)
	}
	start := time.Now()
	res, err := a.client.RevokeNode(ctx, api.NodeRemoveRequest{Node: "b1", Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Revoked || !res.Record || len(res.CIDRs) != 1 {
		t.Errorf("revocation: %+v", res)
	}
	testutil.Eventually(t, time.Second, "a1 drops b1 within a second", func() error {
		if _, ok := peerFor(a.dev, sb.Tunnel.PublicKey); ok {
			return errors.New("a1 still has a peer for b1")
		}
		if _, ok := a.dp.IPCache()[bMesh]; ok {
			return errors.New("a1's ipcache still maps b1's mesh IP")
		}
		return nil
	})
	t.Logf("b1 dropped %v after the revoke call started", time.Since(start))

	// b1's records come back (its own session defends them, and an admin
	// client writes one): a1 ignores them.
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.Put(ctx, rec.Key(), &rec); err != nil {
		t.Fatal(err)
	}
	ep := kvstore.Endpoint{IP: bMesh.Addr(), Identity: 1, Labels: []string{"reserved:host"}, Cluster: "default", Node: "b1", Name: "host"}
	_ = admin.Put(ctx, ep.Key(), &ep)
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, ok := peerFor(a.dev, sb.Tunnel.PublicKey); ok {
			t.Fatal("a1 made b1 a peer again from a re-written record")
		}
		if _, ok := a.dp.IPCache()[bMesh]; ok {
			t.Fatal("a1 put a revoked node's endpoint into its ipcache")
		}
	}
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "node:default/b1"}, SerialNumber: big.NewInt(0x1f)}
	if err := a.agent.peers.revocations.checkCert(cert); !errors.Is(err, kvstore.ErrRevoked) {
		t.Errorf("b1's certificate: %v, want revoked", err)
	}
	cert.Subject.CommonName = "node:default/c1"
	if err := a.agent.peers.revocations.checkCert(cert); err != nil {
		t.Errorf("c1's certificate: %v", err)
	}
	if rs, err := a.client.Revocations(ctx); err != nil || len(rs) != 1 || rs[0].Node != "b1" || rs[0].Reason != "test" {
		t.Errorf("revocations: %+v, %v", rs, err)
	}

	// Cleared: b1's record (present again) makes it a peer again.
	if _, err := a.client.ClearRevocation(ctx, "", "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.ClearRevocation(ctx, "", "b1"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("clearing twice: %v, want not found", err)
	}
	testutil.Eventually(t, 10*time.Second, "b1 back after the clear", func() error {
		if _, ok := peerFor(a.dev, sb.Tunnel.PublicKey); !ok {
			return fmt.Errorf("no peer for b1 after the clear")
		}
		return nil
	})
}
