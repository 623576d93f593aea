// Package agent is the Weft node agent: it wires the control plane
// (kvstore, identity allocation, policy compilation) to the node's kernel
// state (WireGuard tunnel, eBPF datapath) and serves the local API.
//
// The agent is a list of components started in order (components.go);
// every reconciler is its own loop fed by a kvstore cache and takes only
// the small interfaces it uses, so the datapath never waits on etcd, keeps
// working on the last known state while etcd is unreachable, and each
// reconciler runs in unit tests on in-memory fakes:
//
//	nodes      -> tunnel peers and routes        (peers.go)
//	endpoints  -> ipcache                        (ipcache.go)
//	identities
//	 + policies -> policy maps of local endpoints (policy.go)
//	workload sources (netns.go, later Kubernetes)
//	           -> endpoint manager: identity, policy, record (endpoints.go)
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/k8s"
	"github.com/weftmesh/weft/agent/metrics"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/internal/version"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/relay"
	"github.com/weftmesh/weft/tunnel"
)

// Options are what the binary gives the agent beyond its configuration.
type Options struct {
	// TunnelHelper starts the userspace WireGuard device process.
	TunnelHelper tunnel.HelperFunc
	// Logger receives everything the agent logs.
	Logger *slog.Logger
	// Timings, when set, receives the duration of each startup step
	// (for `make bench-join`: where the join-to-reachable time goes).
	Timings func(step string, d time.Duration)
	// OpenTunnel and OpenDatapath make the node's WireGuard device and
	// eBPF datapath; nil means the kernel's. Unit tests pass in-memory
	// ones (tunnel/tunneltest, bpf/bpftest).
	OpenTunnel   OpenTunnelFunc
	OpenDatapath OpenDatapathFunc

	// veths connects workload namespaces; nil means the kernel's.
	veths vethPlumber
	// noObservability leaves out flows, metrics, health and the
	// agent-to-agent API, which bind the mesh IP that only a real device
	// holds (unit tests on fakes).
	noObservability bool
}

// Agent is one running node agent.
type Agent struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	started time.Time

	cp      *controlPlane
	cidrs   cidrSource
	session *kvstore.Session
	alloc   *allocator.Allocator
	tun     Device
	dp      Datapath

	// nodes and endpoints are multi-source: the local etcd and each
	// connected cluster (remoteclusters.go); remoteIDs holds the connected
	// clusters' identities (the allocator holds the local ones).
	nodes     *view[kvstore.Node]
	endpoints *view[kvstore.Endpoint]
	remoteIDs *view[allocator.Identity]
	// remoteGrants are the connected clusters' nodes' label grants.
	remoteGrants *view[kvstore.Grant]
	policies     *kvstore.Cache[kvstore.Policy]
	remotes      *remoteClusters

	self      kvstore.Node
	cidr      netip.Prefix
	meshIP    netip.Addr
	hostIdent identity.NumericIdentity

	peers *peerReconciler
	// ipcache is published once the endpoint cache exists; node events,
	// which start earlier, reach it through the pointer.
	ipcache   atomic.Pointer[ipcacheReconciler]
	policy    *policyReconciler
	eps       *endpointManager
	workloads *netnsSource
	// kube and pods exist in Kubernetes mode (kubernetes.go, pods.go).
	kube *k8s.Source
	pods *podAttachments

	apiSrv  *api.Server
	joinSrv interface{ Shutdown(context.Context) error }
	// joinHosts are the names the join service's certificate is valid
	// for, once it runs: an admin credential must name one of them.
	joinHosts atomic.Pointer[[]string]
	// handshakes is when each peer key appeared on the device (apiserver.go).
	handshakes handshakeWatch

	// obs is flows, metrics, health and probes (observability.go); logs
	// counts what the agent logs (metrics, connectivity test).
	obs atomic.Pointer[observability]
	// nat is NAT traversal and path selection (nat.go), once started.
	nat  atomic.Pointer[natTraversal]
	logs *metrics.LogCounter

	// group runs the agent's long-lived loops (go).
	group sync.WaitGroup
	ctx   context.Context

	leaveOnce sync.Once
	leaving   chan struct{}
	left      bool // finishLeave removed the datapath and the device

	// rotateMu lets one key rotation run at a time; selfMu guards the key
	// fields of self, which a rotation rewrites (rotation.go).
	rotateMu sync.Mutex
	selfMu   sync.Mutex
}

// New checks the configuration; Run does the work.
func New(cfg *config.Config, opts Options) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Timings == nil {
		opts.Timings = func(string, time.Duration) {}
	}
	if opts.OpenTunnel == nil {
		opts.OpenTunnel = openKernelTunnel
	}
	if opts.OpenDatapath == nil {
		opts.OpenDatapath = openKernelDatapath
	}
	if opts.veths == nil {
		opts.veths = kernelVeths{}
	}
	logs := metrics.NewLogCounter(opts.Logger.Handler())
	opts.Logger = slog.New(logs)
	return &Agent{cfg: cfg, opts: opts, log: opts.Logger, logs: logs, leaving: make(chan struct{})}, nil
}

