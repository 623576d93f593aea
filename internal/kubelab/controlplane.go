package kubelab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ControlPlaneSpec says where a control plane runs and its address plan.
type ControlPlaneSpec struct {
	// Netns is the (existing) network namespace the control plane runs
	// in, by name, e.g. a lab node's namespace.
	Netns string
	// IP is the control plane's address in Netns: the apiserver listens
	// on IP:6443 and advertises it, so nodes in other namespaces that
	// reach IP can join.
	IP netip.Addr
	// Dir holds certificates, kubeconfigs, etcd's data and the logs. It
	// is created (it must not exist or be empty) and removed by Close.
	Dir string
	// ClusterCIDR is the pod address range kube-controller-manager splits
	// into per-node podCIDRs of NodeCIDRMaskSize bits (0: 24).
	ClusterCIDR      netip.Prefix
	NodeCIDRMaskSize int
	// ServiceCIDR is the Service ClusterIP range. Its first address is
	// the kubernetes Service; nothing routes it (there is no kube-proxy).
	ServiceCIDR netip.Prefix
	// Log receives progress lines (nil: none).
	Log *slog.Logger
}

// APIServerPort is the control plane's apiserver port.
const APIServerPort = 6443

// Ports of the controllers' health endpoints, on loopback of the control
// plane's namespace (their defaults).
const (
	kcmPort       = 10257
	schedulerPort = 10259
)

// ControlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler in one network namespace.
type ControlPlane struct {
	spec  ControlPlaneSpec
	bin   string
	place place
	pki   *clusterFiles
	admin credentials
	log   *slog.Logger

	kubeconfig string
	cfg        *rest.Config
	client     kubernetes.Interface

	etcd, api, kcm, scheduler *component

	mu     sync.Mutex
	nodes  []*Node
	users  int
	closed bool

	closeOnce sync.Once
	closeErr  error
}

func (s *ControlPlaneSpec) validate() error {
	switch {
	case s.Netns == "":
		return errors.New("kubelab: ControlPlaneSpec.Netns is empty: name the network namespace to run in")
	case !s.IP.IsValid() || !s.IP.Is4():
		return fmt.Errorf("kubelab: ControlPlaneSpec.IP %v: give the control plane's IPv4 address in %s", s.IP, s.Netns)
	case !s.ClusterCIDR.IsValid() || !s.ClusterCIDR.Addr().Is4() || s.ClusterCIDR.Masked() != s.ClusterCIDR:
		return fmt.Errorf("kubelab: ControlPlaneSpec.ClusterCIDR %v: give an IPv4 prefix such as 100.96.0.0/16 (only IPv4 is supported)", s.ClusterCIDR)
	case !s.ServiceCIDR.IsValid() || !s.ServiceCIDR.Addr().Is4() || s.ServiceCIDR.Masked() != s.ServiceCIDR:
		return fmt.Errorf("kubelab: ControlPlaneSpec.ServiceCIDR %v: give an IPv4 prefix such as 100.127.200.0/24", s.ServiceCIDR)
	case s.ServiceCIDR.Bits() < 12:
		return fmt.Errorf("kubelab: ControlPlaneSpec.ServiceCIDR %v is larger than the apiserver allows (/12 at most)", s.ServiceCIDR)
	case s.ClusterCIDR.Overlaps(s.ServiceCIDR):
		return fmt.Errorf("kubelab: ClusterCIDR %v and ServiceCIDR %v overlap", s.ClusterCIDR, s.ServiceCIDR)
	case s.ClusterCIDR.Contains(s.IP) || s.ServiceCIDR.Contains(s.IP):
		return fmt.Errorf("kubelab: the control plane's IP %v is inside the cluster or service range", s.IP)
	}
	if s.NodeCIDRMaskSize == 0 {
		s.NodeCIDRMaskSize = 24
	}
	if s.NodeCIDRMaskSize <= s.ClusterCIDR.Bits() || s.NodeCIDRMaskSize > 30 {
		return fmt.Errorf("kubelab: NodeCIDRMaskSize %d must be longer than ClusterCIDR %v and at most 30", s.NodeCIDRMaskSize, s.ClusterCIDR)
	}
	if s.NodeCIDRMaskSize-s.ClusterCIDR.Bits() > 16 {
		return fmt.Errorf("kubelab: ClusterCIDR %v with /%d per node is more than the 65536 node ranges kube-controller-manager accepts", s.ClusterCIDR, s.NodeCIDRMaskSize)
	}
	return checkDir("ControlPlaneSpec.Dir", s.Dir)
}

