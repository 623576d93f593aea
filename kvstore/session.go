package kvstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultSessionTTL is the lease TTL of a session: how long a node's keys
// outlive the node when it dies without cleaning up.
const DefaultSessionTTL = 15 * time.Second

// SessionConfig tunes a Session.
type SessionConfig struct {
	// TTL of the lease; etcd rounds very small values up to its minimum.
	TTL time.Duration
	// Logger; nil uses the client's.
	Logger *slog.Logger
}

// Guard returns the conditions under which a key may be (re-)written. It is
// evaluated inside the same transaction as the write, on the first write and
// on every restore after a lost lease.
type Guard func() []clientv3.Cmp

// Session owns a lease and the keys a node wrote under it. etcd deletes the
// keys when the lease expires (the node is gone); while the session lives it
// keeps the lease alive, and when the lease is lost anyway — etcd restarted
// from an old snapshot, a partition longer than the TTL, someone revoked it —
// it grants a new lease and writes every registered key again, by itself.
type Session struct {
	c   *Client
	ttl time.Duration
	log *slog.Logger

	mu    sync.Mutex
	lease clientv3.LeaseID
	gen   uint64        // incremented on every new lease
	genCh chan struct{} // closed and replaced when gen changes
	keys  map[string]sessionKey
	// writing counts this session's writes in flight, by key (Defend).
	writing map[string]int

	cancel context.CancelFunc
	// runCtx lives as long as the session (ends with Close or Detach).
	runCtx context.Context
	done   chan struct{}
}

type sessionKey struct {
	value  string
	guard  Guard
	onLost func(key string)
}

// NewSession grants a lease and starts keeping it alive until Close or
// until ctx is cancelled.
func (c *Client) NewSession(ctx context.Context, cfg SessionConfig) (*Session, error) {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultSessionTTL
	}
	if cfg.TTL < time.Second {
		return nil, fmt.Errorf("%w: session TTL %s is below one second", ErrInvalidConfig, cfg.TTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = c.log
	}
	s := &Session{
		c: c, ttl: cfg.TTL, log: cfg.Logger,
		keys:    map[string]sessionKey{},
		writing: map[string]int{},
		genCh:   make(chan struct{}),
		done:    make(chan struct{}),
	}
	lease, err := s.grant(ctx)
	if err != nil {
		return nil, err
	}
	s.lease = lease
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel, s.runCtx = cancel, rctx
	go s.run(rctx)
	return s, nil
}

func (s *Session) grant(ctx context.Context) (clientv3.LeaseID, error) {
	ctx, cancel := s.c.reqCtx(ctx)
	defer cancel()
	resp, err := s.c.lease.Grant(ctx, int64((s.ttl+time.Second-1)/time.Second))
	if err != nil {
		return 0, fmt.Errorf("granting a %s lease: %w", s.ttl, err)
	}
	return resp.ID, nil
}

// Lease returns the current lease, for writes this package does not wrap.
// It changes when the session restores itself.
func (s *Session) Lease() clientv3.LeaseID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease
}

// Generation counts the leases this session has had (1 at the start); it
// grows each time the session restores its keys under a new lease.
func (s *Session) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen + 1
}

// Put validates rec and writes it at key under the session's lease, and
// keeps it there until Delete or Close.
func (s *Session) Put(ctx context.Context, key string, rec Record) error {
	data, err := Encode(rec)
	if err != nil {
		return err
	}
	_, err = s.PutIf(ctx, key, data, nil, nil, nil)
	return err
}

