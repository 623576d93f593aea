package agent

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weftmesh/weft/agent/health"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/kvstore"
)

// TestIPCacheMarksNodeAddresses: only the endpoint at its node's own mesh
// address, as the node's record announces it, is marked a node address
// (the datapath lets agent control traffic between such addresses through
// whatever the policy); workloads, labels notwithstanding, never are.
func TestIPCacheMarksNodeAddresses(t *testing.T) {
	dp := bpftest.New()
	cidr := netip.MustParsePrefix("100.64.1.0/24")
	meshIP := map[string]netip.Addr{"n1": netip.MustParseAddr("100.64.1.1")}
	owned := func(cluster, node string) ([]netip.Prefix, bool) { return []netip.Prefix{cidr}, node == "n1" }
	host := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.1"), Identity: 300, Cluster: "c", Node: "n1",
		Labels: []string{"mesh:cluster=c", "mesh:kind=vm", "vm:app=db"}}
	// A workload that carries the VM's very labels: still not the node.
	lookalike := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.2"), Identity: 300, Cluster: "c", Node: "n1",
		Labels: host.Labels}
	r := newIPCacheReconciler(dp, owned, fakeEndpoints{host, lookalike}, slog.New(slog.DiscardHandler))
	r.nodeAddr = func(cluster, node string) (netip.Addr, bool) { a, ok := meshIP[node]; return a, ok }
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: host})
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: lookalike})

	hostPfx, lookPfx := netip.MustParsePrefix("100.64.1.1/32"), netip.MustParsePrefix("100.64.1.2/32")
	if got := dp.IPCacheFlags(hostPfx); got != bpf.IPCacheNode {
		t.Errorf("the node's own address has flags %#x, want bpf.IPCacheNode", got)
	}
	if got := dp.IPCacheFlags(lookPfx); got != 0 {
		t.Errorf("a workload's address has flags %#x, want none", got)
	}

	// The node's record moves its mesh IP: the mark follows the record.
	meshIP["n1"] = lookalike.IP
	r.resyncNode("c", "n1")
	if dp.IPCacheFlags(hostPfx) != 0 || dp.IPCacheFlags(lookPfx) != bpf.IPCacheNode {
		t.Errorf("after the record moved to %v: flags %#x and %#x, want only the new address marked",
			lookalike.IP, dp.IPCacheFlags(hostPfx), dp.IPCacheFlags(lookPfx))
	}
	if ipc := dp.IPCache(); ipc[hostPfx] != 300 || ipc[lookPfx] != 300 {
		t.Errorf("ipcache = %v: the identities must not change with the mark", ipc)
	}

	// Without its node's address known, nothing is marked.
	delete(meshIP, "n1")
	r.resyncNode("c", "n1")
	if dp.IPCacheFlags(lookPfx) != 0 {
		t.Errorf("a node without a known mesh IP still marks %v", lookalike.IP)
	}
}

// TestIPCacheNodeAddrOtherNode: an endpoint another node publishes at a
// node's mesh IP is refused (outside its prefixes) and never marked.
func TestIPCacheNodeAddrOtherNode(t *testing.T) {
	dp := bpftest.New()
	prefixes := map[string][]netip.Prefix{"n1": {netip.MustParsePrefix("100.64.1.0/24")}, "n2": {netip.MustParsePrefix("100.64.2.0/24")}}
	owned := func(cluster, node string) ([]netip.Prefix, bool) { p, ok := prefixes[node]; return p, ok }
	forged := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.1"), Identity: 300, Cluster: "c", Node: "n2"}
	r := newIPCacheReconciler(dp, owned, fakeEndpoints{forged}, slog.New(slog.DiscardHandler))
	meshIPs := map[string]netip.Addr{"n1": netip.MustParseAddr("100.64.1.1"), "n2": netip.MustParseAddr("100.64.2.1")}
	r.nodeAddr = func(cluster, node string) (netip.Addr, bool) { a, ok := meshIPs[node]; return a, ok }
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: forged})
	if len(dp.IPCache()) != 0 || dp.IPCacheFlags(netip.MustParsePrefix("100.64.1.1/32")) != 0 {
		t.Fatalf("ipcache = %v: n2 gave n1's mesh IP an identity", dp.IPCache())
	}
}

// TestControlPortsMatchTheDatapath: the ports the datapath lets through
// between nodes are the ones the agent listens on.
func TestControlPortsMatchTheDatapath(t *testing.T) {
	for _, c := range []struct {
		what      string
		agent, dp uint16
	}{
		{"agent-to-agent API", meshtls.DefaultPort, bpf.DefaultControlPortAPI},
		{"gossip", health.DefaultGossipPort, bpf.DefaultControlPortGossip},
		{"health probes", health.DefaultProbePort, bpf.DefaultControlPortProbe},
	} {
		if c.agent != c.dp {
			t.Errorf("%s: the agent uses port %d, the datapath lets %d through", c.what, c.agent, c.dp)
		}
	}
}
