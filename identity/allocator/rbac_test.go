package allocator_test

import (
	"context"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// viaSeed is a joined node's backend as the agent builds it: everything
// through the node's own (confined) etcd client, except creating an
// identity, which the seed does with its admin allocator; and no garbage
// collection.
type viaSeed struct {
	*kvstore.Client
	seed *allocator.Allocator
}

func (b viaSeed) CreateIdentity(ctx context.Context, _ kvstore.IdentityHolder, _ uint32, _ string, labels []string) (bool, error) {
	ls, err := identity.ParseLabels(labels, "")
	if err != nil {
		return false, err
	}
	id, err := b.seed.Allocate(ctx, ls)
	if err != nil {
		return false, err
	}
	return false, b.seed.Release(ctx, id)
}

// RenumberIdentity goes to the seed too, which renumbers with its own
// credential.
func (b viaSeed) RenumberIdentity(ctx context.Context, h kvstore.IdentityHolder, id uint32, hash string, labels []string, _ []byte) (bool, error) {
	return b.CreateIdentity(ctx, h, id, hash, labels)
}

func (viaSeed) CollectsGarbage() bool { return false }

// TestNodeCredentialAllocates runs a node's allocator with a node's own
// certificate against etcd with authentication on: it may not write
// identities, yet gets the same numbers as the seed through the seed, and
// its collector leaves everything to the seed's.
func TestNodeCredentialAllocates(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.EnableAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.EnsureNodeUser(ctx, "east", "vm-1"); err != nil {
		t.Fatal(err)
	}
	seed := newNode(t, srv, "seed", allocator.Config{})

	nc := kvstoretest.Connect(t, kvstoretest.NodeServer(t, srv, "east", "vm-1"), nil)
	s, err := nc.NewSession(ctx, kvstore.SessionConfig{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	// The node's own client may not create an identity itself.
	direct, err := allocator.New(allocator.Config{Client: nc, Session: s, Cluster: "east", ClusterID: 1, Node: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Allocate(ctx, labelSet(40)); !kvstore.IsPermissionDenied(err) {
		t.Fatalf("a node credential created an identity directly: %v", err)
	}
	node, err := allocator.New(allocator.Config{Client: viaSeed{Client: nc, seed: seed.alloc}, Session: s, Cluster: "east", ClusterID: 1, Node: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go node.Run(rctx)
	<-node.Synced()

	id, err := node.Allocate(ctx, labelSet(1))
	if err != nil {
		t.Fatalf("allocating through the seed: %v", err)
	}
	if again, err := seed.alloc.Allocate(ctx, labelSet(1)); err != nil || again != id {
		t.Fatalf("the seed has %d (%v) for the node's set, the node %d", again, err, id)
	}
	if err := seed.alloc.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	// The node holds its reference: the seed's collector keeps the identity.
	if del, err := seed.alloc.CollectGarbage(ctx, 0); err != nil || len(del) != 0 {
		t.Fatalf("the seed collected %v (%v) while the node references it", del, err)
	}
	if del, err := node.CollectGarbage(ctx, 0); err != nil || len(del) != 0 {
		t.Fatalf("a node credential collected %v, %v", del, err)
	}
	// Released by the node, the seed collects it.
	if err := node.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	if del, err := seed.alloc.CollectGarbage(ctx, 0); err != nil || len(del) != 1 || del[0] != id {
		t.Fatalf("after the node's release the seed collected %v, %v; want %d", del, err, id)
	}
}
