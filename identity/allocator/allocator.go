// Package allocator gives every label set one numeric identity, the same on
// every node of the mesh, stored in etcd through kvstore:
//
//	identities/labels/<sha256(canonical labels)>  -> {id}
//	identities/id/<n>                              -> {labels}
//	identities/refs/<cluster>/<node>/<n>           leased by the node using n
//
// A new identity is created in one transaction that requires both the
// labels key and the number key to be absent (their create revision is 0)
// and that also writes the caller's leased reference; so a set never gets
// two numbers and a number never two sets, however many nodes race.
//
// Numbers follow the identity number plan (identity/clusters.go): a set
// gets a number in the range of its cluster (Config.Range; by default the
// allocator's own cluster's, identity.ClusterRange), so clusters with their
// own etcd never hand out the same number. Within a range the lowest free
// number is taken, so freed numbers are reused. Identities nobody references any more are deleted by
// CollectGarbage after a grace period. A local id <-> labels cache, fed by a
// watch, answers lookups without etcd.
//
// The allocator never talks to etcd itself: it asks a Backend, which
// *kvstore.Client implements, for the few reads and transactions it needs.
package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// Errors of the allocator.
var (
	ErrInvalidLabels = errors.New("allocator: label set cannot have an allocated identity")
	ErrExhausted     = errors.New("allocator: identity numbers exhausted")
	ErrNotHeld       = errors.New("allocator: identity not held by this node")
	ErrInvalidConfig = errors.New("allocator: invalid configuration")
)

// DefaultGCGrace is how long an unreferenced identity survives: long
// enough that a node restarting (its leased references expired) gets its
// numbers back unchanged.
const DefaultGCGrace = 10 * time.Minute

// Identity is a number and its label set, as the local cache holds them.
type Identity struct {
	ID     identity.NumericIdentity
	Labels identity.Labels
}

// Backend is what the allocator needs of the store, declared here where it
// is used; *kvstore.Client implements it (kvstore/identities.go), and the
// transactions that keep numbers unique mesh-wide live there.
type Backend interface {
	// Source is what the local id <-> labels cache lists and watches.
	Source() kvstore.Source
	// Logger is used when Config.Logger is nil.
	Logger() *slog.Logger
	// IdentityNumberValue reads identities/labels/<hash> as stored.
	IdentityNumberValue(ctx context.Context, labelsHash string) (value []byte, found bool, err error)
	// IdentityExists reports whether identities/id/<id> exists.
	IdentityExists(ctx context.Context, id uint32) (bool, error)
	// CreateIdentity creates id for the set and h's leased reference in
	// one transaction, if neither the set nor the number exists yet.
	CreateIdentity(ctx context.Context, h kvstore.IdentityHolder, id uint32, labelsHash string, labels []string) (bool, error)
	// ReferenceIdentity writes h's leased reference to id if the set's
	// labels key still holds labelsValue.
	ReferenceIdentity(ctx context.Context, h kvstore.IdentityHolder, id uint32, labelsHash string, labelsValue []byte) (bool, error)
	// ListIdentities reads every reference key and identity at one revision.
	ListIdentities(ctx context.Context) (kvstore.IdentityListing, error)
	// RenumberIdentity creates id for the set, points its labels key at
	// it and writes h's leased reference in one transaction, if the labels
	// key still holds oldValue and the number is free. A Backend whose
	// credential may not write identities hands it to whoever creates
	// identities for it, as it does CreateIdentity.
	RenumberIdentity(ctx context.Context, h kvstore.IdentityHolder, id uint32, labelsHash string, labels []string, oldValue []byte) (bool, error)
	// DeleteUnreferencedIdentity deletes id and its labels key if no
	// reference was written after refsRev, id is unchanged since modRev
	// and its labels key names it.
	DeleteUnreferencedIdentity(ctx context.Context, id uint32, labelsHash string, modRev, refsRev int64) (deleted, refsChanged bool, err error)
	// DeleteSupersededIdentity deletes id alone under the same conditions,
	// except that its labels key must name another number (the set was
	// renumbered).
	DeleteSupersededIdentity(ctx context.Context, id uint32, labelsHash string, modRev, refsRev int64) (deleted, refsChanged bool, err error)
}

var _ Backend = (*kvstore.Client)(nil)