// step runs one startup step, logs and reports its duration.
func (a *Agent) step(name string, f func() error) error {
	t0 := time.Now()
	err := f()
	d := time.Since(t0)
	a.opts.Timings(name, d)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	a.log.Debug("startup step done", "step", name, "took", d)
	return nil
}

// goRun runs a long-lived loop until the agent stops; its error (other
// than the agent stopping) is logged.
func (a *Agent) goRun(name string, f func(context.Context) error) {
	a.group.Add(1)
	go func() {
		defer a.group.Done()
		if err := f(a.ctx); err != nil && !errors.Is(err, context.Canceled) {
			a.log.Error("component stopped", "component", name, "err", err)
		}
	}()
}

// Run starts the agent's components in order and serves until ctx ends or
// the node leaves the mesh. On return the datapath and the tunnel stay in
// place (unless the node left), so restarting the agent does not interrupt
// traffic.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.ctx = ctx
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	a.log.Info("starting weft-agent", "version", version.Version, "node", a.cfg.NodeName, "cluster", a.cfg.Cluster)

	// The datapath's programs take longest to load (the kernel verifies
	// each) and need nothing from etcd or the tunnel: they load while the
	// control plane and the tunnel come up, and are attached once the
	// tunnel exists.
	dp := a.loadDatapath()
	var started []component
	stopAll := func() {
		cancel()
		a.group.Wait()
		sctx, done := context.WithTimeout(context.Background(), 5*time.Second)
		defer done()
		for i := len(started) - 1; i >= 0; i-- {
			if s := started[i].stop; s != nil {
				if err := s(sctx); err != nil {
					a.log.Warn("stopping component", "component", started[i].name, "err", err)
				}
			}
		}
		dp.discard()
	}
	for _, c := range a.components(dp) {
		if c.when != nil && !c.when() {
			continue
		}
		var err error
		if c.untimed {
			err = c.start(ctx)
		} else {
			err = a.step(c.name, func() error { return c.start(ctx) })
		}
		if err != nil {
			stopAll()
			return err
		}
		started = append(started, c)
	}
	a.log.Info("agent ready", "meshIP", a.meshIP, "cidr", a.cidr, "tunnel", a.tun.Kind(), "took", time.Since(a.started).Round(time.Millisecond))

	var runErr error
	select {
	case <-ctx.Done():
	case <-a.leaving:
	case err := <-a.cp.fatal():
		runErr = fmt.Errorf("embedded etcd failed: %w", err)
	}
	// The servers stop first, so no request sees a half-stopped agent.
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	for _, s := range []interface{ Shutdown(context.Context) error }{a.apiSrvOrNil(), a.joinSrv} {
		if s != nil {
			_ = s.Shutdown(shutdownCtx)
		}
	}
	select {
	case <-a.leaving:
		err := a.finishLeave(shutdownCtx)
		stopAll()
		return err
	default:
	}
	stopAll()
	if runErr != nil {
		return runErr
	}
	// A plain stop keeps the lease alive until it expires on its own: the
	// node's records vanish only if the agent does not come back in time.
	a.log.Info("agent stopped; datapath and tunnel left in place")
	return nil
}

func (a *Agent) apiSrvOrNil() interface{ Shutdown(context.Context) error } {
	if a.apiSrv == nil {
		return nil
	}
	return a.apiSrv
}

func (a *Agent) openTunnel(ctx context.Context) error {
	mode := tunnel.ModeAuto
	switch a.cfg.WireGuard.Mode {
	case "kernel":
		mode = tunnel.ModeKernel
	case "userspace":
		mode = tunnel.ModeUserspace
	}
	t, err := a.opts.OpenTunnel(ctx, tunnel.Config{
		Name:         a.cfg.WireGuard.Interface,
		ListenPort:   a.cfg.WireGuard.ListenPort,
		StateDir:     filepath.Join(a.cfg.StateDir, "wireguard"),
		Addresses:    []netip.Prefix{netip.PrefixFrom(a.meshIP, a.meshIP.BitLen())},
		IPv4Underlay: true,
		// Room for a relay's header (docs/nat.md): a pair that moves to a
		// relay keeps its MTU and sends nothing fragmented.
		PathOverhead: relay.HeaderLen,
		Mode:         mode,
		Helper:       a.opts.TunnelHelper,
		HelperStarted: func(pid int) error {
			if !a.cfg.Kubernetes.Enabled {
				return nil
			}
			return escapePodCgroup(pid, a.cfg.Kubernetes.HostCgroupRoot)
		},
		Logger: a.log.With("component", "tunnel"),
	})
	if err != nil {
		return err
	}
	a.tun = t
	a.log.Info("tunnel up", "interface", t.Name(), "kind", t.Kind(), "port", t.ListenPort(), "mtu", t.MTU())
	return nil
}

