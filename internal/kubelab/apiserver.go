package kubelab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// place is where components run: the current network namespace (wrap and
// dial nil) or a named one (nsenter --net, and a dialer inside it).
type place struct {
	netns string   // "" for the current namespace
	wrap  []string // argv prefix that runs a command there
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
}

func here() place { return place{dial: (&net.Dialer{}).DialContext} }

func inNetns(name string) (place, error) {
	p, err := netnsPath(name)
	if err != nil {
		return place{}, err
	}
	return place{netns: name, wrap: []string{"nsenter", "--net=" + p, "--"}, dial: dialIn(p)}, nil
}

func (p place) argv(bin string, args ...string) []string {
	return append(append(append([]string(nil), p.wrap...), bin), args...)
}

// httpClient talks to a component from p, trusting caPEM (nil: plain HTTP
// or no verification wanted) and presenting cert if given.
func (p place) httpClient(caPEM []byte, cert *tls.Certificate) *http.Client {
	tr := &http.Transport{DialContext: p.dial, DisableKeepAlives: true}
	if caPEM != nil || cert != nil {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caPEM != nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(caPEM)
			cfg.RootCAs = pool
		}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		tr.TLSClientConfig = cfg
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Second}
}

// getOK fetches url and wants 200 and a body containing want.
func getOK(ctx context.Context, c *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Start-up bounds: generous for a loaded 2-core machine (the apiserver
// takes 3-4 s when idle), short enough that a broken start fails the test
// instead of hanging it.
const (
	etcdTimeout      = 20 * time.Second
	apiserverTimeout = 60 * time.Second
	stopGrace        = 5 * time.Second
)

type etcdConfig struct {
	bin, dir         string
	clientPort, peer int
}

func (e etcdConfig) url() string { return "http://127.0.0.1:" + strconv.Itoa(e.clientPort) }

// startEtcd runs a single-member etcd on loopback of p and waits until it
// serves.
func startEtcd(ctx context.Context, p place, e etcdConfig, log *slog.Logger) (*component, error) {
	peer := "http://127.0.0.1:" + strconv.Itoa(e.peer)
	argv := p.argv(filepath.Join(e.bin, binEtcd),
		"--name=kubelab",
		"--data-dir="+filepath.Join(e.dir, "etcd"),
		"--listen-client-urls="+e.url(), "--advertise-client-urls="+e.url(),
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kubelab="+peer,
		"--listen-metrics-urls=", // none: no third port to collide
		// A test cluster is thrown away: fsync only costs time (and disk
		// bandwidth other tests share).
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	c, err := startComponent("etcd", filepath.Join(e.dir, "etcd.log"), argv)
	if err != nil {
		return nil, err
	}
	client := p.httpClient(nil, nil)
	if err := c.waitReady(ctx, etcdTimeout, "etcd /health", func(ctx context.Context) error {
		return getOK(ctx, client, e.url()+"/health", `"health":"true"`)
	}); err != nil {
		_ = c.stop(stopGrace)
		return nil, err
	}
	log.Info("etcd ready", "took", time.Since(c.started).Round(time.Millisecond), "url", e.url())
	return c, nil
}

// apiserverConfig is what differs between the loopback apiserver and a
// control plane's.
type apiserverConfig struct {
	bin, dir    string
	etcdURL     string
	bind        string // listen address
	advertise   netip.Addr
	port        int
	serviceCIDR netip.Prefix
	extra       []string
}

// clusterFiles are the PKI of a cluster on disk.
type clusterFiles struct {
	ca                  *ca
	caFile              string
	serverCert, srvKey  string
	saKey, saPub        string
	kubeletCert, kubKey string // the apiserver's client certificate towards kubelets
}

// writeClusterPKI makes the CA, the apiserver's serving certificate (for
// ips and the kubernetes Service names), the service-account key pair and
// the apiserver's kubelet client certificate under dir.
func writeClusterPKI(dir string, ips []netip.Addr) (*clusterFiles, error) {
	c, err := newCA("kubelab-ca")
	if err != nil {
		return nil, err
	}
	f := &clusterFiles{ca: c, caFile: filepath.Join(dir, "ca.crt")}
	if err := os.WriteFile(f.caFile, c.certPEM, 0o644); err != nil {
		return nil, err
	}
	f.serverCert, f.srvKey, err = c.issueFiles(dir, "apiserver", certSpec{
		cn: "kube-apiserver", server: true, ips: ips,
		dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return nil, err
	}
	f.kubeletCert, f.kubKey, err = c.issueFiles(dir, "apiserver-kubelet-client", certSpec{cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}})
	if err != nil {
		return nil, err
	}
	f.saKey, f.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := writeKeyPair(f.saKey, f.saPub); err != nil {
		return nil, fmt.Errorf("writing the service-account keys: %w", err)
	}
	return f, nil
}

// client issues client credentials for user cn in groups orgs, for
// server.
func (f *clusterFiles) client(server, cn string, orgs ...string) (credentials, error) {
	certPEM, keyPEM, err := f.ca.issue(certSpec{cn: cn, orgs: orgs})
	if err != nil {
		return credentials{}, err
	}
	return credentials{server: server, caPEM: f.ca.certPEM, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// startKubeAPIServer runs kube-apiserver and waits for /readyz as admin.
func startKubeAPIServer(ctx context.Context, p place, a apiserverConfig, f *clusterFiles, admin credentials, log *slog.Logger) (*component, error) {
	args := []string{
		"--etcd-servers=" + a.etcdURL,
		"--bind-address=" + a.bind,
		"--secure-port=" + strconv.Itoa(a.port),
		"--advertise-address=" + a.advertise.String(),
		"--tls-cert-file=" + f.serverCert, "--tls-private-key-file=" + f.srvKey,
		"--client-ca-file=" + f.caFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f.saPub,
		"--service-account-signing-key-file=" + f.saKey,
		"--service-cluster-ip-range=" + a.serviceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--kubelet-client-certificate=" + f.kubeletCert, "--kubelet-client-key=" + f.kubKey,
		"--profiling=false",
		// Certificates are files given here: nothing to write to the
		// default /var/run/kubernetes.
		"--cert-dir=" + filepath.Join(a.dir, "apiserver-certs"),
	}
	args = append(args, a.extra...)
	c, err := startComponent("kube-apiserver", filepath.Join(a.dir, "kube-apiserver.log"), p.argv(filepath.Join(a.bin, binAPIServer), args...))
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(admin.certPEM, admin.keyPEM)
	if err != nil {
		_ = c.stop(stopGrace)
		return nil, err
	}
	client := p.httpClient(f.ca.certPEM, &cert)
	url := "https://" + net.JoinHostPort(a.advertise.String(), strconv.Itoa(a.port)) + "/readyz"
	if err := c.waitReady(ctx, apiserverTimeout, "kube-apiserver "+url, func(ctx context.Context) error {
		return getOK(ctx, client, url, "ok")
	}); err != nil {
		_ = c.stop(stopGrace)
		return nil, err
	}
	log.Info("kube-apiserver ready", "took", time.Since(c.started).Round(time.Millisecond), "url", url)
	return c, nil
}

// APIServer is etcd and kube-apiserver on loopback of the test's network
// namespace (Tier A): enough for informers, CRUD and RBAC, no kubelet, no
// controllers (so no default ServiceAccount: its admission plugin is off,
// pods can be created as they are).
type APIServer struct {
	dir        string
	kubeconfig string
	admin      credentials
	cfg        *rest.Config
	client     kubernetes.Interface
	etcd, api  *component
}

// StartAPIServer starts etcd and kube-apiserver on free loopback ports,
// with certificates made here and an admin (system:masters) client
// certificate, and stops them (apiserver first) when t ends. It needs no
// root. It skips t under -short and fails it when the binaries are missing
// (run scripts/build-kube.sh).
func StartAPIServer(t testing.TB) *APIServer {
	t.Helper()
	if testing.Short() {
		t.Skip("kube-apiserver tests are skipped in -short mode")
	}
	bin, err := BinDir(binEtcd, binAPIServer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(t.Output(), nil)).With("kubelab", "apiserver")
	ctx := t.Context()
	a, err := startAPIServer(ctx, bin, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.close(); err != nil {
			t.Errorf("stopping the API server: %v", err)
		}
	})
	return a
}

func startAPIServer(ctx context.Context, bin, dir string, log *slog.Logger) (*APIServer, error) {
	loop := netip.MustParseAddr("127.0.0.1")
	f, err := writeClusterPKI(dir, []netip.Addr{loop})
	if err != nil {
		return nil, err
	}
	// Free ports are only free until somebody takes them: a start that
	// lost its port to another process is tried again with new ones.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports, err := freePorts(3)
		if err != nil {
			return nil, err
		}
		a := &APIServer{dir: dir}
		a.admin, err = f.client("https://"+net.JoinHostPort(loop.String(), strconv.Itoa(ports[2])), "kubelab-admin", "system:masters")
		if err != nil {
			return nil, err
		}
		a.etcd, err = startEtcd(ctx, here(), etcdConfig{bin: bin, dir: dir, clientPort: ports[0], peer: ports[1]}, log)
		if err != nil {
			lastErr = err
			if portTaken(err) {
				_ = os.RemoveAll(filepath.Join(dir, "etcd"))
				continue
			}
			return nil, err
		}
		a.api, err = startKubeAPIServer(ctx, here(), apiserverConfig{
			bin: bin, dir: dir, etcdURL: "http://127.0.0.1:" + strconv.Itoa(ports[0]),
			bind: loop.String(), advertise: loop, port: ports[2],
			serviceCIDR: netip.MustParsePrefix("100.127.200.0/24"),
			extra: []string{
				"--disable-admission-plugins=ServiceAccount",
				// The endpoints of the kubernetes Service cannot be a
				// loopback address; nothing here routes to it anyway.
				"--endpoint-reconciler-type=none",
			},
		}, f, a.admin, log)
		if err != nil {
			_ = a.etcd.stop(stopGrace)
			lastErr = err
			if portTaken(err) {
				_ = os.RemoveAll(filepath.Join(dir, "etcd"))
				continue
			}
			return nil, err
		}
		a.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
		if err := a.admin.writeKubeconfig(a.kubeconfig, "kubelab-admin"); err != nil {
			_ = a.close()
			return nil, err
		}
		a.cfg = a.admin.restConfig()
		if a.client, err = kubernetes.NewForConfig(a.cfg); err != nil {
			_ = a.close()
			return nil, err
		}
		return a, nil
	}
	return nil, lastErr
}

func portTaken(err error) bool {
	return errors.Is(err, errExited) && strings.Contains(err.Error(), "address already in use")
}

// freePorts asks the kernel for n free loopback ports.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (a *APIServer) close() error {
	// The apiserver first: with etcd gone it hangs on exit.
	return errors.Join(a.api.stop(stopGrace), a.etcd.stop(stopGrace))
}

// RESTConfig is a client configuration for the admin user. Each call
// returns a new copy.
func (a *APIServer) RESTConfig() *rest.Config { return rest.CopyConfig(a.cfg) }

// Kubeconfig is the path of the admin kubeconfig.
func (a *APIServer) Kubeconfig() string { return a.kubeconfig }

// Clientset is a client for the admin user.
func (a *APIServer) Clientset() kubernetes.Interface { return a.client }

// Server is the apiserver's URL.
func (a *APIServer) Server() string { return a.admin.server }
