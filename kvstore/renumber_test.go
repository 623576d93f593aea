package kvstore_test

import (
	"context"
	"testing"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// RenumberIdentity moves a set's labels key to a new number only from the
// value read, and only to a free number; the old number is then deleted
// alone by DeleteSupersededIdentity, which never touches a current one.
func TestIdentityStoreRenumber(t *testing.T) {
	c, srv := kvstoretest.New(t)
	ctx := context.Background()
	h := kvstore.IdentityHolder{Session: newSession(t, c), Cluster: "east", Node: "node-1"}
	labels := []string{"k8s:app=web", "mesh:cluster=east"}
	hash := labelsHash("renumber")
	if ok, err := c.CreateIdentity(ctx, h, 300, hash, labels); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if ok, err := c.CreateIdentity(ctx, h, 65792, labelsHash("other"), []string{"k8s:app=other"}); err != nil || !ok {
		t.Fatal(ok, err)
	}
	old := mustValue(t, c, hash)
	if ok, err := c.RenumberIdentity(ctx, h, 65792, hash, labels, old); err != nil || ok {
		t.Fatalf("renumbered to a taken number: %v, %v", ok, err)
	}
	if ok, err := c.RenumberIdentity(ctx, h, 65793, hash, labels, []byte(`{"version":1,"id":299}`)); err != nil || ok {
		t.Fatalf("renumbered from a value the key does not hold: %v, %v", ok, err)
	}
	if ok, err := c.RenumberIdentity(ctx, h, 65793, hash, labels, old); err != nil || !ok {
		t.Fatalf("RenumberIdentity = %v, %v", ok, err)
	}
	if n, err := kvstore.DecodeIdentityNumber(mustValue(t, c, hash)); err != nil || n.ID != 65793 {
		t.Fatalf("labels key names %+v (%v), want 65793", n, err)
	}
	if err := h.Session.Delete(ctx, kvstore.IdentityRefKey("east", "node-1", 300)); err != nil {
		t.Fatal(err)
	}
	if err := h.Session.Delete(ctx, kvstore.IdentityRefKey("east", "node-1", 65793)); err != nil {
		t.Fatal(err)
	}
	l, err := c.ListIdentities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	modRev := map[string]int64{}
	for _, kv := range l.Identities {
		modRev[kv.Key] = kv.ModRevision
	}
	// The current number is not superseded, the old one is not
	// unreferenced-and-current.
	if del, _, err := c.DeleteSupersededIdentity(ctx, 65793, hash, modRev[kvstore.IdentityIDKey(65793)], l.Revision); err != nil || del {
		t.Fatalf("deleted the current number as superseded: %v, %v", del, err)
	}
	if del, _, err := c.DeleteUnreferencedIdentity(ctx, 300, hash, modRev[kvstore.IdentityIDKey(300)], l.Revision); err != nil || del {
		t.Fatalf("deleted the old number with its set's labels key: %v, %v", del, err)
	}
	if del, refs, err := c.DeleteSupersededIdentity(ctx, 300, hash, modRev[kvstore.IdentityIDKey(300)], l.Revision); err != nil || !del || refs {
		t.Fatalf("DeleteSupersededIdentity(300) = %v, %v, %v", del, refs, err)
	}
	if ok, err := c.IdentityExists(ctx, 300); err != nil || ok {
		t.Fatalf("old number still there: %v, %v", ok, err)
	}
	if n, err := kvstore.DecodeIdentityNumber(mustValue(t, c, hash)); err != nil || n.ID != 65793 {
		t.Fatalf("labels key after the deletion names %+v (%v)", n, err)
	}
	// With the labels key gone, nothing is superseded: that is damage for
	// an operator, not a leftover.
	if _, err := kvstoretest.Etcd(t, srv).Delete(ctx, kvstore.IdentityLabelsKey(hash)); err != nil {
		t.Fatal(err)
	}
	l, err = c.ListIdentities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if del, _, err := c.DeleteSupersededIdentity(ctx, 65793, hash, l.Identities[len(l.Identities)-1].ModRevision, l.Revision); err != nil || del {
		t.Fatalf("deleted an identity whose labels key is missing: %v, %v", del, err)
	}
}
