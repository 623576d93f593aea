package kvstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Revocation is revoked/<cluster>/<node>: an admin revoked the node's
// certificate (`meshctl node revoke`). Every agent reads it and refuses the
// node everywhere: no peer, no endpoints, no agent-to-agent API, no node
// services, no join under the name. Node roles may read revoked/ but not
// write it, and the record outlives the node's other keys, until an admin
// clears it (`meshctl node revoke --clear`).
type Revocation struct {
	Version int    `json:"version"`
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Serials are the hex serial numbers of the node's certificates the
	// mesh knows of (informative: every certificate of the node's name,
	// CN=node:<cluster>/<node>, is refused, renewed ones included).
	Serials   []string  `json:"serials,omitempty"`
	RevokedAt time.Time `json:"revokedAt"`
	Reason    string    `json:"reason,omitempty"`
}

func (*Revocation) recordKind() string   { return "revocation" }
func (r *Revocation) versionField() *int { return &r.Version }

// Key returns revoked/<cluster>/<node>.
func (r Revocation) Key() string { return RevokedKey(r.Cluster, r.Node) }

// Validate checks the names, the time and the serials.
func (r Revocation) Validate() error {
	if err := ValidateName("cluster", r.Cluster); err != nil {
		return fmt.Errorf("%w: revocation: %w", ErrInvalidRecord, err)
	}
	if err := ValidateName("node", r.Node); err != nil {
		return fmt.Errorf("%w: revocation: %w", ErrInvalidRecord, err)
	}
	id := r.Cluster + "/" + r.Node
	if r.RevokedAt.IsZero() {
		return invalid("revocation", "%s: no revokedAt time", id)
	}
	if len(r.Serials) > 64 {
		return invalid("revocation", "%s: %d serials, at most 64", id, len(r.Serials))
	}
	for i, s := range r.Serials {
		if !isHexSerial(s) {
			return invalid("revocation", "%s: serials[%d] %q is not a lower-case hex serial number", id, i, s)
		}
	}
	if len(r.Reason) > 256 {
		return invalid("revocation", "%s: reason longer than 256 characters", id)
	}
	return nil
}

