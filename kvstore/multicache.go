package kvstore

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultProbeInterval is how often a MultiCache member's etcd is probed
// while it is silent (MemberConfig.ProbeInterval).
const DefaultProbeInterval = 10 * time.Second

// MultiCacheConfig describes a MultiCache.
type MultiCacheConfig[T any] struct {
	// Name identifies the cache in logs, e.g. "nodes"; a member's inner
	// cache is "<name>@<member>".
	Name string
	// Decode turns a stored value into T. It is given the canonical key
	// (after the member's KeyMap), so the decoders that check a record
	// against its key (NodeDecoder, …) work unchanged on a mirror's copy.
	// An error means the value is logged with its key and skipped.
	Decode func(key string, value []byte) (T, error)
	// OnEvent receives every change of the merged view, under canonical
	// keys: one call at a time, each member's changes in that member's
	// revision order (members' changes interleave in no particular order).
	// The view already reflects the change when it is called. It may read
	// the cache; it must not call Add, Remove or Close.
	OnEvent func(Event[T])
	// OnRevision, when set, is called as CacheConfig.OnRevision is, with
	// the member whose etcd the revision is of (revisions of different
	// etcds do not compare); serialised with OnEvent.
	OnRevision func(member string, rev int64)
	// Logger; nil discards.
	Logger *slog.Logger
	// PageSize of the members' listings; 0 means 1000.
	PageSize int64
}

// MemberConfig describes one member of a MultiCache: one etcd (Source)
// and the prefix of it the member lists and watches.
type MemberConfig[T any] struct {
	// Name identifies the member, e.g. "local" or "cluster:west"; unique
	// in its MultiCache.
	Name string
	// Source is the member's etcd.
	Source Source
	// Prefix is what the member lists and watches, e.g. NodesPrefix for
	// the local etcd, MirrorPrefix("west")+"nodes/" for a mirror, or
	// NodesPrefix+"west/" for west's own etcd.
	Prefix string
	// Single makes Prefix one key (CacheConfig.Single), e.g. a remote
	// cluster's record, which its read-only role allows alone.
	Single bool
	// KeyMap maps a key of the member to the canonical key it stands for
	// (MirrorKeyMap strips mirror/<cluster>/); nil keeps keys as they are.
	// A key it refuses (false) is logged and skipped.
	KeyMap func(key string) (canonical string, ok bool)
	// Accept, when set, judges every decoded record (AcceptRemote: a
	// remote cluster's records must be its own); an error refuses the
	// record: it is logged, counted (MemberStatus.Refused) and, if it
	// replaces an accepted value, that value is dropped.
	Accept func(canonical string, v T) error
	// ProbeInterval: CacheConfig.ProbeInterval of the member, so that an
	// unreachable etcd shows as Connected=false. 0 means
	// DefaultProbeInterval; negative disables the probe (a member of the
	// agent's own etcd, whose health the agent checks anyway).
	ProbeInterval time.Duration
}

// MemberStatus is the health of one member.
type MemberStatus struct {
	Name   string
	Prefix string
	// Synced: the member's first listing is in the view.
	Synced bool
	// Connected: the member's etcd answered last time (CacheStatus).
	Connected bool
	// Entries is the number of keys the member provides in the view.
	Entries int
	// Refused counts records refused since the member was added: by
	// Accept, or because an earlier member provides the key.
	Refused int
	// Skipped counts values that did not decode or whose key KeyMap
	// refused.
	Skipped int
	// Revision of the member's etcd the member reflects.
	Revision int64
	// LastError of the member's listing, watch or probe, with its time
	// (kept after recovery).
	LastError   string
	LastErrorAt time.Time
	// LastEventAt is when the member last changed its cache.
	LastEventAt time.Time
}