// Config of an allocator.
type Config struct {
	// Client is the store the identities live in, usually a
	// *kvstore.Client; Session must be one of its sessions.
	Client Backend
	// Session leases this node's references; when the node dies they
	// expire, and when the lease is lost they are restored if their
	// identity still exists.
	Session       *kvstore.Session
	Cluster, Node string
	// ClusterID is the id of Cluster (its clusters/<name> record, 1..
	// identity.MaxClusterID). Its range is the default of Min and Max.
	ClusterID int
	// Min and Max bound the numbers of the sets Range does not place;
	// defaults: identity.ClusterRange(ClusterID). Without a ClusterID both
	// must be given.
	Min, Max identity.NumericIdentity
	// Range returns the numbers labels may have: those of the cluster the
	// set belongs to (its mesh:cluster label), when the allocator serves
	// several clusters (a seed allocating for the nodes of every cluster
	// sharing its etcd). An existing identity outside the range is not
	// reused: the set is renumbered. An error fails the allocation. Nil:
	// Min..Max for every set.
	Range func(ctx context.Context, labels identity.Labels) (lo, hi identity.NumericIdentity, err error)
	// OnEvent receives changes of the mesh-wide id <-> labels cache.
	OnEvent func(kvstore.Event[Identity])
	// Accept, when set, judges every identity record the cache reads: one
	// it refuses is logged and left out, as if it did not exist (its
	// number still counts as taken). The agent refuses numbers not of the
	// cluster their labels name.
	Accept func(Identity) error
	// OnLost is called when a reference of this node could not be
	// restored after a lost lease because its identity was collected
	// meanwhile: the caller should allocate the labels again.
	OnLost func(Identity)
	Logger *slog.Logger
}

// Allocator allocates identities for one node.
type Allocator struct {
	cfg    Config
	c      Backend
	holder kvstore.IdentityHolder // this node's leased references
	s      *kvstore.Session
	log    *slog.Logger
	cache  *kvstore.Cache[Identity]

	mu       sync.Mutex
	byHash   map[string]identity.NumericIdentity // from the cache
	byID     map[identity.NumericIdentity]identity.Labels
	used     map[identity.NumericIdentity]bool // cache + own writes + lost races
	pending  map[identity.NumericIdentity]bool // being claimed by a local goroutine
	hints    map[span]identity.NumericIdentity // per range: every number of it below is used
	held     map[identity.NumericIdentity]*holding
	heldHash map[string]identity.NumericIdentity

	gcMu       sync.Mutex
	unrefSince map[identity.NumericIdentity]time.Time
}

// span is a range of numbers, lo..hi inclusive.
type span struct{ lo, hi identity.NumericIdentity }

func (s span) contains(n identity.NumericIdentity) bool { return n >= s.lo && n <= s.hi }

// String names the range as an operator reads it: with its cluster when it
// is one cluster's.
func (s span) String() string {
	if c := s.lo.ClusterID(); c != 0 && c == s.hi.ClusterID() {
		return fmt.Sprintf("cluster %d's range %d..%d", c, s.lo, s.hi)
	}
	return fmt.Sprintf("range %d..%d", s.lo, s.hi)
}

// validSpan checks a range against the number plan: allocated numbers lie
// between the reserved ones and the node-local CIDR identities.
func validSpan(lo, hi identity.NumericIdentity) error {
	if lo < identity.MinAllocated || hi < lo || hi >= identity.CIDRIdentityBase {
		return fmt.Errorf("range %d..%d must not be empty and lie within %d..%d", lo, hi, identity.MinAllocated, identity.CIDRIdentityBase-1)
	}
	return nil
}

type holding struct {
	labels identity.Labels
	count  int
}

