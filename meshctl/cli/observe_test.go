package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/internal/testutil"
)

// meshFake is an agent whose flows come from a real ring and which relays
// to the other fake agents by node name, as the agent relays over the mesh.
type meshFake struct {
	self   string
	ring   *flows.Ring
	peers  map[string]http.Handler
	matrix api.HealthMatrix
	// remote are nodes of a connected cluster: listed, never relayed to.
	remote []api.Node
}

func (f *meshFake) Peers(context.Context) ([]api.Peer, error) { return nil, nil }
func (f *meshFake) Nodes(context.Context) ([]api.Node, error) {
	out := []api.Node{{Name: f.self, Cluster: "east", Self: true}}
	for n := range f.peers {
		out = append(out, api.Node{Name: n, Cluster: "east"})
	}
	return append(out, f.remote...), nil
}
func (f *meshFake) Identities(context.Context) ([]api.Identity, error) { return nil, nil }
func (f *meshFake) Flows(ctx context.Context, req api.FlowRequest, emit func(api.FlowLine) error) error {
	return f.ring.Stream(ctx, req, emit)
}
func (f *meshFake) NodeHealth(context.Context) (api.NodeHealth, error) { return api.NodeHealth{}, nil }
func (f *meshFake) HealthMatrix(context.Context) (api.HealthMatrix, error) {
	return f.matrix, nil
}
func (f *meshFake) Relay(_ context.Context, cluster, node string) (http.Handler, error) {
	if h, ok := f.peers[node]; ok {
		return h, nil
	}
	return nil, api.ErrNotFound
}

func (f *meshFake) backend() api.Backend {
	return api.Backend{Mesh: f, Flows: f, Health: f, Relay: f}
}

func flowOn(node string, at time.Duration, verdict string) api.Flow {
	return api.Flow{Time: t0.Add(at), Node: node, Cluster: "east", Verdict: verdict, Direction: "ingress", Protocol: "tcp", Type: "drop",
		Reason:      "policy-deny-rule",
		Source:      api.FlowEndpoint{IP: "100.64.1.2", Port: 40000, Identity: 300, Labels: []string{"vm:app=web", "mesh:cluster=east"}, Name: "web", Node: "vm-1"},
		Destination: api.FlowEndpoint{IP: "100.64.2.2", Port: 5432, Identity: 301, Labels: []string{"vm:app=db", "mesh:cluster=east"}, Name: "db", Node: "vm-2"}}
}

// startMesh serves vm-1 on a socket; vm-2 and vm-3 are reached through its
// relay.
func startMesh(t *testing.T) (*meshFake, map[string]*flows.Ring, string) {
	t.Helper()
	old := now
	now = func() time.Time { return t0.Add(time.Hour) }
	t.Cleanup(func() { now = old })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rings := map[string]*flows.Ring{"vm-1": flows.NewRing(16), "vm-2": flows.NewRing(16), "vm-3": flows.NewRing(16)}
	local := &meshFake{self: "vm-1", ring: rings["vm-1"], peers: map[string]http.Handler{}}
	for _, n := range []string{"vm-2", "vm-3"} {
		peer := &meshFake{self: n, ring: rings[n]}
		local.peers[n] = api.NewServer(peer.backend(), log).Handler()
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(local.backend(), log)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return local, rings, path
}

func TestObserveAllNodesMergesByTime(t *testing.T) {
	_, rings, sock := startMesh(t)
	rings["vm-2"].Add(flowOn("vm-2", 3*time.Millisecond, "dropped"))
	rings["vm-1"].Add(flowOn("vm-1", 1*time.Millisecond, "dropped"))
	rings["vm-3"].Add(flowOn("vm-3", 2*time.Millisecond, "dropped"))
	rings["vm-1"].Add(flowOn("vm-1", 4*time.Millisecond, "forwarded"))
	out, _, err := runApp(t, "observe", "--socket", sock, "--all-nodes", "--verdict", "dropped", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var f api.Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		order = append(order, f.Node)
	}
	if strings.Join(order, " ") != "vm-1 vm-3 vm-2" {
		t.Fatalf("merged order %v, want vm-1 vm-3 vm-2 (by time, drops only)", order)
	}

	out, _, err = runApp(t, "observe", "--socket", sock, "--node", "vm-3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"TIME", "SOURCE", "vm-3", "DROPPED", "web 100.64.1.2:40000 (vm:app=web)", "db 100.64.2.2:5432 (vm:app=db)", "policy-deny-rule"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "mesh:cluster") {
		t.Errorf("the cluster label every endpoint carries clutters the table:\n%s", out)
	}
	if _, _, err := runApp(t, "observe", "--socket", sock, "--node", "nope"); err == nil || !strings.Contains(err.Error(), "no such node") {
		t.Fatalf("--node nope: %v", err)
	}
}

func TestObserveFollowStreamsNewFlows(t *testing.T) {
	_, rings, sock := startMesh(t)
	done := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		var out strings.Builder
		_ = Run(ctx, []string{"observe", "--socket", sock, "--follow", "--last", "0", "-o", "json"}, nil, &out, io.Discard)
		done <- out.String()
	}()
	testutil.Eventually(t, 10*time.Second, "observe --follow to subscribe", func() bool { return rings["vm-1"].Subscribers() > 0 })
	rings["vm-1"].Add(flowOn("vm-1", time.Millisecond, "dropped"))
	time.Sleep(100 * time.Millisecond)
	cancel()
	out := <-done
	if !strings.Contains(out, `"node":"vm-1"`) {
		t.Fatalf("followed output lacks the new flow: %q", out)
	}
}

