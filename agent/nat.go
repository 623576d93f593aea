package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/agent/paths"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/relay"
)

// natTraversal is the node's side of NAT traversal and path failover
// (docs/nat.md): it learns the node's reflexive address from its peers and
// publishes it, picks every peer's path (paths.Selector) from what the
// tunnel reports, probes quiet peers so a dead path shows within seconds,
// registers with the mesh's relays, and serves as one when configured.
type natTraversal struct {
	a   *Agent
	log *slog.Logger
	tr  http.RoundTripper // the agent-to-agent API's mTLS transport

	server    *relay.Server // nil unless this node is a relay
	relayAddr netip.AddrPort
	client    *relay.Client
	probes    net.PacketConn // tunnel probes to peers' health echo
	prober    *paths.Prober  // direct-path checks on the underlay

	mu       sync.Mutex
	sel      *paths.Selector
	chosen   map[string]string // node key → the WireGuard endpoint to configure
	relays   map[string]netip.AddrPort
	ids      map[relay.ID]bool       // node IDs seen, for the relay's revocations
	checking map[string]bool         // relayed peers whose direct path is being checked
	byName   map[string]kvstore.Node // the peers' records by cluster/name, as of the last step
}

// pathChanges counts the path changes of this process (weft_peer_path_changes_total).
var pathChanges atomic.Int64

// tunnel probe: the health echo's format (api.HealthProbe*), so a peer
// answers with what it answers `meshctl ping` with.
func tunnelProbe() []byte {
	b := make([]byte, api.HealthProbeLen)
	copy(b, api.HealthProbeMagic)
	return b
}

func (a *Agent) startNAT(ctx context.Context) error {
	o, err := a.observabilityReady()
	if err != nil || o.tr == nil {
		a.log.Warn("NAT traversal and relays are off: they need the agent-to-agent API")
		return nil
	}
	n := &natTraversal{a: a, log: a.log.With("component", "nat"), tr: o.tr,
		sel: paths.New(paths.Config{}), chosen: map[string]string{}, relays: map[string]netip.AddrPort{},
		ids: map[relay.ID]bool{}, checking: map[string]bool{}}
	if a.cfg.Relay.Enabled {
		port := a.cfg.Relay.Port
		if port == 0 {
			port = config.DefaultRelayPort
		}
		pc, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
		if err != nil {
			return fmt.Errorf("relay: listening on UDP port %d (relay.port): %w", port, err)
		}
		rate := a.cfg.Relay.RateBytesPerSecond
		if rate == 0 {
			rate = config.DefaultRelayRate
		}
		srv, err := relay.NewServer(relay.ServerConfig{Conn: pc, Logger: n.log.With("relay", "server"), Rate: rate})
		if err != nil {
			pc.Close()
			return err
		}
		n.server, n.relayAddr = srv, a.self.Relay
		a.goRun("relay server", func(ctx context.Context) error {
			defer pc.Close()
			return srv.Serve(ctx)
		})
		n.log.Info("relay serving", "advertised", a.self.Relay, "port", port)
	}
	// The relay client and the direct-path check listen on fixed ports so
	// strict mode can let them through; agents sharing one network
	// namespace (tests) fall back to a free port and to trying direct
	// paths instead of checking them.
	self := relay.NodeID(a.cfg.Cluster, a.cfg.NodeName)
	wg := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(a.tun.ListenPort()))
	cl, err := relay.NewClient(relay.ClientConfig{Self: self, WireGuard: wg, Logger: n.log.With("relay", "client"),
		ListenAddr: ":" + strconv.Itoa(config.DefaultRelayClientPort)})
	if err != nil {
		n.log.Warn("relay client: the fixed port is taken; using a free one (strict mode will drop relayed packets)", "port", config.DefaultRelayClientPort, "err", err)
		cl, err = relay.NewClient(relay.ClientConfig{Self: self, WireGuard: wg, Logger: n.log.With("relay", "client"), ListenAddr: ":0"})
	}
	if err != nil {
		return fmt.Errorf("relay client: %w", err)
	}
	n.client = cl
	probes, err := net.ListenUDP("udp", &net.UDPAddr{IP: a.meshIP.AsSlice()})
	if err != nil {
		cl.Close()
		return fmt.Errorf("opening the path probe socket on %s: %w", a.meshIP, err)
	}
	n.probes = probes
	if pp, err := net.ListenUDP("udp", &net.UDPAddr{Port: config.DefaultPathProbePort}); err != nil {
		n.log.Warn("direct-path checks off: their port is taken; relayed pairs try their direct path instead", "port", config.DefaultPathProbePort, "err", err)
	} else if key, err := a.cp.kv.GossipKey(ctx); err != nil {
		pp.Close()
		n.log.Warn("direct-path checks off: no mesh key", "err", err)
	} else if n.prober, err = paths.NewProber(pp, key); err != nil {
		pp.Close()
		return err
	} else {
		a.goRun("direct-path checks", n.prober.Serve)
	}
	a.nat.Store(n)
	a.goRun("path selection", n.run)
	a.goRun("reflexive discovery", n.discover)
	return nil
}

