package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flowcollect"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/agent/health"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/agent/metrics"
	"github.com/weftmesh/weft/agent/paths"
	"github.com/weftmesh/weft/agent/probe"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/pki"
	"github.com/weftmesh/weft/tunnel"
)

// meshMetricsHost, as the host of metrics.address, means the node's mesh
// address.
const meshMetricsHost = "mesh"

// obsDeps is what observability reads of the running agent: small
// interfaces over its caches, device and datapath, so that observability
// is built, and tested, without an Agent.
type obsDeps struct {
	node, cluster string
	meshIP        netip.Addr
	flowBuffer    int
	metricsAddr   string
	// metricsAllow are further sources /metrics answers (metrics.allow).
	metricsAllow []netip.Prefix
	// paths reports a peer's path by node key (nil: none known).
	paths func(nodeKey string) (paths.State, bool)
	// tls are the node's certificate files (the agent-to-agent API).
	tls pki.Files
	// nodes are the nodes of this cluster's etcd, which share its CA and
	// gossip key: those probed and reached over the mesh.
	nodes interface {
		nodeSet
		Len() int
	}
	// meshNodes are every node known, the connected clusters' included
	// (flows name them; `status --all` lists them); nil: nodes.
	meshNodes interface {
		Range(func(key string, n kvstore.Node) bool)
		Revision() int64
	}
	endpoints  endpointCache
	policies   interface{ Len() int }
	identities interface {
		LookupByID(identity.NumericIdentity) (identity.Labels, bool)
	}
	// locals are the local endpoints as last enforced.
	locals func() []localEndpoint
	device interface {
		Status() (tunnel.Status, error)
		ListenPort() int
	}
	dp interface {
		Events() (flowcollect.EventSource, error)
		Metrics() (bpf.Metrics, error)
		MapUsage() ([]bpf.MapUsage, error)
	}
	store interface {
		Ping(ctx context.Context) error
		GossipKey(ctx context.Context) ([]byte, error)
	}
	// workloads adds and removes the connectivity test's probe workloads.
	workloads probe.Endpoints
	// underlayIfaces lists the interfaces holding the node's underlay
	// addresses (the wire check).
	underlayIfaces func() ([]int, error)
	// mesh serves the agent-to-agent API.
	mesh api.Backend
	log  *slog.Logger
	logs *metrics.LogCounter
	run  func(name string, f func(context.Context) error)
	// peerCheck refuses peer certificates of revoked nodes on the
	// agent-to-agent API (nil: none).
	peerCheck func(*x509.Certificate) error
}

// endpointCache is the endpoint cache as observability reads it.
type endpointCache interface {
	Range(func(key string, e kvstore.Endpoint) bool)
	Revision() int64
	Len() int
}

// observability is the agent's flows, metrics, health and probes.
type observability struct {
	deps     obsDeps
	ring     *flows.Ring
	metrics  *metrics.Metrics
	health   *health.Monitor
	prober   *probe.Prober
	wire     *probe.WireWatch
	creds    *meshtls.Credentials
	tr       *http.Transport
	meshSrv  *api.Server
	etcdOK   atomic.Bool
	endpoint endpointIndex
	node     nodeIndex

	usageMu   sync.Mutex
	usageAt   time.Time
	usageLast []metrics.MapUsage
}

// startObservability starts flow collection, metrics, health probing and
// the agent-to-agent API on the mesh address.
func (a *Agent) startObservability(ctx context.Context) error {
	o, err := startObservability(ctx, obsDeps{
		node: a.cfg.NodeName, cluster: a.cfg.Cluster, meshIP: a.meshIP,
		flowBuffer: a.cfg.Flows.Buffer, metricsAddr: a.cfg.Metrics.Address, metricsAllow: metricsAllow(a.cfg.Metrics.Allow), tls: a.cp.files,
		nodes: a.nodes.Local(), meshNodes: a.nodes, endpoints: a.endpoints, policies: a.policies, identities: identityLookup{a},
		locals: func() []localEndpoint { l, _ := a.policy.localSnapshot(); return l },
		device: a.tun, dp: a.dp, store: a.cp.kv, workloads: a, underlayIfaces: a.underlayIfaces,
		mesh: api.Backend{Status: a, Mesh: a, Flows: a, Health: meshOnlyHealth{a}, Prober: a, PolicyStatus: a, NAT: natAPI{a}},
		log:  a.log, logs: a.logs, run: a.goRun,
		peerCheck: a.peers.revocations.checkCert,
		paths:     a.peerPath,
	})
	if err != nil {
		return err
	}
	a.obs.Store(o)
	return nil
}