// MultiCache is one keyed view and one event stream over several members,
// each a list+watch cache of its own etcd and prefix (the local etcd, a
// remote cluster's etcd, the local copy of a remote cluster's mirror),
// added and removed at runtime. Keys are canonical: a member's KeyMap
// maps its keys onto the schema's (a mirror's copy of nodes/west/vm-1 is
// nodes/west/vm-1).
//
// A key provided by two members belongs to the one added first: the other's
// value is refused and logged, and takes over only when the first one's
// goes. Which member answers first is a race between etcds, so precedence
// follows the order of Add, not of arrival: add the local member first
// and a remote cluster can never overwrite a local record.
//
// A member whose etcd is unreachable keeps its entries (nothing is
// deleted) and shows Connected=false; when its etcd is back it resumes its
// watch, or relists and emits only the difference.
type MultiCache[T any] struct {
	cfg MultiCacheConfig[T]
	log *slog.Logger

	// emitMu serialises event handling and OnEvent; mu guards the maps
	// below and is never held while OnEvent runs, so OnEvent may read.
	emitMu sync.Mutex
	mu     sync.RWMutex

	members []*member[T] // in the order of Add
	byName  map[string]*member[T]
	owner   map[string]*member[T] // canonical key → the member providing it
	next    int
	closed  bool
}

type member[T any] struct {
	cfg    MemberConfig[T]
	order  int
	cache  *Cache[T]
	cancel context.CancelFunc
	done   chan struct{}

	// entries are the member's accepted values by canonical key, as its
	// events delivered them (guarded by the MultiCache's mu): both those
	// it provides and those an earlier member shadows.
	entries map[string]T
	owned   int

	refused, skipped atomic.Int64
	stopped          atomic.Bool
}

// NewMultiCache makes a multi-source cache with no members; Add starts
// them.
func NewMultiCache[T any](cfg MultiCacheConfig[T]) (*MultiCache[T], error) {
	if cfg.Decode == nil {
		return nil, fmt.Errorf("%w: multi-source cache %q needs a decoder", ErrInvalidConfig, cfg.Name)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &MultiCache[T]{
		cfg: cfg, log: log.With("cache", cfg.Name),
		byName: map[string]*member[T]{}, owner: map[string]*member[T]{},
	}, nil
}

// Add starts a member: its list+watch runs until Remove, Close or the end
// of ctx (after which its entries stay as they were). An error when the
// configuration is invalid, the name is taken or the cache is closed.
func (m *MultiCache[T]) Add(ctx context.Context, mc MemberConfig[T]) error {
	if mc.Name == "" || len(mc.Name) > 128 || strings.ContainsAny(mc.Name, " \t\r\n\x00") {
		return fmt.Errorf("%w: cache %q: member name %q: want 1-128 characters without white space", ErrInvalidConfig, m.cfg.Name, mc.Name)
	}
	if mc.Source == nil || mc.Prefix == "" {
		return fmt.Errorf("%w: cache %q: member %q needs a source and a prefix", ErrInvalidConfig, m.cfg.Name, mc.Name)
	}
	if mc.KeyMap == nil {
		mc.KeyMap = func(k string) (string, bool) { return k, true }
	}
	probe := mc.ProbeInterval
	if probe == 0 {
		probe = DefaultProbeInterval
	}
	mb := &member[T]{cfg: mc, done: make(chan struct{}), entries: map[string]T{}}
	cache, err := NewCache(mc.Source, CacheConfig[T]{
		Name: m.cfg.Name + "@" + mc.Name, Prefix: mc.Prefix, Single: mc.Single,
		Decode:   func(key string, data []byte) (T, error) { return m.decode(mb, key, data) },
		OnEvent:  func(ev Event[T]) { m.memberEvent(mb, ev) },
		Logger:   m.cfg.Logger,
		PageSize: m.cfg.PageSize, ProbeInterval: max(probe, 0),
		OnRevision: func(rev int64) {
			if m.cfg.OnRevision == nil {
				return
			}
			m.emitMu.Lock()
			defer m.emitMu.Unlock()
			m.cfg.OnRevision(mc.Name, rev)
		},
	})
	if err != nil {
		return err
	}
	mb.cache = cache
	mctx, cancel := context.WithCancel(ctx)
	mb.cancel = cancel
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cancel()
		return fmt.Errorf("%w: cache %q is closed", ErrInvalidConfig, m.cfg.Name)
	}
	if _, dup := m.byName[mc.Name]; dup {
		m.mu.Unlock()
		cancel()
		return fmt.Errorf("%w: cache %q already has a member %q (remove it first)", ErrInvalidConfig, m.cfg.Name, mc.Name)
	}
	mb.order = m.next
	m.next++
	m.members = append(m.members, mb)
	m.byName[mc.Name] = mb
	m.mu.Unlock()
	go func() {
		defer close(mb.done)
		defer mb.stopped.Store(true)
		_ = cache.Run(mctx)
	}()
	return nil
}