// relayEndpointAdvertised is the relay address this node announces.
func (a *Agent) relayAdvertised(eps []netip.AddrPort) netip.AddrPort {
	if !a.cfg.Relay.Enabled {
		return netip.AddrPort{}
	}
	if ap, err := netip.ParseAddrPort(a.cfg.Relay.Advertise); err == nil && a.cfg.Relay.Advertise != "" {
		return ap
	}
	port := a.cfg.Relay.Port
	if port == 0 {
		port = config.DefaultRelayPort
	}
	if len(eps) == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(eps[0].Addr(), uint16(port))
}

// endpointFor is desiredPeers' hook: the endpoint the path selection chose
// for a node, if it chose one.
func (n *natTraversal) endpointFor(node kvstore.Node) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, ok := n.chosen[node.Cluster+"/"+node.Name]
	return ep, ok
}

// behindNAT says whether a record shows its node behind NAT: peers see it
// at an address that is none of its own.
func behindNAT(node kvstore.Node) bool {
	for _, r := range node.Reflexive {
		if !slices.Contains(node.Endpoints, r) {
			return true
		}
	}
	return false
}

// sameNAT says whether two NAT'd nodes share their NAT's address (the same
// site): they reach each other on the LAN, not through the NAT.
func sameNAT(x, y kvstore.Node) bool {
	for _, a := range x.Reflexive {
		for _, b := range y.Reflexive {
			if a.Addr() == b.Addr() {
				return true
			}
		}
	}
	return false
}

// candidates lists where to try a node directly, best first.
func candidates(self, peer kvstore.Node) []netip.AddrPort {
	var out []netip.AddrPort
	add := func(ap netip.AddrPort) {
		if ap.IsValid() && !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	if behindNAT(peer) && !sameNAT(self, peer) {
		for _, r := range peer.Reflexive {
			add(r)
		}
	}
	for _, e := range peer.Endpoints {
		add(e)
	}
	for _, r := range peer.Reflexive {
		add(r)
	}
	return out
}

func (n *natTraversal) selfRecord() kvstore.Node {
	n.a.selfMu.Lock()
	defer n.a.selfMu.Unlock()
	return n.a.self
}

// run is the path loop: every tick it reads the tunnel, feeds the
// selector and applies what it decides.
func (n *natTraversal) run(ctx context.Context) error {
	defer n.client.Close()
	defer n.probes.Close()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			n.step(ctx, now)
		}
	}
}