func isHexSerial(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// HasSerial reports whether serial (lower-case hex) is one of the record's.
func (r Revocation) HasSerial(serial string) bool {
	for _, s := range r.Serials {
		if s == serial {
			return true
		}
	}
	return false
}

// DecodeRevocation decodes a revoked/ value.
func DecodeRevocation(data []byte) (Revocation, error) { return decode[Revocation](data) }

// RevocationDecoder decodes a revocation and checks its key, so a record
// cannot revoke (or, by its absence, spare) another node than its key says.
func RevocationDecoder(key string, data []byte) (Revocation, error) {
	r, err := DecodeRevocation(data)
	if err != nil {
		return r, err
	}
	if want := r.Key(); key != want {
		return r, fmt.Errorf("%w: revocation of %s/%s stored at %s (want %s)", ErrInvalidRecord, r.Cluster, r.Node, key, want)
	}
	return r, nil
}

// GetRevocation reads revoked/<cluster>/<node>; ErrNotFound when the node
// is not revoked.
func (c *Client) GetRevocation(ctx context.Context, cluster, node string) (Revocation, error) {
	if err := validNodeName(cluster, node); err != nil {
		return Revocation{}, err
	}
	r, _, err := Get(ctx, c, RevokedKey(cluster, node), DecodeRevocation)
	return r, err
}

// ListRevocations reads every revocation, by key.
func (c *Client) ListRevocations(ctx context.Context) (map[string]Revocation, error) {
	return List(ctx, c, RevokedPrefix, DecodeRevocation)
}

// ClearRevocation deletes node's revocation, so that the name may join
// again (with a new token); the old certificates stay refused by etcd, as
// their user is gone. ErrNotFound when the node is not revoked. Admin only.
func (c *Client) ClearRevocation(ctx context.Context, cluster, node string) (Revocation, error) {
	if err := validNodeName(cluster, node); err != nil {
		return Revocation{}, err
	}
	key := RevokedKey(cluster, node)
	r, rev, err := Get(ctx, c, key, DecodeRevocation)
	if err != nil {
		return r, err
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return r, fmt.Errorf("deleting %s: %w", key, err)
	}
	if !resp.Succeeded {
		return r, fmt.Errorf("%w: %s changed while clearing it; retry", ErrConflict, key)
	}
	return r, nil
}

func validNodeName(cluster, node string) error {
	if err := ValidateName("cluster", cluster); err != nil {
		return err
	}
	return ValidateName("node", node)
}

// NodeRemoval is what RemoveNode found and deleted.
type NodeRemoval struct {
	Cluster, Node string
	// Record says whether the node had a record (it was marked leaving,
	// then deleted).
	Record       bool
	Endpoints    int
	IdentityRefs int
	CIDRs        []netip.Prefix
	Grant        bool
	// Revoked is set when the node is (now) revoked.
	Revoked bool
}

// RemoveNode takes node out of the mesh for good, as an admin: its etcd
// user and role, its node record (first rewritten with Leaving, so that
// every peer drops it at once instead of retaining it as in an outage), its
// endpoints and identity references, its grant and its CIDRs (so the name
// can join again). With rev set it first writes the revocation, so every
// agent refuses the node before anything else changes; the revocation stays
// after the other keys are gone. ErrNotFound when the mesh knows nothing of
// the node. Admin only: a node credential gets ErrPermissionDenied before
// anything changed.
//
// The order is what makes it safe against a live node: revocation (agents
// refuse it), user removal (it can no longer write anything back), the
// leave mark (peers drop it without grace), then the deletions in one
// transaction.
func (c *Client) RemoveNode(ctx context.Context, cluster, node string, rev *Revocation) (NodeRemoval, error) {
	out := NodeRemoval{Cluster: cluster, Node: node}
	if err := validNodeName(cluster, node); err != nil {
		return out, err
	}
	st, err := c.nodeState(ctx, cluster, node)
	if err != nil {
		return out, err
	}
	if !st.exists() && (rev == nil || !st.revoked) {
		return out, fmt.Errorf("%w: the mesh has no node %s/%s (no record, endpoints, CIDR or grant)", ErrNotFound, cluster, node)
	}
	if rev != nil {
		r := *rev
		r.Cluster, r.Node = cluster, node
		if r.RevokedAt.IsZero() {
			r.RevokedAt = time.Now().UTC()
		}
		if err := c.Put(ctx, r.Key(), &r); err != nil {
			return out, fmt.Errorf("recording the revocation of %s/%s: %w", cluster, node, err)
		}
		out.Revoked = true
	} else {
		out.Revoked = st.revoked
	}
	if err := c.RemoveNodeUser(ctx, cluster, node); err != nil {
		return out, err
	}
	if st.record != nil {
		c.markLeaving(ctx, *st.record, st.recordRev)
	} else {
		// The record is gone already (an expired lease: the usual case of
		// a crashed machine), and peers retain the node while its tunnel
		// seems alive. A leaving tombstone, deleted below, tells them it
		// is gone for good.
		c.putTombstone(ctx, cluster, node)
	}
	// A few tries: the node's own lease may expire, or the seed's IPAM
	// change, between the reading and the deletion.
	for attempt := 0; ; attempt++ {
		ok, err := c.deleteNodeKeys(ctx, cluster, node, st)
		if err != nil {
			return out, err
		}
		if ok {
			break
		}
		if attempt == 4 {
			return out, fmt.Errorf("%w: the keys of node %s/%s kept changing while removing them; run the command again", ErrConflict, cluster, node)
		}
		if st, err = c.nodeState(ctx, cluster, node); err != nil {
			return out, err
		}
	}
	out.Record, out.Endpoints, out.IdentityRefs, out.Grant = st.record != nil, st.endpoints, st.refs, st.grant
	for _, a := range st.cidrs {
		out.CIDRs = append(out.CIDRs, a.cidr)
	}
	return out, nil
}

// nodeKeys is what the mesh holds of one node.
type nodeKeys struct {
	record    *Node
	rawRecord bool // a value at the node key, decodable or not
	recordRev int64
	endpoints int
	refs      int
	grant     bool
	revoked   bool
	cidrs     []nodeCIDR
}

// nodeCIDR is one CIDR allocation of the node, with its key and revision.
type nodeCIDR struct {
	cidr netip.Prefix
	key  string
	rev  int64
}

func (k nodeKeys) exists() bool {
	return k.rawRecord || k.endpoints > 0 || k.refs > 0 || k.grant || len(k.cidrs) > 0
}

func (c *Client) nodeState(ctx context.Context, cluster, node string) (nodeKeys, error) {
	var st nodeKeys
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	nk := NodeKey(cluster, node)
	resp, err := c.kv.Txn(rctx).Then(
		clientv3.OpGet(nk),
		clientv3.OpGet(EndpointsNodePrefix(cluster, node), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		clientv3.OpGet(IdentityRefsNodePrefix(cluster, node), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		clientv3.OpGet(GrantKey(cluster, node), clientv3.WithCountOnly()),
		clientv3.OpGet(RevokedKey(cluster, node), clientv3.WithCountOnly()),
		clientv3.OpGet(IPAMClusterPrefix(cluster), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return st, fmt.Errorf("reading the keys of node %s/%s: %w", cluster, node, err)
	}
	r := resp.Responses
	if kvs := r[0].GetResponseRange().Kvs; len(kvs) > 0 {
		st.rawRecord, st.recordRev = true, kvs[0].ModRevision
		if n, err := DecodeNode(kvs[0].Value); err == nil {
			st.record = &n
		}
	}
	st.endpoints = int(r[1].GetResponseRange().Count)
	st.refs = int(r[2].GetResponseRange().Count)
	st.grant = r[3].GetResponseRange().Count > 0
	st.revoked = r[4].GetResponseRange().Count > 0
	for _, kv := range r[5].GetResponseRange().Kvs {
		a, err := DecodeIPAM(kv.Value)
		if err != nil || a.Cluster != cluster || a.Node != node || string(kv.Key) != IPAMKey(cluster, a.CIDR) {
			continue
		}
		st.cidrs = append(st.cidrs, nodeCIDR{a.CIDR, string(kv.Key), kv.ModRevision})
	}
	return st, nil
}

// markLeaving rewrites the node's record with Leaving, keeping its lease,
// so that peers seeing it go drop the node at once. Best effort: a record
// that changed or went meanwhile is deleted anyway, and peers then retain
// it only while its tunnel shows life.
func (c *Client) markLeaving(ctx context.Context, n Node, modRev int64) {
	n.Leaving = true
	data, err := Encode(&n)
	if err != nil {
		c.log.Warn("marking a removed node leaving", "node", n.Cluster+"/"+n.Name, "err", err)
		return
	}
	key := n.Key()
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(data), clientv3.WithIgnoreLease())).Commit()
	if err != nil || !resp.Succeeded {
		c.log.Warn("marking a removed node leaving; deleting its record anyway", "node", n.Cluster+"/"+n.Name, "err", err)
	}
}

// tombstoneKey is the WireGuard key of a tombstone record: 32 zero bytes,
// which no real device has (peers never install a leaving record).
const tombstoneKey = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

// putTombstone writes a leaving record for a node whose record is gone,
// if it is still gone; best effort, like markLeaving.
func (c *Client) putTombstone(ctx context.Context, cluster, node string) {
	n := Node{Cluster: cluster, Name: node, WGPublicKey: tombstoneKey, Leaving: true}
	data, err := Encode(&n)
	if err != nil {
		c.log.Warn("writing a removed node's leave mark", "node", cluster+"/"+node, "err", err)
		return
	}
	key := n.Key()
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.kv.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(data))).Commit(); err != nil {
		c.log.Warn("writing a removed node's leave mark; peers drop it once its tunnel is silent", "node", cluster+"/"+node, "err", err)
	}
}

