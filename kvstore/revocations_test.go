package kvstore_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// TestRemoveAndRevokeNode removes one node and revokes another against a
// real etcd with authentication on: their keys and users go, the CIDR is
// free again, the revocation stays, readable by a node credential and not
// writable by one; a node credential cannot remove anyone.
func TestRemoveAndRevokeNode(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.EnableAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.PutCluster(ctx, kvstore.Cluster{Name: "default", ID: 1, MeshPool: netip.MustParsePrefix("100.64.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a1", "b1", "c1"} {
		if err := admin.EnsureNodeUser(ctx, "default", n); err != nil {
			t.Fatal(err)
		}
	}
	// Each node as it joined: its grant, CIDR, leased record, endpoint and
	// identity reference, written with its own credential.
	type joined struct {
		kv   *kvstore.Client
		raw  *clientv3.Client
		cidr netip.Prefix
	}
	nodes := map[string]joined{}
	for i, n := range []string{"a1", "b1", "c1"} {
		if err := admin.PutGrant(ctx, kvstore.Grant{Cluster: "default", Node: n, AllowLabels: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		cidr, err := admin.AllocateNodeCIDR(ctx, "default", n, 24)
		if err != nil {
			t.Fatal(err)
		}
		nsrv := kvstoretest.NodeServer(t, srv, "default", n)
		kv := kvstoretest.Connect(t, nsrv, nil)
		s, err := kv.NewSession(ctx, kvstore.SessionConfig{TTL: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(ctx)
		rec := node("default", i+1)
		rec.Name, rec.CIDRs = n, []netip.Prefix{cidr}
		if err := s.Put(ctx, rec.Key(), &rec); err != nil {
			t.Fatal(err)
		}
		ep := kvstore.Endpoint{IP: cidr.Addr().Next().Next(), Identity: 256, Labels: []string{"vm:app=web"}, Cluster: "default", Node: n}
		if err := s.Put(ctx, ep.Key(), &ep); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, kvstore.IdentityRefKey("default", n, 256), &kvstore.IdentityRef{ID: 256}); err != nil {
			t.Fatal(err)
		}
		nodes[n] = joined{kv: kv, raw: kvstoretest.Etcd(t, nsrv), cidr: cidr}
	}

	// A node credential may not remove or revoke anyone (itself included).
	if _, err := nodes["a1"].kv.RemoveNode(ctx, "default", "c1", nil); !kvstore.IsPermissionDenied(err) {
		t.Errorf("a node removing another: %v, want permission denied", err)
	}
	if _, err := nodes["a1"].kv.RemoveNode(ctx, "default", "c1", &kvstore.Revocation{}); !kvstore.IsPermissionDenied(err) {
		t.Errorf("a node revoking another: %v, want permission denied", err)
	}
	if _, err := admin.RemoveNode(ctx, "default", "nobody", nil); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("removing an unknown node: %v, want not found", err)
	}

	// Watch node records as a peer does: a removed node must be marked
	// leaving before its record goes.
	w := nodes["a1"].raw.Watch(ctx, kvstore.NodesPrefix, clientv3.WithPrefix(), clientv3.WithPrevKV())

	res, err := admin.RemoveNode(ctx, "default", "c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Record || res.Endpoints != 1 || res.IdentityRefs != 1 || !res.Grant || len(res.CIDRs) != 1 || res.Revoked {
		t.Errorf("removal of c1: %+v", res)
	}
	rev := kvstore.Revocation{Serials: []string{"1f2e"}, Reason: "compromised"}
	res, err = admin.RemoveNode(ctx, "default", "b1", &rev)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Revoked || !res.Record {
		t.Errorf("revocation of b1: %+v", res)
	}

	// Peers saw leaving, then the deletion, for both.
	leaving := map[string]bool{}
	deleted := map[string]bool{}
	for len(deleted) < 2 {
		select {
		case wr := <-w:
			for _, ev := range wr.Events {
				pk, _ := kvstore.ParseKey(string(ev.Kv.Key))
				switch ev.Type {
				case clientv3.EventTypePut:
					if n, err := kvstore.DecodeNode(ev.Kv.Value); err == nil && n.Leaving {
						leaving[pk.Node] = true
					}
				case clientv3.EventTypeDelete:
					if !leaving[pk.Node] {
						t.Errorf("%s's record was deleted without a leave mark first", pk.Node)
					}
					deleted[pk.Node] = true
				}
			}
		case <-ctx.Done():
			t.Fatalf("watch: saw deletions of %v", deleted)
		}
	}

	for _, n := range []string{"b1", "c1"} {
		for _, p := range []string{kvstore.NodeKey("default", n), kvstore.EndpointsNodePrefix("default", n), kvstore.IdentityRefsNodePrefix("default", n), kvstore.GrantKey("default", n)} {
			resp, err := admin.Source().Get(ctx, p, clientv3.WithPrefix())
			if err != nil || len(resp.Kvs) != 0 {
				t.Errorf("%s: %s still holds %d keys (%v)", n, p, len(resp.Kvs), err)
			}
		}
		if cidrs, err := admin.NodeCIDRs(ctx, "default", n); err != nil || len(cidrs) != 0 {
			t.Errorf("%s still holds CIDRs %v (%v)", n, cidrs, err)
		}
		// The user is gone: the certificate reads and writes nothing.
		if _, err := nodes[n].raw.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); err == nil {
			t.Errorf("removed node %s still reads etcd", n)
		}
		rec := node("default", 9)
		rec.Name = n
		if err := nodes[n].kv.Put(ctx, rec.Key(), &rec); err == nil || !kvstore.IsPermissionDenied(err) {
			t.Errorf("removed node %s writes its record back: %v", n, err)
		}
	}
	// a1 is untouched.
	if resp, err := admin.Source().Get(ctx, kvstore.NodeKey("default", "a1")); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("a1's record: %v", err)
	}

	// The revocation stays, readable with a node credential, not writable.
	got, err := nodes["a1"].kv.GetRevocation(ctx, "default", "b1")
	if err != nil || got.Reason != "compromised" || !got.HasSerial("1f2e") || got.RevokedAt.IsZero() {
		t.Errorf("revocation read by a1: %+v, %v", got, err)
	}
	if _, err := nodes["a1"].kv.GetRevocation(ctx, "default", "c1"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("a removed (not revoked) node has a revocation: %v", err)
	}
	if _, err := nodes["a1"].kv.ClearRevocation(ctx, "default", "b1"); !kvstore.IsPermissionDenied(err) {
		t.Errorf("a node clearing a revocation: %v, want permission denied", err)
	}
	forged := kvstore.Revocation{Cluster: "default", Node: "c1", RevokedAt: time.Now()}
	if err := nodes["a1"].kv.Put(ctx, forged.Key(), &forged); !kvstore.IsPermissionDenied(err) {
		t.Errorf("a node writing a revocation: %v, want permission denied", err)
	}

	// The cache, fed with a node credential, sees the revocation.
	rc, err := kvstore.NewRevocationCache(nodes["a1"].kv.Source(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go rc.Run(rctx)
	<-rc.Synced()
	if r, ok := rc.Revoked("default", "b1"); !ok || r.Node != "b1" {
		t.Errorf("cache: b1 not revoked")
	}
	if _, ok := rc.BySerial("1F2E"); !ok {
		t.Errorf("cache: serial 1f2e not found")
	}
	if _, ok := rc.Revoked("default", "a1"); ok {
		t.Errorf("cache: a1 revoked")
	}
	if err := kvstore.RevokedError(got); !errors.Is(err, kvstore.ErrRevoked) || !strings.Contains(err.Error(), "--clear b1") {
		t.Errorf("RevokedError: %v", err)
	}

	// Revoking again (nothing left but the revocation) is not an error;
	// clearing it frees the name.
	if _, err := admin.RemoveNode(ctx, "default", "b1", &kvstore.Revocation{}); err != nil {
		t.Errorf("revoking a revoked node again: %v", err)
	}
	if _, err := admin.ClearRevocation(ctx, "default", "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ClearRevocation(ctx, "default", "b1"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("clearing twice: %v", err)
	}
	if _, err := admin.RemoveNode(ctx, "default", "b1", nil); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("removing a node that is gone: %v, want not found", err)
	}
	if _, err := admin.AllocateNodeCIDR(ctx, "default", "c1", 24); err != nil {
		t.Errorf("the removed name cannot take a CIDR again: %v", err)
	}
}

func TestRevocationValidate(t *testing.T) {
	ok := kvstore.Revocation{Cluster: "default", Node: "b1", RevokedAt: time.Now(), Serials: []string{"0a"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]kvstore.Revocation{
		"no time":    {Cluster: "default", Node: "b1"},
		"bad node":   {Cluster: "default", Node: "B/1", RevokedAt: time.Now()},
		"bad serial": {Cluster: "default", Node: "b1", RevokedAt: time.Now(), Serials: []string{"0X"}},
	} {
		if err := r.Validate(); !errors.Is(err, kvstore.ErrInvalidRecord) {
			t.Errorf("%s: %v, want invalid record", name, err)
		}
	}
	data, err := kvstore.Encode(&ok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kvstore.RevocationDecoder(kvstore.RevokedKey("default", "c1"), data); !errors.Is(err, kvstore.ErrInvalidRecord) {
		t.Errorf("a revocation at another node's key: %v", err)
	}
	if r, err := kvstore.RevocationDecoder(kvstore.RevokedKey("default", "b1"), data); err != nil || r.Node != "b1" {
		t.Errorf("decode: %+v, %v", r, err)
	}
}

// TestRemoveNodeWhoseRecordExpired: a crashed node's record is gone (its
// lease expired) but peers retain it; the removal writes a leaving
// tombstone and deletes it, so watchers see the node leave.
func TestRemoveNodeWhoseRecordExpired(t *testing.T) {
	srv := kvstoretest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := kvstoretest.Connect(t, srv, nil)
	if err := admin.PutCluster(ctx, kvstore.Cluster{Name: "default", ID: 1, MeshPool: netip.MustParsePrefix("100.64.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AllocateNodeCIDR(ctx, "default", "d1", 24); err != nil {
		t.Fatal(err)
	}
	w := kvstoretest.Etcd(t, srv).Watch(ctx, kvstore.NodesPrefix, clientv3.WithPrefix(), clientv3.WithPrevKV())
	res, err := admin.RemoveNode(ctx, "default", "d1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Record || len(res.CIDRs) != 1 {
		t.Errorf("removal: %+v", res)
	}
	var put, del bool
	for !del {
		select {
		case wr := <-w:
			for _, ev := range wr.Events {
				switch ev.Type {
				case clientv3.EventTypePut:
					n, err := kvstore.NodeDecoder(string(ev.Kv.Key), ev.Kv.Value)
					put = err == nil && n.Leaving && n.Name == "d1"
				case clientv3.EventTypeDelete:
					del = true
				}
			}
		case <-ctx.Done():
			t.Fatal("no deletion of the tombstone seen")
		}
	}
	if !put {
		t.Error("no leaving tombstone before the deletion")
	}
	if resp, err := admin.Source().Get(ctx, kvstore.NodeKey("default", "d1")); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("the tombstone stayed: %v", err)
	}
}
