package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
)

// component is one part of the running agent. Run starts the components in
// order, each as a timed startup step (its name is the step's, which `make
// bench-join` reports), and stops the started ones in reverse. A new kind
// of workload source or a remote cluster is one more entry in the list.
type component struct {
	name string
	// when, if set, decides whether the component runs on this node.
	when func() bool
	// start returns once the component is ready; long-lived loops go
	// through Agent.goRun.
	start func(ctx context.Context) error
	// stop undoes start on a plain stop (nil: nothing to undo).
	stop func(ctx context.Context) error
	// untimed components are not startup steps (they add nothing to the
	// time to ready and are not reported).
	untimed bool
}

// components lists the agent's components in start order.
//
// Peers come in two stages around the node record, because WireGuard drops
// a handshake from a key it does not know and retries only after 5 s:
// first every node is admitted so that it can handshake with this one
// (nodes learning of the record answer or initiate at once), then, with the
// datapath enforcing, the full configuration opens traffic and this node's
// own handshakes go to nodes that know it by then.
func (a *Agent) components(dp *pendingDatapath) []component {
	return []component{
		{name: "start kubernetes source", when: a.kubernetes, start: a.startKubernetes},
		{name: "connect to etcd", start: a.startControlPlane, stop: func(context.Context) error { a.cp.Close(); return nil }},
		{name: "register cluster and allocate node CIDR", start: a.acquireCIDR},
		{name: "open tunnel", start: a.openTunnel, stop: func(context.Context) error {
			if a.left {
				return nil
			}
			return a.tun.Close()
		}},
		{name: "open session", start: a.openSession, stop: func(context.Context) error {
			// A plain stop keeps the lease (and the node's records) until
			// it expires on its own; only leave revokes it.
			a.session.Detach()
			return nil
		}},
		{name: "watch nodes", start: a.startNodeCache},
		{name: "admit peers", start: func(ctx context.Context) error { a.peers.admit(ctx, a.devicePeers); return nil }},
		{name: "register node", start: a.registerNode},
		{name: "attach datapath", start: func(context.Context) error { return a.attachDatapath(dp) }, stop: func(context.Context) error {
			if a.left {
				return nil
			}
			return a.dp.Close()
		}},
		{name: "start caches", start: a.startCaches},
		{name: "register host endpoint", start: a.registerHost},
		{name: "restore workloads", start: func(ctx context.Context) error { return a.workloads.restore(ctx, a.cfg.Workloads) }},
		{name: "serve pods", when: a.kubernetes, start: a.startPods},
		{name: "configure peers", start: a.startPeers},
		{name: "serve api", start: a.serveAPI},
		{name: "certificate renewal", untimed: true, start: a.startRenewal},
		{name: "key rotation", untimed: true, when: func() bool { return a.cfg.WireGuard.RotateEvery.D() > 0 }, start: func(context.Context) error {
			every := a.cfg.WireGuard.RotateEvery.D()
			a.goRun("key rotation", func(ctx context.Context) error { return a.runRotation(ctx, every) })
			return nil
		}},
		{name: "start observability", when: func() bool { return !a.opts.noObservability }, start: a.startObservability},
		{name: "start NAT traversal", when: func() bool { return !a.opts.noObservability }, start: a.startNAT},
		{name: "serve join", when: func() bool { return a.cp.seed() }, start: a.serveJoin},
	}
}

func (a *Agent) startControlPlane(ctx context.Context) error {
	cp, err := startControlPlane(ctx, a.cfg, a.log)
	if err != nil {
		return err
	}
	a.cp = cp
	a.cidrs = cp.cidrSource(a.cfg.Cluster, a.cfg.NodeName, a.cfg.ClusterID, a.cfg.IPAM.MeshPool, a.cfg.IPAM.NodePrefixLength, a.log)
	if a.cfg.Kubernetes.Enabled {
		a.cidrs = cp.claimedCIDRSource(a.cfg.Cluster, a.cfg.NodeName, a.kubePodCIDR)
	}
	return nil
}

// acquireCIDR takes the node's CIDR; its first address is the mesh IP.
func (a *Agent) acquireCIDR(ctx context.Context) error {
	cidr, err := a.cidrs.Acquire(ctx)
	if err != nil {
		return err
	}
	a.cidr, a.meshIP = cidr, cidr.Addr().Next()
	return nil
}