// checkDir wants an absolute path that does not exist or is an empty
// directory: Close removes it whole.
func checkDir(field, dir string) error {
	if dir == "" || !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return fmt.Errorf("kubelab: %s %q: give a clean absolute path (it is created and removed on Close), e.g. a t.TempDir() subdirectory", field, dir)
	}
	entries, err := os.ReadDir(dir)
	if err == nil && len(entries) > 0 {
		return fmt.Errorf("kubelab: %s %s is not empty: Close removes it, so give a new or empty directory", field, dir)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kubelab: %s: %w", field, err)
	}
	return nil
}

// StartControlPlane starts etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler in spec.Netns and returns once pods can be created:
// the apiserver is ready, both controllers are healthy and the default
// ServiceAccount exists. It needs root (it enters the namespace). On error
// everything started is stopped again.
func StartControlPlane(ctx context.Context, spec ControlPlaneSpec) (*ControlPlane, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	bin, err := BinDir(binEtcd, binAPIServer, binController, binScheduler, binKubectl)
	if err != nil {
		return nil, err
	}
	p, err := inNetns(spec.Netns)
	if err != nil {
		return nil, err
	}
	log := spec.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("kubelab", "control-plane", "netns", spec.Netns)
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("kubelab: creating %s: %w", spec.Dir, err)
	}
	begin := time.Now()
	cp := &ControlPlane{spec: spec, bin: bin, place: p, log: log}
	if err := cp.start(ctx); err != nil {
		if cerr := cp.stopAll(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("and stopping what was started: %w", cerr))
		}
		_ = os.RemoveAll(spec.Dir)
		return nil, fmt.Errorf("kubelab: starting the control plane in %s: %w", spec.Netns, err)
	}
	log.Info("control plane ready", "took", time.Since(begin).Round(time.Millisecond), "server", cp.Server())
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context) error {
	dir := cp.spec.Dir
	kubeSvc := cp.spec.ServiceCIDR.Addr().Next()
	loop := netip.MustParseAddr("127.0.0.1")
	pki, err := writeClusterPKI(dir, []netip.Addr{cp.spec.IP, loop, kubeSvc})
	if err != nil {
		return err
	}
	cp.pki = pki
	if cp.admin, err = pki.client(cp.Server(), "kubelab-admin", "system:masters"); err != nil {
		return err
	}
	cp.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := cp.admin.writeKubeconfig(cp.kubeconfig, "kubelab-admin"); err != nil {
		return err
	}
	cp.cfg = cp.admin.restConfig()
	cp.cfg.Dial = cp.place.dial
	if cp.client, err = kubernetes.NewForConfig(cp.cfg); err != nil {
		return err
	}

	// The namespace is the control plane's own: fixed ports do not
	// collide with anything.
	etcd := etcdConfig{bin: cp.bin, dir: dir, clientPort: 2379, peer: 2380}
	if cp.etcd, err = startEtcd(ctx, cp.place, etcd, cp.log); err != nil {
		return err
	}
	if cp.api, err = startKubeAPIServer(ctx, cp.place, apiserverConfig{
		bin: cp.bin, dir: dir, etcdURL: etcd.url(),
		bind: "0.0.0.0", advertise: cp.spec.IP, port: APIServerPort,
		serviceCIDR: cp.spec.ServiceCIDR,
		extra: []string{
			"--enable-admission-plugins=NodeRestriction",
			// Nodes are named, not resolvable: without this the apiserver
			// looks the name up in DNS for logs and exec.
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-certificate-authority=" + pki.caFile,
		},
	}, pki, cp.admin, cp.log); err != nil {
		return err
	}

	kcmKC, err := cp.componentKubeconfig("kube-controller-manager", "system:kube-controller-manager")
	if err != nil {
		return err
	}
	schedKC, err := cp.componentKubeconfig("kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	kcmCert, kcmKey, err := pki.ca.issueFiles(dir, "kcm-serving", certSpec{cn: "kube-controller-manager", server: true, ips: []netip.Addr{loop}})
	if err != nil {
		return err
	}
	schedCert, schedKey, err := pki.ca.issueFiles(dir, "scheduler-serving", certSpec{cn: "kube-scheduler", server: true, ips: []netip.Addr{loop}})
	if err != nil {
		return err
	}
	caKey := filepath.Join(dir, "ca.key")
	if err := os.WriteFile(caKey, pki.ca.keyPEM, 0o600); err != nil {
		return err
	}
	cp.kcm, err = startComponent("kube-controller-manager", filepath.Join(dir, "kube-controller-manager.log"), cp.place.argv(filepath.Join(cp.bin, binController),
		"--kubeconfig="+kcmKC,
		"--leader-elect=false",
		"--allocate-node-cidrs=true",
		"--cluster-cidr="+cp.spec.ClusterCIDR.String(),
		"--node-cidr-mask-size="+strconv.Itoa(cp.spec.NodeCIDRMaskSize),
		"--service-cluster-ip-range="+cp.spec.ServiceCIDR.String(),
		"--cluster-signing-cert-file="+pki.caFile,
		"--cluster-signing-key-file="+caKey,
		"--root-ca-file="+pki.caFile,
		"--service-account-private-key-file="+pki.saKey,
		"--use-service-account-credentials=true",
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort),
		"--tls-cert-file="+kcmCert, "--tls-private-key-file="+kcmKey,
		"--profiling=false",
	))
	if err != nil {
		return err
	}
	cp.log.Info("kube-controller-manager started", "pid", cp.kcm.pid())
	cp.scheduler, err = startComponent("kube-scheduler", filepath.Join(dir, "kube-scheduler.log"), cp.place.argv(filepath.Join(cp.bin, binScheduler),
		"--kubeconfig="+schedKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedulerPort),
		"--tls-cert-file="+schedCert, "--tls-private-key-file="+schedKey,
		"--profiling=false",
	))
	if err != nil {
		return err
	}
	cp.log.Info("kube-scheduler started", "pid", cp.scheduler.pid())

	health := cp.place.httpClient(pki.ca.certPEM, nil)
	for _, c := range []struct {
		comp *component
		port int
	}{{cp.kcm, kcmPort}, {cp.scheduler, schedulerPort}} {
		url := "https://127.0.0.1:" + strconv.Itoa(c.port) + "/healthz"
		if err := c.comp.waitReady(ctx, apiserverTimeout, c.comp.name+" "+url, func(ctx context.Context) error {
			return getOK(ctx, health, url, "ok")
		}); err != nil {
			return err
		}
		cp.log.Info(c.comp.name+" healthy", "took", time.Since(c.comp.started).Round(time.Millisecond))
	}
	// The ServiceAccount admission plugin refuses pods until the
	// serviceaccount controller made "default".
	if err := cp.kcm.waitReady(ctx, apiserverTimeout, "the default ServiceAccount (made by kube-controller-manager)", func(ctx context.Context) error {
		_, err := cp.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	cp.log.Info("default ServiceAccount exists", "after kcm start", time.Since(cp.kcm.started).Round(time.Millisecond))
	return nil
}

// componentKubeconfig issues a client certificate for a control-plane
// component and writes its kubeconfig. Components reach the apiserver on
// loopback of the control plane's namespace.
func (cp *ControlPlane) componentKubeconfig(name, cn string, orgs ...string) (string, error) {
	cr, err := cp.pki.client("https://127.0.0.1:"+strconv.Itoa(APIServerPort), cn, orgs...)
	if err != nil {
		return "", err
	}
	path := filepath.Join(cp.spec.Dir, name+".kubeconfig")
	return path, cr.writeKubeconfig(path, cn)
}

// Server is the apiserver's URL, https://IP:6443.
func (cp *ControlPlane) Server() string {
	return "https://" + net.JoinHostPort(cp.spec.IP.String(), strconv.Itoa(APIServerPort))
}

// IP is the control plane's address.
func (cp *ControlPlane) IP() netip.Addr { return cp.spec.IP }

// CA is the cluster CA certificate (PEM): it signed the apiserver's and
// the kubelets' serving certificates and every client certificate.
func (cp *ControlPlane) CA() []byte { return append([]byte(nil), cp.pki.ca.certPEM...) }

// Kubeconfig is the path of the admin (system:masters) kubeconfig. Its
// server is Server(), so it works from any namespace that reaches IP
// (the control plane's, or a lab node's on the same LAN), not from the
// machine's own namespace.
func (cp *ControlPlane) Kubeconfig() string { return cp.kubeconfig }

// RESTConfig is an admin client configuration that works from the test
// process: it dials from inside the control plane's namespace. Each call
// returns a new copy.
func (cp *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(cp.cfg) }

// Clientset is an admin client (see RESTConfig).
func (cp *ControlPlane) Clientset() kubernetes.Interface { return cp.client }

var userFileRE = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// UserKubeconfig issues a client certificate for user cn in groups orgs
// and returns the path of a kubeconfig for it (server Server()), e.g.
// for an RBAC test or a component that should have only its own rights.
func (cp *ControlPlane) UserKubeconfig(cn string, orgs ...string) (string, error) {
	cr, err := cp.userCredentials(cn, orgs)
	if err != nil {
		return "", err
	}
	cp.mu.Lock()
	cp.users++
	n := cp.users
	cp.mu.Unlock()
	dir := filepath.Join(cp.spec.Dir, "users")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("%d-%s.kubeconfig", n, userFileRE.ReplaceAllString(cn, "_")))
	return path, cr.writeKubeconfig(path, cn)
}