func TestObserveRefusesBadFlags(t *testing.T) {
	_, _, sock := startMesh(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--verdict", "denied"}, "forwarded or dropped"},
		{[]string{"--protocol", "http"}, "--protocol"},
		{[]string{"--from-label", "app"}, "--from-label"},
		{[]string{"--from-ip", "1.2.3"}, "--from-ip"},
		{[]string{"--port", "70000"}, "--port"},
		{[]string{"--last", "-2"}, "--last"},
		{[]string{"--since", "-5m"}, "--since"},
		{[]string{"--node", "vm-2", "--all-nodes"}, "exclude"},
	} {
		_, _, err := runApp(t, append([]string{"observe", "--socket", sock}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want it to mention %q", c.args, err, c.want)
		}
	}
}

func TestStatusAllMatrix(t *testing.T) {
	local, _, sock := startMesh(t)
	local.matrix = api.HealthMatrix{From: "east/vm-1", Down: []string{"east/vm-3"}, Nodes: []api.NodeHealth{
		{Node: "vm-1", Cluster: "east", MeshIP: "100.64.1.1", Probes: []api.Probe{
			{Node: "vm-2", Cluster: "east", State: "up", RTT: api.Duration(1500 * time.Microsecond)},
			{Node: "vm-3", Cluster: "east", State: "down"}}},
		{Node: "vm-2", Cluster: "east", MeshIP: "100.64.2.1", Probes: []api.Probe{
			{Node: "vm-1", Cluster: "east", State: "up", RTT: api.Duration(800 * time.Microsecond)},
			{Node: "vm-3", Cluster: "east", State: "unknown"}}},
		{Node: "vm-3", Cluster: "east", MeshIP: "100.64.3.1", Error: "no answer over the mesh"},
	}}
	out, _, err := runApp(t, "status", "--socket", sock, "--all")
	if err == nil || !strings.Contains(err.Error(), "1 of 3 nodes down: east/vm-3") {
		t.Fatalf("a node down must fail the command: %v", err)
	}
	for _, want := range []string{
		"Mesh health as seen from east/vm-1 (3 nodes, 1 down)",
		"east/vm-3  DOWN   100.64.3.1  no answer over the mesh",
		"FROM \\ TO  VM-1   VM-2   VM-3",
		"vm-1       ·      1.5ms  DOWN",
		"vm-2       800µs  ·      ?",
		"vm-3       n/a    n/a    ·",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status --all lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = runApp(t, "status", "--socket", sock, "--all", "-o", "json")
	var m api.HealthMatrix
	if err := json.Unmarshal([]byte(out), &m); err != nil || len(m.Nodes) != 3 || m.Down[0] != "east/vm-3" {
		t.Fatalf("json: %v %+v", err, m)
	}
}

// A flow between this cluster and a connected one, seen by vm-1: both ends
// name their cluster and node.
func crossClusterFlow(at time.Duration) api.Flow {
	return api.Flow{Time: t0.Add(at), Node: "vm-1", Cluster: "east", Verdict: "forwarded", Direction: "ingress", Protocol: "tcp", Type: "new-connection",
		Source:      api.FlowEndpoint{IP: "100.65.1.2", Port: 40000, Identity: 2<<16 | 300, Labels: []string{"vm:app=api", "mesh:cluster=west"}, Name: "api", Node: "w1", Cluster: "west"},
		Destination: api.FlowEndpoint{IP: "100.64.2.2", Port: 5432, Identity: 301, Labels: []string{"vm:app=db", "mesh:cluster=east"}, Name: "db", Node: "vm-1", Cluster: "east"}}
}

func TestObserveClusterFilterNamesClusterAndNodeOfBothEnds(t *testing.T) {
	_, rings, sock := startMesh(t)
	rings["vm-1"].Add(flowOn("vm-1", time.Millisecond, "dropped"))
	rings["vm-1"].Add(crossClusterFlow(2 * time.Millisecond))
	// Only the identity's label names the source's cluster here.
	byLabel := crossClusterFlow(3 * time.Millisecond)
	byLabel.Source.Node, byLabel.Source.Cluster, byLabel.Source.Name = "", "", ""
	rings["vm-1"].Add(byLabel)

	out, _, err := runApp(t, "observe", "--socket", sock, "--cluster", "west", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []api.Flow
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var f api.Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, f)
	}
	if len(got) != 2 {
		t.Fatalf("--cluster west printed %d flows, want the 2 to or from west:\n%s", len(got), out)
	}
	if s, d := got[0].Source, got[0].Destination; s.Cluster != "west" || s.Node != "w1" || d.Cluster != "east" || d.Node != "vm-1" {
		t.Fatalf("json ends %+v -> %+v, want west/w1 -> east/vm-1", s, d)
	}
	for _, field := range []string{`"cluster":"west"`, `"node":"w1"`, `"name":"api"`} {
		if !strings.Contains(out, field) {
			t.Errorf("json lacks %s:\n%s", field, out)
		}
	}

	out, _, err = runApp(t, "observe", "--socket", sock, "--cluster", "west")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"east/vm-1", "west/w1 api 100.65.1.2:40000 (vm:app=api)", "east/vm-1 db 100.64.2.2:5432 (vm:app=db)", "100.65.1.2:40000 (vm:app=api)"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "web") {
		t.Errorf("a flow inside east passed --cluster west:\n%s", out)
	}
	if _, _, err := runApp(t, "observe", "--socket", sock, "--cluster", "West"); err == nil || !strings.Contains(err.Error(), "--cluster") || !strings.Contains(err.Error(), "cluster name") {
		t.Fatalf("--cluster West: %v, want the cluster name rule", err)
	}
}