func (n *natTraversal) step(ctx context.Context, now time.Time) {
	self := n.selfRecord()
	var (
		peers  []paths.Peer
		byKey  = map[string]kvstore.Node{}
		byWG   = map[string]string{}
		ids    []relay.ID
		relays = map[string]netip.AddrPort{}
		seen   = map[relay.ID]bool{}
	)
	n.a.nodes.Range(func(key string, nd kvstore.Node) bool {
		if nd.Cluster == self.Cluster && nd.Name == self.Name {
			return true
		}
		if nd.Leaving || (n.a.peers != nil && n.a.peers.isRevoked(nd.Cluster, nd.Name)) {
			return true
		}
		k := nd.Cluster + "/" + nd.Name
		byKey[k] = nd
		byWG[nd.WGPublicKey] = k
		if nd.WGNextPublicKey != "" {
			byWG[nd.WGNextPublicKey] = k
		}
		id := relay.NodeID(nd.Cluster, nd.Name)
		ids = append(ids, id)
		seen[id] = true
		if nd.Relay.IsValid() {
			relays[k] = nd.Relay
		}
		peers = append(peers, paths.Peer{Key: k, Candidates: candidates(self, nd),
			RelayFirst: behindNAT(self) && behindNAT(nd) && !sameNAT(self, nd) && (self.SymmetricNAT || nd.SymmetricNAT)})
		return true
	})
	n.client.SetPeers(ids)
	n.syncRelays(relays, byKey)
	if n.server != nil {
		n.mu.Lock()
		for id := range n.ids {
			if !seen[id] {
				n.server.Revoke(id) // the node left or was revoked
			}
		}
		n.ids = seen
		n.mu.Unlock()
	}

	ts, err := n.a.tun.Status()
	if err != nil {
		n.log.Debug("reading the tunnel", "err", err)
		return
	}
	obs := map[string]paths.Observation{}
	for _, p := range ts.Peers {
		k, ok := byWG[p.PublicKey]
		if !ok {
			continue
		}
		o := obs[k]
		o.RxBytes += p.RxBytes
		if p.LastHandshake.After(o.Handshake) || !o.Endpoint.IsValid() {
			if p.LastHandshake.After(o.Handshake) {
				o.Handshake = p.LastHandshake
			}
			if ep, err := netip.ParseAddrPort(p.Endpoint); err == nil {
				o.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
				o.Relay = n.relayOf(o.Endpoint, byKey[k], relays)
			}
		}
		obs[k] = o
	}

	n.mu.Lock()
	n.byName = byKey
	var ready []string
	for name := range relays {
		if n.client.Registered(name) {
			ready = append(ready, name)
		}
	}
	sort.Strings(ready)
	n.sel.SetRelays(ready)
	n.sel.SetPeers(now, peers)
	act := n.sel.Tick(now, obs)
	changed := n.apply(act.Changes)
	var recover []recoverCheck
	for _, k := range act.Recover {
		if n.checking[k] {
			continue
		}
		n.checking[k] = true
		recover = append(recover, recoverCheck{key: k, node: byKey[k]})
	}
	n.mu.Unlock()

	if changed {
		n.a.peers.trigger()
	}
	probe := tunnelProbe()
	for _, k := range act.Probe {
		nd := byKey[k]
		if nd.MeshIP.IsValid() {
			_, _ = n.probes.WriteTo(probe, &net.UDPAddr{IP: nd.MeshIP.AsSlice(), Port: api.HealthProbePort})
		}
	}
	for _, rc := range recover {
		go n.recover(ctx, rc)
	}
}

// relayOf names the relay whose local socket for peer ep is ("" for an
// address that is none: a direct path).
func (n *natTraversal) relayOf(ep netip.AddrPort, peer kvstore.Node, relays map[string]netip.AddrPort) string {
	if !ep.Addr().IsLoopback() {
		return ""
	}
	id := relay.NodeID(peer.Cluster, peer.Name)
	for name := range relays {
		if local, err := n.client.Endpoint(name, id); err == nil && local == ep {
			return name
		}
	}
	return ""
}

type recoverCheck struct {
	key  string
	node kvstore.Node
}

// recover checks a relayed peer's direct path: a node with addresses of its
// own is asked on its path-probe port; one behind NAT cannot be asked (its
// NAT forwards only its WireGuard port), so the pair simply tries direct.
func (n *natTraversal) recover(ctx context.Context, rc recoverCheck) {
	defer func() {
		n.mu.Lock()
		delete(n.checking, rc.key)
		n.mu.Unlock()
	}()
	var to netip.AddrPort
	if n.prober == nil || behindNAT(rc.node) || len(rc.node.Endpoints) == 0 {
		if len(rc.node.Reflexive) > 0 {
			to = rc.node.Reflexive[0]
		} else if len(rc.node.Endpoints) > 0 {
			to = rc.node.Endpoints[0]
		}
	} else {
		var checks []netip.AddrPort
		for _, e := range rc.node.Endpoints {
			checks = append(checks, netip.AddrPortFrom(e.Addr(), config.DefaultPathProbePort))
		}
		got, ok := n.prober.Check(ctx, checks, 1500*time.Millisecond)
		if !ok {
			return
		}
		i := slices.IndexFunc(rc.node.Endpoints, func(e netip.AddrPort) bool { return e.Addr() == got.Addr() })
		to = rc.node.Endpoints[i]
	}
	n.mu.Lock()
	changes := n.sel.DirectWorks(time.Now(), rc.key, to)
	changed := n.apply(changes)
	n.mu.Unlock()
	if changed {
		n.a.peers.trigger()
	}
}

