package kvstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Source is what a cache reads from: the Get and Watch of an etcd client.
// *clientv3.Client satisfies it; so does a client of another cluster's etcd,
// which is how an agent watches several etcd clusters read-only: one cache
// per (source, prefix).
type Source interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan
}

// EventKind says what happened to a key.
type EventKind int

// Event kinds.
const (
	EventAdd EventKind = iota + 1
	EventUpdate
	EventDelete
)

func (k EventKind) String() string {
	switch k {
	case EventAdd:
		return "add"
	case EventUpdate:
		return "update"
	case EventDelete:
		return "delete"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one change seen by a cache. Value is the new value (add,
// update); Old is the previous one (update, delete).
type Event[T any] struct {
	Kind  EventKind
	Key   string
	Value T
	Old   T
}

// CacheConfig describes a cache.
type CacheConfig[T any] struct {
	// Name identifies the cache in logs, e.g. "nodes" or "nodes@west".
	Name string
	// Prefix is the key prefix to mirror, e.g. NodesPrefix.
	Prefix string
	// Decode turns a stored value into T. An error means the value is
	// logged with its key and skipped.
	Decode func(key string, value []byte) (T, error)
	// OnEvent receives every change, in revision order, from the cache's
	// goroutine; the cache already reflects the change when it is called.
	// Keep it short or hand the event off.
	OnEvent func(Event[T])
	// OnRevision, when set, is called from the cache's goroutine once every
	// change up to rev has been passed to OnEvent: after a listing, after
	// each watch response (the newest of its events' revisions: a
	// transaction's events come in one response), and on a progress
	// notification. A consumer that must know when a whole write is in
	// (policy apply --wait) uses it; a single event does not say that more
	// of the same revision follow.
	OnRevision func(rev int64)
	// Logger; nil discards.
	Logger *slog.Logger
	// PageSize of the listing; 0 means 1000.
	PageSize int64
	// Single makes Prefix one key rather than a prefix: the cache lists
	// and watches that key only. A remote cluster's read-only role may
	// allow its cluster record and nothing beside it, and a range read
	// would be refused.
	Single bool
	// ProbeInterval, when positive, makes Run read one key of the prefix
	// (count only, linearizable) whenever the cache heard nothing from
	// etcd for that long. A watch on a dead connection just waits, so
	// without it an outage shows only as silence; with it Status says
	// Connected=false within about two intervals. The probe also notices
	// an etcd that came back as another cluster or with an older revision
	// (restored from a backup): the cache then lists again, since a watch
	// from the old revision would miss the difference. 0 disables it
	// (each probe is a read-index round trip on the leader: a cache of the
	// local etcd, whose health the agent checks anyway, does without).
	ProbeInterval time.Duration
}

// CacheStatus is what a cache knows of its own health.
type CacheStatus struct {
	// Synced: the first listing is in.
	Synced bool
	// Connected: the last word from etcd (a listing, a watch response, a
	// probe) was an answer, not an error. False before the first answer.
	Connected bool
	// Entries held, and the etcd revision they reflect.
	Entries  int
	Revision int64
	// Listings completed: 1 after the first, one more after each relist
	// (after a compaction, or an etcd replaced by another).
	Listings int
	// Skipped counts values that did not decode, since Run started.
	Skipped int64
	// LastError is the newest error of a listing, watch or probe, and
	// when it happened; it stays after the cache recovers (Connected says
	// whether it still holds).
	LastError   string
	LastErrorAt time.Time
	// LastEventAt is when the cache last emitted an event.
	LastEventAt time.Time
}

// Cache mirrors one prefix of etcd in memory: it lists at a revision,
// watches from the next one, relists after a compaction (emitting the
// difference as events) and reconnects with backoff after errors. Readers
// see a consistent map; consumers get add/update/delete events.
type Cache[T any] struct {
	src Source
	cfg CacheConfig[T]
	log *slog.Logger

	// seed hashes stored values: a relisting tells an unchanged value by
	// its bytes, not its modification revision, which another etcd (one
	// restored from a backup) numbers differently.
	seed maphash.Seed

	mu      sync.RWMutex
	entries map[string]cacheEntry[T]
	rev     int64
	// clusterID is the etcd cluster the listing came from: a probe or a
	// new watch answered by another one means the etcd was replaced.
	clusterID   uint64
	st          CacheStatus // Connected, Listings, Skipped, errors, times
	heard       time.Time   // last answer from etcd, for the probe
	watchCancel context.CancelCauseFunc

	syncOnce sync.Once
	synced   chan struct{}
}

type cacheEntry[T any] struct {
	val T
	sum uint64 // maphash of the stored bytes
}

// errRelist ends a watch so that Run lists again.
var errRelist = errors.New("kvstore: etcd was replaced or restored, relisting")

// NewCache makes a cache; Run fills it.
func NewCache[T any](src Source, cfg CacheConfig[T]) (*Cache[T], error) {
	if src == nil {
		return nil, fmt.Errorf("%w: cache %q has no source", ErrInvalidConfig, cfg.Name)
	}
	if cfg.Prefix == "" || cfg.Decode == nil {
		return nil, fmt.Errorf("%w: cache %q needs a prefix and a decoder", ErrInvalidConfig, cfg.Name)
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 1000
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cache[T]{
		src: src, cfg: cfg, seed: maphash.MakeSeed(),
		log:     log.With("cache", cfg.Name, "prefix", cfg.Prefix),
		entries: map[string]cacheEntry[T]{},
		synced:  make(chan struct{}),
	}, nil
}

// Synced is closed once the first listing is in the cache.
func (c *Cache[T]) Synced() <-chan struct{} { return c.synced }

// Get returns the value at key.
func (c *Cache[T]) Get(key string) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[key]
	return e.val, ok
}

// Len returns the number of entries.
func (c *Cache[T]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// Revision is the etcd revision the cache reflects.
func (c *Cache[T]) Revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// Status reports the cache's health.
func (c *Cache[T]) Status() CacheStatus {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := c.st
	st.Entries = len(c.entries)
	st.Revision = c.rev
	select {
	case <-c.synced:
		st.Synced = true
	default:
	}
	return st
}

// answered records that etcd answered.
func (c *Cache[T]) answered() {
	c.mu.Lock()
	c.st.Connected = true
	c.heard = time.Now()
	c.mu.Unlock()
}

// failed records an error of etcd (or of reaching it).
func (c *Cache[T]) failed(what string, err error) {
	c.mu.Lock()
	c.st.Connected = false
	c.st.LastError = what + ": " + err.Error()
	c.st.LastErrorAt = time.Now()
	c.mu.Unlock()
}

// Snapshot returns a copy of the cache.
func (c *Cache[T]) Snapshot() map[string]T {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]T, len(c.entries))
	for k, e := range c.entries {
		out[k] = e.val
	}
	return out
}

// Range calls f for each entry until it returns false, holding a read lock:
// f must not call back into the cache's writers.
func (c *Cache[T]) Range(f func(key string, v T) bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for k, e := range c.entries {
		if !f(k, e.val) {
			return
		}
	}
}

// Run keeps the cache in step with etcd until ctx ends. It survives etcd
// being unreachable: the cache keeps its last contents meanwhile.
func (c *Cache[T]) Run(ctx context.Context) error {
	if c.cfg.ProbeInterval > 0 {
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); c.probe(pctx) }()
		defer func() { stop(); <-done }()
	}
	bo := newBackoff(100*time.Millisecond, 5*time.Second)
	for {
		rev, err := c.list(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.failed("listing", err)
			c.log.Warn("listing failed, retrying", "err", err)
			if !bo.sleep(ctx) {
				return ctx.Err()
			}
			continue
		}
		bo.reset()
		// Watch from rev+1; on errors re-watch from the last revision
		// seen; relist only when that revision has been compacted away,
		// or etcd is no longer the one listed.
		for {
			err := c.watch(ctx, rev+1)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, rpctypes.ErrCompacted) {
				c.log.Info("watch revision compacted, relisting", "from", rev+1)
				break
			}
			if errors.Is(err, errRelist) {
				c.log.Warn("etcd was replaced or restored from a backup, relisting", "from", rev+1)
				break
			}
			c.failed("watch", err)
			c.log.Warn("watch ended, re-watching", "err", err)
			if !bo.sleep(ctx) {
				return ctx.Err()
			}
			rev = c.Revision()
		}
	}
}

