// Package agent is the Weft node agent: it wires the control plane
// (kvstore, identity allocation, policy compilation) to the node's kernel
// state (WireGuard tunnel, eBPF datapath) and serves the local API.
//
// Every reconciler is its own loop fed by a kvstore cache, so the datapath
// never waits on etcd and keeps working on the last known state while etcd
// is unreachable:
//
//	nodes      -> tunnel peers and routes      (peers.go)
//	endpoints  -> ipcache                      (ipcache.go)
//	identities
//	 + policies -> policy maps of local endpoints (policy.go)
//	local workloads -> identities, endpoint records, datapath (workloads.go)
package agent

import (
	"context"
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
	"github.com/weftmesh/weft/agent/metrics"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/internal/version"
	"github.com/weftmesh/weft/kvstore"
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
}

// Agent is one running node agent.
type Agent struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	started time.Time

	cp      *controlPlane
	session *kvstore.Session
	alloc   *allocator.Allocator
	tun     *tunnel.Tunnel
	dp      *bpf.Datapath

	nodes     *kvstore.Cache[kvstore.Node]
	endpoints *kvstore.Cache[kvstore.Endpoint]
	policies  *kvstore.Cache[kvstore.Policy]

	self      kvstore.Node
	cidr      netip.Prefix
	meshIP    netip.Addr
	hostIdent identity.NumericIdentity

	peers *peerReconciler
	// ipcache is published once the endpoint cache exists; node events,
	// which start earlier, reach it through the pointer.
	ipcache   atomic.Pointer[ipcacheReconciler]
	policy    *policyReconciler
	workloads *workloadManager

	apiSrv  *api.Server
	joinSrv interface{ Shutdown(context.Context) error }

	// obs is flows, metrics, health and probes (observability.go); logs
	// counts what the agent logs (metrics, connectivity test).
	obs  atomic.Pointer[observability]
	logs *metrics.LogCounter

	leaveOnce sync.Once
	leaving   chan struct{}

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

