// Package mirror copies one remote cluster's records from its etcd into
// the local etcd, under weft/v1/mirror/<cluster>/ (kvstore.MirrorPrefix),
// as Cilium's KVStoreMesh does: the local agents then watch only their own
// etcd, and the remote etcd sees one set of watches per connected cluster
// instead of one per node.
//
// What is copied is what the remote cluster may speak for
// (kvstore.CheckRemote): its cluster record, its nodes, endpoints and
// revocations, and the identities of its range. Each record is decoded and
// validated before it is copied, byte for byte; one that does not decode,
// or is not the cluster's to give, is logged, counted and left out. Grants,
// tokens, policies and IPAM are never copied.
//
// The copy follows the remote by list+watch (kvstore.Cache). A remote
// outage leaves the copy as it is; when the remote is back, what changed
// meanwhile is written, what vanished deleted. The mirror compares its
// whole prefix with the remote's records after every relisting of the
// remote, after a failed local write and periodically, so the copy
// converges whatever happened to either etcd. It writes nothing outside
// its prefix, and keeps a status key (kvstore.MirrorStatus) there.
package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/kvstore"
)

// ErrInvalidConfig is wrapped by configuration errors.
var ErrInvalidConfig = errors.New("mirror: invalid configuration")

// Defaults of Config.
const (
	DefaultProbeInterval  = 5 * time.Second
	DefaultStatusInterval = 10 * time.Second
	DefaultResyncInterval = 5 * time.Minute
	DefaultRequestTimeout = 10 * time.Second
)

// etcd refuses a transaction of more than 128 operations (--max-txn-ops)
// or about 1.5 MiB; the mirror stays well below both.
const (
	maxTxnOps   = 100
	maxTxnBytes = 512 << 10
)

// Config of a mirror.
type Config struct {
	// Cluster is the remote cluster's name and ClusterID its id: the
	// records copied must be its own (kvstore.CheckRemote).
	Cluster   string
	ClusterID int
	// Remote reads the remote cluster's etcd (a read-only credential is
	// enough: kvstore.RemoteClusterRole).
	Remote kvstore.Source
	// Local writes the local etcd, under kvstore.MirrorPrefix(Cluster)
	// only (the admin credential: node roles may only read there).
	Local clientv3.KV
	// Logger; nil discards.
	Logger *slog.Logger
	// ProbeInterval is how often the remote etcd is asked a one-key read
	// while its watches are quiet, so that an outage shows in the status;
	// 0 means DefaultProbeInterval.
	ProbeInterval time.Duration
	// StatusInterval is how often at least the status key is rewritten
	// (its heartbeat); 0 means DefaultStatusInterval. Changes of the
	// status are written sooner, at most once per second.
	StatusInterval time.Duration
	// ResyncInterval is how often the whole copy is compared with the
	// remote's records besides after every relisting; 0 means
	// DefaultResyncInterval.
	ResyncInterval time.Duration
	// RequestTimeout bounds each request to the local etcd; 0 means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
}

// kind is one prefix of the remote that the mirror copies.
type kind struct {
	name   string
	prefix string // a key prefix, or the key itself when single
	single bool
	cache  *kvstore.Cache[[]byte]
	// listings the writer has taken into account (writer only).
	listings int
}

func (k *kind) holds(key string) bool {
	if k.single {
		return key == k.prefix
	}
	return strings.HasPrefix(key, k.prefix)
}

// Mirror copies one remote cluster into the local etcd; Run does it.
type Mirror struct {
	cfg       Config
	log       *slog.Logger
	prefix    string // kvstore.MirrorPrefix(cluster)
	statusKey string
	kinds     []*kind
	tick      time.Duration
	kick      chan struct{}
	seed      maphash.Seed

	skipped, refused atomic.Int64

	mu        sync.Mutex
	dirty     map[string]struct{} // canonical keys changed since the last write
	full      bool                // compare the whole prefix next time
	delivered int64               // newest remote revision whose changes are in dirty
	// status
	synced       bool
	revision     int64
	localErr     string
	localErrAt   time.Time
	lastChangeAt time.Time

	// The writer's own state (Run's goroutine only).
	local       map[string]uint64 // mirror key → hash of its value in the local etcd
	lastFull    time.Time
	lastWritten kvstore.MirrorStatus
	lastWrite   time.Time
}

