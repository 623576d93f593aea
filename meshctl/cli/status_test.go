package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// healthAgent is an agent whose health a test changes, and whose ping
// answers are canned.
type healthAgent struct {
	mu     sync.Mutex
	health api.Health
	calls  int
	// after, when set, replaces health once Health was read this often.
	after     int
	healthier api.Health
}

func (h *healthAgent) Status(context.Context) (api.Status, error) {
	return api.Status{Node: "c", Cluster: "lab", MeshIP: "100.64.3.1", AgentVersion: "v1", StartedAt: t0.Add(-time.Minute),
		Tunnel:   api.TunnelStatus{Interface: "weft0", Kind: "userspace", ListenPort: 51833, PublicKey: "pkc=", Up: true},
		Datapath: api.DatapathStatus{Attached: true, Programs: 2},
		Etcd:     api.EtcdStatus{Endpoints: []string{"https://198.18.0.2:2379"}, Reachable: true},
		Peers: []api.Peer{
			{Node: "a", Cluster: "lab", Endpoint: "198.18.0.2:51833", AllowedIPs: []string{"100.64.1.0/24"}},
			{Node: "b", Cluster: "lab", Endpoint: "198.18.0.3:51833", AllowedIPs: []string{"100.64.2.0/24"}},
		}}, nil
}

func (h *healthAgent) Health(context.Context) (api.Health, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.after > 0 && h.calls >= h.after {
		return h.healthier, nil
	}
	return h.health, nil
}

func serveHealth(t *testing.T, h *healthAgent, p api.Pinger) string {
	t.Helper()
	old := now
	now = func() time.Time { return t0 }
	t.Cleanup(func() { now = old })
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{Status: h, Pinger: p}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return path
}

var (
	cutOff = api.Health{OK: false, Checks: []api.HealthCheck{{Name: "tunnel", OK: true}, {Name: "peers", OK: false,
		Message: "2 of 2 peers unreachable: a: no handshake since it was added 40s ago; b: no handshake since it was added 40s ago"}},
		Peers: []api.PeerHealth{
			{Node: "a", Cluster: "lab", State: "never", Endpoint: "198.18.0.2:51833", Message: "no handshake since it was added 40s ago"},
			{Node: "b", Cluster: "lab", State: "never", Endpoint: "198.18.0.3:51833", Message: "no handshake since it was added 40s ago"},
		}}
	joining = api.Health{OK: true, Checks: []api.HealthCheck{{Name: "peers", OK: true, Message: "waiting for a first handshake with a, b"}},
		Peers: []api.PeerHealth{
			{Node: "a", Cluster: "lab", State: "waiting", Message: "no handshake yet (added 2s ago)"},
			{Node: "b", Cluster: "lab", State: "waiting", Message: "no handshake yet (added 2s ago)"},
		}}
	reached = api.Health{OK: true, Checks: []api.HealthCheck{{Name: "peers", OK: true, Message: "2 of 2 peers handshook"}},
		Peers: []api.PeerHealth{{Node: "a", Cluster: "lab", State: "ok"}, {Node: "b", Cluster: "lab", State: "ok"}}}
)