// deleteNodeKeys deletes everything of the node but its revocation in one
// transaction; false when a CIDR changed owner since st was read.
func (c *Client) deleteNodeKeys(ctx context.Context, cluster, node string, st nodeKeys) (bool, error) {
	var cmps []clientv3.Cmp
	ops := []clientv3.Op{
		clientv3.OpDelete(NodeKey(cluster, node)),
		clientv3.OpDelete(EndpointsNodePrefix(cluster, node), clientv3.WithPrefix()),
		clientv3.OpDelete(IdentityRefsNodePrefix(cluster, node), clientv3.WithPrefix()),
		clientv3.OpDelete(GrantKey(cluster, node)),
	}
	for _, a := range st.cidrs {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(a.key), "=", a.rev))
		ops = append(ops, clientv3.OpDelete(a.key))
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Txn(rctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("deleting the keys of node %s/%s: %w", cluster, node, err)
	}
	return resp.Succeeded, nil
}

// RevocationCache mirrors revoked/ for the agent's checks (peers, ipcache,
// agent-to-agent API, node services); see docs/security.md.
type RevocationCache struct {
	c *Cache[Revocation]
}

// NewRevocationCache makes the cache; call Run, and wait for Synced before
// trusting Revoked (before the first listing no node looks revoked).
func NewRevocationCache(src Source, onEvent func(Event[Revocation]), log *slog.Logger) (*RevocationCache, error) {
	c, err := NewCache(src, CacheConfig[Revocation]{Name: "revoked", Prefix: RevokedPrefix, Decode: RevocationDecoder, OnEvent: onEvent, Logger: log})
	if err != nil {
		return nil, err
	}
	return &RevocationCache{c: c}, nil
}