// apply logs path changes and recomputes every peer's endpoint from its
// path (n.mu held); it reports whether any endpoint changed.
func (n *natTraversal) apply(changes []paths.Change) bool {
	for _, c := range changes {
		n.log.Info("peer path changed", "peer", c.Peer, "from", c.From.String(), "to", c.To.String(), "reason", c.Reason)
		pathChanges.Add(1)
	}
	changed := false
	states := n.sel.States(time.Now())
	for k, st := range states {
		ep, ok := n.endpointOf(k, st.Path)
		if !ok {
			continue
		}
		if old, had := n.chosen[k]; !had || old != ep {
			n.chosen[k] = ep
			changed = true
		}
	}
	for k := range n.chosen {
		if _, ok := states[k]; !ok {
			delete(n.chosen, k)
		}
	}
	return changed
}

// endpointOf is the WireGuard endpoint of a path: a direct candidate, ""
// for one learned from the peer's handshakes, or the relay client's local
// address for the peer.
func (n *natTraversal) endpointOf(peer string, p paths.Path) (string, bool) {
	switch p.Kind {
	case paths.Relay:
		nd, ok := n.byName[peer]
		if !ok {
			return "", false
		}
		local, err := n.client.Endpoint(p.Relay, relay.NodeID(nd.Cluster, nd.Name))
		if err != nil {
			n.log.Warn("no local endpoint for the relay path", "peer", peer, "relay", p.Relay, "err", err)
			return "", false
		}
		return local.String(), true
	default:
		if p.Endpoint.IsValid() {
			return p.Endpoint.String(), true
		}
		return "", true
	}
}

// syncRelays registers with the mesh's relays (not this node's own).
func (n *natTraversal) syncRelays(relays map[string]netip.AddrPort, byKey map[string]kvstore.Node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, addr := range relays {
		if old, ok := n.relays[name]; ok && old == addr {
			continue
		}
		nd := byKey[name]
		meshIP := nd.MeshIP
		if err := n.client.AddRelay(name, addr, func(ctx context.Context) (relay.Ticket, error) {
			return n.ticket(ctx, meshIP)
		}); err != nil {
			n.log.Warn("adding relay", "relay", name, "addr", addr, "err", err)
			continue
		}
		n.relays[name] = addr
		n.log.Info("relay available", "relay", name, "addr", addr)
	}
	for name := range n.relays {
		if _, ok := relays[name]; !ok {
			n.client.RemoveRelay(name)
			delete(n.relays, name)
			n.log.Info("relay gone", "relay", name)
		}
	}
}

// ticket asks a relay's agent, over the agent-to-agent API, for a ticket
// to register with its relay.
func (n *natTraversal) ticket(ctx context.Context, meshIP netip.Addr) (relay.Ticket, error) {
	var t api.RelayTicket
	if err := n.ask(ctx, http.MethodPost, meshIP, "/v1/nat/relay-ticket", &t); err != nil {
		return relay.Ticket{}, err
	}
	if len(t.Ticket) != len(relay.Ticket{}) {
		return relay.Ticket{}, fmt.Errorf("the relay's agent sent a %d-byte ticket, want %d", len(t.Ticket), len(relay.Ticket{}))
	}
	return relay.Ticket(t.Ticket), nil
}

func (n *natTraversal) ask(ctx context.Context, method string, meshIP netip.Addr, path string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u := "https://" + net.JoinHostPort(meshIP.String(), strconv.Itoa(meshtls.DefaultPort)) + path
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: n.tr}).Do(req)
	if err != nil {
		return fmt.Errorf("asking %s: %v", meshIP, unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(&e)
		return fmt.Errorf("%s answered %s: %s", meshIP, resp.Status, e.Error)
	}
	return json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(into)
}

