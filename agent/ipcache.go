package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// ipcacheWriter is the part of the datapath the ipcache reconciler needs.
type ipcacheWriter interface {
	UpsertIPCache(prefix netip.Prefix, identity uint32, flags uint32) error
	DeleteIPCache(prefix netip.Prefix) error
}

// nodeOwnership answers which prefixes a node owns: its CIDRs and mesh IP
// as its node record says; known is false while no record is seen.
type nodeOwnership func(cluster, node string) (owned []netip.Prefix, known bool)

// ipcacheReconciler mirrors the endpoints of the mesh into the datapath's
// ipcache (address -> identity), one map write per event.
//
// Cryptokey routing makes a source address trustworthy only inside the
// prefixes of the node whose key sent it. So an endpoint record counts only
// if its address lies in the prefixes of the node that published it:
// otherwise a node (or whoever can write its keys) could give another
// node's workload an identity of its choosing. Records of a node whose own
// record is not seen yet wait; resyncNode applies them when it arrives.
type ipcacheReconciler struct {
	dp        ipcacheWriter
	owned     nodeOwnership
	endpoints endpointLister
	log       *slog.Logger
	mu        sync.Mutex // endpoint and node events come from two caches

	// held decides whether a deleted endpoint's address keeps its identity
	// for now: its node's record went without a leave (a lease expired in
	// an outage) and the peer reconciler still sees the node alive, or it
	// is this node's own (its session writes it again). Nil holds none.
	held func(cluster, node string) bool
	// settle is how long a deletion waits before it is judged, because
	// the endpoint and node caches deliver one expiry in either order.
	settle time.Duration
	// holding are the held addresses, by node key.
	holding map[string]map[netip.Addr]bool

	// identityLabels returns the labels of an allocated identity (the
	// allocator's cache); nil skips the check.
	identityLabels func(id uint32) ([]string, bool)
	// clusterID returns the id of a cluster from its record, known false
	// when none is seen; nil skips the cluster checks. An endpoint of
	// cluster C may carry only identities of C's range: otherwise a
	// cluster (or one of its nodes) could speak with another cluster's
	// identities. A cluster with no record here is not one sharing this
	// etcd, whose nodes all have one; a connected cluster's records were
	// checked against its id as they entered the cache (kvstore.CheckRemote).
	clusterID func(cluster string) (int, bool)
	// self is this node (cluster, name): a Kubernetes node's own address,
	// published as remote-node, is host here.
	selfCluster, selfNode string
	// waiting are the keys of endpoints whose identity is not known yet, by
	// identity.
	waiting map[uint32]map[string]bool
	// allows checks labels against the publishing node's grant; nil skips
	// the check.
	allows func(cluster, node string, labels []string) error
	// revoked reports whether an admin revoked the node; nil: none is.
	// A revoked node's endpoints never enter the ipcache, whatever
	// records appear for it.
	revoked func(cluster, node string) bool
	// nodeAddr returns the mesh address a node's record announces as its
	// own; nil: no address is marked. The endpoint at exactly that address,
	// published by that node, is marked bpf.IPCacheNode: the datapath lets
	// agent-to-agent control traffic between two such addresses through
	// whatever the policy (bpf/lib/node.h). A workload's address is never
	// a node's meshIP, so it never carries the mark.
	nodeAddr func(cluster, node string) (netip.Addr, bool)
}

// endpointLister is the endpoint cache, as resyncNode reads it.
type endpointLister interface {
	Range(func(key string, e kvstore.Endpoint) bool)
	Get(key string) (kvstore.Endpoint, bool)
}

func newIPCacheReconciler(dp ipcacheWriter, owned nodeOwnership, endpoints endpointLister, log *slog.Logger) *ipcacheReconciler {
	return &ipcacheReconciler{dp: dp, owned: owned, endpoints: endpoints, log: log, holding: map[string]map[netip.Addr]bool{}, waiting: map[uint32]map[string]bool{}}
}

func (r *ipcacheReconciler) event(ev kvstore.Event[kvstore.Endpoint]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		if ev.Kind == kvstore.EventUpdate && ev.Old.IP != ev.Value.IP {
			r.remove(ev.Old.IP)
		}
		r.apply(ev.Value)
	case kvstore.EventDelete:
		if r.held == nil {
			r.remove(ev.Old.IP)
			return
		}
		old := ev.Old
		time.AfterFunc(r.settle, func() { r.judgeDeletion(old) })
	}
}

// judgeDeletion removes a deleted endpoint's address from the ipcache,
// unless it came back meanwhile or its node is held (then it goes with
// dropNode, or stays when the node's records return).
func (r *ipcacheReconciler) judgeDeletion(e kvstore.Endpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.present(e.Cluster, e.Node, e.IP) {
		return
	}
	if r.held(e.Cluster, e.Node) {
		key := kvstore.NodeKey(e.Cluster, e.Node)
		if r.holding[key] == nil {
			r.holding[key] = map[netip.Addr]bool{}
		}
		r.holding[key][e.IP] = true
		return
	}
	r.remove(e.IP)
}