func startObservability(ctx context.Context, d obsDeps) (*observability, error) {
	run := d.run
	o := &observability{deps: d, ring: flows.NewRing(d.flowBuffer)}
	o.endpoint.cache = d.endpoints
	o.node.cache = d.meshNodes
	o.metrics = metrics.New(o, d.log.With("component", "metrics"))
	if d.logs != nil {
		d.logs.Attach(o.metrics)
	}
	o.prober = probe.New(d.workloads, d.log.With("component", "probe"))
	o.wire = &probe.WireWatch{Ifaces: d.underlayIfaces, TunnelPort: d.device.ListenPort()}

	reader, err := d.dp.Events()
	if err != nil {
		return nil, fmt.Errorf("opening the datapath's events: %w", err)
	}
	col := &flowcollect.Collector{
		Source:   reader,
		Enricher: &flowcollect.Enricher{Dir: o, Node: d.node, Cluster: d.cluster},
		Ring:     o.ring,
		OnFlow:   o.metrics.ObserveFlow,
	}
	run("flows", col.Run)
	run("etcd check", o.checkEtcd)

	key, err := d.store.GossipKey(ctx)
	if err != nil {
		return nil, err
	}
	self := health.Target{Node: d.node, Cluster: d.cluster, MeshIP: d.meshIP}
	o.health, err = health.New(health.Config{Self: self, Key: key, Targets: o.targets, Logger: d.log.With("component", "health")})
	if err != nil {
		return nil, err
	}
	run("health", o.health.Run)

	if err := o.serveMesh(); err != nil {
		// Flows and metrics still work locally; only other nodes' views
		// are unavailable, so this is not fatal.
		d.log.Warn("agent-to-agent API not started: `meshctl observe --all-nodes` and `status --all` will not reach this node", "err", err)
	}
	if err := o.serveMetrics(); err != nil {
		return nil, err
	}
	run("probe cleanup", func(ctx context.Context) error {
		<-ctx.Done()
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		o.prober.RemoveAll(cctx)
		return nil
	})
	return o, nil
}

// targets lists the mesh's nodes for probing.
func (o *observability) targets() []health.Target {
	var out []health.Target
	o.deps.nodes.Range(func(_ string, n kvstore.Node) bool {
		out = append(out, health.Target{Node: n.Name, Cluster: n.Cluster, MeshIP: n.MeshIP})
		return true
	})
	return out
}

// connectedNodes lists the nodes of connected clusters: those of the mesh
// not in this cluster's etcd.
func (o *observability) connectedNodes() []kvstore.Node {
	if o.deps.meshNodes == nil {
		return nil
	}
	var out []kvstore.Node
	o.deps.meshNodes.Range(func(key string, n kvstore.Node) bool {
		if _, local := o.deps.nodes.Get(key); !local {
			out = append(out, n)
		}
		return true
	})
	return out
}

// serveMesh serves the agent-to-agent API on the mesh address over mTLS.
func (o *observability) serveMesh() error {
	f := o.deps.tls
	creds, err := meshtls.Load(f.CAFile, f.ClientCertFile, f.ClientKey)
	if err != nil {
		return err
	}
	if o.deps.peerCheck != nil {
		creds.SetPeerCheck(o.deps.peerCheck)
	}
	o.creds = creds
	o.tr = creds.Transport()
	addr := net.JoinHostPort(o.deps.meshIP.String(), strconv.Itoa(meshtls.DefaultPort))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	o.meshSrv = api.NewServer(o.deps.mesh, o.deps.log.With("component", "mesh-api"))
	srv := o.meshSrv
	o.deps.run("mesh api", func(ctx context.Context) error {
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		return srv.Serve(tlsListener(l, creds))
	})
	o.deps.log.Info("agent-to-agent API listening", "address", addr)
	return nil
}