// PutIf writes value at key under the lease, in one transaction with the
// also operations, if the conditions cond hold; it reports whether the write
// happened and registers the key for restoring. The also operations (writes
// that must happen together with this one, such as a new identity beside
// its reference) are not leased and not restored. After a lost lease the
// key is written again only if guard's conditions (nil: none) still hold;
// otherwise it is dropped and onLost (if any) is called.
func (s *Session) PutIf(ctx context.Context, key string, value []byte, cond []clientv3.Cmp, guard Guard, onLost func(string), also ...clientv3.Op) (bool, error) {
	// Defend leaves a key alone while this session is writing it: the
	// watch may show the new value before it is registered.
	s.mu.Lock()
	s.writing[key]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.writing[key]--; s.writing[key] == 0 {
			delete(s.writing, key)
		}
		s.mu.Unlock()
	}()
	for {
		s.mu.Lock()
		lease, gen, genCh := s.lease, s.gen, s.genCh
		s.mu.Unlock()
		ops := append(also[:len(also):len(also)], clientv3.OpPut(key, string(value), clientv3.WithLease(lease)))
		rctx, cancel := s.c.reqCtx(ctx)
		resp, err := s.c.kv.Txn(rctx).If(cond...).Then(ops...).Commit()
		cancel()
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				// The lease is gone and the run loop is granting a new
				// one: wait for it and try again.
				if err := s.waitGen(ctx, genCh); err != nil {
					return false, fmt.Errorf("writing %s: %w", key, err)
				}
				continue
			}
			return false, fmt.Errorf("writing %s: %w", key, err)
		}
		if !resp.Succeeded {
			return false, nil
		}
		sk := sessionKey{value: string(value), guard: guard, onLost: onLost}
		s.mu.Lock()
		s.keys[key] = sk
		changed := s.gen != gen
		s.mu.Unlock()
		if changed {
			// A restore ran between our write and our registration and
			// did not see this key: restore it ourselves.
			s.restoreOne(ctx, key, sk)
		}
		return true, nil
	}
}

func (s *Session) waitGen(ctx context.Context, genCh chan struct{}) error {
	select {
	case <-genCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a new lease: %w", ctx.Err())
	case <-s.done:
		return fmt.Errorf("session closed")
	}
}

// restoreOne rewrites one registered key under the current lease until it
// sticks to a lease that did not change meanwhile.
func (s *Session) restoreOne(ctx context.Context, key string, sk sessionKey) {
	for {
		s.mu.Lock()
		lease, gen, genCh := s.lease, s.gen, s.genCh
		cur, still := s.keys[key]
		s.mu.Unlock()
		if !still {
			return
		}
		// What is registered now: a Put may have replaced sk meanwhile.
		sk = cur
		var cmps []clientv3.Cmp
		if sk.guard != nil {
			cmps = sk.guard()
		}
		rctx, cancel := s.c.reqCtx(ctx)
		resp, err := s.c.kv.Txn(rctx).If(cmps...).Then(clientv3.OpPut(key, sk.value, clientv3.WithLease(lease))).Commit()
		cancel()
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) && s.waitGen(ctx, genCh) == nil {
				continue
			}
			s.log.Warn("re-writing a key after a concurrent restore failed; it returns with the next restore", "key", key, "err", err)
			return
		}
		if !resp.Succeeded {
			s.mu.Lock()
			delete(s.keys, key)
			s.mu.Unlock()
			s.log.Warn("session key not restored: its guard no longer holds", "key", key)
			if sk.onLost != nil {
				sk.onLost(key)
			}
			return
		}
		s.mu.Lock()
		changed := s.gen != gen
		s.mu.Unlock()
		if !changed {
			return
		}
	}
}

// Delete forgets key and deletes it from etcd.
func (s *Session) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	delete(s.keys, key)
	s.mu.Unlock()
	return s.c.Delete(ctx, key)
}

// Keys returns the number of keys the session keeps.
func (s *Session) Keys() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// Close stops the keepalive and revokes the lease, which deletes every key
// of the session at once.
func (s *Session) Close(ctx context.Context) error {
	s.cancel()
	<-s.done
	s.mu.Lock()
	lease := s.lease
	s.keys = map[string]sessionKey{}
	s.mu.Unlock()
	rctx, cancel := s.c.reqCtx(ctx)
	defer cancel()
	if _, err := s.c.lease.Revoke(rctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoking lease %x: %w", lease, err)
	}
	return nil
}

// Defend watches the prefixes holding this session's keys and writes a key
// again when it vanishes or changes under the session: someone deleted or
// overwrote a record only its owner should write (an operator by mistake,
// a compromised node before etcd's roles stopped it). The rewrite is what
// the session registered, under its current lease; a key the session
// itself deletes (Delete, Close) is forgotten first and so left alone.
// Rewrites of one key are at least a second apart, so two writers
// fighting over a key cannot make a storm. Defend returns at once; the
// watches end with the session.
func (s *Session) Defend(prefixes ...string) {
	for _, p := range prefixes {
		go s.defend(p)
	}
}