// New checks cfg and makes a mirror.
func New(cfg Config) (*Mirror, error) {
	if err := kvstore.ValidateName("cluster", cfg.Cluster); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if cfg.ClusterID < 1 || cfg.ClusterID > kvstore.MaxClusterID {
		return nil, fmt.Errorf("%w: cluster %s: id %d out of range, must be 1..%d", ErrInvalidConfig, cfg.Cluster, cfg.ClusterID, kvstore.MaxClusterID)
	}
	if cfg.Remote == nil || cfg.Local == nil {
		return nil, fmt.Errorf("%w: cluster %s: the mirror needs a source of the remote etcd and a writer of the local one", ErrInvalidConfig, cfg.Cluster)
	}
	if cfg.ProbeInterval < 0 || cfg.StatusInterval < 0 || cfg.ResyncInterval < 0 || cfg.RequestTimeout < 0 {
		return nil, fmt.Errorf("%w: cluster %s: negative interval or timeout", ErrInvalidConfig, cfg.Cluster)
	}
	cfg.ProbeInterval = cmpOr(cfg.ProbeInterval, DefaultProbeInterval)
	cfg.StatusInterval = cmpOr(cfg.StatusInterval, DefaultStatusInterval)
	cfg.ResyncInterval = cmpOr(cfg.ResyncInterval, DefaultResyncInterval)
	cfg.RequestTimeout = cmpOr(cfg.RequestTimeout, DefaultRequestTimeout)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mirror{
		cfg: cfg, log: log.With("mirror", cfg.Cluster),
		prefix: kvstore.MirrorPrefix(cfg.Cluster), statusKey: kvstore.MirrorStatusKey(cfg.Cluster),
		tick: min(time.Second, cfg.StatusInterval), kick: make(chan struct{}, 1), seed: maphash.MakeSeed(),
		dirty: map[string]struct{}{},
	}
	c := cfg.Cluster
	kinds := []struct {
		name, prefix string
		single       bool
		decode       func(string, []byte) ([]byte, error)
	}{
		// The probe rides on the first: one per mirror is enough.
		{"nodes", kvstore.NodesPrefix + c + "/", false, validated(m, kvstore.NodeDecoder)},
		{"clusters", kvstore.ClusterKey(c), true, validated(m, kvstore.ClusterDecoder)},
		{"endpoints", kvstore.EndpointsPrefix + c + "/", false, validated(m, kvstore.EndpointDecoder)},
		// Identity numbers are not zero padded, so the cluster's range is
		// no key range: the whole prefix, filtered by CheckRemote.
		{"identities", kvstore.IdentityIDPrefix, false, validated(m, kvstore.IdentityDecoder)},
		{"revocations", kvstore.RevokedPrefix + c + "/", false, validated(m, kvstore.RevocationDecoder)},
		// The remote nodes' label grants, so that receiving agents can judge
		// each remote endpoint against its node's grant as they do locally.
		{"grants", kvstore.GrantsPrefix + c + "/", false, validated(m, kvstore.GrantDecoder)},
	}
	for i, kd := range kinds {
		k := &kind{name: kd.name, prefix: kd.prefix, single: kd.single}
		probe := time.Duration(0)
		if i == 0 {
			probe = cfg.ProbeInterval
		}
		cache, err := kvstore.NewCache(cfg.Remote, kvstore.CacheConfig[[]byte]{
			Name: "mirror:" + c + ":" + kd.name, Prefix: kd.prefix, Single: kd.single,
			Decode: kd.decode, Logger: log, ProbeInterval: probe,
			OnEvent:    func(ev kvstore.Event[[]byte]) { m.changed(ev.Key) },
			OnRevision: m.revisionDelivered,
		})
		if err != nil {
			return nil, err
		}
		k.cache = cache
		m.kinds = append(m.kinds, k)
	}
	return m, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// validated decodes and checks a remote value with dec and CheckRemote,
// and keeps its bytes: the copy is the remote's value as written, so
// optional fields this version does not know survive.
func validated[T any](m *Mirror, dec func(string, []byte) (T, error)) func(string, []byte) ([]byte, error) {
	return func(key string, data []byte) ([]byte, error) {
		v, err := dec(key, data)
		if err != nil {
			m.skipped.Add(1)
			return nil, err
		}
		if err := kvstore.CheckRemote(m.cfg.Cluster, m.cfg.ClusterID, key, v); err != nil {
			m.refused.Add(1)
			return nil, err
		}
		return bytes.Clone(data), nil
	}
}

func (m *Mirror) changed(key string) {
	m.mu.Lock()
	m.dirty[key] = struct{}{}
	m.mu.Unlock()
	m.poke()
}

func (m *Mirror) revisionDelivered(rev int64) {
	m.mu.Lock()
	m.delivered = max(m.delivered, rev)
	m.mu.Unlock()
	m.poke()
}

func (m *Mirror) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run mirrors until ctx ends; it returns ctx's error. Neither etcd being
// unreachable stops it: it keeps trying, and the copy stays as it is
// meanwhile.
func (m *Mirror) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, k := range m.kinds {
		wg.Add(1)
		go func() { defer wg.Done(); _ = k.cache.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	m.log.Info("mirroring", "cluster", m.cfg.Cluster, "id", m.cfg.ClusterID, "into", m.prefix)
	tick := time.NewTicker(m.tick)
	defer tick.Stop()
	delay, retryAt := 100*time.Millisecond, time.Time{}
	for {
		if m.remoteSynced() && !time.Now().Before(retryAt) {
			if err := m.reconcile(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				m.localFailed(err)
				m.log.Warn("writing the mirror failed, retrying", "err", err, "in", delay)
				retryAt = time.Now().Add(delay)
				delay = min(2*delay, 5*time.Second)
			} else {
				delay, retryAt = 100*time.Millisecond, time.Time{}
			}
		}
		m.writeStatus(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.kick:
		case <-tick.C:
		}
	}
}

// remoteSynced reports whether every prefix of the remote was listed:
// before that, the copy cannot be compared (nothing would be deleted
// rightly).
func (m *Mirror) remoteSynced() bool {
	for _, k := range m.kinds {
		select {
		case <-k.cache.Synced():
		default:
			return false
		}
	}
	return true
}

// reconcile writes what changed, or compares the whole prefix when due.
func (m *Mirror) reconcile(ctx context.Context) error {
	full := m.local == nil || time.Since(m.lastFull) >= m.cfg.ResyncInterval
	for _, k := range m.kinds {
		// A relisting (after a compaction, or of an etcd replaced) may
		// follow an outage in which the writer missed nothing but the
		// remote changed a lot: compare everything.
		if l := k.cache.Status().Listings; l != k.listings {
			k.listings = l
			full = true
		}
	}
	m.mu.Lock()
	full = full || m.full
	dirty := m.dirty
	m.dirty, m.full = map[string]struct{}{}, false
	rev := m.delivered
	m.mu.Unlock()
	var err error
	if full {
		err = m.resync(ctx)
	} else if len(dirty) > 0 {
		err = m.flush(ctx, dirty)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		// What a failed request did is unknown: compare all next time.
		m.full, m.synced = true, false
		return err
	}
	m.synced = true
	m.revision = max(m.revision, rev)
	return nil
}

// lookup returns the remote's validated value of key (canonical).
func (m *Mirror) lookup(key string) ([]byte, bool) {
	for _, k := range m.kinds {
		if k.holds(key) {
			return k.cache.Get(key)
		}
	}
	return nil, false
}

// flush writes the keys that changed.
func (m *Mirror) flush(ctx context.Context, dirty map[string]struct{}) error {
	b := m.newBatch(ctx)
	for _, key := range slices.Sorted(maps.Keys(dirty)) {
		mk := kvstore.MirrorKey(m.cfg.Cluster, key)
		data, ok := m.lookup(key)
		_, had := m.local[mk]
		switch {
		case ok:
			if err := b.put(mk, data); err != nil {
				return err
			}
		case had:
			if err := b.del(mk); err != nil {
				return err
			}
		}
	}
	return b.commit()
}

// resync lists the local copy and makes it equal to the remote's records.
func (m *Mirror) resync(ctx context.Context) error {
	desired := map[string][]byte{}
	for _, k := range m.kinds {
		for key, v := range k.cache.Snapshot() {
			desired[kvstore.MirrorKey(m.cfg.Cluster, key)] = v
		}
	}
	local, err := m.listLocal(ctx)
	if err != nil {
		return err
	}
	m.local = make(map[string]uint64, len(local))
	for mk, v := range local {
		m.local[mk] = maphash.Bytes(m.seed, v)
	}
	b := m.newBatch(ctx)
	for _, mk := range slices.Sorted(maps.Keys(local)) {
		if _, ok := desired[mk]; !ok {
			if err := b.del(mk); err != nil {
				return err
			}
		}
	}
	for _, mk := range slices.Sorted(maps.Keys(desired)) {
		if err := b.put(mk, desired[mk]); err != nil {
			return err
		}
	}
	if err := b.commit(); err != nil {
		return err
	}
	m.lastFull = time.Now()
	if b.puts+b.dels > 0 {
		m.log.Info("mirror compared with the remote", "written", b.puts, "deleted", b.dels, "records", len(desired))
	}
	return nil
}

// listLocal reads the mirror's prefix, page by page at one revision,
// leaving out the status key.
func (m *Mirror) listLocal(ctx context.Context) (map[string][]byte, error) {
	out := map[string][]byte{}
	end := clientv3.GetPrefixRangeEnd(m.prefix)
	key := m.prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		rctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
		resp, err := m.cfg.Local.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing %s in the local etcd: %w", m.prefix, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			if k := string(kv.Key); k != m.statusKey {
				out[k] = kv.Value
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// batch gathers writes into transactions of bounded size.
type batch struct {
	m          *Mirror
	ctx        context.Context
	ops        []clientv3.Op
	after      []func() // what each committed op changes in m.local
	bytes      int
	puts, dels int
}

func (m *Mirror) newBatch(ctx context.Context) *batch { return &batch{m: m, ctx: ctx} }

// mine refuses any key outside the mirror's records: the one place every
// write goes through.
func (b *batch) mine(mk string) error {
	if !strings.HasPrefix(mk, b.m.prefix) || mk == b.m.statusKey {
		return fmt.Errorf("mirror of %s: refusing to write %s, outside %s (a bug)", b.m.cfg.Cluster, mk, b.m.prefix)
	}
	return nil
}

// put writes data at mk unless the local etcd already holds it.
func (b *batch) put(mk string, data []byte) error {
	if err := b.mine(mk); err != nil {
		return err
	}
	sum := maphash.Bytes(b.m.seed, data)
	if cur, ok := b.m.local[mk]; ok && cur == sum {
		return nil
	}
	b.ops = append(b.ops, clientv3.OpPut(mk, string(data)))
	b.after = append(b.after, func() { b.m.local[mk] = sum })
	b.puts++
	return b.add(len(mk) + len(data))
}

func (b *batch) del(mk string) error {
	if err := b.mine(mk); err != nil {
		return err
	}
	b.ops = append(b.ops, clientv3.OpDelete(mk))
	b.after = append(b.after, func() { delete(b.m.local, mk) })
	b.dels++
	return b.add(len(mk))
}

func (b *batch) add(n int) error {
	b.bytes += n
	if len(b.ops) >= maxTxnOps || b.bytes >= maxTxnBytes {
		return b.commit()
	}
	return nil
}

// commit writes the gathered operations in one transaction.
func (b *batch) commit() error {
	if len(b.ops) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(b.ctx, b.m.cfg.RequestTimeout)
	_, err := b.m.cfg.Local.Txn(rctx).Then(b.ops...).Commit()
	cancel()
	if err != nil {
		return fmt.Errorf("writing %d changes of the mirror of %s to the local etcd: %w", len(b.ops), b.m.cfg.Cluster, err)
	}
	for _, f := range b.after {
		f()
	}
	b.m.mu.Lock()
	b.m.lastChangeAt = time.Now()
	b.m.mu.Unlock()
	b.ops, b.after, b.bytes = b.ops[:0], b.after[:0], 0
	return nil
}

func (m *Mirror) localFailed(err error) {
	m.mu.Lock()
	m.localErr, m.localErrAt = "local: "+err.Error(), time.Now()
	m.mu.Unlock()
}

// Status reports how the mirror stands (what it writes at the status
// key, Updated aside).
func (m *Mirror) Status() kvstore.MirrorStatus {
	st := kvstore.MirrorStatus{
		Version: kvstore.RecordVersion, Cluster: m.cfg.Cluster, ClusterID: m.cfg.ClusterID,
		Connected: true, Skipped: m.skipped.Load(), Refused: m.refused.Load(),
		HeartbeatSeconds: int((m.cfg.StatusInterval + time.Second - 1) / time.Second),
	}
	remoteSynced := true
	for _, k := range m.kinds {
		cs := k.cache.Status()
		st.Connected = st.Connected && cs.Connected
		remoteSynced = remoteSynced && cs.Synced
		if cs.LastError != "" && cs.LastErrorAt.After(st.LastErrorAt) {
			st.LastError, st.LastErrorAt = "remote: "+cs.LastError, cs.LastErrorAt
		}
		switch k.name {
		case "clusters":
			st.Counts.Clusters = cs.Entries
		case "nodes":
			st.Counts.Nodes = cs.Entries
		case "endpoints":
			st.Counts.Endpoints = cs.Entries
		case "identities":
			st.Counts.Identities = cs.Entries
		case "revocations":
			st.Counts.Revocations = cs.Entries
		case "grants":
			st.Counts.Grants = cs.Entries
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st.Synced = m.synced && remoteSynced
	st.Revision = m.revision
	st.LastChangeAt = m.lastChangeAt
	if m.localErr != "" && m.localErrAt.After(st.LastErrorAt) {
		st.LastError, st.LastErrorAt = m.localErr, m.localErrAt
	}
	return st
}

// writeStatus writes the status key when it changed (at most once a
// tick) or when its heartbeat is due.
func (m *Mirror) writeStatus(ctx context.Context) {
	now := time.Now()
	st := m.Status()
	since := now.Sub(m.lastWrite)
	if (st == m.lastWritten && since < m.cfg.StatusInterval) || since < m.tick {
		return
	}
	rec := st
	rec.Updated = now.UTC()
	data, err := kvstore.Encode(&rec)
	if err != nil { // a bug: the status is made here
		m.log.Error("encoding the mirror status", "err", err)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	_, err = m.cfg.Local.Put(rctx, m.statusKey, string(data))
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			m.localFailed(fmt.Errorf("writing %s: %w", m.statusKey, err))
		}
		// Try again at the next tick, not at every event meanwhile.
		m.lastWrite = now
		return
	}
	m.lastWritten, m.lastWrite = st, now
}