// discover learns where the node's peers see it and publishes that.
func (n *natTraversal) discover(ctx context.Context) error {
	wait := 2 * time.Second
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = 15 * time.Second
		if err := n.discoverOnce(ctx); err != nil {
			n.log.Debug("reflexive discovery", "err", err)
			wait = 5 * time.Second
		}
	}
}

// maxAskees is how many peers one discovery round asks.
const maxAskees = 3

// reflexiveAskees picks the peers a discovery round asks where they see
// this node: peers reached directly that are not behind NAT themselves
// (they see this node's WireGuard socket as the internet does), at most
// maxAskees, starting at another one each round. Peers of this node's own
// cluster are preferred: a node of a connected cluster is trusted by its
// own CA, and a lying answer makes this node publish false candidates
// (peers then try them) or believe its NAT is symmetric (it goes to a
// relay), so another cluster's nodes are asked only when this one has none.
func reflexiveAskees(nodes []kvstore.Node, states map[string]paths.State, cluster string, round int64) []kvstore.Node {
	var own, other []kvstore.Node
	for _, nd := range nodes {
		st, ok := states[nd.Cluster+"/"+nd.Name]
		if !ok || !st.Alive || st.Path.Kind != paths.Direct || behindNAT(nd) || !nd.MeshIP.IsValid() || len(nd.Endpoints) == 0 {
			continue
		}
		if nd.Cluster == cluster {
			own = append(own, nd)
		} else {
			other = append(other, nd)
		}
	}
	ask := own
	if len(ask) == 0 {
		ask = other
	}
	sort.Slice(ask, func(i, j int) bool { return ask[i].Key() < ask[j].Key() })
	// Spread the questions: each round starts at another peer.
	if len(ask) > maxAskees {
		off := int(round % int64(len(ask)))
		ask = append(ask[off:], ask[:off]...)
		ask = ask[:maxAskees]
	}
	return ask
}