// New makes an allocator; call Run to feed its cache.
func New(cfg Config) (*Allocator, error) {
	if c, isKV := cfg.Client.(*kvstore.Client); cfg.Client == nil || isKV && c == nil || cfg.Session == nil {
		return nil, fmt.Errorf("%w: a kvstore client and session are required", ErrInvalidConfig)
	}
	if err := kvstore.ValidateName("cluster", cfg.Cluster); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := kvstore.ValidateName("node", cfg.Node); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if cfg.ClusterID != 0 {
		lo, hi, err := identity.ClusterRange(cfg.ClusterID)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if cfg.Min == 0 {
			cfg.Min = lo
		}
		if cfg.Max == 0 {
			cfg.Max = hi
		}
	}
	if cfg.Min == 0 || cfg.Max == 0 {
		return nil, fmt.Errorf("%w: set ClusterID (the id of cluster %s's record) or both Min and Max", ErrInvalidConfig, cfg.Cluster)
	}
	if err := validSpan(cfg.Min, cfg.Max); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	log := cfg.Logger
	if log == nil {
		log = cfg.Client.Logger()
	}
	a := &Allocator{
		cfg: cfg, c: cfg.Client, s: cfg.Session, log: log,
		byHash: map[string]identity.NumericIdentity{}, byID: map[identity.NumericIdentity]identity.Labels{},
		used: map[identity.NumericIdentity]bool{}, pending: map[identity.NumericIdentity]bool{},
		hints: map[span]identity.NumericIdentity{}, held: map[identity.NumericIdentity]*holding{}, heldHash: map[string]identity.NumericIdentity{},
		unrefSince: map[identity.NumericIdentity]time.Time{},
	}
	a.holder = kvstore.IdentityHolder{Session: cfg.Session, Cluster: cfg.Cluster, Node: cfg.Node,
		OnLost: func(id uint32) { a.lost(identity.NumericIdentity(id)) }}
	cache, err := kvstore.NewCache(cfg.Client.Source(), kvstore.CacheConfig[Identity]{
		Name: "identities", Prefix: kvstore.IdentityIDPrefix, Decode: a.decode,
		OnEvent: a.onEvent, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.cache = cache
	return a, nil
}

func decodeIdentity(key string, data []byte) (Identity, error) {
	rec, err := kvstore.IdentityDecoder(key, data)
	if err != nil {
		return Identity{}, err
	}
	l, err := identity.ParseLabels(rec.Labels, "")
	if err != nil {
		return Identity{}, fmt.Errorf("%w: identity %d: %w", kvstore.ErrInvalidRecord, rec.ID, err)
	}
	return Identity{ID: identity.NumericIdentity(rec.ID), Labels: l}, nil
}

// decode is the cache's decoder: decodeIdentity, then Config.Accept.
func (a *Allocator) decode(key string, data []byte) (Identity, error) {
	id, err := decodeIdentity(key, data)
	if err != nil || a.cfg.Accept == nil {
		return id, err
	}
	if err := a.cfg.Accept(id); err != nil {
		// A refused number is still taken in etcd: creating it would
		// only fail.
		a.mu.Lock()
		a.used[id.ID] = true
		a.mu.Unlock()
		return Identity{}, fmt.Errorf("%w: %w", kvstore.ErrInvalidRecord, err)
	}
	return id, nil
}

func (a *Allocator) onEvent(ev kvstore.Event[Identity]) {
	a.mu.Lock()
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		if ev.Kind == kvstore.EventUpdate {
			a.forgetHash(ev.Old)
		}
		// A renumbered set has two numbers until its old one is
		// collected; the last one seen answers LookupByLabels, which only
		// decides whether Allocate tries to create first.
		a.byHash[ev.Value.Labels.Hash()] = ev.Value.ID
		a.byID[ev.Value.ID] = ev.Value.Labels
		a.used[ev.Value.ID] = true
	case kvstore.EventDelete:
		a.forgetHash(ev.Old)
		delete(a.byID, ev.Old.ID)
		delete(a.used, ev.Old.ID)
		for s, h := range a.hints {
			if s.contains(ev.Old.ID) && ev.Old.ID < h {
				a.hints[s] = ev.Old.ID
			}
		}
	}
	a.mu.Unlock()
	if a.cfg.OnEvent != nil {
		a.cfg.OnEvent(ev)
	}
}

// forgetHash drops the set -> number entry of old if it still names old's
// number (a renumbered set's entry may name the new one). Caller holds a.mu.
func (a *Allocator) forgetHash(old Identity) {
	h := old.Labels.Hash()
	if a.byHash[h] == old.ID {
		delete(a.byHash, h)
	}
}

// Run feeds the local cache until ctx ends.
func (a *Allocator) Run(ctx context.Context) error { return a.cache.Run(ctx) }

// Synced is closed once the cache holds every identity of the mesh.
func (a *Allocator) Synced() <-chan struct{} { return a.cache.Synced() }

// LookupByID returns the labels of id from the local cache.
func (a *Allocator) LookupByID(id identity.NumericIdentity) (identity.Labels, bool) {
	if l, ok := identity.ReservedLabels(id); ok {
		return l, true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.byID[id]
	return l, ok
}

// LookupByLabels returns the number of labels from the local cache.
func (a *Allocator) LookupByLabels(l identity.Labels) (identity.NumericIdentity, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.byHash[l.Hash()]
	return id, ok
}

// Allocate returns the number of labels, creating it if the mesh has none,
// and records that this node uses it (a leased reference). Each call must
// be paired with a Release.
func (a *Allocator) Allocate(ctx context.Context, labels identity.Labels) (identity.NumericIdentity, error) {
	if len(labels) == 0 {
		return 0, fmt.Errorf("%w: the empty label set (give the workload at least one label)", ErrInvalidLabels)
	}
	for _, l := range labels {
		if l.Source == identity.SourceReserved {
			return 0, fmt.Errorf("%w: %s has a reserved label %s; reserved identities have fixed numbers", ErrInvalidLabels, labels, l)
		}
	}
	hash := labels.Hash()
	a.mu.Lock()
	if id, ok := a.heldHash[hash]; ok {
		a.held[id].count++
		a.mu.Unlock()
		return id, nil
	}
	a.mu.Unlock()

	s, err := a.rangeOf(ctx, labels)
	if err != nil {
		return 0, err
	}
	labelsKey := kvstore.IdentityLabelsKey(hash)
	// When the synced cache does not know the set it is most likely new:
	// try to create it first and save a read. Losing that bet costs one
	// failed transaction, after which the existing number is referenced.
	tryCreate := false
	select {
	case <-a.cache.Synced():
		_, known := a.LookupByLabels(labels)
		tryCreate = !known
	default:
	}
	var stale []byte // the labels key's value, when it names a number outside s
	renumbers := 0
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if !tryCreate {
			id, ok, old, err := a.reference(ctx, labels, labelsKey, s)
			if err != nil {
				return 0, err
			}
			if ok {
				return id, nil
			}
			stale = old
		}
		tryCreate = false
		if stale != nil {
			// The set has a number from before the number plan (or from
			// a seed that allocated every cluster's sets in its own
			// range): the datapaths of other clusters refuse it, so it
			// gets a fresh one in its range. Bounded: a backend that
			// cannot renumber (a seed of an older version) must not make
			// this loop forever.
			if renumbers++; renumbers > 3 {
				return 0, fmt.Errorf("identity of %s at %s lies outside %s and could not be replaced (upgrade the first node, or delete the key so it is allocated again)", labels, labelsKey, s)
			}
		}
		id, ok, err := a.create(ctx, labels, s, stale)
		if err != nil {
			return 0, err
		}
		if ok {
			if stale != nil {
				a.log.Info("renumbered an identity made outside its cluster's range", "labels", labels.String(), "id", uint32(id), "range", s.String())
			}
			return id, nil
		}
	}
}

// rangeOf is the range labels' number must lie in.
func (a *Allocator) rangeOf(ctx context.Context, labels identity.Labels) (span, error) {
	if a.cfg.Range == nil {
		return span{a.cfg.Min, a.cfg.Max}, nil
	}
	lo, hi, err := a.cfg.Range(ctx, labels)
	if err != nil {
		return span{}, fmt.Errorf("identity range of %s: %w", labels, err)
	}
	if err := validSpan(lo, hi); err != nil {
		return span{}, fmt.Errorf("%w: identity range of %s: %w", ErrInvalidConfig, labels, err)
	}
	return span{lo, hi}, nil
}

// reference takes a reference on the existing identity of labels, if any.
// The reference is written only if the labels key still holds the number
// read, so it cannot attach to an identity being collected. A number
// outside s is not referenced: stale returns the labels key's value, for
// create to replace.
func (a *Allocator) reference(ctx context.Context, labels identity.Labels, labelsKey string, s span) (id identity.NumericIdentity, ok bool, stale []byte, err error) {
	hash := labels.Hash()
	raw, found, err := a.c.IdentityNumberValue(ctx, hash)
	if err != nil || !found {
		return 0, false, nil, err
	}
	num, err := kvstore.DecodeIdentityNumber(raw)
	if err != nil {
		return 0, false, nil, fmt.Errorf("identity of %s at %s does not decode (repair or delete the key): %w", labels, labelsKey, err)
	}
	id = identity.NumericIdentity(num.ID)
	if !s.contains(id) {
		return 0, false, raw, nil
	}
	ok, err = a.c.ReferenceIdentity(ctx, a.holder, uint32(id), hash, raw)
	if err != nil || !ok {
		return 0, false, nil, err
	}
	a.holds(id, labels)
	return id, true, nil, nil
}

// create claims the lowest free number of s for labels: a new set, or,
// with replace (the labels key's value), one renumbered.
func (a *Allocator) create(ctx context.Context, labels identity.Labels, s span, replace []byte) (identity.NumericIdentity, bool, error) {
	id, err := a.reserve(s)
	if err != nil {
		return 0, false, err
	}
	defer a.unreserve(id)
	var ok bool
	if replace != nil {
		ok, err = a.c.RenumberIdentity(ctx, a.holder, uint32(id), labels.Hash(), labels.Strings(), replace)
	} else {
		ok, err = a.c.CreateIdentity(ctx, a.holder, uint32(id), labels.Hash(), labels.Strings())
	}
	if err != nil {
		return 0, false, err
	}
	if ok {
		a.mu.Lock()
		a.used[id] = true
		a.mu.Unlock()
		a.holds(id, labels)
		return id, true, nil
	}
	// Lost a race: either the set got a number meanwhile (the caller looks
	// again) or the number was taken (remember, so the next try skips it;
	// the cache will confirm it soon).
	taken, err := a.c.IdentityExists(ctx, uint32(id))
	if err != nil {
		return 0, false, err
	}
	if taken {
		a.mu.Lock()
		a.used[id] = true
		a.mu.Unlock()
	}
	return 0, false, nil
}

// holds records a reference this node has just written.
func (a *Allocator) holds(id identity.NumericIdentity, labels identity.Labels) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, ok := a.held[id]; ok {
		h.count++ // a concurrent Allocate of the same set got there first
	} else {
		a.held[id] = &holding{labels: labels, count: 1}
		a.heldHash[labels.Hash()] = id
	}
}