// dropNode removes the addresses held for a node that is gone for good.
func (r *ipcacheReconciler) dropNode(cluster, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := kvstore.NodeKey(cluster, node)
	for ip := range r.holding[key] {
		if !r.present(cluster, node, ip) {
			r.remove(ip)
		}
	}
	delete(r.holding, key)
}

// present reports whether the node has an endpoint at ip again: one cache
// lookup, not a walk of every endpoint (deletions come in bursts when a
// node's lease expires). Caller holds r.mu.
func (r *ipcacheReconciler) present(cluster, node string, ip netip.Addr) bool {
	_, ok := r.endpoints.Get(kvstore.EndpointKey(cluster, node, ip))
	return ok
}

// resyncNode re-judges a node's endpoints after its record changed (it
// appeared, or its prefixes moved).
func (r *ipcacheReconciler) resyncNode(cluster, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Its record is back: what was held is judged again once its
	// endpoints had the time to come back too.
	if _, known := r.owned(cluster, node); known && len(r.holding[kvstore.NodeKey(cluster, node)]) > 0 {
		key := kvstore.NodeKey(cluster, node)
		ips := r.holding[key]
		delete(r.holding, key)
		time.AfterFunc(r.settle, func() {
			for ip := range ips {
				r.judgeDeletion(kvstore.Endpoint{IP: ip, Cluster: cluster, Node: node})
			}
		})
	}
	r.endpoints.Range(func(_ string, e kvstore.Endpoint) bool {
		if e.Cluster == cluster && e.Node == node {
			r.apply(e)
		}
		return true
	})
}

// dropRevoked removes the addresses of a node just revoked at once,
// instead of after the settle time of an endpoint's deletion.
func (r *ipcacheReconciler) dropRevoked(cluster, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := kvstore.NodeKey(cluster, node)
	for ip := range r.holding[key] {
		r.remove(ip)
	}
	delete(r.holding, key)
	r.endpoints.Range(func(_ string, e kvstore.Endpoint) bool {
		if e.Cluster == cluster && e.Node == node {
			r.remove(e.IP)
		}
		return true
	})
}

// apply writes or withholds one endpoint. Caller holds r.mu.
func (r *ipcacheReconciler) apply(e kvstore.Endpoint) {
	if r.revoked != nil && r.revoked(e.Cluster, e.Node) {
		r.log.Warn("ignoring an endpoint of a revoked node", "endpoint", e.Name, "ip", e.IP, "node", e.Cluster+"/"+e.Node)
		r.remove(e.IP)
		return
	}
	owned, known := r.owned(e.Cluster, e.Node)
	if !known {
		return // resyncNode applies it once the node's record is in
	}
	if !containsAddr(owned, e.IP) {
		r.log.Warn("ignoring an endpoint outside its node's prefixes", "endpoint", e.Name, "ip", e.IP,
			"node", e.Cluster+"/"+e.Node, "nodePrefixes", owned)
		r.remove(e.IP)
		return
	}
	// The identity number must be the one of the record's labels, and the
	// labels inside the node's grant: otherwise a node could give its
	// address the number of an identity it was never granted.
	// Of the reserved identities a record may carry only remote-node,
	// and only on its node's own mesh address (a Kubernetes node's):
	// anything else would let a node make an address host or world.
	id := identity.NumericIdentity(e.Identity)
	if id.IsReserved() && (id != identity.IdentityRemoteNode || !r.isNodeAddr(e)) {
		r.log.Warn("ignoring an endpoint with a reserved identity (only a node's own address may be remote-node)", "endpoint", e.Name, "ip", e.IP,
			"node", e.Cluster+"/"+e.Node, "identity", id)
		r.remove(e.IP)
		return
	}
	if !id.IsReserved() && !r.inCluster(e) {
		r.remove(e.IP)
		return
	}
	if r.identityLabels != nil && !id.IsReserved() {
		ls, ok := r.identityLabels(e.Identity)
		if !ok {
			// resyncIdentity applies it once the identity is known.
			if r.waiting[e.Identity] == nil {
				r.waiting[e.Identity] = map[string]bool{}
			}
			r.waiting[e.Identity][e.Key()] = true
			return
		}
		if !sameLabels(ls, e.Labels) {
			r.log.Warn("ignoring an endpoint whose identity number belongs to other labels", "endpoint", e.Name, "ip", e.IP,
				"node", e.Cluster+"/"+e.Node, "identity", e.Identity, "identityLabels", ls, "recordLabels", e.Labels)
			r.remove(e.IP)
			return
		}
	}
	if r.allows != nil {
		if err := r.allows(e.Cluster, e.Node, e.Labels); err != nil {
			r.log.Warn("ignoring an endpoint outside its node's label grant", "endpoint", e.Name, "ip", e.IP, "err", err)
			r.remove(e.IP)
			return
		}
	}
	pfx := netip.PrefixFrom(e.IP, e.IP.BitLen())
	var flags uint32
	if r.isNodeAddr(e) {
		flags = bpf.IPCacheNode
	}
	if id == identity.IdentityRemoteNode && e.Cluster == r.selfCluster && e.Node == r.selfNode {
		e.Identity = uint32(identity.IdentityHost)
	}
	if err := r.dp.UpsertIPCache(pfx, e.Identity, flags); err != nil {
		r.log.Error("ipcache upsert", "prefix", pfx, "identity", e.Identity, "err", err)
	}
}

