package connectivity

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// fakeAgent is a node's agent as the test sees it through the API: it
// places probe workloads, answers probes from a table of reachable
// addresses, and relays to its peers by node (as the agent relays over the
// mesh, which it cannot to a connected cluster's node).
type fakeAgent struct {
	self  api.Node
	nodes []api.Node
	peers map[string]http.Handler // by cluster/node
	ip    string                  // its echo workload's address

	mu        sync.Mutex
	reachable map[string]bool // ip:port/proto the probes reach
	payloads  map[string]string
	relayed   []string
	marker    string
}

func (f *fakeAgent) Peers(context.Context) ([]api.Peer, error) { return nil, nil }
func (f *fakeAgent) Nodes(context.Context) ([]api.Node, error) {
	return append([]api.Node{f.self}, f.nodes...), nil
}
func (f *fakeAgent) Identities(context.Context) ([]api.Identity, error) { return nil, nil }

func (f *fakeAgent) AddProbeWorkload(_ context.Context, req api.ProbeWorkloadRequest) (api.Endpoint, error) {
	return api.Endpoint{Name: req.Name, IP: f.ip, Node: f.self.Name, Cluster: f.self.Cluster}, nil
}
func (f *fakeAgent) RemoveProbeWorkload(context.Context, string) error { return nil }

func (f *fakeAgent) RunProbe(_ context.Context, req api.ProbeRequest) (api.ProbeResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.payloads[req.To+"/"+req.Protocol] = req.Payload
	// A node's agent echoes health probes only.
	if _, port, _ := net.SplitHostPort(req.To); port == strconv.Itoa(api.HealthProbePort) &&
		(len(req.Payload) != api.HealthProbeLen || !strings.HasPrefix(req.Payload, api.HealthProbeMagic)) {
		return api.ProbeResult{Error: "no echo: i/o timeout"}, nil
	}
	if f.reachable[req.To+"/"+req.Protocol] {
		return api.ProbeResult{OK: true, RTT: api.Duration(time.Millisecond)}, nil
	}
	return api.ProbeResult{Error: "no echo: i/o timeout"}, nil
}

func (f *fakeAgent) WireCheck(_ context.Context, req api.WireCheckRequest) (api.WireCheckResult, error) {
	f.mu.Lock()
	f.marker = req.Marker
	f.mu.Unlock()
	time.Sleep(time.Duration(req.Duration))
	return api.WireCheckResult{Packets: 40, Tunnel: 40}, nil
}

func (f *fakeAgent) LogErrors(context.Context, time.Time) (api.LogErrors, error) {
	return api.LogErrors{Recent: []string{}}, nil
}

func (f *fakeAgent) Flows(context.Context, api.FlowRequest, func(api.FlowLine) error) error {
	return nil
}

func (f *fakeAgent) Relay(_ context.Context, cluster, node string) (http.Handler, error) {
	f.mu.Lock()
	f.relayed = append(f.relayed, cluster+"/"+node)
	f.mu.Unlock()
	if h, ok := f.peers[cluster+"/"+node]; ok {
		return h, nil
	}
	return nil, api.Errorf(api.CodeNotSupported, "node %s/%s is in a connected cluster", cluster, node)
}

func (f *fakeAgent) backend() api.Backend {
	return api.Backend{Mesh: f, Prober: f, Flows: f, Relay: f}
}

// crossClusterMesh is a1 (cluster a), s1 of cluster west sharing a's etcd
// (reached through the relay) and b1 of the connected cluster b (not).
func crossClusterMesh(t *testing.T, nodes ...api.Node) (*fakeAgent, *api.Client) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	local := &fakeAgent{self: api.Node{Name: "a1", Cluster: "a", MeshIP: "100.64.0.1", Self: true}, nodes: nodes, ip: "100.64.0.10",
		peers: map[string]http.Handler{}, reachable: map[string]bool{}, payloads: map[string]string{}}
	for _, n := range nodes {
		if n.Remote {
			continue
		}
		peer := &fakeAgent{self: n, ip: "100.66.0.10", reachable: map[string]bool{}, payloads: map[string]string{}}
		local.peers[n.Cluster+"/"+n.Name] = api.NewServer(peer.backend(), log).Handler()
	}
	for _, to := range []string{"100.64.0.10:7946", "100.66.0.10:7946"} {
		local.reachable[to+"/tcp"], local.reachable[to+"/udp"] = true, true
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(local.backend(), log)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return local, api.NewClient(path)
}