// serveMetrics serves /metrics on metrics.address ("mesh" as the host: the
// mesh address).
func (o *observability) serveMetrics() error {
	addr := o.deps.metricsAddr
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics.address %q: %w", addr, err)
	}
	if host == meshMetricsHost {
		addr = net.JoinHostPort(o.deps.meshIP.String(), port)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listening on %s (metrics.address; empty turns metrics off): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", o.metricsGate(o.metrics.Handler()))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	o.deps.run("metrics", func(ctx context.Context) error {
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	o.deps.log.Info("metrics listening", "address", addr)
	return nil
}

// metricsGate answers /metrics only to the mesh's nodes (a request from a
// node's mesh address), this node's loopback and metrics.allow: a workload
// on a node reaches the node's mesh address too, and must not read its
// counters (what talks to whom, drop reasons, map fill).
func (o *observability) metricsGate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !metricsClientAllowed(ap.Addr().Unmap(), o.deps.nodes, o.deps.metricsAllow) {
			http.Error(w, "metrics are served to the mesh's nodes only; add this address to metrics.allow to let it read them", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// metricsClientAllowed decides who may read /metrics (metricsGate).
func metricsClientAllowed(ip netip.Addr, nodes nodeSet, allow []netip.Prefix) bool {
	if ip.IsLoopback() {
		return true
	}
	for _, p := range allow {
		if p.Contains(ip) {
			return true
		}
	}
	node := false
	nodes.Range(func(_ string, n kvstore.Node) bool {
		node = n.MeshIP == ip
		return !node
	})
	return node
}

// checkEtcd refreshes the etcd_connected metric.
func (o *observability) checkEtcd(ctx context.Context) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := o.deps.store.Ping(cctx)
		cancel()
		o.etcdOK.Store(err == nil)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
}

// --- flowcollect.Directory ---

// endpointIndex looks endpoints up by address, rebuilt from the cache when
// its revision moves.
type endpointIndex struct {
	cache endpointCache
	mu    sync.Mutex
	rev   int64
	byIP  map[netip.Addr]kvstore.Endpoint
}

func (x *endpointIndex) get(ip netip.Addr) (kvstore.Endpoint, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if rev := x.cache.Revision(); x.byIP == nil || rev != x.rev {
		x.byIP = map[netip.Addr]kvstore.Endpoint{}
		x.cache.Range(func(_ string, e kvstore.Endpoint) bool {
			x.byIP[e.IP.Unmap()] = e
			return true
		})
		x.rev = rev
	}
	e, ok := x.byIP[ip.Unmap()]
	return e, ok
}

// nodeIndex looks nodes up by an address they hold (mesh address or CIDR),
// rebuilt from the cache when its revision moves.
type nodeIndex struct {
	cache interface {
		Range(func(key string, n kvstore.Node) bool)
		Revision() int64
	}
	mu     sync.Mutex
	rev    int64
	built  bool
	byIP   map[netip.Addr]flowcollect.NodeInfo
	ranges []nodeRange // longest prefix first
}

type nodeRange struct {
	p netip.Prefix
	n flowcollect.NodeInfo
}

func (x *nodeIndex) get(ip netip.Addr) (flowcollect.NodeInfo, bool) {
	if x.cache == nil {
		return flowcollect.NodeInfo{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if rev := x.cache.Revision(); !x.built || rev != x.rev {
		x.byIP, x.ranges = map[netip.Addr]flowcollect.NodeInfo{}, nil
		x.cache.Range(func(_ string, n kvstore.Node) bool {
			info := flowcollect.NodeInfo{Name: n.Name, Cluster: n.Cluster}
			if n.MeshIP.IsValid() {
				x.byIP[n.MeshIP.Unmap()] = info
			}
			for _, p := range n.CIDRs {
				x.ranges = append(x.ranges, nodeRange{p: p.Masked(), n: info})
			}
			return true
		})
		sort.SliceStable(x.ranges, func(i, j int) bool { return x.ranges[i].p.Bits() > x.ranges[j].p.Bits() })
		x.rev, x.built = rev, true
	}
	ip = ip.Unmap()
	if n, ok := x.byIP[ip]; ok {
		return n, true
	}
	for _, r := range x.ranges {
		if r.p.Contains(ip) {
			return r.n, true
		}
	}
	return flowcollect.NodeInfo{}, false
}

// NodeByIP implements flowcollect.Directory.
func (o *observability) NodeByIP(ip netip.Addr) (flowcollect.NodeInfo, bool) { return o.node.get(ip) }

// EndpointByIP implements flowcollect.Directory.
func (o *observability) EndpointByIP(ip netip.Addr) (flowcollect.EndpointInfo, bool) {
	e, ok := o.endpoint.get(ip)
	if !ok {
		return flowcollect.EndpointInfo{}, false
	}
	return flowcollect.EndpointInfo{Name: e.Name, Node: e.Node, Cluster: e.Cluster, Identity: e.Identity, Labels: e.Labels}, true
}

// IdentityLabels implements flowcollect.Directory.
func (o *observability) IdentityLabels(id uint32) ([]string, bool) {
	if l, ok := identity.ReservedIdentities()[identity.NumericIdentity(id)]; ok {
		return l.Strings(), true
	}
	if l, ok := o.deps.identities.LookupByID(identity.NumericIdentity(id)); ok {
		return l.Strings(), true
	}
	return nil, false
}

// --- metrics.Source ---

// DatapathCounters implements metrics.Source.
func (o *observability) DatapathCounters() (bpf.Metrics, error) { return o.deps.dp.Metrics() }

// Peers implements metrics.Source.
func (o *observability) Peers() ([]metrics.Peer, error) {
	ts, err := o.deps.device.Status()
	if err != nil {
		return nil, err
	}
	byKey := map[string]string{}
	o.deps.nodes.Range(func(_ string, n kvstore.Node) bool { byKey[n.WGPublicKey] = n.Cluster + "/" + n.Name; return true })
	out := make([]metrics.Peer, 0, len(ts.Peers))
	for _, p := range ts.Peers {
		name := byKey[p.PublicKey]
		if name == "" {
			name = p.PublicKey
		}
		mp := metrics.Peer{Node: name, LastHandshake: p.LastHandshake}
		if o.deps.paths != nil {
			if st, ok := o.deps.paths(name); ok {
				mp.Path, mp.PathChanges = string(st.Path.Kind), st.Changes
			}
		}
		out = append(out, mp)
	}
	return out, nil
}

// EtcdConnected implements metrics.Source.
func (o *observability) EtcdConnected() bool { return o.etcdOK.Load() }

// Inventory implements metrics.Source.
func (o *observability) Inventory() metrics.Inventory {
	d := o.deps
	inv := metrics.Inventory{Nodes: d.nodes.Len(), Policies: d.policies.Len()}
	ids := map[uint32]bool{}
	d.endpoints.Range(func(_ string, e kvstore.Endpoint) bool {
		ids[e.Identity] = true
		if e.Node == d.node && e.Cluster == d.cluster {
			inv.LocalEndpoints++
		} else {
			inv.RemoteEndpoints++
		}
		return true
	})
	inv.Identities = len(ids)
	for _, l := range d.locals() {
		inv.PolicyEntries += len(l.policy.Entries)
	}
	return inv
}

// MapUsage implements metrics.Source: how full the datapath's maps are,
// counted at most every 5 seconds (walking a full conntrack table costs a
// syscall per entry).
func (o *observability) MapUsage() ([]metrics.MapUsage, error) {
	o.usageMu.Lock()
	defer o.usageMu.Unlock()
	if time.Since(o.usageAt) < 5*time.Second && o.usageLast != nil {
		return o.usageLast, nil
	}
	us, err := o.deps.dp.MapUsage()
	if err != nil {
		return nil, err
	}
	out := make([]metrics.MapUsage, 0, len(us))
	for _, u := range us {
		out = append(out, metrics.MapUsage{Name: u.Name, Entries: u.Entries, Capacity: u.Capacity})
	}
	o.usageAt, o.usageLast = time.Now(), out
	return out, nil
}

// Reachability implements metrics.Source.
func (o *observability) Reachability() []metrics.Reach {
	if o.health == nil {
		return nil
	}
	var out []metrics.Reach
	for _, p := range o.health.View().Probes {
		out = append(out, metrics.Reach{Node: p.Cluster + "/" + p.Node, Up: p.State == health.StateUp, RTT: time.Duration(p.RTT)})
	}
	return out
}

// --- API backends (local socket and mesh listener) ---

func (a *Agent) observabilityReady() (*observability, error) {
	o := a.obs.Load()
	if o == nil {
		return nil, api.Errorf(api.CodeUnavailable, "observability is starting")
	}
	return o, nil
}

// Flows implements api.FlowSource.
func (a *Agent) Flows(ctx context.Context, req api.FlowRequest, emit func(api.FlowLine) error) error {
	o, err := a.observabilityReady()
	if err != nil {
		return err
	}
	return o.ring.Stream(ctx, req, emit)
}

// NodeHealth implements api.MeshHealth.
func (a *Agent) NodeHealth(ctx context.Context) (api.NodeHealth, error) {
	o, err := a.observabilityReady()
	if err != nil {
		return api.NodeHealth{}, err
	}
	return o.health.View(), nil
}

// HealthMatrix implements api.MeshHealth: this node's view plus every
// other node's, read over the mesh with a short timeout so a dead node
// costs at most that.
func (a *Agent) HealthMatrix(ctx context.Context) (api.HealthMatrix, error) {
	o, err := a.observabilityReady()
	if err != nil {
		return api.HealthMatrix{}, err
	}
	return o.healthMatrix(ctx), nil
}

func (o *observability) healthMatrix(ctx context.Context) api.HealthMatrix {
	self := o.health.View()
	selfState := map[string]string{}
	for _, p := range self.Probes {
		selfState[p.Cluster+"/"+p.Node] = p.State
	}
	m := api.HealthMatrix{Time: time.Now().UTC(), From: o.deps.cluster + "/" + o.deps.node, Down: []string{}}
	targets := o.targets()
	rows := make([]api.NodeHealth, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		if t.Cluster == o.deps.cluster && t.Node == o.deps.node {
			rows[i] = self
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows[i] = o.remoteHealth(ctx, t)
		}()
	}
	wg.Wait()
	// The connected clusters' nodes are listed, not queried: their agents
	// accept only their own cluster's certificates, and this node does not
	// probe them (their gossip key differs). Not queried is not down.
	for _, n := range o.connectedNodes() {
		row := api.NodeHealth{Node: n.Name, Cluster: n.Cluster, Probes: []api.Probe{}, Remote: true}
		if n.MeshIP.IsValid() {
			row.MeshIP = n.MeshIP.String()
		}
		rows = append(rows, row)
	}
	for _, r := range rows {
		if r.Remote {
			continue
		}
		name := r.Cluster + "/" + r.Node
		st, probed := selfState[name]
		if name == m.From {
			st, probed = health.StateUp, true
		}
		if st == health.StateDown || (r.Error != "" && (!probed || st != health.StateUp)) {
			m.Down = append(m.Down, name)
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Cluster+"/"+rows[i].Node < rows[j].Cluster+"/"+rows[j].Node })
	sort.Strings(m.Down)
	m.Nodes = rows
	return m
}

// remoteHealth reads another node's own view over the mesh.
func (o *observability) remoteHealth(ctx context.Context, t health.Target) api.NodeHealth {
	row := api.NodeHealth{Node: t.Node, Cluster: t.Cluster, Probes: []api.Probe{}}
	if t.MeshIP.IsValid() {
		row.MeshIP = t.MeshIP.String()
	}
	if o.tr == nil || !t.MeshIP.IsValid() {
		row.Error = "the agent-to-agent API is not available"
		return row
	}
	cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	url := "https://" + net.JoinHostPort(t.MeshIP.String(), strconv.Itoa(meshtls.DefaultPort)) + "/v1/health/node"
	req, _ := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	resp, err := (&http.Client{Transport: o.tr}).Do(req)
	if err != nil {
		row.Error = fmt.Sprintf("no answer over the mesh: %v", err)
		return row
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		row.Error = "the agent answered " + resp.Status
		return row
	}
	var got api.NodeHealth
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		row.Error = fmt.Sprintf("decoding its answer: %v", err)
		return row
	}
	return got
}

// meshOnlyHealth serves a node's own view on the mesh listener; gathering
// the matrix is for the local socket only (no fan-out on behalf of others).
type meshOnlyHealth struct{ a *Agent }

func (h meshOnlyHealth) NodeHealth(ctx context.Context) (api.NodeHealth, error) {
	return h.a.NodeHealth(ctx)
}

func (h meshOnlyHealth) HealthMatrix(context.Context) (api.HealthMatrix, error) {
	return api.HealthMatrix{}, api.Errorf(api.CodeNotSupported, "the health matrix is served on the local socket only")
}

// Relay implements api.Relayer: requests for this node are served here,
// others go to that node's agent over the mesh.
func (a *Agent) Relay(ctx context.Context, cluster, node string) (http.Handler, error) {
	o, err := a.observabilityReady()
	if err != nil {
		return nil, err
	}
	return o.relay(cluster, node)
}

func (o *observability) relay(cluster, node string) (http.Handler, error) {
	if o.meshSrv == nil {
		return nil, api.Errorf(api.CodeUnavailable, "this agent's agent-to-agent API did not start (see its log)")
	}
	if cluster == o.deps.cluster && node == o.deps.node {
		return o.meshSrv.Handler(), nil
	}
	var target kvstore.Node
	found := false
	o.deps.nodes.Range(func(_ string, n kvstore.Node) bool {
		if n.Cluster == cluster && n.Name == node {
			target, found = n, true
			return false
		}
		return true
	})
	if !found {
		for _, n := range o.connectedNodes() {
			if n.Cluster == cluster && n.Name == node {
				// Its mesh listener trusts only its own cluster's CA: the
				// request could only fail at the handshake, after a wait.
				return nil, api.Errorf(api.CodeNotSupported,
					"node %s/%s is in the connected cluster %s, whose agents answer only their own cluster's nodes: run meshctl on a node of cluster %s to query it",
					cluster, node, cluster, cluster)
			}
		}
	}
	if !found || !target.MeshIP.IsValid() {
		return nil, api.Errorf(api.CodeNotFound, "no node %s/%s in the mesh (see `meshctl nodes`)", cluster, node)
	}
	return meshtls.Relay(o.tr, netip.AddrPortFrom(target.MeshIP, meshtls.DefaultPort)), nil
}

// AddProbeWorkload implements api.Prober.
func (a *Agent) AddProbeWorkload(ctx context.Context, req api.ProbeWorkloadRequest) (api.Endpoint, error) {
	o, err := a.observabilityReady()
	if err != nil {
		return api.Endpoint{}, err
	}
	return o.prober.Add(ctx, req)
}

// RemoveProbeWorkload implements api.Prober.
func (a *Agent) RemoveProbeWorkload(ctx context.Context, name string) error {
	o, err := a.observabilityReady()
	if err != nil {
		return err
	}
	return o.prober.Remove(ctx, name)
}

// RunProbe implements api.Prober.
func (a *Agent) RunProbe(ctx context.Context, req api.ProbeRequest) (api.ProbeResult, error) {
	o, err := a.observabilityReady()
	if err != nil {
		return api.ProbeResult{}, err
	}
	return o.prober.Run(ctx, req)
}

// WireCheck implements api.Prober.
func (a *Agent) WireCheck(ctx context.Context, req api.WireCheckRequest) (api.WireCheckResult, error) {
	o, err := a.observabilityReady()
	if err != nil {
		return api.WireCheckResult{}, err
	}
	return o.wire.Check(ctx, req)
}

// LogErrors implements api.Prober.
func (a *Agent) LogErrors(ctx context.Context, since time.Time) (api.LogErrors, error) {
	if a.logs == nil {
		return api.LogErrors{Recent: []string{}}, nil
	}
	n, msgs := a.logs.ErrorsSince(since)
	if msgs == nil {
		msgs = []string{}
	}
	return api.LogErrors{Count: n, Recent: msgs}, nil
}

func tlsListener(l net.Listener, c *meshtls.Credentials) net.Listener {
	return tls.NewListener(l, c.ServerConfig())
}

// metricsAllow parses metrics.allow (validated with the configuration).
func metricsAllow(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