// The defect: a node that reached none of its peers said "Health: ok" and
// exited 0. Now it names them and fails.
func TestStatusNamesUnreachablePeersAndFails(t *testing.T) {
	sock := serveHealth(t, &healthAgent{health: cutOff}, nil)
	out, _, err := runApp(t, "status", "--socket", sock)
	if err == nil || !strings.Contains(err.Error(), "the node is not healthy: peers: 2 of 2 peers unreachable: a: no handshake since it was added 40s ago; b:") {
		t.Errorf("status of a cut-off node: %v", err)
	}
	for _, want := range []string{
		"Health:       FAILING: peers: 2 of 2 peers unreachable: a: no handshake since it was added 40s ago; b: no handshake since it was added 40s ago",
		"NODE  CLUSTER  PATH              CHANGED  ALLOWED IPS    HANDSHAKE  STATE  RX  TX",
		"a     lab      198.18.0.2:51833  -        100.64.1.0/24  never      never  0B  0B",
		"Unreachable peers (2 of 2):",
		"  a: no handshake since it was added 40s ago, endpoint 198.18.0.2:51833",
		"  b: no handshake since it was added 40s ago, endpoint 198.18.0.3:51833",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runApp(t, "status", "--socket", sock, "-o", "json")
	var v statusView
	if err == nil || json.Unmarshal([]byte(out), &v) != nil || v.Health.OK || len(v.Health.Peers) != 2 || v.Health.Peers[0].State != "never" {
		t.Errorf("status -o json of a cut-off node: %v\n%s", err, out)
	}
}

func TestStatusOfJoiningAndLoneNodes(t *testing.T) {
	sock := serveHealth(t, &healthAgent{health: joining}, nil)
	out, _, err := runApp(t, "status", "--socket", sock)
	if err != nil || !strings.Contains(out, "Health:       ok (waiting for a first handshake with a, b)\n") {
		t.Errorf("status of a node whose peers were just added: %v\n%s", err, out)
	}
	lone := api.Health{OK: true, Checks: []api.HealthCheck{{Name: "peers", OK: true, Message: "no peers yet"}}, Peers: []api.PeerHealth{}}
	sock = serveHealth(t, &healthAgent{health: lone}, nil)
	if out, _, err := runApp(t, "status", "--socket", sock); err != nil || !strings.Contains(out, "Health:       ok (no peers yet)\n") {
		t.Errorf("status of a new single-node mesh: %v\n%s", err, out)
	}
}

func TestStatusWait(t *testing.T) {
	// Healthy once the peers handshook: exit 0, progress on stderr.
	h := &healthAgent{health: joining, after: 3, healthier: reached}
	sock := serveHealth(t, h, nil)
	out, errOut, err := runApp(t, "status", "--socket", sock, "--wait=30s")
	if err != nil || !strings.Contains(out, "Health:       ok (2 of 2 peers handshook)") {
		t.Errorf("status --wait: %v\n%s", err, out)
	}
	if !strings.Contains(errOut, "meshctl: waiting for the node to be healthy (0s of 30s): peers: a: no handshake yet (added 2s ago); b: no handshake yet") ||
		!strings.Contains(errOut, "meshctl: healthy after") {
		t.Errorf("status --wait progress:\n%s", errOut)
	}
	// --wait 30s with a space is the same as --wait=30s.
	sock = serveHealth(t, &healthAgent{health: joining, after: 2, healthier: reached}, nil)
	if out, errOut, err := runApp(t, "status", "--wait", "30s", "--socket", sock); err != nil || !strings.Contains(errOut, "(0s of 30s)") {
		t.Errorf("status --wait 30s: %v\n%s%s", err, out, errOut)
	}
	// A bare --wait (no value) waits the default bound; healthy at once.
	sock = serveHealth(t, &healthAgent{health: reached}, nil)
	if _, errOut, err := runApp(t, "status", "--wait", "--socket", sock); err != nil || errOut != "" {
		t.Errorf("status --wait on a healthy node: %v\n%s", err, errOut)
	}
	// Never healthy: non-zero at the timeout, with the reason.
	sock = serveHealth(t, &healthAgent{health: cutOff}, nil)
	out, _, err = runApp(t, "status", "--socket", sock, "--wait=1s")
	if err == nil || !strings.Contains(err.Error(), "the node is not healthy after 1s: peers: 2 of 2 peers unreachable: a: no handshake since it was added 40s ago") {
		t.Errorf("status --wait=1s of a cut-off node: %v", err)
	}
	if !strings.Contains(out, "Unreachable peers (2 of 2):") {
		t.Errorf("status --wait prints the status it gave up on:\n%s", out)
	}
	// No agent yet: it waits for one, and says so.
	_, errOut, err = runApp(t, "status", "--socket", filepath.Join(t.TempDir(), "none.sock"), "--wait=1s")
	if err == nil || !strings.Contains(err.Error(), "the agent does not answer yet") || !strings.Contains(errOut, "the agent does not answer yet") {
		t.Errorf("status --wait without an agent: %v\n%s", err, errOut)
	}
}

func TestWaitValue(t *testing.T) {
	var w waitValue
	for in, want := range map[string]time.Duration{"true": defaultStatusWait, "45s": 45 * time.Second, "false": 0, "2m": 2 * time.Minute} {
		if err := w.Set(in); err != nil || w.d != want {
			t.Errorf("Set(%q): %v, %v; want %v", in, err, w.d, want)
		}
	}
	for _, bad := range []string{"", "soon", "-5s", "0s"} {
		if err := w.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	if !w.IsBoolFlag() {
		t.Error("--wait must work without a value")
	}
}

// TestJoinWaitValueOnlyForStatus: other commands' --wait is left as
// written: in `policy apply --wait 5s` the switch does not swallow the word.
func TestJoinWaitValueOnlyForStatus(t *testing.T) {
	// policy apply's --wait is a switch: joined, "5s" would be its value.
	_, errOut, err := runApp(t, "policy", "apply", "--wait", "5s", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || strings.Contains(errOut+err.Error(), `--wait "5s"`) {
		t.Fatalf("policy apply --wait 5s was rewritten: %v %s", err, errOut)
	}
	if got := joinWaitValue([]string{"status", "--wait", "5s", "--", "--wait", "1s"}); strings.Join(got, " ") != "status --wait=5s -- --wait 1s" {
		t.Fatalf("joinWaitValue = %q", got)
	}
}