func (n *natTraversal) discoverOnce(ctx context.Context) error {
	self := n.selfRecord()
	n.mu.Lock()
	states := n.sel.States(time.Now())
	n.mu.Unlock()
	var nodes []kvstore.Node
	n.a.nodes.Range(func(_ string, nd kvstore.Node) bool {
		nodes = append(nodes, nd)
		return true
	})
	ask := reflexiveAskees(nodes, states, self.Cluster, time.Now().Unix()/15)
	if len(ask) == 0 {
		return errors.New("no peer reached directly outside NAT to ask yet")
	}
	var seen []netip.AddrPort
	for _, nd := range ask {
		var ans api.ReflexiveAnswer
		if err := n.ask(ctx, http.MethodGet, nd.MeshIP, "/v1/nat/reflexive", &ans); err != nil {
			n.log.Debug("asking a peer where it sees this node", "peer", nd.Key(), "err", err)
			continue
		}
		ap, err := netip.ParseAddrPort(ans.Endpoint)
		if err != nil || ap.Addr().IsLoopback() || !ap.Addr().IsValid() || ap.Port() == 0 {
			continue
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !slices.Contains(seen, ap) {
			seen = append(seen, ap)
		}
	}
	if len(seen) == 0 {
		return errors.New("no peer answered with an endpoint")
	}
	symmetric := false
	for i := range seen {
		for j := range i {
			if seen[i].Addr() == seen[j].Addr() && seen[i].Port() != seen[j].Port() {
				symmetric = true
			}
		}
	}
	var reflexive []netip.AddrPort
	for _, ap := range seen {
		if !slices.Contains(self.Endpoints, ap) {
			reflexive = append(reflexive, ap)
		}
	}
	if len(reflexive) > kvstore.MaxReflexive {
		reflexive = reflexive[:kvstore.MaxReflexive]
	}
	slices.SortFunc(reflexive, func(x, y netip.AddrPort) int { return x.Compare(y) })
	if slices.Equal(reflexive, self.Reflexive) && symmetric == self.SymmetricNAT {
		return nil
	}
	n.log.Info("peers see this node at", "reflexive", reflexive, "symmetric_nat", symmetric)
	return n.a.publishReflexive(ctx, reflexive, symmetric)
}

// publishReflexive rewrites the node record's reflexive addresses.
func (a *Agent) publishReflexive(ctx context.Context, reflexive []netip.AddrPort, symmetric bool) error {
	a.selfMu.Lock()
	defer a.selfMu.Unlock()
	rec := a.self
	rec.Reflexive, rec.SymmetricNAT = reflexive, symmetric
	if err := a.session.Put(ctx, rec.Key(), &rec); err != nil {
		return err
	}
	a.self.Reflexive, a.self.SymmetricNAT = reflexive, symmetric
	return nil
}

// natAPI serves /v1/nat/* on the agent-to-agent API.
type natAPI struct{ a *Agent }

// callerRecord finds the record of the node a request came from: the node
// whose mesh address it came from (the tunnel binds that address to the
// node's key), which must be the certificate's node when the certificate
// names one (the seed's admin certificate names none).
func (s natAPI) callerRecord(c api.MeshCaller) (kvstore.Node, error) {
	var (
		nd    kvstore.Node
		found bool
	)
	s.a.nodes.Range(func(_ string, n kvstore.Node) bool {
		if n.MeshIP == c.Addr && !n.Leaving {
			nd, found = n, true
		}
		return !found
	})
	if !found {
		return kvstore.Node{}, api.Errorf(api.CodePermission, "no node of the mesh has the address %s this request came from", c.Addr)
	}
	if c.Node != "" && (nd.Cluster != c.Cluster || nd.Name != c.Node) {
		return kvstore.Node{}, api.Errorf(api.CodePermission, "the request came from node %s/%s's address with node %s/%s's certificate", nd.Cluster, nd.Name, c.Cluster, c.Node)
	}
	if s.a.peers != nil && s.a.peers.isRevoked(nd.Cluster, nd.Name) {
		return kvstore.Node{}, api.Errorf(api.CodePermission, "node %s/%s is revoked", nd.Cluster, nd.Name)
	}
	return nd, nil
}

// Reflexive implements api.NATService.
func (s natAPI) Reflexive(_ context.Context, c api.MeshCaller) (api.ReflexiveAnswer, error) {
	nd, err := s.callerRecord(c)
	if err != nil {
		return api.ReflexiveAnswer{}, err
	}
	ts, err := s.a.tun.Status()
	if err != nil {
		return api.ReflexiveAnswer{}, api.Errorf(api.CodeUnavailable, "reading the tunnel: %v", err)
	}
	ans := api.ReflexiveAnswer{Node: s.a.cfg.Cluster + "/" + s.a.cfg.NodeName}
	for _, p := range ts.Peers {
		if p.PublicKey == nd.WGPublicKey {
			if ap, err := netip.ParseAddrPort(p.Endpoint); err == nil && !ap.Addr().IsLoopback() {
				ans.Endpoint = p.Endpoint
			}
		}
	}
	return ans, nil
}

// RelayTicket implements api.NATService.
func (s natAPI) RelayTicket(_ context.Context, c api.MeshCaller) (api.RelayTicket, error) {
	n := s.a.nat.Load()
	if n == nil || n.server == nil {
		return api.RelayTicket{}, api.Errorf(api.CodeNotSupported, "this node is no relay (weft-agent --relay makes it one)")
	}
	nd, err := s.callerRecord(c)
	if err != nil {
		return api.RelayTicket{}, err
	}
	t, err := n.server.Ticket(relay.NodeID(nd.Cluster, nd.Name))
	if err != nil {
		return api.RelayTicket{}, api.Errorf(api.CodeUnavailable, "issuing a relay ticket: %v", err)
	}
	return api.RelayTicket{Ticket: t[:], Relay: n.relayAddr.String(), ExpiresInSeconds: 30}, nil
}

// peerPath is what status and ping show of a peer's path, by cluster/name.
func (a *Agent) peerPath(nodeKey string) (paths.State, bool) {
	n := a.nat.Load()
	if n == nil {
		return paths.State{}, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	st, ok := n.sel.States(time.Now())[nodeKey]
	return st, ok
}