func (s *Session) defend(prefix string) {
	ctx := s.runCtx
	last := map[string]time.Time{}
	for ctx.Err() == nil {
		wch := s.c.watcher.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix())
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				s.mu.Lock()
				sk, mine := s.keys[key]
				lease, busy := s.lease, s.writing[key] > 0
				s.mu.Unlock()
				if !mine || busy {
					continue
				}
				if ev.Type == clientv3.EventTypePut && string(ev.Kv.Value) == sk.value && clientv3.LeaseID(ev.Kv.Lease) == lease {
					continue // our own write
				}
				if time.Since(last[key]) < time.Second {
					continue
				}
				last[key] = time.Now()
				what := "deleted"
				if ev.Type == clientv3.EventTypePut {
					what = "overwritten"
				}
				s.log.Warn("a key this node owns was "+what+" by someone else; writing it again", "key", key)
				s.restoreOne(ctx, key, sk)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second): // the watch broke: watch again
		}
	}
}

// Detach stops keeping the lease alive without revoking it: the keys stay
// until the lease expires on its own, so a process that stops and comes
// back within the TTL finds its records still there (Close is the leave:
// it removes them at once). Detach returns once the keepalive has ended;
// the session must not be used afterwards.
func (s *Session) Detach() {
	s.cancel()
	<-s.done
}

func (s *Session) run(ctx context.Context) {
	defer close(s.done)
	bo := newBackoff(200*time.Millisecond, 5*time.Second)
	for {
		lease := s.Lease()
		ch, err := s.c.lease.KeepAlive(ctx, lease)
		if err == nil {
			// The channel closes when the lease is gone (expired,
			// revoked) or ctx ends; the client retries connection errors
			// itself in between.
			for range ch {
				bo.reset()
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("lease lost, restoring session keys under a new lease", "lease", fmt.Sprintf("%x", lease), "err", err)
		for !s.restore(ctx) {
			if !bo.sleep(ctx) {
				return
			}
		}
	}
}

// restore grants a new lease and rewrites every registered key under it.
func (s *Session) restore(ctx context.Context) bool {
	lease, err := s.grant(ctx)
	if err != nil {
		s.log.Warn("cannot grant a new lease yet", "err", err)
		return false
	}
	s.mu.Lock()
	s.lease = lease
	s.gen++
	close(s.genCh)
	s.genCh = make(chan struct{})
	snapshot := make(map[string]sessionKey, len(s.keys))
	for k, v := range s.keys {
		snapshot[k] = v
	}
	s.mu.Unlock()

	var lost []string
	for key, sk := range snapshot {
		var cmps []clientv3.Cmp
		if sk.guard != nil {
			cmps = sk.guard()
		}
		rctx, cancel := s.c.reqCtx(ctx)
		resp, err := s.c.kv.Txn(rctx).If(cmps...).Then(clientv3.OpPut(key, sk.value, clientv3.WithLease(lease))).Commit()
		cancel()
		if err != nil {
			// Keep the new lease; the next round of the run loop will
			// notice if it dies, and a failed write is retried by
			// restoring again.
			s.log.Warn("restoring key failed", "key", key, "err", err)
			if rerr := s.revokeQuietly(lease); rerr != nil {
				s.log.Debug("revoking half-restored lease", "err", rerr)
			}
			return false
		}
		if !resp.Succeeded {
			lost = append(lost, key)
		}
	}
	s.mu.Lock()
	for _, k := range lost {
		delete(s.keys, k)
	}
	s.mu.Unlock()
	for _, k := range lost {
		s.log.Warn("session key not restored: its guard no longer holds", "key", k)
		if cb := snapshot[k].onLost; cb != nil {
			cb(k)
		}
	}
	s.log.Info("session restored", "lease", fmt.Sprintf("%x", lease), "keys", len(snapshot)-len(lost))
	return true
}

func (s *Session) revokeQuietly(lease clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.c.timeout)
	defer cancel()
	_, err := s.c.lease.Revoke(ctx, lease)
	return err
}

// backoff is an exponential delay between retries.
type backoff struct{ min, max, cur time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) reset() { b.cur = b.min }

// sleep waits the current delay and doubles it; false when ctx ended.
func (b *backoff) sleep(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur *= 2
	if b.cur > b.max {
		b.cur = b.max
	}
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
