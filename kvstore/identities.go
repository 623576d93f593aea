package kvstore

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The identity store: the etcd side of identity/allocator (its Backend).
// The allocator decides which number to try and keeps the local state; the
// transactions that make a number unique mesh-wide live here.
//
//	identities/id/<n>                     {id, labels}
//	identities/labels/<hash>              {id}
//	identities/refs/<cluster>/<node>/<n>  {id}, leased by the node using n

// IdentityHolder is a node that references identities. Its references are
// written at identities/refs/<Cluster>/<Node>/<n> under Session's lease, so
// they expire with the node, and Session restores them after a lost lease
// for as long as the identity's labels key still names the number.
type IdentityHolder struct {
	Session       *Session
	Cluster, Node string
	// OnLost is called with the number of a reference the session could
	// not restore after a lost lease, because its identity was deleted or
	// changed meanwhile; nil ignores that.
	OnLost func(id uint32)
}

func (c *Client) checkHolder(h IdentityHolder) error {
	if h.Session == nil || h.Session.c != c {
		// A reference must be written through the same etcd as the
		// identity it guards on, or the transaction proves nothing.
		return fmt.Errorf("%w: identity references need a session of this client", ErrInvalidConfig)
	}
	if err := ValidateName("cluster", h.Cluster); err != nil {
		return err
	}
	return ValidateName("node", h.Node)
}

// IdentityNumberValue reads identities/labels/<hash> and returns the value
// exactly as stored, found false when the key is absent. Decode it with
// DecodeIdentityNumber; hand the same bytes to ReferenceIdentity, which
// writes the reference only while the key still holds them.
func (c *Client) IdentityNumberValue(ctx context.Context, labelsHash string) (value []byte, found bool, err error) {
	key := IdentityLabelsKey(labelsHash)
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Get(rctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	return resp.Kvs[0].Value, true, nil
}

// IdentityExists reports whether identities/id/<id> exists (a count-only
// read: the value is not needed).
func (c *Client) IdentityExists(ctx context.Context, id uint32) (bool, error) {
	key := IdentityIDKey(id)
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Get(rctx, key, clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", key, err)
	}
	return resp.Count > 0, nil
}

// CreateIdentity creates identity id for a label set (its canonical label
// strings, and the hex SHA-256 of their canonical text) together with h's
// leased reference to it, in one transaction that requires both
// identities/labels/<hash> and identities/id/<id> to be absent. So a set
// never gets two numbers, nor a number two sets, however many nodes race.
// It reports whether the identity was created; false means the set or the
// number was taken meanwhile (IdentityExists tells which).
func (c *Client) CreateIdentity(ctx context.Context, h IdentityHolder, id uint32, labelsHash string, labels []string) (bool, error) {
	if err := c.checkHolder(h); err != nil {
		return false, err
	}
	labelsKey, idKey := IdentityLabelsKey(labelsHash), IdentityIDKey(id)
	idRec, numRec, err := identityRecords(id, labels)
	if err != nil {
		return false, err
	}
	cond := []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(labelsKey), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(idKey), "=", 0),
	}
	// After a lost lease the reference comes back only while the labels
	// key still names this number: not if the identity was collected.
	return c.putIdentityRef(ctx, h, id, cond, valueGuard(labelsKey, numRec),
		clientv3.OpPut(idKey, string(idRec)), clientv3.OpPut(labelsKey, string(numRec)))
}

