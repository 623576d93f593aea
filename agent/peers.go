package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/tunnel"
)

// peerDevice is the part of the tunnel the peer reconciler drives.
type peerDevice interface {
	Reconcile(ctx context.Context, desired []tunnel.Peer) error
	// PublicKey is the device's current key, which during this node's own
	// rotation runs ahead of its node record.
	PublicKey() wgtypes.Key
}

// peerSelf is what the node→peer translation needs to know about this node.
type peerSelf struct {
	Cluster, Node string
	// Key is the device's current public key.
	Key string
	// CIDRs are this node's own prefixes, which no peer may claim.
	CIDRs     []netip.Prefix
	Keepalive time.Duration
	// Endpoint, when set, gives a node's endpoint as the path selection
	// chose it (nat.go); ok false keeps the record's first endpoint.
	Endpoint func(n kvstore.Node) (ep string, ok bool)
	// KeyOwner, when set, names (cluster/name) the node a WireGuard key
	// was the peer of in the previous reconcile, "" for none: when a
	// second record claims that key, the earlier owner keeps it.
	KeyOwner func(key string) string
}

// peerRejection is a part of a node record desiredPeers left out, with why.
type peerRejection struct {
	Node   string // cluster/name
	Prefix netip.Prefix
	Key    string // a next key that collided
	// DupKey is a current key that another record claims too.
	DupKey string
	Reason string
}

// desiredPeers turns node records into tunnel peers: every node but this
// one, with its CIDRs and mesh IP as allowed prefixes, sorted by key. It is
// a pure function: what it leaves out (a prefix a second node claims, a
// prefix of this node's own, a next key already in use, a current key two
// records claim) it returns as rejections for the caller to log, so one bad
// record never fails the whole reconcile and never cuts the rest of the
// mesh.
//
// A current key claimed by two records is a copied key: a node can write
// only its own record, so a compromised one can publish another node's
// public key (it cannot use it: the private key stays on the owner), which
// would make the device refuse the whole peer list. The key stays with the
// record that had it in the previous reconcile (KeyOwner), which is the
// owner whenever the copy came later; with no previous owner (an agent
// starting during the conflict) neither record gets it, rather than the
// one whose name sorts first, which an attacker could choose.
//
// Every peer gets a persistent keepalive: a node behind NAT must send one
// (it keeps the mapping open and lets the public side learn its endpoint),
// and a node cannot always tell that it is behind NAT, so all of them do;
// the cost is one 32-byte packet per peer per interval.
func desiredPeers(nodes []kvstore.Node, self peerSelf) ([]tunnel.Peer, []peerRejection) {
	// Records in a fixed order, so which of two claims wins does not depend
	// on map iteration: the first by cluster/name.
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(x, y kvstore.Node) int {
		return strings.Compare(x.Cluster+"/"+x.Name, y.Cluster+"/"+y.Name)
	})
	var (
		peers    []tunnel.Peer
		rejected []peerRejection
	)
	// Every key in use, so that a next key colliding with one (a bad
	// record) is dropped instead of failing the whole reconcile.
	inUse := map[string]bool{self.Key: true}
	claims := map[string][]string{}     // current key -> the records claiming it
	nextClaims := map[string][]string{} // announced next key -> its announcers
	for _, n := range nodes {
		inUse[n.WGPublicKey] = true
		if !(n.Cluster == self.Cluster && n.Name == self.Node) && n.WGPublicKey != self.Key {
			claims[n.WGPublicKey] = append(claims[n.WGPublicKey], n.Cluster+"/"+n.Name)
			if n.WGNextPublicKey != "" {
				nextClaims[n.WGNextPublicKey] = append(nextClaims[n.WGNextPublicKey], n.Cluster+"/"+n.Name)
			}
		}
	}
	owner := func(key string) string {
		if self.KeyOwner == nil {
			return ""
		}
		return self.KeyOwner(key)
	}
	seenPrefix := map[netip.Prefix]string{}
	for _, n := range nodes {
		name := n.Cluster + "/" + n.Name
		if (n.Cluster == self.Cluster && n.Name == self.Node) || n.WGPublicKey == self.Key {
			continue
		}
		if c := claims[n.WGPublicKey]; len(c) > 1 {
			owner := owner(n.WGPublicKey)
			if owner != name {
				reason := "WireGuard key is also claimed by " + strings.Join(slices.DeleteFunc(slices.Clone(c), func(x string) bool { return x == name }), ", ")
				if slices.Contains(c, owner) {
					reason += "; it stays with " + owner + ", its peer before"
				} else {
					reason += "; no record gets it until only one claims it"
				}
				rejected = append(rejected, peerRejection{Node: name, DupKey: n.WGPublicKey, Reason: reason})
				continue
			}
		}
		// A current key that copies the next key another record announced
		// in an earlier reconcile (a rotating node's, before it switches)
		// stays with the announcer: otherwise the copy would own the key,
		// uncontested, by the time the rotating node switched to it.
		if o := owner(n.WGPublicKey); o != name && slices.Contains(nextClaims[n.WGPublicKey], o) {
			rejected = append(rejected, peerRejection{Node: name, DupKey: n.WGPublicKey,
				Reason: "WireGuard key is the next key " + o + " announced before; it stays with " + o})
			continue
		}
		p := tunnel.Peer{PublicKey: n.WGPublicKey, Keepalive: self.Keepalive}
		if n.WGNextPublicKey != "" {
			// A next key in use, or announced by several records, goes to
			// the record it was with in the last reconcile, or to none.
			mine := owner(n.WGNextPublicKey) == name
			switch {
			case len(nextClaims[n.WGNextPublicKey]) > 1 && !mine:
				rejected = append(rejected, peerRejection{Node: name, Key: n.WGNextPublicKey, Reason: "next WireGuard key is also announced by another record"})
			case inUse[n.WGNextPublicKey] && !mine:
				rejected = append(rejected, peerRejection{Node: name, Key: n.WGNextPublicKey, Reason: "next WireGuard key is already in use"})
			default:
				p.NextPublicKey = n.WGNextPublicKey
				inUse[n.WGNextPublicKey] = true
			}
		}
		if len(n.Endpoints) > 0 {
			p.Endpoint = n.Endpoints[0].String()
		}
		if self.Endpoint != nil {
			if ep, ok := self.Endpoint(n); ok {
				p.Endpoint = ep
			}
		}
		for _, pf := range nodePrefixes(n) {
			if owner, dup := seenPrefix[pf]; dup {
				rejected = append(rejected, peerRejection{Node: name, Prefix: pf, Reason: "prefix already claimed by " + owner})
				continue
			}
			if overlapsAny(self.CIDRs, pf) {
				rejected = append(rejected, peerRejection{Node: name, Prefix: pf, Reason: "prefix overlaps this node's own"})
				continue
			}
			seenPrefix[pf] = name
			p.AllowedIPs = append(p.AllowedIPs, pf)
		}
		peers = append(peers, p)
	}
	slices.SortFunc(peers, func(x, y tunnel.Peer) int { return strings.Compare(x.PublicKey, y.PublicKey) })
	return peers, rejected
}

