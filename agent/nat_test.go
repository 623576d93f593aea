package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/paths"
	"github.com/weftmesh/weft/kvstore"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestCandidatesPreferTheNATAddressUnlessBehindTheSameNAT(t *testing.T) {
	public := kvstore.Node{Name: "p", Endpoints: []netip.AddrPort{ap("198.18.1.10:51833")}}
	natA := kvstore.Node{Name: "a", Endpoints: []netip.AddrPort{ap("198.18.3.10:51833")}, Reflexive: []netip.AddrPort{ap("198.19.0.4:51833")}}
	natA2 := kvstore.Node{Name: "a2", Endpoints: []netip.AddrPort{ap("198.18.3.11:51833")}, Reflexive: []netip.AddrPort{ap("198.19.0.4:1024")}}
	natB := kvstore.Node{Name: "b", Endpoints: []netip.AddrPort{ap("198.18.4.10:51833")}, Reflexive: []netip.AddrPort{ap("198.19.0.5:51833")}}
	for _, c := range []struct {
		self, peer kvstore.Node
		want       []netip.AddrPort
	}{
		{public, natA, []netip.AddrPort{ap("198.19.0.4:51833"), ap("198.18.3.10:51833")}},
		{natB, natA, []netip.AddrPort{ap("198.19.0.4:51833"), ap("198.18.3.10:51833")}},
		{natA2, natA, []netip.AddrPort{ap("198.18.3.10:51833"), ap("198.19.0.4:51833")}}, // same NAT: the LAN first
		{natA, public, []netip.AddrPort{ap("198.18.1.10:51833")}},
	} {
		if got := candidates(c.self, c.peer); !slices.Equal(got, c.want) {
			t.Errorf("%s -> %s: %v, want %v", c.self.Name, c.peer.Name, got, c.want)
		}
	}
	// A node whose peers see it at its own address is not behind NAT.
	self := kvstore.Node{Endpoints: []netip.AddrPort{ap("198.18.1.10:51833")}, Reflexive: []netip.AddrPort{ap("198.18.1.10:51833")}}
	if behindNAT(self) || !behindNAT(natA) || behindNAT(public) {
		t.Fatal("behindNAT")
	}
}

func TestDesiredPeersTakeTheChosenEndpoint(t *testing.T) {
	n := kvstore.Node{Cluster: "lab", Name: "b", WGPublicKey: testKey(t), Endpoints: []netip.AddrPort{ap("198.18.1.10:51833")}}
	self := peerSelf{Cluster: "lab", Node: "a", Key: testKey(t)}
	peers, _ := desiredPeers([]kvstore.Node{n}, self)
	if peers[0].Endpoint != "198.18.1.10:51833" {
		t.Fatalf("without path selection: %q", peers[0].Endpoint)
	}
	self.Endpoint = func(kvstore.Node) (string, bool) { return "127.0.0.1:40000", true }
	peers, _ = desiredPeers([]kvstore.Node{n}, self)
	if peers[0].Endpoint != "127.0.0.1:40000" {
		t.Fatalf("with a relayed path: %q", peers[0].Endpoint)
	}
	self.Endpoint = func(kvstore.Node) (string, bool) { return "", true }
	peers, _ = desiredPeers([]kvstore.Node{n}, self)
	if peers[0].Endpoint != "" {
		t.Fatalf("with a learned path: %q", peers[0].Endpoint)
	}
}

// TestRelayPortsMatchTheDatapath: strict mode lets these ports through
// (bpf/lib/common.h PORT_RELAY, PORT_RELAY_CLIENT, PORT_PATH_CHECK).
func TestRelayPortsMatchTheDatapath(t *testing.T) {
	if config.DefaultRelayPort != 51838 || config.DefaultRelayClientPort != 51839 || config.DefaultPathProbePort != 51840 {
		t.Fatal("the relay ports changed: change bpf/lib/common.h and docs/nat.md with them")
	}
}

func TestReflexiveAskeesPreferThisCluster(t *testing.T) {
	node := func(cluster, name string, ip string) kvstore.Node {
		return kvstore.Node{Cluster: cluster, Name: name, MeshIP: netip.MustParseAddr(ip), Endpoints: []netip.AddrPort{ap("198.18.1.10:51833")}}
	}
	direct := paths.State{Alive: true, Path: paths.Path{Kind: paths.Direct}}
	relayed := paths.State{Alive: true, Path: paths.Path{Kind: paths.Relay}}
	behind := node("lab", "nat", "100.64.0.9")
	behind.Reflexive = []netip.AddrPort{ap("198.19.0.4:51833")}
	nodes := []kvstore.Node{node("lab", "a", "100.64.0.1"), node("lab", "b", "100.64.0.2"), node("far", "x", "100.65.0.1"),
		node("lab", "relayed", "100.64.0.3"), node("lab", "dead", "100.64.0.4"), behind}
	states := map[string]paths.State{"lab/a": direct, "lab/b": direct, "far/x": direct, "lab/relayed": relayed,
		"lab/dead": {Path: paths.Path{Kind: paths.Direct}}, "lab/nat": direct}
	names := func(ns []kvstore.Node) (out []string) {
		for _, n := range ns {
			out = append(out, n.Cluster+"/"+n.Name)
		}
		return out
	}
	// Only live, direct, public peers of this cluster; another cluster's
	// node is not asked while this one has some.
	if got := names(reflexiveAskees(nodes, states, "lab", 0)); !slices.Equal(got, []string{"lab/a", "lab/b"}) {
		t.Fatalf("asked %v, want lab/a and lab/b", got)
	}
	// With none of its own, the connected cluster's node is asked.
	if got := names(reflexiveAskees(nodes[2:], states, "lab", 0)); !slices.Equal(got, []string{"far/x"}) {
		t.Fatalf("asked %v, want far/x", got)
	}
	// At most three, starting at another peer each round.
	var many []kvstore.Node
	for i := range 5 {
		n := node("lab", string(rune('a'+i)), "100.64.0.1")
		many = append(many, n)
		states[n.Cluster+"/"+n.Name] = direct
	}
	r0, r1 := names(reflexiveAskees(many, states, "lab", 0)), names(reflexiveAskees(many, states, "lab", 1))
	if len(r0) != maxAskees || len(r1) != maxAskees || r0[0] == r1[0] {
		t.Fatalf("rounds ask %v then %v, want %d each starting elsewhere", r0, r1, maxAskees)
	}
}