var (
	sharedNode = api.Node{Name: "s1", Cluster: "west", MeshIP: "100.66.0.1"}
	remoteNode = api.Node{Name: "b1", Cluster: "b", MeshIP: "100.65.0.1", Remote: true}
)

func scenarioOf(t *testing.T, rep Report, name string) ScenarioResult {
	t.Helper()
	for _, s := range rep.Scenarios {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no scenario %q in %+v", name, rep.Scenarios)
	return ScenarioResult{}
}

func TestAcrossClustersProbesConnectedClustersFromHere(t *testing.T) {
	local, cl := crossClusterMesh(t, sharedNode, remoteNode)
	b1 := net.JoinHostPort(remoteNode.MeshIP, strconv.Itoa(api.HealthProbePort)) + "/udp"
	local.reachable[b1] = true
	rep, err := Run(context.Background(), cl, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// s1 shares a's etcd: its echo workload, tcp and udp; b1 is
	// connected: one health probe from a1.
	if s := scenarioOf(t, rep, "across clusters"); s.Result != Pass || s.Checks != 3 {
		t.Fatalf("across clusters = %+v, want a pass of 3 checks", s)
	}
	if s := scenarioOf(t, rep, "encryption on wire"); s.Result != Pass {
		t.Fatalf("encryption on wire = %+v", s)
	}
	local.mu.Lock()
	defer local.mu.Unlock()
	if p := local.payloads[b1]; p != local.marker || len(p) != api.HealthProbeLen || !strings.Contains(p, rep.Run) {
		t.Errorf("b1 was probed with %q while the wire was watched for %q: want one health probe carrying run %s", p, local.marker, rep.Run)
	}
	for _, r := range local.relayed {
		if r == "b/b1" {
			t.Errorf("the test asked the connected cluster's agent through the relay: %v", local.relayed)
		}
	}
	for _, name := range []string{"same node", "host to workload"} {
		if s := scenarioOf(t, rep, name); s.Result != Pass {
			t.Errorf("%s = %+v", name, s)
		}
	}
}

func TestAcrossClustersNamesTheUnreachableNode(t *testing.T) {
	_, cl := crossClusterMesh(t, remoteNode)
	rep, err := Run(context.Background(), cl, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := scenarioOf(t, rep, "across clusters")
	if s.Result != Fail || !strings.Contains(s.Reason, "b/b1") || !strings.Contains(s.Reason, "connected cluster") || !strings.Contains(s.Reason, "cluster status") {
		t.Fatalf("across clusters with b1 unreachable = %+v, want a failure naming b/b1 and where to look", s)
	}
	if rep.Passed {
		t.Error("the report passed with a connected cluster unreachable")
	}
}

func TestAcrossClustersSkippedWithoutAnotherCluster(t *testing.T) {
	_, cl := crossClusterMesh(t, api.Node{Name: "a2", Cluster: "a", MeshIP: "100.64.1.1"})
	rep, err := Run(context.Background(), cl, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if s := scenarioOf(t, rep, "across clusters"); s.Result != Skip || !strings.Contains(s.Reason, "cluster connect") {
		t.Fatalf("across clusters in a one-cluster mesh = %+v, want a skip saying how to connect one", s)
	}
}

// --nodes may name a connected cluster's node: it is probed, not asked.
func TestNodesFlagTakesAConnectedClustersNode(t *testing.T) {
	local, cl := crossClusterMesh(t, sharedNode, remoteNode)
	local.reachable[net.JoinHostPort(remoteNode.MeshIP, strconv.Itoa(api.HealthProbePort))+"/udp"] = true
	rep, err := Run(context.Background(), cl, Options{Timeout: time.Second, Nodes: []string{"b/b1"}})
	if err != nil {
		t.Fatal(err)
	}
	if s := scenarioOf(t, rep, "across clusters"); s.Result != Pass || s.Checks != 1 {
		t.Fatalf("across clusters with --nodes b/b1 = %+v, want b1's probe only", s)
	}
	if _, err := Run(context.Background(), cl, Options{Timeout: time.Second, Nodes: []string{"b/nope"}}); err == nil || !strings.Contains(err.Error(), "b/nope") {
		t.Fatalf("--nodes b/nope: %v", err)
	}
}