// UserRESTConfig is UserKubeconfig as a client configuration that works
// from the test process (see RESTConfig).
func (cp *ControlPlane) UserRESTConfig(cn string, orgs ...string) (*rest.Config, error) {
	cr, err := cp.userCredentials(cn, orgs)
	if err != nil {
		return nil, err
	}
	cfg := cr.restConfig()
	cfg.Dial = cp.place.dial
	return cfg, nil
}

func (cp *ControlPlane) userCredentials(cn string, orgs []string) (credentials, error) {
	if strings.TrimSpace(cn) == "" {
		return credentials{}, errors.New("kubelab: a user needs a name (the certificate's CN)")
	}
	return cp.pki.client(cp.Server(), cn, orgs...)
}

// Kubectl runs the built kubectl as admin inside the control plane's
// network namespace and returns its stdout; the error carries stderr.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) (string, error) {
	return cp.KubectlStdin(ctx, "", args...)
}

// KubectlStdin is Kubectl with stdin (e.g. `apply -f -`).
func (cp *ControlPlane) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	argv := cp.place.argv(filepath.Join(cp.bin, binKubectl), append([]string{
		"--kubeconfig=" + cp.kubeconfig,
		// Not $HOME/.kube/cache: nothing outside Dir.
		"--cache-dir=" + filepath.Join(cp.spec.Dir, "kubectl-cache"),
	}, args...)...)
	out, err := run(ctx, stdin, argv...)
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// WaitServiceAccount waits until the ServiceAccount namespace/name exists
// (kube-controller-manager makes "default" in every new namespace).
func (cp *ControlPlane) WaitServiceAccount(ctx context.Context, namespace, name string) error {
	return cp.kcm.waitReady(ctx, apiserverTimeout, "ServiceAccount "+namespace+"/"+name, func(ctx context.Context) error {
		_, err := cp.client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("not there yet")
		}
		return err
	})
}

