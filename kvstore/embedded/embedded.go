// Package embedded runs a single-member etcd server inside the process: the
// default for a first machine with nothing else running (`meshctl up`) and
// for tests. It always speaks TLS, with a CA and server certificate it
// generates in its data directory on first start; plaintext clients are
// refused. Only binaries that need it import this package, so the etcd
// server is not linked into everything that talks to etcd.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/pki"
)

// ErrInvalidConfig is wrapped by configuration errors.
var ErrInvalidConfig = errors.New("embedded: invalid configuration")

// Config of the embedded server.
type Config struct {
	// Dir holds the etcd data (Dir/data) and the certificates (Dir/pki).
	Dir string
	// Name of the member; default "weft".
	Name string
	// ClientAddr is the host:port clients connect to; default
	// 127.0.0.1:2379. Port 0 picks a free port.
	ClientAddr string
	// PeerAddr is the member's peer listener; default 127.0.0.1:0 (a free
	// port: a single member has no peers, but etcd needs the listener).
	PeerAddr string
	// ExtraHosts are further names or IPs to put in the server certificate
	// (e.g. the machine's mesh or underlay address for remote agents).
	ExtraHosts []string
	// StartTimeout bounds waiting for the server to be ready; default 60s.
	StartTimeout time.Duration
	// Logger receives startup and shutdown messages; nil discards. etcd's
	// own logs go to stderr at level EtcdLogLevel (default "error").
	Logger       *slog.Logger
	EtcdLogLevel string
	// DisableAuth leaves etcd's authentication off, so every certificate
	// of the mesh CA is etcd root (how meshes before RBAC ran). By default
	// Start turns authentication on with the admin certificate as root,
	// and joined nodes get users whose roles write only their own keys
	// (kvstore.NodeRole; docs/security.md).
	DisableAuth bool
}

// Server is a running embedded etcd.
type Server struct {
	etcd    *embed.Etcd
	files   pki.Files
	client  string
	log     *slog.Logger
	stopped bool
}

// Start starts the server and waits until it serves clients.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: no data directory", ErrInvalidConfig)
	}
	if cfg.Name == "" {
		cfg.Name = "weft"
	}
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = "127.0.0.1:2379"
	}
	if cfg.PeerAddr == "" {
		cfg.PeerAddr = "127.0.0.1:0"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.EtcdLogLevel == "" {
		cfg.EtcdLogLevel = "error"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clientAddr, err := resolvePort(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: client address: %w", ErrInvalidConfig, err)
	}
	peerAddr, err := resolvePort(cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: peer address: %w", ErrInvalidConfig, err)
	}
	host, _, _ := net.SplitHostPort(clientAddr)
	hosts := append([]string{host, "localhost", "127.0.0.1", "::1"}, cfg.ExtraHosts...)
	files, err := pki.EnsureBundle(filepath.Join(cfg.Dir, "pki"), hosts)
	if err != nil {
		return nil, fmt.Errorf("preparing certificates: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = filepath.Join(cfg.Dir, "data")
	cu := url.URL{Scheme: "https", Host: clientAddr}
	pu := url.URL{Scheme: "http", Host: peerAddr}
	ec.ListenClientUrls = []url.URL{cu}
	ec.AdvertiseClientUrls = []url.URL{cu}
	ec.ListenPeerUrls = []url.URL{pu}
	ec.AdvertisePeerUrls = []url.URL{pu}
	ec.InitialCluster = cfg.Name + "=" + pu.String()
	ec.InitialClusterToken = "weft-" + cfg.Name
	ec.ClientTLSInfo.CertFile = files.ServerCertFile
	ec.ClientTLSInfo.KeyFile = files.ServerKey
	ec.ClientTLSInfo.TrustedCAFile = files.CAFile
	// Clients prove who they are with a certificate of the mesh CA: the
	// start of per-node credentials.
	ec.ClientTLSInfo.ClientCertAuth = true
	ec.LogLevel = cfg.EtcdLogLevel
	lvl, err := zap.ParseAtomicLevel(cfg.EtcdLogLevel)
	if err != nil {
		return nil, fmt.Errorf("%w: etcd log level %q: %w", ErrInvalidConfig, cfg.EtcdLogLevel, err)
	}
	zcfg := zap.NewProductionConfig()
	zcfg.Level = lvl
	zl, err := zcfg.Build()
	if err != nil {
		return nil, fmt.Errorf("building etcd logger: %w", err)
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	// Keep history bounded without an operator: compact an hour behind.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"

	log.Info("starting embedded etcd", "dir", cfg.Dir, "client", cu.String())
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", cfg.Dir, err)
	}
	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed while starting: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after %s", cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	srv := &Server{etcd: e, files: files, client: cu.String(), log: log}
	if !cfg.DisableAuth {
		if err := srv.enableAuth(ctx); err != nil {
			e.Close()
			return nil, err
		}
	}
	return srv, nil
}

// enableAuth turns on etcd's authentication with the admin certificate
// (CN=root) as the root user; it is a no-op once on. Until it is on, any
// certificate of the mesh CA could do anything, so Start does not return
// before.
func (s *Server) enableAuth(ctx context.Context) error {
	cfg := s.ClientConfig()
	cfg.Logger = s.log
	kv, err := kvstore.New(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting to the embedded etcd to enable authentication: %w", err)
	}
	defer kv.Close()
	if err := kv.EnableAuth(ctx); err != nil {
		return fmt.Errorf("enabling authentication on the embedded etcd (remove %s to start over, or leave etcd.embedded.rbac off): %w", s.files.CAFile, err)
	}
	return nil
}

// resolvePort replaces port 0 with a free port. There is a small window in
// which another process could take it; etcd then fails to start with a
// clear error.
func resolvePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", fmt.Errorf("port %q: %w", port, err)
		}
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Endpoint is the https URL clients use.
func (s *Server) Endpoint() string { return s.client }

// Files are the certificate files: the CA to trust and the administrative
// client certificate.
func (s *Server) Files() pki.Files { return s.files }

// ClientConfig returns a kvstore configuration that connects to this server
// with the administrative client certificate.
func (s *Server) ClientConfig() kvstore.Config {
	return kvstore.Config{
		Endpoints: []string{s.client},
		CAFile:    s.files.CAFile,
		CertFile:  s.files.ClientCertFile,
		KeyFile:   s.files.ClientKey,
	}
}

// Err reports a fatal server error after start.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the server: in-flight requests end, listeners close, the data
// is flushed. Calling it twice is harmless.
func (s *Server) Close() {
	if s.stopped {
		return
	}
	s.stopped = true
	s.etcd.Close()
	s.log.Info("embedded etcd stopped")
}

// RemoveData deletes dir's etcd data and certificates; for tests and
// `meshctl down --purge`.
func RemoveData(dir string) error {
	if err := os.RemoveAll(filepath.Join(dir, "data")); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(dir, "pki"))
}
