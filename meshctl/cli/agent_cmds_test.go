package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

// fakeAgent is the agent behind the socket: canned answers, and a record
// of what meshctl sent.
type fakeAgent struct {
	mu       sync.Mutex
	healthy  bool
	added    []api.EndpointSpec
	applied  []api.ApplyPolicyRequest
	traced   []api.TraceRequest
	tokenReq []api.TokenRequest
	revoked  []string
	left     bool
}

func (f *fakeAgent) Status(context.Context) (api.Status, error) {
	return api.Status{
		Node: "vm-1", Cluster: "east", MeshIP: "100.64.1.1", CIDRs: []string{"100.64.1.0/24"}, AgentVersion: "v0.1.0",
		StartedAt: t0.Add(-5 * time.Minute),
		Tunnel:    api.TunnelStatus{Interface: "weft0", Kind: "userspace", ListenPort: 51833, PublicKey: "pk1=", Up: true},
		Datapath:  api.DatapathStatus{Attached: true, Programs: 4, PinPath: "/sys/fs/bpf/weft"},
		Etcd:      api.EtcdStatus{Endpoints: []string{"https://198.18.1.10:2379"}, Reachable: true},
		Peers: []api.Peer{
			{Node: "seed", Cluster: "east", Endpoint: "198.18.1.10:51833", AllowedIPs: []string{"100.64.0.0/24"}, LastHandshake: t0.Add(-12 * time.Second), RxBytes: 2048, TxBytes: 100},
			{Node: "vm-2", Cluster: "east", AllowedIPs: []string{"100.64.2.0/24"}, Endpoint: "127.0.0.1:40001", Path: "relay via east/r1", PathSince: t0.Add(-5 * time.Second)},
		},
	}, nil
}

func (f *fakeAgent) Health(context.Context) (api.Health, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.healthy {
		return api.Health{OK: true, Checks: []api.HealthCheck{{Name: "etcd", OK: true}}}, nil
	}
	return api.Health{OK: false, Checks: []api.HealthCheck{{Name: "datapath", OK: false, Message: "not attached"}}}, nil
}

