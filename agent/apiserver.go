package agent

import (
	"context"
	"net/netip"
	"sort"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/health"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/version"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/tunnel"
)

// serveAPI mounts the local API on the agent's unix socket.
func (a *Agent) serveAPI(ctx context.Context) error {
	run := a.goRun
	l, err := api.Listen(a.cfg.SocketPath)
	if err != nil {
		return err
	}
	a.handshakes.start(a, run)
	b := api.Backend{
		Status: a, Mesh: a, Endpoints: a, Policies: a, Tokens: a, Leaver: a,
		Flows: a, Health: a, Prober: a, Relay: a, Rotator: a, Nodes: a, Pinger: a, PolicyStatus: a,
		AdminCredentials: a,
	}
	if a.pods != nil {
		b.CNI = a.pods
	}
	if a.cp.files.CAKeyFile != "" {
		b.Clusters = a // the seed: it holds the admin credential and the CA
	}
	a.apiSrv = api.NewServer(b, a.log.With("component", "api"))
	// Serve returns nil once Shutdown stopped it.
	run("api", func(context.Context) error { return a.apiSrv.Serve(l) })
	return nil
}

// handshakeWatch remembers when each peer key appeared on the device,
// where a new peer's grace period for its first handshake starts
// (health.JudgePeers). A loop reads the device every second, so a peer
// added long before the first `meshctl status` is not new to it.
type handshakeWatch struct {
	added *health.AddedTimes
}

func (w *handshakeWatch) start(a *Agent, run func(string, func(context.Context) error)) {
	w.added = health.NewAddedTimes(a.started)
	observe := func() {
		if ts, err := a.tun.Status(); err == nil {
			keys := make([]string, 0, len(ts.Peers))
			for _, p := range ts.Peers {
				keys = append(keys, p.PublicKey)
			}
			w.added.Observe(keys, time.Now())
		}
	}
	observe()
	run("peer handshakes", func(ctx context.Context) error {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				observe()
			}
		}
	})
}

// addedAt is when key appeared on the device: the agent's start when the
// watch is not running (unit tests without the API).
func (w *handshakeWatch) addedAt(a *Agent, key string, now time.Time) time.Time {
	if w.added == nil {
		return a.started
	}
	return w.added.Added(key, now)
}

// Status implements api.StatusSource.
func (a *Agent) Status(ctx context.Context) (api.Status, error) {
	st := api.Status{
		Node: a.cfg.NodeName, Cluster: a.cfg.Cluster, MeshIP: a.meshIP.String(),
		CIDRs: []string{a.cidr.String()}, AgentVersion: version.Version, StartedAt: a.started,
		Etcd: api.EtcdStatus{Endpoints: a.cp.endpoints, Embedded: a.cp.embedded != nil},
	}
	ts, err := a.tun.Status()
	st.Tunnel = api.TunnelStatus{Interface: a.tun.Name(), Kind: string(a.tun.Kind()), ListenPort: a.tun.ListenPort(), PublicKey: a.tun.PublicKey().String(), Up: err == nil}
	st.Datapath = api.DatapathStatus{Attached: a.dp != nil, PinPath: a.dp.PinDir(), Programs: 2 * (1 + len(a.workloads.list()))}
	if err == nil {
		st.Peers = a.peersFrom(ts)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.cp.kv.Ping(cctx); err != nil {
		st.Etcd.Error = err.Error()
	} else {
		st.Etcd.Reachable = true
	}
	return st, nil
}

// Health implements api.StatusSource: the node's components, and its
// peers, each of which must have completed a WireGuard handshake recently
// (health.JudgePeers): a node that reaches none of its peers is not
// healthy, whatever its own components say.
func (a *Agent) Health(ctx context.Context) (api.Health, error) {
	st, _ := a.Status(ctx)
	now := time.Now()
	var tp []health.TunnelPeer
	for _, p := range st.Peers {
		tp = append(tp, health.TunnelPeer{Node: p.Node, Cluster: p.Cluster, PublicKey: p.PublicKey, Endpoint: p.Endpoint, LastHandshake: p.LastHandshake})
	}
	peers, verdicts := health.JudgePeers(tp, func(key string) time.Time { return a.handshakes.addedAt(a, key, now) }, now)
	if !st.Tunnel.Up {
		peers = api.HealthCheck{Name: "peers", OK: false, Message: "the tunnel cannot be read"}
	}
	checks := []api.HealthCheck{
		{Name: "tunnel", OK: st.Tunnel.Up},
		{Name: "datapath", OK: st.Datapath.Attached},
		{Name: "etcd", OK: st.Etcd.Reachable, Message: st.Etcd.Error},
		peers,
	}
	h := api.Health{OK: true, Checks: checks, Peers: verdicts}
	for _, c := range checks {
		h.OK = h.OK && c.OK
	}
	return h, nil
}

// Peers implements api.MeshView.
func (a *Agent) Peers(ctx context.Context) ([]api.Peer, error) {
	ts, err := a.tun.Status()
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "reading the tunnel: %v", err)
	}
	return a.peersFrom(ts), nil
}