// nodePrefixes are the prefixes a node record owns: its CIDRs and its mesh
// IP (when outside them).
func nodePrefixes(n kvstore.Node) []netip.Prefix {
	out := slices.Clone(n.CIDRs)
	if n.MeshIP.IsValid() && !containsAddr(out, n.MeshIP) {
		out = append(out, netip.PrefixFrom(n.MeshIP, n.MeshIP.BitLen()))
	}
	return out
}

func overlapsAny(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

func containsAddr(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// peerReconciler keeps the tunnel's peers equal to the node records of the
// mesh. Node events only signal; the loop coalesces a burst of them into one
// Reconcile, which writes just the difference to the device.
//
// A record that goes without its node saying it is leaving (its lease
// expired in an etcd outage or while its agent was down, or someone deleted
// it) does not remove the peer at once: the node is retained while its
// tunnel shows life (bytes received from it, or a new handshake) and
// dropped once it has been silent for silence. Persistent keepalives make
// a live peer send something every keepalive interval, so silence is a
// small multiple of it. A record that says Leaving goes at once (the
// moment it says so: a leaving node is no peer any more).
type peerReconciler struct {
	dev     peerDevice
	nodes   nodeSet
	self    func() peerSelf
	log     *slog.Logger
	observe func(name string, start time.Time)
	kick    chan struct{}
	// retryAfter is the pause before a failed reconcile is tried again.
	retryAfter time.Duration

	// silence is how long a retained node may be silent; 0 retains none.
	silence time.Duration
	// status reads the device's peers (their received bytes and
	// handshakes), for retained nodes.
	status func() (tunnel.Status, error)
	// onDrop is told when a retained node is finally dropped.
	onDrop func(cluster, node string)
	// revoked reports whether an admin revoked the node (revoked/ in
	// etcd; nil: none is). A revoked node never becomes a peer, whatever
	// records appear for it, and is never retained.
	revoked func(cluster, node string) bool
	// revocations is the agent's revocation cache (revocation.go), kept
	// here for the other checks (ipcache, agent-to-agent API, node
	// services); nil in tests that need none.
	revocations *revocationSet

	mu       sync.Mutex
	retained map[string]*retainedNode // by node key
	// keyOwners is, per WireGuard key, the node (cluster/name) it was the
	// peer of in the last computed peer list (desiredPeers' KeyOwner).
	keyOwners map[string]string
}

// retainedNode is a node whose record went without a leave.
type retainedNode struct {
	node  kvstore.Node
	since time.Time
	// alive is the last time its tunnel showed life; rx and handshake the
	// values seen then (rx -1: not read yet).
	alive     time.Time
	rx        int64
	handshake time.Time
}

func newPeerReconciler(dev peerDevice, nodes nodeSet, self func() peerSelf, log *slog.Logger, observe func(string, time.Time)) *peerReconciler {
	return &peerReconciler{dev: dev, nodes: nodes, self: self, log: log, observe: observe,
		kick: make(chan struct{}, 1), retryAfter: time.Second, retained: map[string]*retainedNode{}}
}

// nodeEvent keeps the retained set: a record that went without a leave is
// retained, one that is back is not anymore.
func (r *peerReconciler) nodeEvent(ev kvstore.Event[kvstore.Node]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		delete(r.retained, ev.Value.Key())
		if r.isRevoked(ev.Value.Cluster, ev.Value.Name) {
			r.log.Warn("ignoring the record of a revoked node: it does not become a peer", "node", ev.Value.Cluster+"/"+ev.Value.Name)
		}
	case kvstore.EventDelete:
		n := ev.Old
		self := r.self()
		if r.silence <= 0 || n.Leaving || (n.Cluster == self.Cluster && n.Name == self.Node) || r.isRevoked(n.Cluster, n.Name) {
			return
		}
		now := time.Now()
		r.retained[n.Key()] = &retainedNode{node: n, since: now, alive: now, rx: -1}
		r.log.Info("node record is gone but the node did not leave; keeping its peer while its tunnel is alive",
			"node", n.Cluster+"/"+n.Name, "silence_limit", r.silence)
	}
}

func (r *peerReconciler) isRevoked(cluster, node string) bool {
	return r.revoked != nil && r.revoked(cluster, node)
}

// dropRevoked removes a node just revoked: no retention, and a reconcile
// now, so its peer goes from the device within the event's round trip.
func (r *peerReconciler) dropRevoked(cluster, node string) {
	r.mu.Lock()
	delete(r.retained, kvstore.NodeKey(cluster, node))
	r.mu.Unlock()
	r.trigger()
}

// dropCluster removes the retained nodes of a disconnected cluster (their
// records went as deletes; a disconnect is not an outage to ride out) and
// what the ipcache holds for them, then reconciles.
func (r *peerReconciler) dropCluster(cluster string) {
	prefix := kvstore.NodesPrefix + cluster + "/"
	var dropped []retainedNode
	r.mu.Lock()
	for k, rn := range r.retained {
		if strings.HasPrefix(k, prefix) {
			dropped = append(dropped, *rn)
			delete(r.retained, k)
		}
	}
	r.mu.Unlock()
	for _, rn := range dropped {
		if r.onDrop != nil {
			r.onDrop(rn.node.Cluster, rn.node.Name)
		}
	}
	r.trigger()
}

// isRetained reports whether the node's record is gone but its peer kept.
func (r *peerReconciler) isRetained(cluster, node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.retained[kvstore.NodeKey(cluster, node)]
	return ok
}

// checkRetained drops the retained nodes whose tunnel has been silent for
// longer than r.silence; it reports whether it dropped any.
func (r *peerReconciler) checkRetained(now time.Time) bool {
	r.mu.Lock()
	if len(r.retained) == 0 {
		r.mu.Unlock()
		return false
	}
	r.mu.Unlock()
	st, err := r.status()
	byKey := map[string]tunnel.PeerStatus{}
	if err == nil {
		for _, p := range st.Peers {
			byKey[p.PublicKey] = p
		}
	}
	var dropped []kvstore.Node
	r.mu.Lock()
	for key, rn := range r.retained {
		if p, ok := byKey[rn.node.WGPublicKey]; ok {
			if (rn.rx >= 0 && p.RxBytes > rn.rx) || p.LastHandshake.After(rn.handshake) && !rn.handshake.IsZero() {
				rn.alive = now
			}
			rn.rx, rn.handshake = p.RxBytes, p.LastHandshake
		} else if err == nil {
			// The device has no such peer any more: nothing to keep.
			rn.alive = time.Time{}
		}
		if now.Sub(rn.alive) > r.silence {
			delete(r.retained, key)
			dropped = append(dropped, rn.node)
		}
	}
	r.mu.Unlock()
	for _, n := range dropped {
		r.log.Warn("dropping a node whose record is gone and whose tunnel went silent", "node", n.Cluster+"/"+n.Name, "silent_for", r.silence)
		if r.onDrop != nil {
			r.onDrop(n.Cluster, n.Name)
		}
	}
	return len(dropped) > 0
}

func (r *peerReconciler) trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *peerReconciler) run(ctx context.Context) error {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.kick:
		case <-retry.C:
		case now := <-tick.C:
			if !r.checkRetained(now) {
				continue
			}
		}
		start := time.Now()
		err := r.dev.Reconcile(ctx, r.desired())
		r.observe("peers", start)
		if err != nil {
			r.log.Error("reconciling tunnel peers", "err", err)
			retry.Reset(r.retryAfter)
		}
	}
}