// RenumberIdentity gives a label set a new number: it creates
// identities/id/<id>, points identities/labels/<hash> at it and writes h's
// leased reference, in one transaction that requires the labels key to
// still hold oldValue (as read by IdentityNumberValue) and the number to be
// free. The allocator does it for a set whose number lies outside the range
// its cluster allocates from (made before the identity number plan). The
// old identities/id/<n> stays for the nodes still using it until nobody
// references it; DeleteSupersededIdentity then removes it. It reports
// whether the set was renumbered; false means the labels key changed or the
// number was taken meanwhile (read the labels key again).
func (c *Client) RenumberIdentity(ctx context.Context, h IdentityHolder, id uint32, labelsHash string, labels []string, oldValue []byte) (bool, error) {
	if err := c.checkHolder(h); err != nil {
		return false, err
	}
	labelsKey, idKey := IdentityLabelsKey(labelsHash), IdentityIDKey(id)
	idRec, numRec, err := identityRecords(id, labels)
	if err != nil {
		return false, err
	}
	cond := []clientv3.Cmp{
		clientv3.Compare(clientv3.Value(labelsKey), "=", string(oldValue)),
		clientv3.Compare(clientv3.CreateRevision(idKey), "=", 0),
	}
	return c.putIdentityRef(ctx, h, id, cond, valueGuard(labelsKey, numRec),
		clientv3.OpPut(idKey, string(idRec)), clientv3.OpPut(labelsKey, string(numRec)))
}

// ReferenceIdentity writes h's leased reference to the existing identity id
// of a label set, if identities/labels/<hash> still holds exactly
// labelsValue (as read by IdentityNumberValue): a reference never attaches
// to an identity being deleted or replaced. It reports whether the
// reference was written; false means the labels key changed since it was
// read (read it again).
func (c *Client) ReferenceIdentity(ctx context.Context, h IdentityHolder, id uint32, labelsHash string, labelsValue []byte) (bool, error) {
	if err := c.checkHolder(h); err != nil {
		return false, err
	}
	guard := valueGuard(IdentityLabelsKey(labelsHash), labelsValue)
	return c.putIdentityRef(ctx, h, id, guard(), guard)
}