// bpfScope names this agent's pins: one scope per node, so several lab
// nodes on one kernel do not share maps. bpffs refuses names with dots, so
// dots in names become '-' ('_', which names never contain, separates). A
// scope may hold 64 characters and two names up to 127: a longer one keeps
// its first 47 and a hash of the whole, so it stays unique and stable.
func (a *Agent) bpfScope() string { return bpfScope(a.cfg.Cluster, a.cfg.NodeName) }

func bpfScope(cluster, node string) string {
	s := strings.ReplaceAll(cluster, ".", "-") + "_" + strings.ReplaceAll(node, ".", "-")
	if len(s) <= 64 {
		return s
	}
	h := sha256.Sum256([]byte(cluster + "/" + node))
	return s[:47] + "-" + hex.EncodeToString(h[:8])
}

// waitSynced waits for the first listing of caches.
func waitSynced(ctx context.Context, synced ...<-chan struct{}) error {
	timeout := time.After(30 * time.Second)
	for _, s := range synced {
		select {
		case <-s:
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout:
			return errors.New("etcd caches did not sync within 30s: is etcd reachable?")
		}
	}
	return nil
}

// registerNode writes this node's record under the session's lease.
func (a *Agent) registerNode(ctx context.Context) error {
	eps, err := a.underlayEndpoints()
	if err != nil {
		return err
	}
	labels, err := a.hostLabels()
	if err != nil {
		return err
	}
	a.self = kvstore.Node{
		Name:         a.cfg.NodeName,
		Cluster:      a.cfg.Cluster,
		Endpoints:    eps,
		WGPublicKey:  a.tun.PublicKey().String(),
		CIDRs:        []netip.Prefix{a.cidr},
		MeshIP:       a.meshIP,
		Labels:       labels.Strings(),
		AgentVersion: version.Version,
		Relay:        a.relayAdvertised(eps),
	}
	return a.session.Put(ctx, a.self.Key(), &a.self)
}

// peerSelf is what the peer reconciler needs of this node.
func (a *Agent) peerSelf() peerSelf {
	ps := peerSelf{Cluster: a.cfg.Cluster, Node: a.cfg.NodeName, CIDRs: a.cidrsOwned(), Keepalive: a.cfg.WireGuard.PersistentKeepalive.D()}
	if n := a.nat.Load(); n != nil {
		ps.Endpoint = n.endpointFor
	}
	return ps
}

// reallocate re-registers the endpoints whose identity was collected while
// the node's lease was lost.
func (a *Agent) reallocate(ctx context.Context, lost allocator.Identity) {
	a.workloads.reallocate(ctx, lost.ID)
	if a.hostIdent == lost.ID {
		if err := a.registerHost(ctx); err != nil {
			a.log.Error("re-allocating host identity", "err", err)
		}
	}
}

// Leave removes the node from the mesh: records, workloads, datapath and
// tunnel. The agent then exits.
func (a *Agent) Leave(ctx context.Context) error {
	a.leaveOnce.Do(func() { close(a.leaving) })
	return nil
}

func (a *Agent) finishLeave(ctx context.Context) error {
	a.log.Info("leaving the mesh")
	var errs []error
	if a.workloads != nil {
		errs = append(errs, a.workloads.removeAll(ctx))
	}
	if a.session != nil {
		// Say so first: peers drop a leaving node at once, while a record
		// that just goes (an expired lease) keeps its peer alive.
		a.selfMu.Lock()
		rec := a.self
		a.selfMu.Unlock()
		rec.Leaving = true
		if err := a.session.Put(ctx, rec.Key(), &rec); err != nil {
			a.log.Warn("announcing the leave in the node record; peers drop this node once its tunnel is silent", "err", err)
		}
		errs = append(errs, a.session.Close(ctx))
	}
	for _, c := range a.cidrsOwned() {
		errs = append(errs, a.cidrs.Release(ctx, c))
	}
	// The datapath and the device go; their components' stops then have
	// nothing left to close.
	a.left = true
	if a.dp != nil {
		errs = append(errs, a.dp.Remove())
	}
	if a.tun != nil {
		errs = append(errs, a.tun.Destroy())
	}
	_ = os.Remove(filepath.Join(a.cfg.StateDir, workloadStateFile))
	return errors.Join(errs...)
}

func (a *Agent) cidrsOwned() []netip.Prefix {
	if a.cidr.IsValid() {
		return []netip.Prefix{a.cidr}
	}
	return nil
}
