// Package kvstoretest starts real etcd servers for tests: the embedded one
// (default) or Debian's `etcd` binary as a separate process, both with TLS
// and client-certificate authentication, each in the test's temporary
// directory and removed when the test ends. Only tests import it.
//
// WEFT_TEST_ETCD selects the server: "embedded" or "process". Main runs a
// package's tests a second time against a separate process when the
// variable is unset, so every suite proves it does not depend on embedding.
package kvstoretest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/embedded"
	"github.com/weftmesh/weft/pki"
)

// EnvBackend names the environment variable selecting the server kind.
const EnvBackend = "WEFT_TEST_ETCD"

// Server is an etcd started for one test.
type Server struct {
	// Kind is "embedded" or "process".
	Kind string
	// Config connects with the administrative client certificate.
	Config kvstore.Config
	// Files are the CA and certificates the server uses.
	Files pki.Files
}

// Backend returns the server kind the environment asks for.
func Backend() string {
	if v := os.Getenv(EnvBackend); v != "" {
		return v
	}
	return "embedded"
}

// StartServer starts the server kind selected by WEFT_TEST_ETCD.
func StartServer(t testing.TB) *Server {
	t.Helper()
	switch b := Backend(); b {
	case "embedded":
		return StartEmbedded(t)
	case "process":
		return StartProcess(t)
	default:
		t.Fatalf("%s=%q: want embedded or process", EnvBackend, b)
		return nil
	}
}

// StartEmbedded starts an embedded etcd in t.TempDir() on free ports.
func StartEmbedded(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := embedded.Start(ctx, embedded.Config{Dir: t.TempDir(), ClientAddr: "127.0.0.1:0",
		// etcd logs its own shutdown as errors; tests report what matters.
		EtcdLogLevel: "fatal"})
	if err != nil {
		t.Fatalf("starting embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	return &Server{Kind: "embedded", Config: srv.ClientConfig(), Files: srv.Files()}
}

// StartProcess starts the `etcd` binary as a separate process on free
// loopback ports with TLS, and kills that process (by its PID) when the test
// ends. It fails the test when etcd is not installed and the process backend
// was asked for explicitly, and skips it otherwise.
func StartProcess(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv(EnvBackend) == "process" {
			t.Fatalf("%s=process but no etcd binary in PATH (install Debian's etcd-server package)", EnvBackend)
		}
		t.Skip("etcd binary not installed (Debian package etcd-server)")
	}
	dir := t.TempDir()
	files, err := pki.EnsureBundle(filepath.Join(dir, "pki"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatalf("certificates: %v", err)
	}
	for attempt := 0; ; attempt++ {
		clientURL := "https://" + freeAddr(t)
		peerURL := "http://" + freeAddr(t)
		var logBuf syncBuffer
		cmd := exec.Command(bin,
			"--name", "weft-test",
			"--data-dir", filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--listen-client-urls", clientURL,
			"--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL,
			"--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "weft-test="+peerURL,
			"--initial-cluster-token", "weft-test",
			"--cert-file", files.ServerCertFile,
			"--key-file", files.ServerKey,
			"--trusted-ca-file", files.CAFile,
			"--client-cert-auth",
			"--logger", "zap",
			"--log-outputs", "stderr",
			"--log-level", "warn",
		)
		cmd.Stdout = &logBuf
		cmd.Stderr = &logBuf
		// Its own process group, so a signal to the test's group does not
		// race our own shutdown of it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		srv := &Server{Kind: "process", Files: files, Config: kvstore.Config{
			Endpoints: []string{clientURL},
			CAFile:    files.CAFile, CertFile: files.ClientCertFile, KeyFile: files.ClientKey,
		}}
		if err := waitReady(srv.Config, exited); err != nil {
			stop()
			if attempt < 2 {
				t.Logf("etcd process did not start (%v), retrying on other ports; its log:\n%s", err, logBuf.String())
				continue
			}
			t.Fatalf("etcd process did not start: %v; its log:\n%s", err, logBuf.String())
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("etcd process log:\n%s", logBuf.String())
			}
		})
		return srv
	}
}

func waitReady(cfg kvstore.Config, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	cfg.DialTimeout = 2 * time.Second
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("etcd exited: %v", err)
		default:
		}
		c, err := kvstore.New(context.Background(), cfg)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Connect returns a client of srv that is closed when the test ends. log may
