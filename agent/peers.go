package agent

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/tunnel"
)

// peerReconciler keeps the tunnel's peers equal to the node records of the
// mesh. Node events only signal; the loop coalesces a burst of them into one
// Reconcile, which writes just the difference to the device.
type peerReconciler struct {
	a    *Agent
	kick chan struct{}
	// applied counts successful reconciles (status, tests).
	last []tunnel.Peer
}

func newPeerReconciler(a *Agent) *peerReconciler {
	return &peerReconciler{a: a, kick: make(chan struct{}, 1)}
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
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.kick:
		case <-retry.C:
		}
		start := time.Now()
		desired := r.desired()
		err := r.a.tun.Reconcile(ctx, desired)
		r.a.observeReconcile("peers", start)
		if err != nil {
			r.a.log.Error("reconciling tunnel peers", "err", err)
			retry.Reset(time.Second)
			continue
		}
		r.last = desired
	}
}

// desired turns the node cache into peers: every node but this one, with its
// CIDRs and mesh IP as allowed prefixes. Every node keeps a persistent
// keepalive towards its peers: a node behind NAT must (it keeps the mapping
// open and lets the public side learn its endpoint from the handshake), and
// a node cannot always tell that it is behind NAT, so all of them do; the
// cost is one 32-byte packet per peer per interval.
func (r *peerReconciler) desired() []tunnel.Peer {
	a := r.a
	var peers []tunnel.Peer
	seenPrefix := map[netip.Prefix]string{}
	// The device's key, not the record's: during this node's own rotation
	// the device switches keys before the record follows.
	own := a.tun.PublicKey().String()
	// Every key in use, so that a next key colliding with one (a bad
	// record) is dropped instead of failing the whole reconcile.
	inUse := map[string]bool{own: true}
	a.nodes.Range(func(_ string, n kvstore.Node) bool { inUse[n.WGPublicKey] = true; return true })
	a.nodes.Range(func(_ string, n kvstore.Node) bool {
		if n.Cluster == a.cfg.Cluster && n.Name == a.cfg.NodeName {
			return true
		}
		if n.WGPublicKey == own {
			return true
		}
		p := tunnel.Peer{PublicKey: n.WGPublicKey, Keepalive: a.cfg.WireGuard.PersistentKeepalive.D()}
		if n.WGNextPublicKey != "" {
			if inUse[n.WGNextPublicKey] {
				a.log.Warn("node record announces a next WireGuard key that is already in use; ignoring it", "node", n.Name, "cluster", n.Cluster, "next_key", n.WGNextPublicKey)
			} else {
				p.NextPublicKey = n.WGNextPublicKey
				inUse[n.WGNextPublicKey] = true
			}
		}
		if len(n.Endpoints) > 0 {
			p.Endpoint = n.Endpoints[0].String()
		}
		prefixes := slices.Clone(n.CIDRs)
		if n.MeshIP.IsValid() && !containsAddr(prefixes, n.MeshIP) {
			prefixes = append(prefixes, netip.PrefixFrom(n.MeshIP, n.MeshIP.BitLen()))
		}
		// Two records claiming one prefix would make the whole reconcile
		// fail; keep the first and log the other, so one bad record does
		// not cut the rest of the mesh.
		var ok []netip.Prefix
		for _, pf := range prefixes {
			if owner, dup := seenPrefix[pf]; dup || overlapsOwn(a, pf) {
				a.log.Warn("node record claims a prefix that is already taken; ignoring that prefix", "node", n.Name, "cluster", n.Cluster, "prefix", pf, "owner", owner)
				continue
			}
			seenPrefix[pf] = n.Cluster + "/" + n.Name
			ok = append(ok, pf)
		}
		p.AllowedIPs = ok
		peers = append(peers, p)
		return true
	})
	slices.SortFunc(peers, func(x, y tunnel.Peer) int {
		if x.PublicKey < y.PublicKey {
			return -1
		}
		if x.PublicKey > y.PublicKey {
			return 1
		}
		return 0
	})
	return peers
}

func overlapsOwn(a *Agent, p netip.Prefix) bool { return a.cidr.Overlaps(p) }

func containsAddr(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