// inCluster reports whether e's allocated identity and labels are of e's
// own cluster, logging a refusal. Caller holds r.mu.
func (r *ipcacheReconciler) inCluster(e kvstore.Endpoint) bool {
	if r.clusterID == nil {
		return true
	}
	for _, s := range e.Labels {
		// The labels are compared with the identity's below; this makes
		// a record naming another cluster fail here, with a clear reason.
		if v, ok := strings.CutPrefix(s, identity.SourceMesh+":cluster="); ok && v != e.Cluster {
			r.log.Warn("ignoring an endpoint labelled with another cluster", "endpoint", e.Name, "ip", e.IP,
				"node", e.Cluster+"/"+e.Node, "label", s)
			return false
		}
	}
	cid, known := r.clusterID(e.Cluster)
	if !known {
		return true
	}
	if id := identity.NumericIdentity(e.Identity); !id.InCluster(cid) {
		lo, hi, _ := identity.ClusterRange(cid)
		r.log.Warn("ignoring an endpoint whose identity is not of its cluster", "endpoint", e.Name, "ip", e.IP,
			"node", e.Cluster+"/"+e.Node, "identity", e.Identity, "identityCluster", id.ClusterID(),
			"clusterID", cid, "clusterRange", fmt.Sprintf("%d..%d", lo, hi))
		return false
	}
	return true
}

// resyncCluster re-judges the endpoints of a cluster whose record changed.
func (r *ipcacheReconciler) resyncCluster(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endpoints.Range(func(_ string, e kvstore.Endpoint) bool {
		if e.Cluster == cluster {
			r.apply(e)
		}
		return true
	})
}

// isNodeAddr reports whether e is its node's own mesh address, as the
// node's record says. The record and the endpoint are the same node's
// writes, and the address lies within that node's prefixes (apply checked),
// so the node marks nothing its WireGuard key does not already own.
func (r *ipcacheReconciler) isNodeAddr(e kvstore.Endpoint) bool {
	if r.nodeAddr == nil {
		return false
	}
	a, ok := r.nodeAddr(e.Cluster, e.Node)
	return ok && a.IsValid() && a.Unmap() == e.IP.Unmap()
}

// resyncIdentity applies the endpoints that waited for identity id to be
// known.
func (r *ipcacheReconciler) resyncIdentity(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := r.waiting[id]
	if len(keys) == 0 {
		return
	}
	delete(r.waiting, id)
	for k := range keys {
		if e, ok := r.endpoints.Get(k); ok && e.Identity == id {
			r.apply(e)
		}
	}
}

// sameLabels compares two sets of canonical label strings.
func sameLabels(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

func (r *ipcacheReconciler) remove(ip netip.Addr) {
	if !ip.IsValid() {
		return
	}
	pfx := netip.PrefixFrom(ip, ip.BitLen())
	if err := r.dp.DeleteIPCache(pfx); err != nil {
		r.log.Error("ipcache delete", "prefix", pfx, "err", err)
	}
}

// nodeAddrOf answers ipcacheReconciler.nodeAddr from a node cache.
func nodeAddrOf(nodes nodeSet) func(cluster, node string) (netip.Addr, bool) {
	return func(cluster, node string) (netip.Addr, bool) {
		n, ok := nodes.Get(kvstore.NodeKey(cluster, node))
		if !ok {
			return netip.Addr{}, false
		}
		return n.MeshIP, n.MeshIP.IsValid()
	}
}

// ownershipOf answers nodeOwnership from a node cache.
func ownershipOf(nodes nodeSet) nodeOwnership {
	return func(cluster, node string) ([]netip.Prefix, bool) {
		n, ok := nodes.Get(kvstore.NodeKey(cluster, node))
		if !ok {
			return nil, false
		}
		return nodePrefixes(n), true
	}
}