// decode is the inner caches' decoder: key map, decode, accept.
func (m *MultiCache[T]) decode(mb *member[T], key string, data []byte) (T, error) {
	var zero T
	canonical, ok := mb.cfg.KeyMap(key)
	if !ok {
		mb.skipped.Add(1)
		return zero, fmt.Errorf("%w: %s is not a key member %s maps to one of the schema", ErrInvalidKey, key, mb.cfg.Name)
	}
	v, err := m.cfg.Decode(canonical, data)
	if err != nil {
		mb.skipped.Add(1)
		return zero, err
	}
	if mb.cfg.Accept != nil {
		if err := mb.cfg.Accept(canonical, v); err != nil {
			mb.refused.Add(1)
			return zero, fmt.Errorf("refused from member %s: %w", mb.cfg.Name, err)
		}
	}
	return v, nil
}

// memberEvent turns a member's change into the view's.
func (m *MultiCache[T]) memberEvent(mb *member[T], ev Event[T]) {
	canonical, ok := mb.cfg.KeyMap(ev.Key)
	if !ok {
		return // never decoded, so never in the member's cache
	}
	m.emitMu.Lock()
	defer m.emitMu.Unlock()
	m.mu.Lock()
	out, ok := m.applyLocked(mb, ev.Kind, canonical, ev.Value)
	m.mu.Unlock()
	if ok {
		m.emit(out)
	}
}

// applyLocked records mb's change of key and returns the view's event,
// if the view changes.
func (m *MultiCache[T]) applyLocked(mb *member[T], kind EventKind, key string, v T) (Event[T], bool) {
	prev, had := mb.entries[key]
	cur := m.owner[key]
	if kind == EventDelete {
		if !had {
			return Event[T]{}, false
		}
		delete(mb.entries, key)
		if cur != mb {
			return Event[T]{}, false
		}
		return m.releaseLocked(mb, key, prev), true
	}
	mb.entries[key] = v
	switch {
	case cur == nil:
		m.owner[key] = mb
		mb.owned++
		return Event[T]{Kind: EventAdd, Key: key, Value: v}, true
	case cur == mb:
		return Event[T]{Kind: EventUpdate, Key: key, Value: v, Old: prev}, true
	case mb.order < cur.order:
		old := cur.entries[key]
		m.owner[key] = mb
		mb.owned++
		cur.owned--
		cur.refused.Add(1)
		m.log.Warn("key provided by two members: the one added first takes it", "key", key, "member", mb.cfg.Name, "from", cur.cfg.Name)
		return Event[T]{Kind: EventUpdate, Key: key, Value: v, Old: old}, true
	default:
		mb.refused.Add(1)
		if !had { // once per key, not at every update
			m.log.Warn("refusing a key another member provides", "key", key, "member", mb.cfg.Name, "provider", cur.cfg.Name)
		}
		return Event[T]{}, false
	}
}

// releaseLocked gives key, which mb provided with old, to the earliest
// other member holding it, or deletes it from the view.
func (m *MultiCache[T]) releaseLocked(mb *member[T], key string, old T) Event[T] {
	mb.owned--
	for _, o := range m.members {
		if o == mb {
			continue
		}
		if v, ok := o.entries[key]; ok {
			m.owner[key] = o
			o.owned++
			m.log.Info("key handed over to the next member holding it", "key", key, "from", mb.cfg.Name, "member", o.cfg.Name)
			return Event[T]{Kind: EventUpdate, Key: key, Value: v, Old: old}
		}
	}
	delete(m.owner, key)
	return Event[T]{Kind: EventDelete, Key: key, Old: old}
}

func (m *MultiCache[T]) emit(events ...Event[T]) {
	if m.cfg.OnEvent == nil {
		return
	}
	for _, ev := range events {
		m.cfg.OnEvent(ev)
	}
}

