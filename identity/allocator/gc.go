package allocator

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// CollectGarbage deletes identities that no node references and that have
// been unreferenced for at least grace, as seen by this allocator's earlier
// calls (the first call only starts the clock, unless grace is 0). Every
// deletion is a transaction that fails if any reference was written since
// the references were read, so an identity gaining a user is never deleted.
// Several nodes may collect at once; the transactions keep them safe.
func (a *Allocator) CollectGarbage(ctx context.Context, grace time.Duration) ([]identity.NumericIdentity, error) {
	a.gcMu.Lock()
	defer a.gcMu.Unlock()
	etcd := a.c.Etcd()
	rctx, cancel := context.WithTimeout(ctx, kvstore.DefaultRequestTimeout)
	refs, err := etcd.Get(rctx, kvstore.IdentityRefsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listing identity references: %w", err)
	}
	rev := refs.Header.Revision
	referenced := map[uint32]bool{}
	for _, kv := range refs.Kvs {
		pk, err := kvstore.ParseKey(string(kv.Key))
		if err != nil {
			a.log.Warn("skipping reference key that does not parse", "key", string(kv.Key), "err", err)
			continue
		}
		referenced[pk.ID] = true
	}
	rctx, cancel = context.WithTimeout(ctx, kvstore.DefaultRequestTimeout)
	ids, err := etcd.Get(rctx, kvstore.IdentityIDPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listing identities: %w", err)
	}
	now := time.Now()
	unref := map[identity.NumericIdentity]bool{}
	var deleted []identity.NumericIdentity
	for _, kv := range ids.Kvs {
		key := string(kv.Key)
		ident, err := decodeIdentity(key, kv.Value)
		if err != nil {
			// Never delete what we cannot read: a newer Weft may own it.
			a.log.Warn("skipping identity that does not decode", "key", key, "err", err)
			continue
		}
		if referenced[uint32(ident.ID)] {
			continue
		}
		unref[ident.ID] = true
		since, seen := a.unrefSince[ident.ID]
		if !seen {
			a.unrefSince[ident.ID] = now
			since = now
		}
		if now.Sub(since) < grace {
			continue
		}
		labelsKey := kvstore.IdentityLabelsKey(ident.Labels.Hash())
		numRec, err := kvstore.Encode(&kvstore.IdentityNumber{ID: uint32(ident.ID)})
		if err != nil {
			return deleted, err
		}
		rctx, cancel := context.WithTimeout(ctx, kvstore.DefaultRequestTimeout)
		resp, err := etcd.Txn(rctx).If(
			clientv3.Compare(clientv3.ModRevision(kvstore.IdentityRefsPrefix), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision),
			clientv3.Compare(clientv3.Value(labelsKey), "=", string(numRec)),
		).Then(clientv3.OpDelete(key), clientv3.OpDelete(labelsKey)).
			// On failure, learn whether references changed: only then is
			// every later deletion bound to fail too.
			Else(clientv3.OpGet(kvstore.IdentityRefsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMinModRev(rev+1))).
			Commit()
		cancel()
		if err != nil {
			return deleted, fmt.Errorf("deleting identity %d: %w", ident.ID, err)
		}
		if !resp.Succeeded {
			if len(resp.Responses) == 1 && len(resp.Responses[0].GetResponseRange().GetKvs()) > 0 {
				// References changed since we listed them: try again on
				// the next round with a fresh view.
				return deleted, nil
			}
			// This identity changed, or its labels key does not point
			// back to it: leave it, and let it not block the others.
			a.log.Warn("not collecting identity: it changed or its labels key does not point back to it", "id", uint32(ident.ID), "labelsKey", labelsKey)
			continue
		}
		delete(a.unrefSince, ident.ID)
		deleted = append(deleted, ident.ID)
		a.log.Info("collected unreferenced identity", "id", uint32(ident.ID), "labels", ident.Labels.String())
	}
	for id := range a.unrefSince {
		if !unref[id] {
			delete(a.unrefSince, id)
		}
	}
	return deleted, nil
}

// RunGC collects garbage every interval until ctx ends.
func (a *Allocator) RunGC(ctx context.Context, interval, grace time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := a.CollectGarbage(ctx, grace); err != nil && ctx.Err() == nil {
				a.log.Warn("identity garbage collection failed", "err", err)
			}
		}
	}
}