func valueGuard(key string, value []byte) Guard {
	v := string(value)
	return func() []clientv3.Cmp { return []clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", v)} }
}

func (c *Client) putIdentityRef(ctx context.Context, h IdentityHolder, id uint32, cond []clientv3.Cmp, guard Guard, also ...clientv3.Op) (bool, error) {
	refRec, err := Encode(&IdentityRef{ID: id})
	if err != nil {
		return false, err
	}
	var onLost func(string)
	if h.OnLost != nil {
		onLost = func(string) { h.OnLost(id) }
	}
	return h.Session.PutIf(ctx, IdentityRefKey(h.Cluster, h.Node, id), refRec, cond, guard, onLost, also...)
}

// KeyValue is one stored key as read, with the revision it was last
// modified at.
type KeyValue struct {
	Key         string
	Value       []byte
	ModRevision int64
}

// IdentityListing is what identity garbage collection works from: every
// reference key and every identity, read at one revision.
type IdentityListing struct {
	// Revision both listings were read at.
	Revision int64
	// RefKeys are the keys under identities/refs/ (values are not read:
	// the key names the number).
	RefKeys []string
	// Identities are the keys and values under identities/id/, not
	// decoded: the collector must skip, never delete, what it cannot read.
	Identities []KeyValue
}

// ListIdentities reads the references, then the identities at the same
// revision, so an identity created after the references were read is not
// mistaken for an unreferenced one.
func (c *Client) ListIdentities(ctx context.Context) (IdentityListing, error) {
	rctx, cancel := c.reqCtx(ctx)
	refs, err := c.kv.Get(rctx, IdentityRefsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return IdentityListing{}, fmt.Errorf("listing identity references: %w", err)
	}
	out := IdentityListing{Revision: refs.Header.Revision, RefKeys: make([]string, 0, len(refs.Kvs))}
	for _, kv := range refs.Kvs {
		out.RefKeys = append(out.RefKeys, string(kv.Key))
	}
	rctx, cancel = c.reqCtx(ctx)
	ids, err := c.kv.Get(rctx, IdentityIDPrefix, clientv3.WithPrefix(), clientv3.WithRev(out.Revision))
	cancel()
	if err != nil {
		return IdentityListing{}, fmt.Errorf("listing identities: %w", err)
	}
	out.Identities = make([]KeyValue, 0, len(ids.Kvs))
	for _, kv := range ids.Kvs {
		out.Identities = append(out.Identities, KeyValue{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
	}
	return out, nil
}

// DeleteUnreferencedIdentity deletes identities/id/<id> and
// identities/labels/<hash> in one transaction, provided that no reference
// was written after revision refsRev (the listing's), that the identity is
// unchanged since modRev, and that its labels key still names id. So an
// identity gaining a user while it is being collected is never deleted, and
// several collectors may run at once.
//
// When nothing was deleted, refsChanged tells why: true when references
// were written since refsRev, so every later deletion based on the same
// listing would fail too (list again); false when only this identity
// changed or its labels key does not point back to it (leave it, go on).
func (c *Client) DeleteUnreferencedIdentity(ctx context.Context, id uint32, labelsHash string, modRev, refsRev int64) (deleted, refsChanged bool, err error) {
	key, labelsKey := IdentityIDKey(id), IdentityLabelsKey(labelsHash)
	numRec, err := Encode(&IdentityNumber{ID: id})
	if err != nil {
		return false, false, err
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Txn(rctx).If(
		clientv3.Compare(clientv3.ModRevision(IdentityRefsPrefix), "<", refsRev+1).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
		clientv3.Compare(clientv3.Value(labelsKey), "=", string(numRec)),
	).Then(clientv3.OpDelete(key), clientv3.OpDelete(labelsKey)).
		// On failure, learn whether references changed in the same
		// round trip: only then is every later deletion bound to fail.
		Else(clientv3.OpGet(IdentityRefsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMinModRev(refsRev+1))).
		Commit()
	if err != nil {
		return false, false, fmt.Errorf("deleting identity %d: %w", id, err)
	}
	if resp.Succeeded {
		return true, false, nil
	}
	refsChanged = len(resp.Responses) == 1 && len(resp.Responses[0].GetResponseRange().GetKvs()) > 0
	return false, refsChanged, nil
}

// DeleteSupersededIdentity deletes identities/id/<id> alone, provided that
// no reference was written after refsRev, that the identity is unchanged
// since modRev, and that its set's labels key exists and names another
// number: the set was renumbered (RenumberIdentity) and this number is a
// leftover nobody uses. An identity whose labels key is missing is not
// touched: that is damage for an operator to look at, not a leftover.
// deleted and refsChanged mean what they do for DeleteUnreferencedIdentity.
func (c *Client) DeleteSupersededIdentity(ctx context.Context, id uint32, labelsHash string, modRev, refsRev int64) (deleted, refsChanged bool, err error) {
	key, labelsKey := IdentityIDKey(id), IdentityLabelsKey(labelsHash)
	numRec, err := Encode(&IdentityNumber{ID: id})
	if err != nil {
		return false, false, err
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Txn(rctx).If(
		clientv3.Compare(clientv3.ModRevision(IdentityRefsPrefix), "<", refsRev+1).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
		clientv3.Compare(clientv3.CreateRevision(labelsKey), ">", 0),
		clientv3.Compare(clientv3.Value(labelsKey), "!=", string(numRec)),
	).Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(IdentityRefsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMinModRev(refsRev+1))).
		Commit()
	if err != nil {
		return false, false, fmt.Errorf("deleting superseded identity %d: %w", id, err)
	}
	if resp.Succeeded {
		return true, false, nil
	}
	refsChanged = len(resp.Responses) == 1 && len(resp.Responses[0].GetResponseRange().GetKvs()) > 0
	return false, refsChanged, nil
}

// identityRecords encodes identities/id/<id> and the labels key's value.
func identityRecords(id uint32, labels []string) (idRec, numRec []byte, err error) {
	if idRec, err = Encode(&Identity{ID: id, Labels: labels}); err != nil {
		return nil, nil, err
	}
	if numRec, err = Encode(&IdentityNumber{ID: id}); err != nil {
		return nil, nil, err
	}
	return idRec, numRec, nil
}