// desired computes the peers from the node cache and logs what it left out.
func (r *peerReconciler) desired() []tunnel.Peer {
	var nodes []kvstore.Node
	seen := map[string]bool{}
	r.nodes.Range(func(k string, n kvstore.Node) bool {
		if r.isRevoked(n.Cluster, n.Name) {
			return true // logged when its record came (nodeEvent)
		}
		if n.Leaving {
			return true // a node that said it goes is no peer any more
		}
		nodes = append(nodes, n)
		seen[n.Key()] = true
		return true
	})
	r.mu.Lock()
	for k, rn := range r.retained {
		if !seen[k] && !r.isRevoked(rn.node.Cluster, rn.node.Name) {
			nodes = append(nodes, rn.node)
		}
	}
	r.mu.Unlock()
	self := r.self()
	// The device's key, not the record's: during this node's own rotation
	// the device switches keys before the record follows.
	self.Key = r.dev.PublicKey().String()
	r.mu.Lock()
	owners := r.keyOwners
	r.mu.Unlock()
	self.KeyOwner = func(key string) string { return owners[key] }
	peers, rejected := desiredPeers(nodes, self)
	next := make(map[string]string, len(peers))
	byKey := make(map[string]string, len(nodes))
	for _, n := range nodes {
		byKey[n.WGPublicKey] = n.Cluster + "/" + n.Name
	}
	dup := map[string]bool{}
	for _, x := range rejected {
		if x.DupKey != "" {
			dup[x.DupKey] = true
		}
	}
	for _, p := range peers {
		if dup[p.PublicKey] {
			next[p.PublicKey] = owners[p.PublicKey] // kept by the previous owner
		} else {
			next[p.PublicKey] = byKey[p.PublicKey]
		}
		if p.NextPublicKey != "" {
			// The announced next key is its announcer's too, so that a
			// copy of it made before the switch is the intruder.
			next[p.NextPublicKey] = byKey[p.PublicKey]
		}
	}
	r.mu.Lock()
	r.keyOwners = next
	r.mu.Unlock()
	for _, x := range rejected {
		switch {
		case x.DupKey != "":
			r.log.Warn("node record claims a WireGuard key another record claims too (a copied key: check both nodes)", "node", x.Node, "key", x.DupKey, "reason", x.Reason)
		case x.Key != "":
			r.log.Warn("node record announces a next WireGuard key that is already in use; ignoring it", "node", x.Node, "next_key", x.Key)
		default:
			r.log.Warn("node record claims a prefix that is already taken; ignoring that prefix", "node", x.Node, "prefix", x.Prefix, "reason", x.Reason)
		}
	}
	return peers
}