// be nil.
func Connect(t testing.TB, srv *Server, log *slog.Logger) *kvstore.Client {
	t.Helper()
	cfg := srv.Config
	cfg.Logger = log
	c, err := kvstore.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connecting to the %s etcd: %v", srv.Kind, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Etcd returns a plain etcd client of srv, with the administrative
// certificate, closed when the test ends. Tests use it for what no Weft code
// may do through kvstore.Client: revoke a session's lease behind its back,
// write corrupt values, compact history.
func Etcd(t testing.TB, srv *Server) *clientv3.Client {
	t.Helper()
	caPEM, err := os.ReadFile(srv.Config.CAFile)
	if err != nil {
		t.Fatalf("reading the test CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no PEM certificate", srv.Config.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(srv.Config.CertFile, srv.Config.KeyFile)
	if err != nil {
		t.Fatalf("loading the test client certificate: %v", err)
	}
	ec, err := clientv3.New(clientv3.Config{
		Endpoints:   srv.Config.Endpoints,
		DialTimeout: 10 * time.Second,
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("connecting to the %s etcd: %v", srv.Kind, err)
	}
	t.Cleanup(func() { _ = ec.Close() })
	return ec
}

// CreateIfAbsentRate is a benchmark baseline: the rate per second at which
// srv commits plain create-if-absent transactions writing three keys each
// (the least work a correct identity allocation must do), total of them
// from workers concurrent goroutines. The keys lie outside the schema's
// prefix (bench/baseline/...) so they disturb no cache.
func CreateIfAbsentRate(tb testing.TB, srv *Server, total, workers int) float64 {
	tb.Helper()
	ec := Etcd(tb, srv)
	per := total / workers
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		go func() {
			for i := range per {
				k := fmt.Sprintf("bench/baseline/%d/%d", w, i)
				_, err := ec.Txn(context.Background()).
					If(clientv3.Compare(clientv3.CreateRevision(k+"/a"), "=", 0)).
					Then(clientv3.OpPut(k+"/a", "x"), clientv3.OpPut(k+"/b", "x"), clientv3.OpPut(k+"/c", "x")).Commit()
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			tb.Fatalf("baseline transaction: %v", err)
		}
	}
	return float64(per*workers) / time.Since(start).Seconds()
}

// New starts a server (per WEFT_TEST_ETCD) and returns a connected client.
func New(t testing.TB) (*kvstore.Client, *Server) {
	t.Helper()
	srv := StartServer(t)
	return Connect(t, srv, nil), srv
}

// Main runs the tests; when they pass, WEFT_TEST_ETCD is unset and etcd is
// installed, it runs them again in a child process against a separate etcd
// process. Benchmarks, fuzzing, listing and -short runs happen once. Use it
// from TestMain: func TestMain(m *testing.M) { kvstoretest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if code != 0 || os.Getenv(EnvBackend) != "" || testing.Short() || onlyOnce() {
		os.Exit(code)
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		fmt.Fprintln(os.Stderr, "kvstoretest: etcd binary not installed; not repeating the suite against a separate etcd process")
		os.Exit(code)
	}
	fmt.Fprintf(os.Stderr, "kvstoretest: repeating the suite against a separate etcd process (%s=process)\n", EnvBackend)
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), EnvBackend+"=process")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "kvstoretest: second run:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func onlyOnce() bool {
	for _, name := range []string{"test.bench", "test.fuzz", "test.list"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return true
		}
	}
	if f := flag.Lookup("test.fuzzcachedir"); f != nil && f.Value.String() != "" {
		return true // a fuzz worker process
	}
	return false
}

// LogBuffer is a slog handler target tests can search for log records.
type LogBuffer struct{ syncBuffer }

// Logger returns a logger writing JSON records into the buffer (and to the
// test log when verbose).
func (b *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(&b.syncBuffer, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

var _ io.Writer = (*syncBuffer)(nil)

// NodeServer is srv as seen with a joined node's credentials: a client
// certificate with CN=kvstore.NodeUser(cluster, node), signed by srv's CA,
// as the join service issues it. The node's etcd user must exist (admin
// EnsureNodeUser) before the certificate can do anything once
// authentication is on.
func NodeServer(t testing.TB, srv *Server, cluster, node string) *Server {
	t.Helper()
	ca, err := pki.LoadCAFiles(srv.Files.CAFile, srv.Files.CAKeyFile)
	if err != nil {
		t.Fatalf("loading the test CA: %v", err)
	}
	certPEM, keyPEM, err := ca.IssueClient(kvstore.NodeUser(cluster, node), []string{"weft:nodes"})
	if err != nil {
		t.Fatalf("issuing a node certificate: %v", err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, map[string][]byte{"node.pem": certPEM, "node-key.pem": keyPEM}); err != nil {
		t.Fatal(err)
	}
	n := *srv
	n.Config.CertFile, n.Config.KeyFile = filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	return &n
}

// Restartable is an embedded etcd that a test stops and starts again at
// the same address, with its data (an outage) or without it (an etcd
// replaced, or restored from an old backup). Its certificates stay, so
// clients made before reconnect by themselves.
type Restartable struct {
	*Server
	t            testing.TB
	dir          string
	client, peer string
	mu           sync.Mutex
	srv          *embedded.Server
}

// StartRestartable starts an embedded etcd in t.TempDir() on free ports,
// stopped when the test ends.
func StartRestartable(t testing.TB) *Restartable {
	t.Helper()
	r := &Restartable{t: t, dir: t.TempDir(), client: freeAddr(t), peer: freeAddr(t)}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server again (a no-op while it runs).
func (r *Restartable) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	// The port was free a moment ago, or was ours until Stop: retry
	// briefly while the kernel lets it go.
	for attempt := 0; ; attempt++ {
		r.srv, err = embedded.Start(ctx, embedded.Config{Dir: r.dir, ClientAddr: r.client, PeerAddr: r.peer, EtcdLogLevel: "fatal"})
		if err == nil || attempt == 20 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatalf("starting embedded etcd at %s: %v", r.client, err)
	}
	r.Server = &Server{Kind: "embedded", Config: r.srv.ClientConfig(), Files: r.srv.Files()}
}

// Stop stops the server; its clients see an outage. Harmless when stopped.
func (r *Restartable) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
}

// WipeData removes the stopped server's data (not its certificates): the
// next Start is a new, empty etcd whose revisions start again from 1, as
// one restored from an old backup would be behind. (Its cluster id may be
// the old one: etcd derives it from the member's name and addresses.)
func (r *Restartable) WipeData() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.t.Fatal("WipeData on a running server: Stop it first")
	}
	if err := os.RemoveAll(filepath.Join(r.dir, "data")); err != nil {
		r.t.Fatal(err)
	}
}