func (f *fakeAgent) Peers(ctx context.Context) ([]api.Peer, error) { return nil, nil }
func (f *fakeAgent) Nodes(context.Context) ([]api.Node, error) {
	return []api.Node{
		{Name: "vm-1", Cluster: "east", MeshIP: "100.64.1.1", CIDRs: []string{"100.64.1.0/24"}, Labels: map[string]string{"vm:app": "web"}, Self: true},
		{Name: "seed", Cluster: "east", Endpoints: []string{"198.18.1.10:51833"}},
	}, nil
}
func (f *fakeAgent) Identities(context.Context) ([]api.Identity, error) {
	return []api.Identity{{ID: 300, Labels: []string{"vm:app=web"}, Endpoints: 2}, {ID: 1, Labels: []string{"reserved:host"}, Reserved: true}}, nil
}
func (f *fakeAgent) Endpoints(context.Context) ([]api.Endpoint, error) {
	return []api.Endpoint{
		{Name: "web-1", Node: "vm-1", Cluster: "east", IP: "100.64.1.2", Identity: 300, Labels: []string{"vm:app=web"}, Local: true, IngressEnforced: true},
		{Name: "db-1", Node: "vm-2", Cluster: "east", IP: "100.64.2.2", Identity: 301, Labels: []string{"vm:app=db"}},
	}, nil
}
func (f *fakeAgent) AddEndpoint(_ context.Context, s api.EndpointSpec) (api.Endpoint, error) {
	f.mu.Lock()
	f.added = append(f.added, s)
	f.mu.Unlock()
	return api.Endpoint{Name: s.Netns, IP: "100.64.1.3", Identity: 302, Labels: []string{"vm:app=web"}}, nil
}
func (f *fakeAgent) RemoveEndpoint(_ context.Context, name string) error {
	if name != "web-1" {
		return fmt.Errorf("%w: no local endpoint %q", api.ErrNotFound, name)
	}
	return nil
}
func (f *fakeAgent) Policies(context.Context) ([]api.PolicyState, error) {
	return []api.PolicyState{{Name: "db", Revision: 7, SelectedEndpoints: []string{"db-1"}, Entries: 3}}, nil
}
func (f *fakeAgent) GetPolicy(_ context.Context, name string) (api.Policy, error) {
	return api.Policy{Name: name, Revision: 7, Document: "kind: Policy\nmetadata: {name: db}"}, nil
}
func (f *fakeAgent) ApplyPolicy(_ context.Context, r api.ApplyPolicyRequest) (api.ApplyPolicyResult, error) {
	f.mu.Lock()
	f.applied = append(f.applied, r)
	f.mu.Unlock()
	if strings.Contains(r.Document, "name: refused") {
		return api.ApplyPolicyResult{}, fmt.Errorf("%w: %s:4: the agent refuses this one", api.ErrInvalid, r.Filename)
	}
	return api.ApplyPolicyResult{Policies: []api.AppliedPolicy{{Name: "db", Action: "created", Revision: 8}}}, nil
}
func (f *fakeAgent) DeletePolicy(context.Context, string) error { return nil }
func (f *fakeAgent) TracePolicy(_ context.Context, r api.TraceRequest) (api.TraceResult, error) {
	f.mu.Lock()
	f.traced = append(f.traced, r)
	f.mu.Unlock()
	return api.TraceResult{Verdict: "allow",
		Egress:  api.TraceStep{Verdict: "allow", Reason: "no policy selects the source for egress"},
		Ingress: api.TraceStep{Verdict: "allow", Enforced: true, Reason: "allowed by rule ingress[0]", Policies: []string{"db"}}}, nil
}
func (f *fakeAgent) CreateToken(_ context.Context, r api.TokenRequest) (api.CreatedToken, error) {
	f.mu.Lock()
	f.tokenReq = append(f.tokenReq, r)
	f.mu.Unlock()
	cluster := r.Cluster
	if cluster == "" {
		cluster = "east"
	}
	ct := api.CreatedToken{Token: api.Token{ID: "t0123", Cluster: cluster, Labels: r.Labels, MaxUses: r.MaxUses, CreatedAt: t0, ExpiresAt: t0.Add(time.Duration(r.TTL))}, JoinToken: "weft1.TESTTOKEN",
		ClusterID: 1, MeshPool: "100.64.0.0/16"}
	// As the agent does: a cluster other than its own is new, with the
	// id and pool asked for or the next free ones.
	if cluster != "east" {
		ct.ClusterID, ct.MeshPool, ct.ClusterCreated = 2, "100.65.0.0/16", true
		if r.ClusterID != 0 {
			ct.ClusterID = r.ClusterID
		}
		if r.MeshPool != "" {
			ct.MeshPool = r.MeshPool
		}
	}
	return ct, nil
}
func (f *fakeAgent) Tokens(context.Context) ([]api.Token, error) {
	return []api.Token{
		{ID: "tb", Cluster: "east", CreatedAt: t0.Add(-time.Hour), ExpiresAt: t0.Add(30 * time.Minute), MaxUses: 5, Uses: 2, Labels: map[string]string{"app": "db"}},
		{ID: "ta", Cluster: "east", CreatedAt: t0.Add(-2 * time.Hour), ExpiresAt: t0.Add(-time.Minute), MaxUses: 1},
		{ID: "tc", Cluster: "east", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxUses: 1, Revoked: true},
		{ID: "td", Cluster: "east", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxUses: 1, Uses: 1},
	}, nil
}
func (f *fakeAgent) RevokeToken(_ context.Context, id string) error {
	f.revoked = append(f.revoked, id)
	return nil
}
func (f *fakeAgent) Leave(context.Context) error {
	f.left = true
	return nil
}

// serveFake serves f on a socket at path and stops it at the end of the
// test.
func serveFake(t *testing.T, f *fakeAgent, path string) {
	t.Helper()
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{Status: f, Mesh: f, Endpoints: f, Policies: f, Tokens: f, Leaver: f}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
}

func startFake(t *testing.T) (*fakeAgent, string) {
	t.Helper()
	old := now
	now = func() time.Time { return t0 }
	t.Cleanup(func() { now = old })
	f := &fakeAgent{healthy: true}
	path := filepath.Join(t.TempDir(), "agent.sock")
	serveFake(t, f, path)
	return f, path
}