// peersFrom names the device's peers after the node records holding their
// keys (Status and Peers read the device once each).
func (a *Agent) peersFrom(ts tunnel.Status) []api.Peer {
	byKey := map[string]kvstore.Node{}
	a.nodes.Range(func(_ string, n kvstore.Node) bool {
		byKey[n.WGPublicKey] = n
		if n.WGNextPublicKey != "" { // a rotating node has two entries
			byKey[n.WGNextPublicKey] = n
		}
		return true
	})
	out := make([]api.Peer, 0, len(ts.Peers))
	for _, p := range ts.Peers {
		n := byKey[p.PublicKey]
		ap := api.Peer{Node: n.Name, Cluster: n.Cluster, PublicKey: p.PublicKey, Endpoint: p.Endpoint,
			LastHandshake: p.LastHandshake, RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if st, ok := a.peerPath(n.Cluster + "/" + n.Name); ok {
			ap.Path, ap.PathSince, ap.PathChanges = st.Path.String(), st.Since, st.Changes
		}
		for _, pf := range p.AllowedIPs {
			ap.AllowedIPs = append(ap.AllowedIPs, pf.String())
		}
		out = append(out, ap)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Nodes implements api.MeshView.
func (a *Agent) Nodes(ctx context.Context) ([]api.Node, error) {
	var out []api.Node
	a.nodes.Range(func(key string, n kvstore.Node) bool {
		an := api.Node{Name: n.Name, Cluster: n.Cluster, PublicKey: n.WGPublicKey, Labels: identity.LabelMap(n.Labels), AgentVersion: n.AgentVersion,
			Self: n.Cluster == a.cfg.Cluster && n.Name == a.cfg.NodeName}
		if owner, ok := a.nodes.Owner(key); ok && owner != localMember {
			an.Remote = true // from a connected cluster's etcd (or its mirror)
		}
		if n.MeshIP.IsValid() {
			an.MeshIP = n.MeshIP.String()
		}
		for _, c := range n.CIDRs {
			an.CIDRs = append(an.CIDRs, c.String())
		}
		for _, e := range n.Endpoints {
			an.Endpoints = append(an.Endpoints, e.String())
		}
		out = append(out, an)
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Cluster+"/"+out[i].Name < out[j].Cluster+"/"+out[j].Name })
	return out, nil
}

// Identities implements api.MeshView.
func (a *Agent) Identities(ctx context.Context) ([]api.Identity, error) {
	count := map[uint32]int{}
	a.endpoints.Range(func(_ string, e kvstore.Endpoint) bool { count[e.Identity]++; return true })
	var out []api.Identity
	for id, l := range identity.ReservedIdentities() {
		out = append(out, api.Identity{ID: uint32(id), Labels: l.Strings(), Reserved: true, Endpoints: count[uint32(id)]})
	}
	seen := map[uint32]bool{}
	a.endpoints.Range(func(_ string, e kvstore.Endpoint) bool {
		if seen[e.Identity] || identity.NumericIdentity(e.Identity).IsReserved() {
			return true
		}
		seen[e.Identity] = true
		l, ok := a.alloc.LookupByID(identity.NumericIdentity(e.Identity))
		labels := e.Labels
		if ok {
			labels = l.Strings()
		}
		out = append(out, api.Identity{ID: e.Identity, Labels: labels, Endpoints: count[e.Identity]})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Endpoints implements api.EndpointManager: every endpoint of the mesh,
// local ones with their enforcement state.
func (a *Agent) Endpoints(ctx context.Context) ([]api.Endpoint, error) {
	locals, _ := a.policy.localSnapshot()
	byIP := map[netip.Addr]localEndpoint{}
	for _, l := range locals {
		byIP[l.IP] = l
	}
	netnsByIP := map[netip.Addr]string{}
	for _, w := range a.workloads.list() {
		netnsByIP[w.IP] = w.Netns
	}
	var out []api.Endpoint
	a.endpoints.Range(func(_ string, e kvstore.Endpoint) bool {
		ae := api.Endpoint{Name: e.Name, Node: e.Node, Cluster: e.Cluster, IP: e.IP.String(), Identity: e.Identity, Labels: e.Labels}
		if l, ok := byIP[e.IP]; ok && e.Node == a.cfg.NodeName && e.Cluster == a.cfg.Cluster {
			ae.Local = true
			ae.Netns = netnsByIP[e.IP]
			ae.IngressEnforced, ae.EgressEnforced = l.policy.IngressEnforced, l.policy.EgressEnforced
		}
		out = append(out, ae)
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		return out[i].Cluster+out[i].Node+out[i].Name < out[j].Cluster+out[j].Node+out[j].Name
	})
	return out, nil
}

// AddEndpoint implements api.EndpointManager.
func (a *Agent) AddEndpoint(ctx context.Context, spec api.EndpointSpec) (api.Endpoint, error) {
	w, err := a.workloads.add(ctx, spec)
	if err != nil {
		return api.Endpoint{}, err
	}
	return api.Endpoint{Name: w.Name, Node: a.cfg.NodeName, Cluster: a.cfg.Cluster, IP: w.IP.String(), Identity: uint32(w.Identity), Labels: w.Labels, Netns: w.Netns, Local: true}, nil
}

// RemoveEndpoint implements api.EndpointManager.
func (a *Agent) RemoveEndpoint(ctx context.Context, name string) error {
	return a.workloads.remove(ctx, name)
}

// needAdmin is the answer to a mesh-wide write this node's etcd
// credential may not make (a joined node's role writes only its own keys).
func needAdmin(what string) error {
	return api.Errorf(api.CodePermission, "%s needs admin rights on the mesh, and this node holds a node credential (its etcd role writes only its own keys): run the command on the mesh's first node (where 'meshctl up' ran), or on a machine whose agent uses the admin certificate 'meshctl up' printed (etcd.certFile = <first node's state dir>/etcd/pki/client.crt)", what)
}