// Run starts the agent and serves until ctx ends or the node leaves the
// mesh. On return the datapath and the tunnel stay in place (unless the node
// left), so restarting the agent does not interrupt traffic.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	a.log.Info("starting weft-agent", "version", version.Version, "node", a.cfg.NodeName, "cluster", a.cfg.Cluster)

	// The datapath's programs take longest to load (the kernel verifies
	// each) and need nothing from etcd or the tunnel: they load while the
	// control plane and the tunnel come up, and are attached once the
	// tunnel exists.
	dpLoaded := a.loadDatapath()
	dpTaken := false
	defer func() {
		if !dpTaken { // Run failed before taking it
			if r := <-dpLoaded; r.dp != nil {
				_ = r.dp.Close()
			}
		}
	}()

	var err error
	if err = a.step("connect to etcd", func() error {
		a.cp, err = startControlPlane(ctx, a.cfg, a.log)
		return err
	}); err != nil {
		return err
	}
	defer a.cp.Close()

	if err := a.step("register cluster and allocate node CIDR", func() error { return a.registerCluster(ctx) }); err != nil {
		return err
	}
	if err := a.step("open tunnel", a.openTunnel); err != nil {
		return err
	}
	defer func() {
		if a.tun != nil {
			_ = a.tun.Close()
		}
	}()
	if err := a.step("open session", func() error {
		a.session, err = a.cp.kv.NewSession(ctx, kvstore.SessionConfig{TTL: a.cfg.Etcd.LeaseTTL.D(), Logger: a.log})
		return err
	}); err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error("component stopped", "component", name, "err", err)
			}
		}()
	}

	// Peers come in two stages around the node record, because WireGuard
	// drops a handshake from a key it does not know and retries only after
	// 5 s: first every node is admitted so that it can handshake with this
	// one (nodes learning of the record answer or initiate at once), then,
	// with the datapath enforcing, the full configuration opens traffic and
	// this node's own handshakes go to nodes that know it by then.
	if err := a.step("watch nodes", func() error { return a.startNodeCache(ctx, run) }); err != nil {
		return err
	}
	if err := a.step("admit peers", func() error { return a.admitPeers(ctx) }); err != nil {
		return err
	}
	if err := a.step("register node", func() error { return a.registerNode(ctx) }); err != nil {
		return err
	}
	if err := a.step("attach datapath", func() error {
		r := <-dpLoaded
		dpTaken = true
		if r.err != nil {
			return fmt.Errorf("load datapath: %w", r.err)
		}
		a.dp = r.dp
		a.opts.Timings("load datapath", r.took)
		a.log.Debug("startup step done", "step", "load datapath", "took", r.took, "overlapped", true)
		if err := a.dp.AttachHostDevice(a.tun.Name()); err != nil {
			return fmt.Errorf("attaching to %s: %w", a.tun.Name(), err)
		}
		return nil
	}); err != nil {
		return err
	}
	defer func() {
		if a.dp != nil {
			_ = a.dp.Close()
		}
	}()

	if err := a.step("start caches", func() error { return a.startCaches(ctx, run) }); err != nil {
		return err
	}
	if err := a.step("register host endpoint", func() error { return a.registerHost(ctx) }); err != nil {
		return err
	}
	if err := a.step("restore workloads", func() error { return a.workloads.restore(ctx, a.cfg.Workloads) }); err != nil {
		return err
	}
	if err := a.step("configure peers", func() error { return a.configurePeers(ctx) }); err != nil {
		return err
	}
	run("peer reconciler", a.peers.run)
	run("tunnel upkeep", func(ctx context.Context) error { return a.tun.Run(ctx, 2*time.Second) })
	run("identity gc", func(ctx context.Context) error { a.alloc.RunGC(ctx, time.Minute, allocator.DefaultGCGrace); return nil })
	if err := a.step("serve api", func() error { return a.serveAPI(ctx, run) }); err != nil {
		return err
	}
	if every := a.cfg.WireGuard.RotateEvery.D(); every > 0 {
		run("key rotation", func(ctx context.Context) error { return a.runRotation(ctx, every) })
	}
	if err := a.step("start observability", func() error { return a.startObservability(ctx, run) }); err != nil {
		return err
	}
	if a.cp.embedded != nil {
		if err := a.step("serve join", func() error { return a.serveJoin(ctx, run) }); err != nil {
			return err
		}
	}
	a.log.Info("agent ready", "meshIP", a.meshIP, "cidr", a.cidr, "tunnel", a.tun.Kind(), "took", time.Since(a.started).Round(time.Millisecond))

	select {
	case <-ctx.Done():
	case <-a.leaving:
	case err := <-a.cp.fatal():
		return fmt.Errorf("embedded etcd failed: %w", err)
	}
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if a.apiSrv != nil {
		_ = a.apiSrv.Shutdown(shutdownCtx)
	}
	if a.joinSrv != nil {
		_ = a.joinSrv.Shutdown(shutdownCtx)
	}
	select {
	case <-a.leaving:
		return a.finishLeave(shutdownCtx)
	default:
	}
	// A plain stop keeps the lease alive until it expires on its own: the
	// node's records vanish only if the agent does not come back in time.
	a.log.Info("agent stopped; datapath and tunnel left in place")
	return nil
}

// registerCluster makes sure the node's cluster exists and that the node
// owns a CIDR from its mesh pool; the first address is the node's mesh IP.
func (a *Agent) registerCluster(ctx context.Context) error {
	kv := a.cp.kv
	cl, err := kv.GetCluster(ctx, a.cfg.Cluster)
	switch {
	case errors.Is(err, kvstore.ErrNotFound):
		pool, perr := netip.ParsePrefix(a.cfg.IPAM.MeshPool)
		if perr != nil {
			return fmt.Errorf("ipam.meshPool: %w", perr)
		}
		id := a.cfg.ClusterID
		if id == 0 {
			id = 1
		}
		cl = kvstore.Cluster{Name: a.cfg.Cluster, ID: id, MeshPool: pool}
		if err := kv.PutCluster(ctx, cl); err != nil {
			// Another node may have registered it meanwhile.
			if got, gerr := kv.GetCluster(ctx, a.cfg.Cluster); gerr == nil {
				cl = got
			} else {
				return fmt.Errorf("registering cluster %s: %w", a.cfg.Cluster, err)
			}
		} else {
			a.log.Info("registered cluster", "cluster", cl.Name, "id", cl.ID, "meshPool", cl.MeshPool)
		}
	case err != nil:
		return fmt.Errorf("reading cluster %s: %w", a.cfg.Cluster, err)
	}
	cidr, err := kv.AllocateNodeCIDR(ctx, a.cfg.Cluster, a.cfg.NodeName, a.cfg.IPAM.NodePrefixLength)
	if err != nil {
		return fmt.Errorf("allocating a CIDR for node %s: %w", a.cfg.NodeName, err)
	}
	a.cidr = cidr
	a.meshIP = cidr.Addr().Next()
	return nil
}