func (a *Agent) openSession(ctx context.Context) error {
	s, err := a.cp.kv.NewSession(ctx, kvstore.SessionConfig{TTL: a.cfg.Etcd.LeaseTTL.D(), Logger: a.log})
	if err != nil {
		return err
	}
	a.session = s
	// This node's records are its own: whoever deletes or overwrites one
	// sees it written again.
	c, n := a.cfg.Cluster, a.cfg.NodeName
	s.Defend(kvstore.NodeKey(c, n), kvstore.EndpointsNodePrefix(c, n), kvstore.IdentityRefsNodePrefix(c, n))
	return nil
}

// observeReconcile records one reconcile pass (reconcilers call it).
func (a *Agent) observeReconcile(name string, start time.Time) {
	if o := a.obs.Load(); o != nil {
		o.metrics.ObserveReconcile(name, time.Since(start))
	}
}

// startNodeCache starts the list+watch cache of the mesh's nodes, which
// feeds the peer reconciler (its loop starts later, in startPeers), and
// waits for its first listing.
func (a *Agent) startNodeCache(ctx context.Context) error {
	// Revocations first: a revoked node must not become a peer even for
	// the moment between the two caches' first listings.
	revs, err := a.startRevocations()
	if err != nil {
		return err
	}
	a.nodes, err = newView("nodes", kvstore.NodeDecoder, func(ev kvstore.Event[kvstore.Node]) {
		a.peers.nodeEvent(ev)
		a.peers.trigger()
		if r := a.ipcache.Load(); r != nil {
			n := ev.Value
			if ev.Kind == kvstore.EventDelete {
				n = ev.Old
			}
			r.resyncNode(n.Cluster, n.Name)
		}
	}, a.log)
	if err != nil {
		return err
	}
	a.peers = newPeerReconciler(a.tun, a.nodes, a.peerSelf, a.log, a.observeReconcile)
	a.peers.revocations, a.peers.revoked = revs, revs.revoked
	// A live peer sends at least a keepalive every interval; two missed
	// ones and a margin mean its tunnel is silent.
	a.peers.silence = 2*a.cfg.WireGuard.PersistentKeepalive.D() + 5*time.Second
	a.peers.status = a.tun.Status
	a.peers.onDrop = func(cluster, node string) {
		if r := a.ipcache.Load(); r != nil {
			r.dropNode(cluster, node)
		}
	}
	a.goRun("revocation cache", revs.cache.Run)
	// The local etcd is the first member: its records take precedence
	// over any connected cluster's (remoteclusters.go).
	if err := a.nodes.Add(ctx, kvstore.MemberConfig[kvstore.Node]{Name: localMember, Source: a.cp.kv.Source(), Prefix: kvstore.NodesPrefix, ProbeInterval: -1}); err != nil {
		return err
	}
	if err := waitSynced(ctx, a.nodes.Synced(localMember)); err != nil {
		return err
	}
	// Bounded: a node whose etcd role predates revoked/ cannot read it
	// until the seed (upgraded) grants it again; it keeps trying.
	select {
	case <-revs.cache.Synced():
	case <-time.After(5 * time.Second):
		a.log.Warn("revocations not readable yet; starting without them (the cache keeps trying; the seed's upgrade grants node roles read on revoked/)")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// devicePeers lists the keys the tunnel device has peers for.
func (a *Agent) devicePeers() (map[string]bool, error) {
	st, err := a.tun.Status()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, p := range st.Peers {
		have[p.PublicKey] = true
	}
	return have, nil
}

// startPeers applies the full peer configuration and starts the loops that
// keep the tunnel current: the peer reconciler, the device's upkeep and the
// identity garbage collector.
func (a *Agent) startPeers(ctx context.Context) error {
	a.peers.configure(ctx)
	a.goRun("peer reconciler", a.peers.run)
	a.goRun("tunnel upkeep", func(ctx context.Context) error { return a.tun.Run(ctx, 2*time.Second) })
	a.goRun("identity gc", func(ctx context.Context) error { a.alloc.RunGC(ctx, time.Minute, allocator.DefaultGCGrace); return nil })
	return nil
}

// pendingDatapath is the datapath loading in the background.
type pendingDatapath struct {
	ch    chan datapathLoad
	taken bool
}

type datapathLoad struct {
	dp   Datapath
	err  error
	took time.Duration
}

// loadDatapath loads the datapath's maps and programs in the background.
func (a *Agent) loadDatapath() *pendingDatapath {
	p := &pendingDatapath{ch: make(chan datapathLoad, 1)}
	go func() {
		t0 := time.Now()
		dp, err := a.opts.OpenDatapath(bpf.Config{
			Scope:   a.bpfScope(),
			PinRoot: a.cfg.BPF.PinPath,
			// The workload programs load while the node registers and
			// configures its peers; the first workload waits for them.
			LazyWorkloadPrograms: true,
			Logger:               a.log.With("component", "datapath"),
		})
		p.ch <- datapathLoad{dp: dp, err: err, took: time.Since(t0)}
	}()
	return p
}

// discard closes the datapath if Run stopped before taking it.
func (p *pendingDatapath) discard() {
	if p.taken {
		return
	}
	p.taken = true
	if r := <-p.ch; r.dp != nil {
		_ = r.dp.Close()
	}
}

// attachDatapath takes the loaded datapath and attaches it to the tunnel
// device (the node's own host endpoint) and the underlay interfaces
// (anti-spoofing, strict mode: underlay.go).
func (a *Agent) attachDatapath(p *pendingDatapath) error {
	r := <-p.ch
	p.taken = true
	if r.err != nil {
		return fmt.Errorf("load datapath: %w", r.err)
	}
	a.dp = r.dp
	a.opts.Timings("load datapath", r.took)
	a.log.Debug("startup step done", "step", "load datapath", "took", r.took, "overlapped", true)
	if err := a.dp.AttachHostDevice(a.tun.Name()); err != nil {
		return fmt.Errorf("attaching to %s: %w", a.tun.Name(), err)
	}
	return a.attachUnderlay()
}

// startCaches starts the list+watch caches of identities, endpoints and
// policies, the reconcilers they feed and the workload sources, and waits
// until each cache has its first listing.
func (a *Agent) startCaches(ctx context.Context) error {
	ec := a.cp.kv.Source()
	var err error
	a.policy = newPolicyReconciler(a.dp, func() int64 { return a.policies.Revision() }, a.log, a.observeReconcile)
	// The clusters' ids first: the identities and endpoints are judged
	// against them (the number plan, identities.go).
	clusters, err := newClusterIDs(ctx, a.cp.kv, a.cfg.Cluster, func(ev kvstore.Event[kvstore.Cluster]) {
		if r := a.ipcache.Load(); r != nil {
			c := ev.Value
			if ev.Kind == kvstore.EventDelete {
				c = ev.Old
			}
			r.resyncCluster(c.Name)
		}
	}, a.log)
	if err != nil {
		return err
	}
	a.goRun("cluster cache", clusters.cache.Run)
	if err := waitSynced(ctx, clusters.cache.Synced()); err != nil {
		return err
	}
	a.alloc, err = allocator.New(allocator.Config{
		Client: a.cp.identityBackend(), Session: a.session, Cluster: a.cfg.Cluster, Node: a.cfg.NodeName,
		ClusterID: clusters.selfID, Range: clusters.identityRange, Accept: clusters.acceptIdentity,
		OnEvent: func(ev kvstore.Event[allocator.Identity]) {
			a.policy.identityEvent(ev)
			if r := a.ipcache.Load(); r != nil && ev.Kind != kvstore.EventDelete {
				r.resyncIdentity(uint32(ev.Value.ID))
			}
		},
		OnLost: func(id allocator.Identity) {
			a.log.Warn("identity reference lost after a lease loss; re-allocating", "identity", id.ID)
			go a.reallocate(ctx, id)
		},
		Logger: a.log.With("component", "identities"),
	})
	if err != nil {
		return err
	}
	a.eps = &endpointManager{cluster: a.cfg.Cluster, node: a.cfg.NodeName, alloc: a.alloc, policy: a.policy,
		dp: a.dp, records: a.session, log: a.log}
	a.workloads = newNetnsSource(a.cfg.StateDir, func() (netip.Prefix, netip.Addr) { return a.cidr, a.meshIP },
		a.tun.MTU, a.workloadLabels, a.opts.veths, a.dp, a.eps, a.log)
	a.endpoints, err = newView("endpoints", kvstore.EndpointDecoder, func(ev kvstore.Event[kvstore.Endpoint]) {
		a.ipcache.Load().event(ev)
		a.policy.endpointPorts(ev)
	}, a.log)
	if err != nil {
		return err
	}
	// Published before the endpoint cache runs, so no event finds it nil.
	ipc := newIPCacheReconciler(a.dp, ownershipOf(a.nodes), a.endpoints, a.log)
	ipc.held, ipc.settle = a.endpointHeld, 3*time.Second
	ipc.identityLabels = func(id uint32) ([]string, bool) {
		l, ok := a.identityLabels(identity.NumericIdentity(id))
		return l.Strings(), ok
	}
	ipc.allows = a.allowsEndpoint
	ipc.clusterID = clusters.ID
	ipc.revoked = a.peers.revoked
	ipc.nodeAddr = nodeAddrOf(a.nodes)
	ipc.selfCluster, ipc.selfNode = a.cfg.Cluster, a.cfg.NodeName
	a.ipcache.Store(ipc)
	// The nodes' label grants, for the ipcache reconciler to refuse
	// endpoints outside their node's grant (a.cp.grants.Allows;
	// docs/security.md); a changed grant re-judges the node's endpoints.
	a.cp.grants, err = kvstore.NewGrantCache(ec, a.grantEvent, a.log)
	if err != nil {
		return err
	}
	a.policies, err = kvstore.NewCache(ec, kvstore.CacheConfig[kvstore.Policy]{
		Name: "policies", Prefix: kvstore.PoliciesPrefix, Decode: kvstore.PolicyDecoder,
		OnEvent: a.policy.policyEvent, OnRevision: a.policy.policiesDelivered, Logger: a.log,
	})
	if err != nil {
		return err
	}
	a.goRun("identity cache", a.alloc.Run)
	if err := a.endpoints.Add(ctx, kvstore.MemberConfig[kvstore.Endpoint]{Name: localMember, Source: ec, Prefix: kvstore.EndpointsPrefix, ProbeInterval: -1}); err != nil {
		return err
	}
	a.goRun("policy cache", a.policies.Run)
	a.goRun("grant cache", a.cp.grants.Run)
	a.goRun("policy reconciler", a.policy.run)
	// Connected clusters' identities: the policy reconciler and the
	// ipcache see them as they see the local ones.
	a.remoteIDs, err = newView("remote identities", decodeRemoteIdentity, func(ev kvstore.Event[allocator.Identity]) {
		a.policy.identityEvent(ev)
		if r := a.ipcache.Load(); r != nil && ev.Kind != kvstore.EventDelete {
			r.resyncIdentity(uint32(ev.Value.ID))
		}
	}, a.log)
	if err != nil {
		return err
	}
	// Connected clusters' label grants, to judge their endpoints.
	a.remoteGrants, err = newView("remote grants", kvstore.GrantDecoder, a.grantEvent, a.log)
	if err != nil {
		return err
	}
	if err := waitSynced(ctx, a.alloc.Synced(), a.endpoints.Synced(localMember), a.policies.Synced(), a.cp.grants.Synced()); err != nil {
		return err
	}
	return a.startRemoteClusters(ctx)
}

// endpointHeld says whether a deleted endpoint's address keeps its
// identity for now: its node's record went without a leave and the node
// is still alive (retained by the peer reconciler), or it is this node's
// own and this node's record is gone too (its lease expired; the session
// writes both again).
func (a *Agent) endpointHeld(cluster, node string) bool {
	if cluster == a.cfg.Cluster && node == a.cfg.NodeName {
		_, present := a.nodes.Get(kvstore.NodeKey(cluster, node))
		return !present
	}
	return a.peers.isRetained(cluster, node)
}

// grantEvent re-judges the endpoints of the node whose label grant (local
// or a connected cluster's) changed.
func (a *Agent) grantEvent(ev kvstore.Event[kvstore.Grant]) {
	if r := a.ipcache.Load(); r != nil {
		g := ev.Value
		if ev.Kind == kvstore.EventDelete {
			g = ev.Old
		}
		r.resyncNode(g.Cluster, g.Node)
	}
}
