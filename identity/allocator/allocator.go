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
// two numbers and a number never two sets, however many nodes race. Numbers
// start at identity.MinAllocated and the lowest free one is taken, so freed
// numbers are reused. Identities nobody references any more are deleted by
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

// DefaultMax is the highest number handed out by default: 24 bits leave the
// datapath room for flags beside an identity.
const DefaultMax identity.NumericIdentity = 1<<24 - 1

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
	// DeleteUnreferencedIdentity deletes id and its labels key if no
	// reference was written after refsRev, id is unchanged since modRev
	// and its labels key names it.
	DeleteUnreferencedIdentity(ctx context.Context, id uint32, labelsHash string, modRev, refsRev int64) (deleted, refsChanged bool, err error)
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
	// Min and Max bound the numbers; defaults MinAllocated and DefaultMax.
	Min, Max identity.NumericIdentity
	// OnEvent receives changes of the mesh-wide id <-> labels cache.
	OnEvent func(kvstore.Event[Identity])
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
	hint     identity.NumericIdentity          // every number below is used
	held     map[identity.NumericIdentity]*holding
	heldHash map[string]identity.NumericIdentity

	gcMu       sync.Mutex
	unrefSince map[identity.NumericIdentity]time.Time
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
	if cfg.Min == 0 {
		cfg.Min = identity.MinAllocated
	}
	if cfg.Max == 0 {
		cfg.Max = DefaultMax
	}
	if cfg.Min < identity.MinAllocated || cfg.Max < cfg.Min {
		return nil, fmt.Errorf("%w: range %d..%d must start at %d or above and not be empty", ErrInvalidConfig, cfg.Min, cfg.Max, identity.MinAllocated)
	}
	log := cfg.Logger
	if log == nil {
		log = cfg.Client.Logger()
	}
	a := &Allocator{
		cfg: cfg, c: cfg.Client, s: cfg.Session, log: log,
		byHash: map[string]identity.NumericIdentity{}, byID: map[identity.NumericIdentity]identity.Labels{},
		used: map[identity.NumericIdentity]bool{}, pending: map[identity.NumericIdentity]bool{},
		hint: cfg.Min, held: map[identity.NumericIdentity]*holding{}, heldHash: map[string]identity.NumericIdentity{},
		unrefSince: map[identity.NumericIdentity]time.Time{},
	}
	a.holder = kvstore.IdentityHolder{Session: cfg.Session, Cluster: cfg.Cluster, Node: cfg.Node,
		OnLost: func(id uint32) { a.lost(identity.NumericIdentity(id)) }}
	cache, err := kvstore.NewCache(cfg.Client.Source(), kvstore.CacheConfig[Identity]{
		Name: "identities", Prefix: kvstore.IdentityIDPrefix, Decode: decodeIdentity,
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

func (a *Allocator) onEvent(ev kvstore.Event[Identity]) {
	a.mu.Lock()
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		if ev.Kind == kvstore.EventUpdate {
			delete(a.byHash, ev.Old.Labels.Hash())
		}
		a.byHash[ev.Value.Labels.Hash()] = ev.Value.ID
		a.byID[ev.Value.ID] = ev.Value.Labels
		a.used[ev.Value.ID] = true
	case kvstore.EventDelete:
		delete(a.byHash, ev.Old.Labels.Hash())
		delete(a.byID, ev.Old.ID)
		delete(a.used, ev.Old.ID)
		if ev.Old.ID < a.hint {
			a.hint = ev.Old.ID
		}
	}
	a.mu.Unlock()
	if a.cfg.OnEvent != nil {
		a.cfg.OnEvent(ev)
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
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if !tryCreate {
			id, ok, err := a.reference(ctx, labels, labelsKey)
			if err != nil {
				return 0, err
			}
			if ok {
				return id, nil
			}
		}
		tryCreate = false
		id, ok, err := a.create(ctx, labels)
		if err != nil {
			return 0, err
		}
		if ok {
			return id, nil
		}
	}
}

// reference takes a reference on the existing identity of labels, if any.
// The reference is written only if the labels key still holds the number
// read, so it cannot attach to an identity being collected.
func (a *Allocator) reference(ctx context.Context, labels identity.Labels, labelsKey string) (identity.NumericIdentity, bool, error) {
	hash := labels.Hash()
	raw, found, err := a.c.IdentityNumberValue(ctx, hash)
	if err != nil || !found {
		return 0, false, err
	}
	num, err := kvstore.DecodeIdentityNumber(raw)
	if err != nil {
		return 0, false, fmt.Errorf("identity of %s at %s does not decode (repair or delete the key): %w", labels, labelsKey, err)
	}
	id := identity.NumericIdentity(num.ID)
	ok, err := a.c.ReferenceIdentity(ctx, a.holder, uint32(id), hash, raw)
	if err != nil || !ok {
		return 0, false, err
	}
	a.holds(id, labels)
	return id, true, nil
}

// create claims the lowest free number for labels.
func (a *Allocator) create(ctx context.Context, labels identity.Labels) (identity.NumericIdentity, bool, error) {
	id, err := a.reserve()
	if err != nil {
		return 0, false, err
	}
	defer a.unreserve(id)
	ok, err := a.c.CreateIdentity(ctx, a.holder, uint32(id), labels.Hash(), labels.Strings())
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

// reserve picks the lowest number not known to be used and not being
// claimed by another local goroutine.
func (a *Allocator) reserve() (identity.NumericIdentity, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.hint <= a.cfg.Max && a.used[a.hint] {
		a.hint++
	}
	for n := a.hint; n <= a.cfg.Max && n >= a.hint; n++ {
		if !a.used[n] && !a.pending[n] {
			a.pending[n] = true
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: every number from %d to %d is in use", ErrExhausted, a.cfg.Min, a.cfg.Max)
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