func TestStatus(t *testing.T) {
	f, sock := startFake(t)
	out, _, err := runApp(t, "status", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Node:         vm-1 (cluster east)",
		"Mesh address: 100.64.1.1 (CIDRs 100.64.1.0/24)",
		"Agent:        v0.1.0, up 5m00s",
		"Tunnel:       weft0, userspace, UDP 51833, key pk1=",
		"Datapath:     attached (4 programs, maps in /sys/fs/bpf/weft)",
		"Etcd:         reachable (https://198.18.1.10:2379)",
		"Health:       ok",
		"Peers (2):",
		"NODE  CLUSTER  PATH               CHANGED  ALLOWED IPS    HANDSHAKE  STATE  RX      TX",
		"seed  east     198.18.1.10:51833  -        100.64.0.0/24  12s ago    -      2.0KiB  100B",
		"vm-2  east     relay via east/r1  5s ago   100.64.2.0/24  never      -      0B      0B",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	out, _, err = runApp(t, "status", "--socket", sock, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Node   string `json:"node"`
		Tunnel struct{ Kind string }
		Peers  []struct{ Node string }
		Health struct{ OK bool }
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Node != "vm-1" || v.Tunnel.Kind != "userspace" || len(v.Peers) != 2 || !v.Health.OK {
		t.Errorf("json: %v %+v\n%s", err, v, out)
	}

	f.healthy = false
	out, _, err = runApp(t, "status", "--socket", sock)
	if err == nil || !strings.Contains(out, "Health:       FAILING: datapath: not attached") {
		t.Errorf("a failing health check must show and fail the command: %v\n%s", err, out)
	}
}

func TestListCommands(t *testing.T) {
	_, sock := startFake(t)
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"nodes"}, []string{
			"NAME  CLUSTER  MESH IP  CIDRS  ENDPOINTS  LABELS  VERSION",
			"seed  east     -        -      198.18.1.10:51833  -  -",
			"vm-1 *  east",
		}},
		{[]string{"identities"}, []string{"1 (reserved)  reserved:host", "300           vm:app=web     2"}},
		{[]string{"endpoints"}, []string{"NAME     NODE       IP          IDENTITY  LABELS      POLICY", "web-1 *  east/vm-1  100.64.1.2  300       vm:app=web  ingress", "db-1     east/vm-2  100.64.2.2  301       vm:app=db   -"}},
		{[]string{"endpoint", "list", "--local"}, []string{"web-1 *"}},
		{[]string{"policy", "list"}, []string{"db    7         db-1          3"}},
		{[]string{"policy", "get", "db"}, []string{"kind: Policy\nmetadata: {name: db}\n"}},
		{[]string{"token", "list"}, []string{
			"ta  east     -       0/1   ",
			"expired",
			"tb  east     app=db  2/5   ",
			"(in 30m00s)  active",
			"revoked", "used up",
		}},
	}
	for _, tc := range cases {
		out, _, err := runApp(t, append(tc.args, "--socket", sock)...)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(w), " ")) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
	// -o json gives the API's objects.
	out, _, err := runApp(t, "endpoints", "--socket", sock, "-o", "json")
	var eps []api.Endpoint
	if err != nil || json.Unmarshal([]byte(out), &eps) != nil || len(eps) != 2 || eps[0].Name != "web-1" {
		t.Errorf("endpoints -o json: %v\n%s", err, out)
	}
	if _, _, err := runApp(t, "nodes", "--socket", sock, "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "--output \"yaml\"") {
		t.Errorf("bad -o: %v", err)
	}
}