// LogTails returns the last lines of every component's log, for the
// output of a failed test.
func (cp *ControlPlane) LogTails(lines int) string {
	var b strings.Builder
	for _, c := range []*component{cp.etcd, cp.api, cp.kcm, cp.scheduler} {
		if c != nil {
			fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", c.name, c.logPath, c.tail(lines))
		}
	}
	return b.String()
}

// Close stops the nodes still running, then kube-scheduler,
// kube-controller-manager, kube-apiserver and etcd, in that order, each
// waited for, and removes Dir.
func (cp *ControlPlane) Close() error {
	cp.closeOnce.Do(func() {
		cp.mu.Lock()
		cp.closed = true
		nodes := append([]*Node(nil), cp.nodes...)
		cp.mu.Unlock()
		var errs []error
		for _, n := range nodes {
			if err := n.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := cp.stopAll(); err != nil {
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			if err := os.RemoveAll(cp.spec.Dir); err != nil {
				errs = append(errs, err)
			}
		}
		cp.closeErr = errors.Join(errs...)
		if cp.closeErr == nil {
			cp.log.Info("control plane stopped")
		}
	})
	return cp.closeErr
}

func (cp *ControlPlane) stopAll() error {
	var errs []error
	for _, c := range []*component{cp.scheduler, cp.kcm, cp.api, cp.etcd} {
		if err := c.stop(stopGrace); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (cp *ControlPlane) addNode(n *Node) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.closed {
		return errors.New("kubelab: the control plane is closed")
	}
	for _, m := range cp.nodes {
		if m.spec.Name == n.spec.Name {
			return fmt.Errorf("kubelab: a node named %s is already running", n.spec.Name)
		}
	}
	cp.nodes = append(cp.nodes, n)
	return nil
}

func (cp *ControlPlane) removeNode(n *Node) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for i, m := range cp.nodes {
		if m == n {
			cp.nodes = append(cp.nodes[:i], cp.nodes[i+1:]...)
			return
		}
	}
}