// The nodes of a connected cluster are listed by the agent but cannot be
// relayed to: --all-nodes leaves them out and says so, --node refuses one
// with what to do instead.
func TestObserveLeavesConnectedClustersOut(t *testing.T) {
	local, rings, sock := startMesh(t)
	local.remote = []api.Node{{Name: "w1", Cluster: "west", Remote: true}, {Name: "w2", Cluster: "west", Remote: true}}
	rings["vm-2"].Add(flowOn("vm-2", time.Millisecond, "dropped"))
	out, errOut, err := runApp(t, "observe", "--socket", sock, "--all-nodes", "-o", "json")
	if err != nil {
		t.Fatalf("--all-nodes with a connected cluster: %v (%s)", err, errOut)
	}
	if !strings.Contains(out, `"node":"vm-2"`) {
		t.Errorf("this cluster's flows are missing:\n%s", out)
	}
	if !strings.Contains(errOut, "connected clusters not queried") || !strings.Contains(errOut, "west (2 nodes)") {
		t.Errorf("stderr does not say the connected cluster was left out: %q", errOut)
	}
	_, _, err = runApp(t, "observe", "--socket", sock, "--node", "west/w1")
	if err == nil || !strings.Contains(err.Error(), "connected cluster west") || !strings.Contains(err.Error(), "--cluster west") {
		t.Fatalf("--node west/w1: %v", err)
	}
}

func TestStatusAllListsConnectedClustersNotQueried(t *testing.T) {
	local, _, sock := startMesh(t)
	local.matrix = api.HealthMatrix{From: "east/vm-1", Down: []string{}, Nodes: []api.NodeHealth{
		{Node: "vm-1", Cluster: "east", MeshIP: "100.64.1.1", Probes: []api.Probe{
			{Node: "vm-2", Cluster: "east", State: "up", RTT: api.Duration(900 * time.Microsecond)}}},
		{Node: "vm-2", Cluster: "east", MeshIP: "100.64.2.1", Probes: []api.Probe{
			{Node: "vm-1", Cluster: "east", State: "up", RTT: api.Duration(800 * time.Microsecond)}}},
		{Node: "w1", Cluster: "west", MeshIP: "100.65.0.1", Probes: []api.Probe{}, Remote: true},
	}}
	out, _, err := runApp(t, "status", "--socket", sock, "--all")
	if err != nil {
		t.Fatalf("a connected cluster not queried must not fail the command: %v\n%s", err, out)
	}
	for _, want := range []string{
		"Mesh health as seen from east/vm-1 (2 nodes, 0 down; 1 of connected clusters, not queried)",
		"west/w1    not queried  100.65.0.1  remote cluster: not queried (run `meshctl status --all` on a node of west)",
		"- not probed: remote cluster",
		"east/vm-1  ·          900µs      -",
		"west/w1    -          -          ·",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status --all lacks %q:\n%s", want, out)
		}
	}
	local.matrix.Down = []string{"east/vm-2"}
	if _, _, err := runApp(t, "status", "--socket", sock, "--all"); err == nil || !strings.Contains(err.Error(), "1 of 2 nodes down") {
		t.Fatalf("a node down: %v, want it counted among this cluster's 2 nodes", err)
	}
}