// Remove stops the member name and takes its entries out of the view: a
// delete for each key it provided (or an update, where another member
// holds the key too). It returns false when there is no such member. It
// must not be called from OnEvent.
func (m *MultiCache[T]) Remove(name string) bool {
	m.mu.Lock()
	mb, ok := m.byName[name]
	if ok {
		delete(m.byName, name) // the name is free again at once
	}
	m.mu.Unlock()
	if !ok {
		return false
	}
	mb.cancel()
	<-mb.done // no event of the member is under way after this
	m.emitMu.Lock()
	defer m.emitMu.Unlock()
	m.mu.Lock()
	var out []Event[T]
	for _, key := range slices.Sorted(maps.Keys(mb.entries)) {
		if m.owner[key] == mb {
			out = append(out, m.releaseLocked(mb, key, mb.entries[key]))
		}
	}
	mb.entries = nil
	m.members = slices.DeleteFunc(m.members, func(o *member[T]) bool { return o == mb })
	m.mu.Unlock()
	m.emit(out...)
	m.log.Info("member removed", "member", name, "events", len(out))
	return true
}

// Close stops every member and waits for them; the view keeps its entries
// and Add fails afterwards. It must not be called from OnEvent.
func (m *MultiCache[T]) Close() {
	m.mu.Lock()
	m.closed = true
	members := slices.Clone(m.members)
	m.mu.Unlock()
	for _, mb := range members {
		mb.cancel()
	}
	for _, mb := range members {
		<-mb.done
	}
}

// Synced is closed once member name's first listing is in the view; nil
// (never ready) when there is no such member.
func (m *MultiCache[T]) Synced(name string) <-chan struct{} {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if mb, ok := m.byName[name]; ok {
		return mb.cache.Synced()
	}
	return nil
}

// Status reports every member, in the order they were added.
func (m *MultiCache[T]) Status() []MemberStatus {
	type one struct {
		mb    *member[T]
		owned int
	}
	m.mu.RLock()
	var ms []one
	for _, mb := range m.members {
		if m.byName[mb.cfg.Name] == mb { // not being removed
			ms = append(ms, one{mb, mb.owned})
		}
	}
	m.mu.RUnlock()
	out := make([]MemberStatus, 0, len(ms))
	for _, o := range ms {
		cs := o.mb.cache.Status()
		out = append(out, MemberStatus{
			Name: o.mb.cfg.Name, Prefix: o.mb.cfg.Prefix,
			Synced: cs.Synced, Connected: cs.Connected && !o.mb.stopped.Load(),
			Entries: o.owned, Refused: int(o.mb.refused.Load()), Skipped: int(o.mb.skipped.Load()),
			Revision: cs.Revision, LastError: cs.LastError, LastErrorAt: cs.LastErrorAt, LastEventAt: cs.LastEventAt,
		})
	}
	return out
}

// Get returns the value at key (canonical).
func (m *MultiCache[T]) Get(key string) (T, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if mb, ok := m.owner[key]; ok {
		return mb.entries[key], true
	}
	var zero T
	return zero, false
}

// Owner returns the name of the member providing key.
func (m *MultiCache[T]) Owner(key string) (string, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if mb, ok := m.owner[key]; ok {
		return mb.cfg.Name, true
	}
	return "", false
}

// Len returns the number of keys in the view.
func (m *MultiCache[T]) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.owner)
}

// Snapshot returns a copy of the view.
func (m *MultiCache[T]) Snapshot() map[string]T {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[string]T, len(m.owner))
	for k, mb := range m.owner {
		out[k] = mb.entries[k]
	}
	return out
}

// Range calls f for each entry of the view until it returns false,
// holding a read lock: f must not call Add, Remove or Close.
func (m *MultiCache[T]) Range(f func(key string, v T) bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for k, mb := range m.owner {
		if !f(k, mb.entries[k]) {
			return
		}
	}
}

// RangeMember is Range over the entries member name provides, holding a
// read lock: f must not call Add, Remove or Close.
func (m *MultiCache[T]) RangeMember(name string, f func(key string, v T) bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for k, mb := range m.owner {
		if mb.cfg.Name == name && !f(k, mb.entries[k]) {
			return
		}
	}
}
