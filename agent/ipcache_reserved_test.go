package agent

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// Of the reserved identities a record may carry only remote-node, and only
// at its node's own mesh address (a Kubernetes node's): a node publishing
// host, world or remote-node for a workload address is ignored. This node's
// own remote-node address is host here.
func TestIPCacheReservedIdentities(t *testing.T) {
	dp := bpftest.New()
	cidr := netip.MustParsePrefix("100.96.1.0/24")
	owned := func(cluster, node string) ([]netip.Prefix, bool) { return []netip.Prefix{cidr}, true }
	ep := func(ip string, id identity.NumericIdentity, node string) kvstore.Endpoint {
		return kvstore.Endpoint{IP: netip.MustParseAddr(ip), Identity: uint32(id), Cluster: "c", Node: node}
	}
	nodeIP := ep("100.96.1.1", identity.IdentityRemoteNode, "k2")
	forgedHost := ep("100.96.1.2", identity.IdentityHost, "k2")
	forgedRemote := ep("100.96.1.3", identity.IdentityRemoteNode, "k2")
	forgedWorld := ep("100.96.1.4", identity.IdentityWorld, "k2")
	r := newIPCacheReconciler(dp, owned, fakeEndpoints{nodeIP, forgedHost, forgedRemote, forgedWorld}, slog.New(slog.DiscardHandler))
	r.nodeAddr = func(cluster, node string) (netip.Addr, bool) { return netip.MustParseAddr("100.96.1.1"), true }
	for _, e := range []kvstore.Endpoint{nodeIP, forgedHost, forgedRemote, forgedWorld} {
		r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: e})
	}
	ipc := dp.IPCache()
	if got := ipc[netip.MustParsePrefix("100.96.1.1/32")]; got != uint32(identity.IdentityRemoteNode) {
		t.Errorf("the node's own address: identity %d, want remote-node", got)
	}
	for _, ip := range []string{"100.96.1.2/32", "100.96.1.3/32", "100.96.1.4/32"} {
		if got, ok := ipc[netip.MustParsePrefix(ip)]; ok {
			t.Errorf("%s with a reserved identity entered the ipcache as %d", ip, got)
		}
	}
	// The same record seen by the node itself: host.
	self := newIPCacheReconciler(bpftest.New(), owned, fakeEndpoints{nodeIP}, slog.New(slog.DiscardHandler))
	self.nodeAddr = r.nodeAddr
	self.selfCluster, self.selfNode = "c", "k2"
	sdp := self.dp.(*bpftest.Datapath)
	self.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: nodeIP})
	if got := sdp.IPCache()[netip.MustParsePrefix("100.96.1.1/32")]; got != uint32(identity.IdentityHost) {
		t.Errorf("this node's own address: identity %d here, want host", got)
	}
}