func (a *Agent) openTunnel() error {
	mode := tunnel.ModeAuto
	switch a.cfg.WireGuard.Mode {
	case "kernel":
		mode = tunnel.ModeKernel
	case "userspace":
		mode = tunnel.ModeUserspace
	}
	t, err := tunnel.Open(context.Background(), tunnel.Config{
		Name:         a.cfg.WireGuard.Interface,
		ListenPort:   a.cfg.WireGuard.ListenPort,
		StateDir:     filepath.Join(a.cfg.StateDir, "wireguard"),
		Addresses:    []netip.Prefix{netip.PrefixFrom(a.meshIP, a.meshIP.BitLen())},
		IPv4Underlay: true,
		Mode:         mode,
		Helper:       a.opts.TunnelHelper,
		Logger:       a.log.With("component", "tunnel"),
	})
	if err != nil {
		return err
	}
	a.tun = t
	a.log.Info("tunnel up", "interface", t.Name(), "kind", t.Kind(), "port", t.ListenPort(), "mtu", t.MTU())
	return nil
}

// datapathLoad is the outcome of loading the datapath in the background.
type datapathLoad struct {
	dp   *bpf.Datapath
	err  error
	took time.Duration
}

// loadDatapath loads the datapath's maps and programs in the background;
// the channel yields the result once.
func (a *Agent) loadDatapath() <-chan datapathLoad {
	ch := make(chan datapathLoad, 1)
	go func() {
		t0 := time.Now()
		dp, err := bpf.Open(bpf.Config{
			Scope:   a.bpfScope(),
			PinRoot: a.cfg.BPF.PinPath,
			// The workload programs load while the node registers and
			// configures its peers; the first workload waits for them.
			LazyWorkloadPrograms: true,
			Logger:               a.log.With("component", "datapath"),
		})
		ch <- datapathLoad{dp: dp, err: err, took: time.Since(t0)}
	}()
	return ch
}

// bpfScope names this agent's pins: one scope per node, so several lab
// nodes on one kernel do not share maps. bpffs refuses names with dots, so
// dots in names become '-' ('_', which names never contain, separates).
func (a *Agent) bpfScope() string {
	return strings.ReplaceAll(a.cfg.Cluster, ".", "-") + "_" + strings.ReplaceAll(a.cfg.NodeName, ".", "-")
}