func TestEndpointCommands(t *testing.T) {
	f, sock := startFake(t)
	out, _, err := runApp(t, "endpoint", "add", "--socket", sock, "--netns", "web-2", "--labels", "app=web,vm:tier=front")
	if err != nil {
		t.Fatal(err)
	}
	if out != "endpoint web-2: 100.64.1.3, identity 302 (vm:app=web)\n" {
		t.Errorf("add output: %q", out)
	}
	if len(f.added) != 1 || f.added[0].Netns != "web-2" || f.added[0].Labels["vm:tier"] != "front" || f.added[0].Labels["app"] != "web" {
		t.Errorf("sent %+v", f.added)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"endpoint", "add", "--netns", "a/b"}, "--netns"},
		{[]string{"endpoint", "add", "--netns", "x", "--labels", "app"}, "--labels: label \"app\" is not key=value"},
		{[]string{"endpoint", "add", "--netns", "x", "--labels", "mesh:kind=vm"}, "reserved"},
		{[]string{"endpoint", "add"}, "meshctl endpoint add: missing the flag --netns"},
		{[]string{"endpoint", "remove", "nope"}, `removing endpoint nope: no local endpoint "nope"`},
		{[]string{"endpoint", "remove"}, "endpoint remove needs the name"},
	} {
		_, _, err := runApp(t, append(tc.args, "--socket", sock)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
	if len(f.added) != 1 {
		t.Errorf("invalid input reached the agent: %+v", f.added)
	}
	// A flag after the positional argument works too.
	if out, _, err := runApp(t, "endpoint", "remove", "web-1", "--socket", sock); err != nil || out != "endpoint web-1 removed\n" {
		t.Errorf("remove: %v %q", err, out)
	}
}

func TestPolicyCommands(t *testing.T) {
	f, sock := startFake(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "db.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	refused := filepath.Join(dir, "refused.yaml")
	const doc = "apiVersion: weft.dev/v1\nkind: Policy\nmetadata:\n  name: db\nspec:\n  endpointSelector: {}\n  ingress:\n  - ports:\n    - port: 5432\n"
	os.WriteFile(good, []byte(doc), 0o644)
	os.WriteFile(bad, []byte(strings.Replace(doc, "5432", "70000", 1)), 0o644)
	os.WriteFile(refused, []byte(strings.Replace(doc, "name: db", "name: refused", 1)), 0o644)
	out, _, err := runApp(t, "policy", "apply", "--socket", sock, "-f", good)
	if err != nil || out != "policy db created (revision 8)\n" {
		t.Errorf("apply: %v %q", err, out)
	}
	if f.applied[0].Filename != good || f.applied[0].Document != doc {
		t.Errorf("sent %+v", f.applied[0])
	}
	// An invalid file is refused with file, line and reason before the
	// agent hears of it.
	_, _, err = runApp(t, "policy", "apply", "--socket", sock, "-f", bad)
	if err == nil || !strings.HasPrefix(err.Error(), "policy not applied, nothing changed: "+bad+":9:") || !strings.Contains(err.Error(), "port 70000 is out of range") {
		t.Errorf("invalid policy: %v", err)
	}
	if len(f.applied) != 1 {
		t.Errorf("an invalid policy reached the agent: %+v", f.applied[1:])
	}
	// What the agent refuses is passed on as it said it.
	_, _, err = runApp(t, "policy", "apply", "--socket", sock, "-f", refused)
	if err == nil || err.Error() != "policy not applied, nothing changed: "+refused+":4: the agent refuses this one" {
		t.Errorf("refused policy: %v", err)
	}
	_, _, err = runApp(t, "policy", "apply", "--socket", sock, "-f", filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "reading the policy file") {
		t.Errorf("missing file: %v", err)
	}

	out, _, err = runApp(t, "policy", "trace", "--socket", sock, "--from", "app=web", "--to", "app=db", "--port", "5432/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := "app=web -> app=db on 5432/TCP: ALLOW\n" +
		"  egress:  allow (not enforced) no policy selects the source for egress\n" +
		"  ingress: allow (enforced) allowed by rule ingress[0] [policies: db]\n"
	if out != want {
		t.Errorf("trace output:\n%s\nwant:\n%s", out, want)
	}
	if r := f.traced[0]; r.Port != 5432 || r.Protocol != "TCP" || r.From["app"] != "web" || r.To["app"] != "db" {
		t.Errorf("sent %+v", r)
	}
	if _, _, err := runApp(t, "policy", "trace", "--socket", sock, "--from", "app=web", "--to", "app=db", "--port", "5432/xtp"); err == nil || !strings.Contains(err.Error(), `unknown protocol "XTP"`) {
		t.Errorf("bad port: %v", err)
	}
}

func TestParsePortProto(t *testing.T) {
	good := map[string]string{"5432/tcp": "5432 TCP", "53/UDP": "53 UDP", "80": "80 TCP", "icmp": "0 ICMP", "any": "0 ANY", "9/sctp": "9 SCTP"}
	for in, want := range good {
		p, proto, err := parsePortProto(in)
		if err != nil || fmt.Sprint(p, " ", proto) != want {
			t.Errorf("%q: %d %s %v, want %s", in, p, proto, err, want)
		}
	}
	for _, in := range []string{"", "0/tcp", "65536/tcp", "x/tcp", "5432/icmp", "-1", "5432/"} {
		if _, _, err := parsePortProto(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestTokenCommands(t *testing.T) {
	f, sock := startFake(t)
	out, _, err := runApp(t, "token", "create", "--socket", sock, "--labels", "app=db", "--ttl", "30m")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Join token t0123 (cluster east, labels app=db, single use, expires ", "\n  weft1.TESTTOKEN\n", "meshctl join weft1.TESTTOKEN --name NODE-NAME\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("token create output lacks %q:\n%s", want, out)
		}
	}
	if r := f.tokenReq[0]; r.MaxUses != 1 || time.Duration(r.TTL) != 30*time.Minute || r.Labels["app"] != "db" || r.Cluster != "" {
		t.Errorf("sent %+v", r)
	}
	if !regexp.MustCompile(`\nCLUSTER +ID +MESH POOL +STATE\neast +1 +100\.64\.0\.0/16 +existing\n`).MatchString(out) {
		t.Errorf("token create output lacks the cluster's id and pool:\n%s", out)
	}
	out, _, err = runApp(t, "token", "create", "--socket", sock, "--cluster", "west", "--reusable", "--max-uses", "20", "-o", "json")
	var ct api.CreatedToken
	if err != nil || json.Unmarshal([]byte(out), &ct) != nil || ct.JoinToken != "weft1.TESTTOKEN" || ct.MaxUses != 20 || ct.Cluster != "west" ||
		ct.ClusterID != 2 || ct.MeshPool != "100.65.0.0/16" || !ct.ClusterCreated {
		t.Errorf("json: %v %s", err, out)
	}
	for _, key := range []string{`"clusterID": 2`, `"meshPool": "100.65.0.0/16"`, `"clusterCreated": true`} {
		if !strings.Contains(out, key) {
			t.Errorf("json output lacks %s:\n%s", key, out)
		}
	}
	// A new cluster with the id and pool asked for.
	out, _, err = runApp(t, "token", "create", "--socket", sock, "--cluster", "lab", "--cluster-id", "4095", "--mesh-pool", "100.127.0.0/20")
	if err != nil {
		t.Fatal(err)
	}
	if r := f.tokenReq[2]; r.Cluster != "lab" || r.ClusterID != 4095 || r.MeshPool != "100.127.0.0/20" {
		t.Errorf("sent %+v", r)
	}
	if !regexp.MustCompile(`\nlab +4095 +100\.127\.0\.0/20 +new \(created for this token\)\n`).MatchString(out) {
		t.Errorf("token create --cluster lab output lacks the new cluster:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--reusable"}, "--reusable needs --max-uses N"},
		{[]string{"--max-uses", "3"}, "--max-uses needs --reusable"},
		{[]string{"--reusable", "--max-uses", "0"}, "--max-uses 0 is out of range"},
		{[]string{"--ttl", "10s"}, "--ttl 10s is out of range"},
		{[]string{"--ttl", "1000h"}, "--ttl 1000h0m0s is out of range"},
		{[]string{"--cluster", "West"}, "--cluster"},
		{[]string{"--labels", "a=b,a=c"}, "given twice"},
		{[]string{"extra"}, "takes no arguments"},
		{[]string{"--pod-cidrs", "100.96.0.1/16"}, "--pod-cidrs: \"100.96.0.1/16\" is not a CIDR in canonical form"},
		{[]string{"--pod-cidrs", "100.96.0.0/16,nope"}, "--pod-cidrs: \"nope\""},
		{[]string{"--cluster", "west", "--cluster-id", "0"}, "--cluster-id 0 is out of range: use 1..4095"},
		{[]string{"--cluster", "west", "--cluster-id", "4096"}, "--cluster-id 4096 is out of range"},
		{[]string{"--cluster", "west", "--mesh-pool", "10.0.0.0/16"}, "--mesh-pool: \"10.0.0.0/16\" is not a CIDR in canonical form inside 100.64.0.0/10"},
		{[]string{"--cluster", "west", "--mesh-pool", "100.65.0.1/16"}, "--mesh-pool: \"100.65.0.1/16\""},
		{[]string{"--cluster", "west", "--mesh-pool", "100.0.0.0/8"}, "--mesh-pool: \"100.0.0.0/8\""},
		{[]string{"--cluster", "west", "--mesh-pool", "nope"}, "--mesh-pool: \"nope\""},
	} {
		_, _, err := runApp(t, append([]string{"token", "create", "--socket", sock}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
	if len(f.tokenReq) != 3 {
		t.Errorf("invalid requests reached the agent: %d", len(f.tokenReq))
	}
	// A Kubernetes token: the ranges go to the agent.
	out, _, err = runApp(t, "token", "create", "--socket", sock, "--pod-cidrs", "100.96.0.0/16", "--reusable", "--max-uses", "5")
	if err != nil || len(f.tokenReq) != 4 || len(f.tokenReq[3].PodCIDRs) != 1 || f.tokenReq[3].PodCIDRs[0] != "100.96.0.0/16" {
		t.Fatalf("pod-cidrs token: %v, sent %+v", err, f.tokenReq)
	}
	if !strings.Contains(out, "weft1.TESTTOKEN") {
		t.Errorf("pod-cidrs token output lacks the token:\n%s", out)
	}
	if out, _, err := runApp(t, "token", "revoke", "tb", "--socket", sock); err != nil || !strings.Contains(out, "token tb revoked") || f.revoked[0] != "tb" {
		t.Errorf("revoke: %v %q", err, out)
	}
}

func TestAgentNotRunningMessage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	for _, args := range [][]string{{"status"}, {"nodes"}, {"policy", "list"}, {"token", "list"}} {
		_, _, err := runApp(t, append(args, "--socket", sock)...)
		if !errors.Is(err, api.ErrAgentNotRunning) || !strings.Contains(err.Error(), "meshctl up") || !strings.Contains(err.Error(), sock) {
			t.Errorf("%v: %v", args, err)
		}
	}
	t.Setenv("WEFT_SOCKET", sock)
	if _, _, err := runApp(t, "status"); err == nil || !strings.Contains(err.Error(), sock) {
		t.Errorf("WEFT_SOCKET not used: %v", err)
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, cmd := range commands() {
		if cmd.Name == "lab" || cmd.Name == "help" {
			continue
		}
		check := func(full string, usage, usageText string) {
			if usage == "" || usageText == "" {
				t.Errorf("%s: missing Usage or UsageText", full)
			}
		}
		check(cmd.Name, cmd.Usage, cmd.UsageText)
		for _, sub := range cmd.Subcommands {
			if sub.Name == "help" {
				continue
			}
			check(cmd.Name+" "+sub.Name, sub.Usage, sub.UsageText)
		}
		out, _, err := runApp(t, cmd.Name, "--help")
		if err != nil || !strings.Contains(out, cmd.Usage) {
			t.Errorf("%s --help: %v\n%s", cmd.Name, err, out)
		}
	}
	_ = config.DefaultSocketPath
}

// A bad -o is named before the agent is asked anything: no agent listens
// on the socket here, and the error must not be about that.
func TestOutputFormatCheckedFirst(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, cmd := range [][]string{{"status"}, {"nodes"}, {"policy", "list"}, {"observe"}} {
		args := append(append([]string{}, cmd...), "--socket", sock, "-o", "yaml")
		_, _, err := runApp(t, args...)
		if err == nil || err.Error() != `--output "yaml" is not a format: use table or json` {
			t.Errorf("%v: %v", cmd, err)
		}
	}
}