// admit adds the nodes the device does not know yet as peers that can only
// handshake: no allowed prefixes (no traffic either way before the datapath
// is attached), no routes and no keepalive (this node does not initiate
// yet). Peers already on the device, left by an agent that restarted, keep
// their configuration, so their traffic goes on. A failure is only logged:
// configure applies the whole configuration later.
func (r *peerReconciler) admit(ctx context.Context, have func() (map[string]bool, error)) {
	known, err := have()
	if err != nil {
		r.log.Warn("reading the tunnel's peers; skipping early admission", "err", err)
		return
	}
	desired := r.desired()
	for i := range desired {
		if !known[desired[i].PublicKey] {
			desired[i].AllowedIPs, desired[i].Keepalive = nil, 0
		}
	}
	if err := r.dev.Reconcile(ctx, desired); err != nil {
		r.log.Warn("admitting peers before registration; the full configuration follows", "err", err)
	}
}

// configure applies the full peer configuration once (the loop keeps it
// current from then on): allowed prefixes, routes and keepalives, which
// makes this node handshake with the peers that have not done so yet.
func (r *peerReconciler) configure(ctx context.Context) {
	if err := r.dev.Reconcile(ctx, r.desired()); err != nil {
		r.log.Warn("configuring tunnel peers; the peer reconciler retries", "err", err)
		r.trigger()
	}
}