// startNodeCache starts the list+watch cache of the mesh's nodes, which
// feeds the peer reconciler (started later, by Run), and waits for its
// first listing.
func (a *Agent) startNodeCache(ctx context.Context, run func(string, func(context.Context) error)) error {
	a.peers = newPeerReconciler(a)
	var err error
	a.nodes, err = kvstore.NewCache(a.cp.kv.Etcd(), kvstore.CacheConfig[kvstore.Node]{
		Name: "nodes", Prefix: kvstore.NodesPrefix, Decode: kvstore.NodeDecoder,
		OnEvent: func(ev kvstore.Event[kvstore.Node]) {
			a.peers.trigger()
			if r := a.ipcache.Load(); r != nil {
				n := ev.Value
				if ev.Kind == kvstore.EventDelete {
					n = ev.Old
				}
				r.resyncNode(n.Cluster, n.Name)
			}
		},
		Logger: a.log,
	})
	if err != nil {
		return err
	}
	run("node cache", a.nodes.Run)
	return waitSynced(ctx, a.nodes.Synced())
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

// admitPeers adds the nodes the device does not know yet as peers that can
// only handshake: no allowed prefixes (no traffic either way before the
// datapath is attached), no routes and no keepalive (this node does not
// initiate yet). Peers already on the device, left by an agent that
// restarted, keep their configuration, so their traffic goes on. A failure
// is only logged: configurePeers applies the whole configuration later.
func (a *Agent) admitPeers(ctx context.Context) error {
	st, err := a.tun.Status()
	if err != nil {
		a.log.Warn("reading the tunnel's peers; skipping early admission", "err", err)
		return nil
	}
	have := map[string]bool{}
	for _, p := range st.Peers {
		have[p.PublicKey] = true
	}
	desired := a.peers.desired()
	for i := range desired {
		if !have[desired[i].PublicKey] {
			desired[i].AllowedIPs, desired[i].Keepalive = nil, 0
		}
	}
	if err := a.tun.Reconcile(ctx, desired); err != nil {
		a.log.Warn("admitting peers before registration; the full configuration follows", "err", err)
	}
	return nil
}

// configurePeers applies the full peer configuration once (the peer
// reconciler keeps it current from then on): allowed prefixes, routes and
// keepalives, which makes this node handshake with the peers that have not
// done so yet.
func (a *Agent) configurePeers(ctx context.Context) error {
	desired := a.peers.desired()
	if err := a.tun.Reconcile(ctx, desired); err != nil {
		a.log.Warn("configuring tunnel peers; the peer reconciler retries", "err", err)
		a.peers.trigger()
		return nil
	}
	a.peers.last = desired
	return nil
}

// startCaches starts the list+watch caches of identities, endpoints and
// policies and the reconcilers they feed, and waits until each has its
// first listing.
func (a *Agent) startCaches(ctx context.Context, run func(string, func(context.Context) error)) error {
	ec := a.cp.kv.Etcd()
	var err error
	a.policy = newPolicyReconciler(a)
	a.workloads = newWorkloadManager(a)

	a.alloc, err = allocator.New(allocator.Config{
		Client: a.cp.kv, Session: a.session, Cluster: a.cfg.Cluster, Node: a.cfg.NodeName,
		OnEvent: a.policy.identityEvent,
		OnLost: func(id allocator.Identity) {
			a.log.Warn("identity reference lost after a lease loss; re-allocating", "identity", id.ID)
			go a.workloads.reallocate(ctx, id)
		},
		Logger: a.log.With("component", "identities"),
	})
	if err != nil {
		return err
	}
	a.endpoints, err = kvstore.NewCache(ec, kvstore.CacheConfig[kvstore.Endpoint]{
		Name: "endpoints", Prefix: kvstore.EndpointsPrefix, Decode: kvstore.EndpointDecoder,
		OnEvent: func(ev kvstore.Event[kvstore.Endpoint]) { a.ipcache.Load().event(ev) },
		Logger:  a.log,
	})
	if err != nil {
		return err
	}
	// Published before the endpoint cache runs, so no event finds it nil.
	a.ipcache.Store(newIPCacheReconciler(a.dp, a.nodePrefixes, a.endpoints, a.log))
	a.policies, err = kvstore.NewCache(ec, kvstore.CacheConfig[kvstore.Policy]{
		Name: "policies", Prefix: kvstore.PoliciesPrefix, Decode: kvstore.PolicyDecoder,
		OnEvent: a.policy.policyEvent, Logger: a.log,
	})
	if err != nil {
		return err
	}
	run("identity cache", a.alloc.Run)
	run("endpoint cache", a.endpoints.Run)
	run("policy cache", a.policies.Run)
	run("policy reconciler", a.policy.run)
	return waitSynced(ctx, a.alloc.Synced(), a.endpoints.Synced(), a.policies.Synced())
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
		Labels:       labelStrings(labels),
		AgentVersion: version.Version,
	}
	return a.session.Put(ctx, a.self.Key(), &a.self)
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
		errs = append(errs, a.session.Close(ctx))
	}
	for _, c := range a.cidrsOwned() {
		errs = append(errs, a.cp.kv.ReleaseNodeCIDR(ctx, a.cfg.Cluster, a.cfg.NodeName, c))
	}
	if a.dp != nil {
		errs = append(errs, a.dp.Remove())
		a.dp = nil
	}
	if a.tun != nil {
		errs = append(errs, a.tun.Destroy())
		a.tun = nil
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