func (a *Allocator) lost(id identity.NumericIdentity) {
	a.mu.Lock()
	h, ok := a.held[id]
	if ok {
		delete(a.held, id)
		delete(a.heldHash, h.labels.Hash())
	}
	a.mu.Unlock()
	if !ok {
		return
	}
	a.log.Warn("identity collected while this node's reference was lost; allocate its labels again", "id", uint32(id), "labels", h.labels.String())
	if a.cfg.OnLost != nil {
		a.cfg.OnLost(Identity{ID: id, Labels: h.labels})
	}
}

// reserve picks the lowest number of s not known to be used and not being
// claimed by another local goroutine.
func (a *Allocator) reserve(s span) (identity.NumericIdentity, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hint, ok := a.hints[s]
	if !ok {
		hint = s.lo
	}
	for hint <= s.hi && a.used[hint] {
		hint++
	}
	a.hints[s] = hint
	for n := hint; n <= s.hi; n++ {
		if !a.used[n] && !a.pending[n] {
			a.pending[n] = true
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: every number of %s is in use", ErrExhausted, s)
}

func (a *Allocator) unreserve(n identity.NumericIdentity) {
	a.mu.Lock()
	delete(a.pending, n)
	a.mu.Unlock()
}

// Release drops one use of id by this node; when the last one goes, the
// node's reference is deleted and the identity becomes collectable.
func (a *Allocator) Release(ctx context.Context, id identity.NumericIdentity) error {
	a.mu.Lock()
	h, ok := a.held[id]
	if !ok {
		a.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrNotHeld, id)
	}
	h.count--
	last := h.count == 0
	if last {
		delete(a.held, id)
		delete(a.heldHash, h.labels.Hash())
	}
	a.mu.Unlock()
	if !last {
		return nil
	}
	return a.s.Delete(ctx, kvstore.IdentityRefKey(a.cfg.Cluster, a.cfg.Node, uint32(id)))
}

// Held returns the identities this node references.
func (a *Allocator) Held() map[identity.NumericIdentity]identity.Labels {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[identity.NumericIdentity]identity.Labels, len(a.held))
	for id, h := range a.held {
		out[id] = h.labels
	}
	return out
}
