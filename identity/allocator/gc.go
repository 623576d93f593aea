package allocator

import (
	"context"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// GarbageCollector is implemented by a Backend that can say whether its
// credential may collect garbage; one that does not implement it may.
type GarbageCollector interface {
	CollectsGarbage() bool
}

// CollectGarbage deletes identities that no node references and that have
// been unreferenced for at least grace, as seen by this allocator's earlier
// calls (the first call only starts the clock, unless grace is 0). Every
// deletion is a transaction that fails if any reference was written since
// the references were read, so an identity gaining a user is never deleted.
// Several nodes may collect at once; the transactions keep them safe.
//
// A Backend whose credential may not delete identities (a joined node's
// etcd role; see GarbageCollector) collects nothing: the seed does it.
func (a *Allocator) CollectGarbage(ctx context.Context, grace time.Duration) ([]identity.NumericIdentity, error) {
	if gc, ok := a.c.(GarbageCollector); ok && !gc.CollectsGarbage() {
		return nil, nil
	}
	a.gcMu.Lock()
	defer a.gcMu.Unlock()
	listing, err := a.c.ListIdentities(ctx)
	if err != nil {
		return nil, err
	}
	referenced := map[uint32]bool{}
	for _, key := range listing.RefKeys {
		pk, err := kvstore.ParseKey(key)
		if err != nil {
			a.log.Warn("skipping reference key that does not parse", "key", key, "err", err)
			continue
		}
		referenced[pk.ID] = true
	}
	now := time.Now()
	unref := map[identity.NumericIdentity]bool{}
	var deleted []identity.NumericIdentity
	for _, kv := range listing.Identities {
		ident, err := decodeIdentity(kv.Key, kv.Value)
		if err != nil {
			// Never delete what we cannot read: a newer Weft may own it.
			a.log.Warn("skipping identity that does not decode", "key", kv.Key, "err", err)
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
		hash := ident.Labels.Hash()
		ok, refsChanged, err := a.c.DeleteUnreferencedIdentity(ctx, uint32(ident.ID), hash, kv.ModRevision, listing.Revision)
		if err != nil {
			return deleted, err
		}
		if !ok {
			if refsChanged {
				// References changed since we listed them: every
				// later deletion would fail too; try again on the
				// next round with a fresh view.
				return deleted, nil
			}
			// This identity changed, or its labels key does not point
			// back to it. If its set was renumbered (Allocate replaces a
			// number outside its cluster's range), the key names the new
			// number and this one is a leftover: delete it alone. Else
			// leave it, and let it not block the others.
			ok, refsChanged, err = a.c.DeleteSupersededIdentity(ctx, uint32(ident.ID), hash, kv.ModRevision, listing.Revision)
			if err != nil {
				return deleted, err
			}
			if refsChanged {
				return deleted, nil
			}
			if !ok {
				a.log.Warn("not collecting identity: it changed or its labels key does not point back to it", "id", uint32(ident.ID), "labelsKey", kvstore.IdentityLabelsKey(hash))
				continue
			}
			delete(a.unrefSince, ident.ID)
			deleted = append(deleted, ident.ID)
			a.log.Info("collected a renumbered set's old identity", "id", uint32(ident.ID), "labels", ident.Labels.String())
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