// probe reads one key whenever etcd has been silent for ProbeInterval,
// so that an outage shows in Status, and forces a relist when etcd
// answers as another cluster or from an older revision.
func (c *Cache[T]) probe(ctx context.Context) {
	every := c.cfg.ProbeInterval
	timeout := min(max(every, time.Second), 10*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.RLock()
		quiet := time.Since(c.heard) >= every
		rev, cid := c.rev, c.clusterID
		c.mu.RUnlock()
		if !quiet {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		// The prefix key itself: a role that may read the prefix may
		// read it, and it is one key however large the prefix.
		resp, err := c.src.Get(rctx, c.cfg.Prefix, clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.failed("probe", err)
			c.log.Debug("etcd does not answer the probe", "err", err)
			continue
		}
		c.answered()
		// rev was read before the request: a linearizable read cannot
		// answer from before it, unless etcd lost that history.
		if cid != 0 && resp.Header.ClusterId != cid || resp.Header.Revision < rev {
			c.log.Warn("etcd answers as another cluster or from an older revision",
				"clusterID", resp.Header.ClusterId, "listedClusterID", cid, "revision", resp.Header.Revision, "cacheRevision", rev)
			c.mu.Lock()
			if c.watchCancel != nil {
				c.watchCancel(errRelist)
			}
			c.mu.Unlock()
		}
	}
}

// list reads the prefix page by page at one revision and replaces the
// cache with it, emitting the difference.
func (c *Cache[T]) list(ctx context.Context) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(c.cfg.Prefix)
	key := c.cfg.Prefix
	var rev int64
	var cid uint64
	c.mu.RLock()
	old := c.entries
	c.mu.RUnlock()
	next := make(map[string]cacheEntry[T], len(old))
	var events []Event[T]
	for {
		var opts []clientv3.OpOption
		if !c.cfg.Single {
			opts = append(opts, clientv3.WithRange(end), clientv3.WithLimit(c.cfg.PageSize))
		}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.src.Get(ctx, key, opts...)
		if err != nil {
			return 0, fmt.Errorf("listing %s: %w", c.cfg.Prefix, err)
		}
		if rev == 0 {
			rev, cid = resp.Header.Revision, resp.Header.ClusterId
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			sum := maphash.Bytes(c.seed, kv.Value)
			prev, had := old[k]
			if had && prev.sum == sum {
				// Unchanged since we last decoded it (same bytes,
				// whatever revision another etcd gave them).
				next[k] = prev
				continue
			}
			v, err := c.cfg.Decode(k, kv.Value)
			if err != nil {
				c.skip(k, err)
				continue
			}
			next[k] = cacheEntry[T]{val: v, sum: sum}
			if had {
				events = append(events, Event[T]{Kind: EventUpdate, Key: k, Value: v, Old: prev.val})
			} else {
				events = append(events, Event[T]{Kind: EventAdd, Key: k, Value: v})
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for k, e := range old {
		if _, ok := next[k]; !ok {
			events = append(events, Event[T]{Kind: EventDelete, Key: k, Old: e.val})
		}
	}
	c.mu.Lock()
	c.entries = next
	c.rev, c.clusterID = rev, cid
	c.st.Listings++
	c.st.Connected = true
	c.heard = time.Now()
	c.mu.Unlock()
	c.emit(events...)
	if c.cfg.OnRevision != nil {
		c.cfg.OnRevision(rev)
	}
	c.syncOnce.Do(func() { close(c.synced) })
	return rev, nil
}

func (c *Cache[T]) skip(key string, err error) {
	c.mu.Lock()
	c.st.Skipped++
	c.mu.Unlock()
	c.log.Warn("skipping value that does not decode", "key", key, "err", err)
}

func (c *Cache[T]) emit(events ...Event[T]) {
	if len(events) == 0 {
		return
	}
	c.mu.Lock()
	c.st.LastEventAt = time.Now()
	c.mu.Unlock()
	if c.cfg.OnEvent == nil {
		return
	}
	for _, ev := range events {
		c.cfg.OnEvent(ev)
	}
}

var errWatchClosed = errors.New("kvstore: watch channel closed")

func (c *Cache[T]) watch(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancelCause(clientv3.WithRequireLeader(ctx))
	defer cancel(nil)
	c.mu.Lock()
	c.watchCancel = cancel
	cid := c.clusterID
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.watchCancel = nil
		c.mu.Unlock()
	}()
	opts := []clientv3.OpOption{clientv3.WithRev(from), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify()}
	if !c.cfg.Single {
		opts = append(opts, clientv3.WithPrefix())
	}
	ch := c.src.Watch(wctx, c.cfg.Prefix, opts...)
	for resp := range ch {
		if cause := context.Cause(wctx); errors.Is(cause, errRelist) {
			return errRelist
		}
		if err := resp.Err(); err != nil {
			return err
		}
		if resp.Canceled {
			return fmt.Errorf("watch canceled by the server")
		}
		c.answered()
		if resp.Created {
			// The answer to the watch's creation says which etcd this is
			// and where it stands: behind the listing, or another
			// cluster, and watching from our revision would miss what
			// differs.
			if cid != 0 && resp.Header.ClusterId != cid || resp.Header.Revision < from-1 {
				return errRelist
			}
			continue
		}
		var done int64 // every change up to done has been emitted
		for _, ev := range resp.Events {
			c.apply(ev)
			done = max(done, ev.Kv.ModRevision)
		}
		if resp.IsProgressNotify() || len(resp.Events) > 0 {
			c.mu.Lock()
			if resp.Header.Revision > c.rev {
				c.rev = resp.Header.Revision
			}
			c.mu.Unlock()
		}
		if resp.IsProgressNotify() {
			done = resp.Header.Revision
		}
		if done > 0 && c.cfg.OnRevision != nil {
			c.cfg.OnRevision(done)
		}
	}
	if errors.Is(context.Cause(wctx), errRelist) {
		return errRelist
	}
	return errWatchClosed
}

func (c *Cache[T]) apply(ev *clientv3.Event) {
	k := string(ev.Kv.Key)
	c.mu.Lock()
	prev, had := c.entries[k]
	if ev.Kv.ModRevision > c.rev {
		c.rev = ev.Kv.ModRevision
	}
	switch ev.Type {
	case clientv3.EventTypeDelete:
		delete(c.entries, k)
		c.mu.Unlock()
		if had {
			c.emit(Event[T]{Kind: EventDelete, Key: k, Old: prev.val})
		}
		return
	}
	c.mu.Unlock()
	v, err := c.cfg.Decode(k, ev.Kv.Value)
	if err != nil {
		c.skip(k, err)
		// The old value is no longer the truth: forget it rather than
		// act on stale data.
		if had {
			c.mu.Lock()
			delete(c.entries, k)
			c.mu.Unlock()
			c.emit(Event[T]{Kind: EventDelete, Key: k, Old: prev.val})
		}
		return
	}
	c.mu.Lock()
	c.entries[k] = cacheEntry[T]{val: v, sum: maphash.Bytes(c.seed, ev.Kv.Value)}
	c.mu.Unlock()
	if had {
		c.emit(Event[T]{Kind: EventUpdate, Key: k, Value: v, Old: prev.val})
	} else {
		c.emit(Event[T]{Kind: EventAdd, Key: k, Value: v})
	}
}

// Decoders for caches that also check that the key matches the record, so
// a record cannot claim to be somebody else's.

// NodeDecoder decodes a node and checks its key.
func NodeDecoder(key string, data []byte) (Node, error) {
	n, err := DecodeNode(data)
	if err != nil {
		return n, err
	}
	if want := n.Key(); key != want {
		return n, fmt.Errorf("%w: node record for %s/%s stored at %s (want %s)", ErrInvalidRecord, n.Cluster, n.Name, key, want)
	}
	return n, nil
}

// EndpointDecoder decodes an endpoint and checks its key.
func EndpointDecoder(key string, data []byte) (Endpoint, error) {
	e, err := DecodeEndpoint(data)
	if err != nil {
		return e, err
	}
	if want := e.Key(); key != want {
		return e, fmt.Errorf("%w: endpoint record %s stored at %s (want %s)", ErrInvalidRecord, e.IP, key, want)
	}
	return e, nil
}

// ClusterDecoder decodes a cluster and checks its key.
func ClusterDecoder(key string, data []byte) (Cluster, error) {
	c, err := DecodeCluster(data)
	if err != nil {
		return c, err
	}
	if want := ClusterKey(c.Name); key != want {
		return c, fmt.Errorf("%w: cluster record %s stored at %s (want %s)", ErrInvalidRecord, c.Name, key, want)
	}
	return c, nil
}

// PolicyDecoder decodes a policy and checks its key.
func PolicyDecoder(key string, data []byte) (Policy, error) {
	p, err := DecodePolicy(data)
	if err != nil {
		return p, err
	}
	if want := PolicyKey(p.Name); key != want {
		return p, fmt.Errorf("%w: policy record %s stored at %s (want %s)", ErrInvalidRecord, p.Name, key, want)
	}
	return p, nil
}

// IdentityDecoder decodes identities/id/<n> and checks n.
func IdentityDecoder(key string, data []byte) (Identity, error) {
	id, err := DecodeIdentity(data)
	if err != nil {
		return id, err
	}
	if want := IdentityIDKey(id.ID); key != want {
		return id, fmt.Errorf("%w: identity %d stored at %s (want %s)", ErrInvalidRecord, id.ID, key, want)
	}
	return id, nil
}