// Run feeds the cache until ctx ends.
func (r *RevocationCache) Run(ctx context.Context) error { return r.c.Run(ctx) }

// Synced is closed after the first listing.
func (r *RevocationCache) Synced() <-chan struct{} { return r.c.Synced() }

// Revoked returns node's revocation, if it has one.
func (r *RevocationCache) Revoked(cluster, node string) (Revocation, bool) {
	if validNodeName(cluster, node) != nil {
		return Revocation{}, false
	}
	return r.c.Get(RevokedKey(cluster, node))
}

// BySerial returns the revocation listing serial (lower-case hex).
func (r *RevocationCache) BySerial(serial string) (Revocation, bool) {
	serial = strings.ToLower(serial)
	var found Revocation
	ok := false
	r.c.Range(func(_ string, v Revocation) bool {
		if v.HasSerial(serial) {
			found, ok = v, true
			return false
		}
		return true
	})
	return found, ok
}

// Snapshot returns every revocation, by key.
func (r *RevocationCache) Snapshot() map[string]Revocation { return r.c.Snapshot() }

// ErrRevoked is wrapped by the refusals of a revoked node's certificate.
var ErrRevoked = errors.New("the node's certificate was revoked by an admin")

// RevokedError is the refusal of a revoked node: what was revoked, when,
// and what an admin does about it.
func RevokedError(r Revocation) error {
	return fmt.Errorf("%w: node %s/%s was revoked at %s (meshctl node revoke); an admin can let the name join again with a new token after 'meshctl node revoke --clear %s --cluster %s'",
		ErrRevoked, r.Cluster, r.Node, r.RevokedAt.UTC().Format(time.RFC3339), r.Node, r.Cluster)
}
