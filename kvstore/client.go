// Package kvstore is Weft's control-plane store on etcd: a client with TLS and
// timeouts, the key schema and its typed, versioned records, leased sessions
// for node-owned keys, list+watch caches, node CIDR allocation (IPAM) and join
// tokens. It knows nothing of the kernel; the agent wires it to the datapath.
//
// Every value is JSON with a "version" field. A value this code cannot decode
// (corrupt, or written by a newer Weft) is logged with its key and skipped by
// the caches, never fatal: the agent keeps running on what it understands.
package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/pki"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrNotFound           = errors.New("kvstore: key not found")
	ErrInvalidConfig      = errors.New("kvstore: invalid configuration")
	ErrInvalidRecord      = errors.New("kvstore: invalid record")
	ErrUnsupportedVersion = errors.New("kvstore: unsupported record version")
	ErrInvalidKey         = errors.New("kvstore: invalid key")
	ErrConflict           = errors.New("kvstore: conflicting write")
)

// Defaults for Config fields left zero.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Config says how to reach etcd.
type Config struct {
	// Endpoints are etcd client URLs, e.g. https://127.0.0.1:2379.
	Endpoints []string
	// CAFile verifies the server; CertFile/KeyFile are the client's
	// certificate. With CAFile set, endpoints must use https.
	CAFile, CertFile, KeyFile string
	// Username and Password for etcd's own authentication, if enabled.
	Username, Password string
	// DialTimeout bounds the first connection; RequestTimeout bounds every
	// single request made through the helpers of this package.
	DialTimeout, RequestTimeout time.Duration
	// Logger receives the store's diagnostics; nil discards them.
	Logger *slog.Logger
}

// Validate checks the configuration without touching the network.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: no etcd endpoints given (set at least one, e.g. https://127.0.0.1:2379)", ErrInvalidConfig)
	}
	tlsWanted := c.CAFile != "" || c.CertFile != ""
	for _, e := range c.Endpoints {
		switch {
		case strings.HasPrefix(e, "https://"):
			if !tlsWanted {
				return fmt.Errorf("%w: endpoint %s uses https but no CA file is set", ErrInvalidConfig, e)
			}
		case strings.HasPrefix(e, "http://"):
			if tlsWanted {
				return fmt.Errorf("%w: endpoint %s is plaintext http but TLS files are set; use https://", ErrInvalidConfig, e)
			}
		default:
			return fmt.Errorf("%w: endpoint %q must start with https:// (or http:// for a plaintext etcd)", ErrInvalidConfig, e)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("%w: client certificate and key must be given together (cert %q, key %q)", ErrInvalidConfig, c.CertFile, c.KeyFile)
	}
	if c.CertFile != "" && c.CAFile == "" {
		return fmt.Errorf("%w: a client certificate needs the CA file that verifies the server", ErrInvalidConfig)
	}
	if (c.Username == "") != (c.Password == "") {
		return fmt.Errorf("%w: username and password must be given together", ErrInvalidConfig)
	}
	if c.DialTimeout < 0 || c.RequestTimeout < 0 {
		return fmt.Errorf("%w: timeouts must not be negative", ErrInvalidConfig)
	}
	return nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	if c.CAFile == "" {
		return nil, nil
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: reading CA file: %w", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrInvalidConfig, c.CAFile)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if c.CertFile != "" {
		// Read at every handshake (when the files changed), so a renewed
		// node certificate is used on the next connection.
		kp, err := pki.NewKeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: loading client certificate %s: %w", ErrInvalidConfig, c.CertFile, err)
		}
		tc.GetClientCertificate = kp.GetClientCertificate
	}
	return tc, nil
}

// Client is a connection to etcd plus the request timeout and logger that
// every helper of this package uses.
type Client struct {
	// The helpers reach etcd only through these three interfaces, never
	// through the concrete client, so that reads and watches can come from
	// another etcd (a remote cluster's, read-only) or a wrapper without
	// touching the code that uses them.
	kv      clientv3.KV
	lease   clientv3.Lease
	watcher clientv3.Watcher
	// etcd owns the connection: Close closes it. It also backs the
	// deprecated Etcd.
	etcd    *clientv3.Client
	timeout time.Duration
	log     *slog.Logger
}

// wrap makes a Client of an etcd client; the helpers use its KV, Lease and
// Watcher interfaces.
func wrap(ec *clientv3.Client, timeout time.Duration, log *slog.Logger) *Client {
	// authKV turns etcd's authorization refusals into ErrPermissionDenied
	// for every helper at once (see rbac.go).
	return &Client{kv: authKV{ec.KV}, lease: ec.Lease, watcher: ec.Watcher, etcd: ec, timeout: timeout, log: log}
}

// New connects to etcd and checks that it answers within the dial timeout,
// so a wrong endpoint or certificate is reported here, not on first use.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ec, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tc,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Context:     ctx,
		Logger:      nopZap(),
		// Keepalives notice a dead server during long watches.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		PermitWithoutStream:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	c := wrap(ec, cfg.RequestTimeout, log)
	// The client dials lazily: a read proves the server answers and accepts
	// our TLS and credentials, so a wrong endpoint or certificate is
	// reported here, not on first use. It reads the bare prefix key only:
	// a node's etcd role may read that, not everything under it.
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := c.kv.Get(sctx, Prefix, clientv3.WithCountOnly()); err != nil {
		_ = ec.Close()
		return nil, fmt.Errorf("etcd at %s does not answer: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return c, nil
}

// FromEtcd wraps an existing etcd client; Close then closes it too.
func FromEtcd(ec *clientv3.Client, requestTimeout time.Duration, log *slog.Logger) *Client {
	if requestTimeout <= 0 {
		requestTimeout = DefaultRequestTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return wrap(ec, requestTimeout, log)
}

// Source is what a cache of this client's etcd reads from (see NewCache).
// It offers only Get and Watch, so a cache cannot write through it.
func (c *Client) Source() Source { return source{kv: c.kv, w: c.watcher} }

// source narrows a client to the two calls a cache makes.
type source struct {
	kv clientv3.KV
	w  clientv3.Watcher
}

func (s source) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return s.kv.Get(ctx, key, opts...)
}

func (s source) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	return s.w.Watch(ctx, key, opts...)
}

// Ping checks that etcd answers, within the request timeout (and ctx). It
// is a linearizable read of a single key, count only: such a read needs the
// member to confirm with a quorum that it is current, so a member cut off
// from the rest of its cluster fails it, where a serializable read would
// still be answered from its possibly stale local state. Reachable must
// mean "writes would work", since the agent reports it as etcd health. One
// key, no values: it costs the leader a read-index round trip, no range
// scan, however many keys the mesh holds.
func (c *Client) Ping(ctx context.Context) error {
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.kv.Get(rctx, Prefix, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd does not answer: %w", err)
	}
	return nil
}

// Logger returns the client's logger.
func (c *Client) Logger() *slog.Logger { return c.log }

// Close closes the connection.
func (c *Client) Close() error { return c.etcd.Close() }

// reqCtx bounds one request by the configured timeout.
func (c *Client) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// Put validates rec and writes it at key unconditionally. Use it for records
// a single writer owns (clusters, policies); node-owned keys go through a
// Session so they are leased.
func (c *Client) Put(ctx context.Context, key string, rec Record) error {
	data, err := Encode(rec)
	if err != nil {
		return err
	}
	ctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.kv.Put(ctx, key, string(data)); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// Delete removes key; deleting an absent key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	ctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// Get reads key and decodes it with decode. It returns ErrNotFound when the
// key is absent and the revision at which the value was last modified.
func Get[T any](ctx context.Context, c *Client, key string, decode func([]byte) (T, error)) (T, int64, error) {
	var zero T
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Get(rctx, key)
	if err != nil {
		return zero, 0, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return zero, 0, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	v, err := decode(resp.Kvs[0].Value)
	if err != nil {
		return zero, 0, fmt.Errorf("decoding %s: %w", key, err)
	}
	return v, resp.Kvs[0].ModRevision, nil
}

// List reads every key under prefix and decodes the values. Values that do
// not decode are logged and left out, as the caches do.
func List[T any](ctx context.Context, c *Client, prefix string, decode func([]byte) (T, error)) (map[string]T, error) {
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Get(rctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	out := make(map[string]T, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, err := decode(kv.Value)
		if err != nil {
			c.log.Warn("skipping value that does not decode", "key", string(kv.Key), "err", err)
			continue
		}
		out[string(kv.Key)] = v
	}
	return out, nil
}
