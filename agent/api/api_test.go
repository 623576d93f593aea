package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

// fake is an in-memory agent: enough state to check that what the client
// sends arrives and what the backend answers comes back.
type fake struct {
	mu        sync.Mutex
	endpoints map[string]Endpoint
	policies  map[string]Policy
	tokens    map[string]Token
	left      bool
}

func newFake() *fake {
	return &fake{endpoints: map[string]Endpoint{}, policies: map[string]Policy{}, tokens: map[string]Token{}}
}

func (f *fake) Status(context.Context) (Status, error) {
	return Status{Node: "vm-1", Cluster: "east", Tunnel: TunnelStatus{Interface: "weft0", Kind: "userspace", ListenPort: 51833, Up: true},
		Peers: []Peer{{Node: "seed", LastHandshake: time.Unix(1700000000, 0).UTC()}}}, nil
}
func (f *fake) Health(context.Context) (Health, error) {
	return Health{OK: false, Checks: []HealthCheck{{Name: "etcd", OK: false, Message: "connection refused"}}}, nil
}
func (f *fake) Peers(context.Context) ([]Peer, error) { return nil, nil }
func (f *fake) Nodes(context.Context) ([]Node, error) {
	return []Node{{Name: "seed"}, {Name: "vm-1", Self: true}}, nil
}
func (f *fake) Identities(context.Context) ([]Identity, error) {
	return []Identity{{ID: 256, Labels: []string{"vm:app=web"}}}, nil
}
func (f *fake) Endpoints(context.Context) ([]Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Endpoint
	for _, e := range f.endpoints {
		out = append(out, e)
	}
	return out, nil
}
func (f *fake) AddEndpoint(_ context.Context, s EndpointSpec) (Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.endpoints[s.Netns]; ok {
		return Endpoint{}, fmt.Errorf("%w: endpoint %q exists with other labels", ErrConflict, s.Netns)
	}
	e := Endpoint{Name: s.Netns, Netns: s.Netns, IP: "100.64.1.2", Identity: 300, Local: true}
	for k, v := range s.Labels {
		e.Labels = append(e.Labels, "vm:"+k+"="+v)
	}
	f.endpoints[s.Netns] = e
	return e, nil
}
func (f *fake) RemoveEndpoint(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.endpoints[name]; !ok {
		return fmt.Errorf("%w: no local endpoint %q", ErrNotFound, name)
	}
	delete(f.endpoints, name)
	return nil
}
func (f *fake) Policies(context.Context) ([]PolicyState, error) { return nil, nil }
func (f *fake) GetPolicy(_ context.Context, name string) (Policy, error) {
	p, ok := f.policies[name]
	if !ok {
		return Policy{}, fmt.Errorf("%w: policy %q does not exist", ErrNotFound, name)
	}
	return p, nil
}
func (f *fake) ApplyPolicy(_ context.Context, r ApplyPolicyRequest) (ApplyPolicyResult, error) {
	if strings.Contains(r.Document, "bad") {
		return ApplyPolicyResult{}, fmt.Errorf("%w: %s:3: spec.ingress[0].ports[0].port: 70000 is not a port", ErrInvalid, r.Filename)
	}
	f.policies["db"] = Policy{Name: "db", Revision: 7, Document: r.Document}
	return ApplyPolicyResult{Policies: []AppliedPolicy{{Name: "db", Action: "created", Revision: 7}}}, nil
}
func (f *fake) DeletePolicy(context.Context, string) error { return nil }
func (f *fake) TracePolicy(_ context.Context, r TraceRequest) (TraceResult, error) {
	return TraceResult{Verdict: "deny", Ingress: TraceStep{Verdict: "deny", Enforced: true, Reason: fmt.Sprintf("no rule allows %d/%s", r.Port, r.Protocol)}}, nil
}
func (f *fake) CreateToken(_ context.Context, r TokenRequest) (CreatedToken, error) {
	return CreatedToken{Token: Token{ID: "abc", MaxUses: r.MaxUses, ExpiresAt: time.Unix(0, 0).Add(r.TTL.d())}, JoinToken: "weft1..."}, nil
}
func (f *fake) Tokens(context.Context) ([]Token, error)   { return nil, nil }
func (f *fake) RevokeToken(context.Context, string) error { return errors.New("etcd: boom") }
func (f *fake) Leave(context.Context) error {
	f.left = true
	return nil
}

func (d Duration) d() time.Duration { return time.Duration(d) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve runs a server for b on a socket in a fresh directory and returns
// a client for it.
func serve(t *testing.T, b Backend) (*Client, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "agent.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(b, discard())
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return NewClient(path), path
}

func fullBackend(f *fake) Backend {
	return Backend{Status: f, Mesh: f, Endpoints: f, Policies: f, Tokens: f, Leaver: f}
}

func TestRoundTrip(t *testing.T) {
	f := newFake()
	c, _ := serve(t, fullBackend(f))
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "vm-1" || st.Tunnel.Kind != "userspace" || len(st.Peers) != 1 || !st.Peers[0].LastHandshake.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("status: %+v", st)
	}
	h, err := c.Health(ctx)
	if err != nil || h.OK || h.Checks[0].Message != "connection refused" {
		t.Errorf("health: %+v %v", h, err)
	}
	peers, err := c.Peers(ctx)
	if err != nil || peers == nil || len(peers) != 0 {
		t.Errorf("an empty list must arrive as an empty, non-nil slice: %#v %v", peers, err)
	}
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 2 || !nodes[1].Self {
		t.Errorf("nodes: %+v %v", nodes, err)
	}
	ids, err := c.Identities(ctx)
	if err != nil || ids[0].ID != 256 {
		t.Errorf("identities: %+v %v", ids, err)
	}

	ep, err := c.AddEndpoint(ctx, EndpointSpec{Netns: "web-1", Labels: map[string]string{"app": "web"}})
	if err != nil || ep.IP != "100.64.1.2" || ep.Labels[0] != "vm:app=web" {
		t.Fatalf("add endpoint: %+v %v", ep, err)
	}
	_, err = c.AddEndpoint(ctx, EndpointSpec{Netns: "web-1"})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `endpoint "web-1" exists`) {
		t.Errorf("second add: want a conflict naming the endpoint, got %v", err)
	}
	if eps, _ := c.Endpoints(ctx); len(eps) != 1 {
		t.Errorf("endpoints: %+v", eps)
	}
	if err := c.RemoveEndpoint(ctx, "web-1"); err != nil {
		t.Fatal(err)
	}
	err = c.RemoveEndpoint(ctx, "web-1")
	if !errors.Is(err, ErrNotFound) || err.Error() != `no local endpoint "web-1"` {
		t.Errorf("removing twice: %v", err)
	}

	res, err := c.ApplyPolicy(ctx, ApplyPolicyRequest{Filename: "db.yaml", Document: "kind: Policy"})
	if err != nil || res.Policies[0].Action != "created" {
		t.Errorf("apply: %+v %v", res, err)
	}
	_, err = c.ApplyPolicy(ctx, ApplyPolicyRequest{Filename: "db.yaml", Document: "bad"})
	if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "db.yaml:3: ") {
		t.Errorf("invalid policy: want file:line first, got %v", err)
	}
	_, err = c.ApplyPolicy(ctx, ApplyPolicyRequest{Filename: "empty.yaml", Document: "  \n"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "empty.yaml: the policy file is empty") {
		t.Errorf("empty policy: %v", err)
	}
	p, err := c.GetPolicy(ctx, "db")
	if err != nil || p.Revision != 7 {
		t.Errorf("get: %+v %v", p, err)
	}
	if _, err := c.GetPolicy(ctx, "nope/../x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get of a missing policy: %v", err)
	}
	tr, err := c.TracePolicy(ctx, TraceRequest{Port: 5432, Protocol: "TCP"})
	if err != nil || tr.Ingress.Reason != "no rule allows 5432/TCP" {
		t.Errorf("trace: %+v %v", tr, err)
	}

	tok, err := c.CreateToken(ctx, TokenRequest{TTL: Duration(time.Hour), MaxUses: 1})
	if err != nil || tok.ID != "abc" || tok.JoinToken == "" || !tok.ExpiresAt.Equal(time.Unix(3600, 0)) {
		t.Errorf("create token: %+v %v", tok, err)
	}
	err = c.RevokeToken(ctx, "abc")
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusInternalServerError || !errors.Is(err, ErrInternal) || err.Error() != "etcd: boom" {
		t.Errorf("an unclassified backend error must come back as internal with its message: %#v", err)
	}
	if err := c.Leave(ctx); err != nil || !f.left {
		t.Errorf("leave: %v left=%v", err, f.left)
	}
}

func TestMissingBackendIsNotSupported(t *testing.T) {
	c, _ := serve(t, Backend{Status: newFake()})
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateToken(context.Background(), TokenRequest{})
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "/v1/tokens") {
		t.Errorf("want not supported, got %v", err)
	}
}

func TestBadRequestsAreRefused(t *testing.T) {
	_, path := serve(t, fullBackend(newFake()))
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "/v1/endpoints", `{"netns":"a","lables":{}}`, `unknown field \"lables\"`},
		{"POST", "/v1/endpoints", `{"netns":"a"}{"netns":"b"}`, "more than one JSON value"},
		{"POST", "/v1/endpoints", `{}`, "netns is required"},
		{"POST", "/v1/policies", `not json`, "decoding the request body"},
		{"GET", "/v2/status", ``, "no API route GET /v2/status"},
	} {
		req, _ := http.NewRequest(tc.method, "http://agent"+tc.path, strings.NewReader(tc.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s %s: got %d %s, want an error containing %q", tc.method, tc.path, tc.body, resp.StatusCode, b, tc.want)
		}
	}
}

func TestSocketFile(t *testing.T) {
	_, path := serve(t, fullBackend(newFake()))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	di, _ := os.Stat(filepath.Dir(path))
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", di.Mode().Perm())
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another agent is already serving") {
		t.Errorf("a second agent on the same socket: %v", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a dead agent leaves its socket file behind
	l2, err := Listen(path)
	if err != nil {
		t.Fatalf("a stale socket must be replaced: %v", err)
	}
	l2.Close()

	file := filepath.Join(t.TempDir(), "agent.sock")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("a regular file at the socket path must be refused: %v", err)
	}
}

func TestAgentNotRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	_, err := NewClient(path).Status(context.Background())
	if !errors.Is(err, ErrAgentNotRunning) {
		t.Fatalf("want ErrAgentNotRunning, got %v", err)
	}
	for _, want := range []string{path, "meshctl up", "meshctl join", "--socket"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error should mention %q: %v", want, err)
		}
	}
}

// TestNonRootIsRefused runs a client as the nobody user, in a child
// process of the test binary: it must be told to run as root, both when
// the socket's permissions stop it and when only the server's peer
// credential check does.
func TestNonRootIsRefused(t *testing.T) {
	if os.Getenv("WEFT_API_TEST_CLIENT") != "" {
		_, err := NewClient(os.Getenv("WEFT_API_TEST_CLIENT")).Status(context.Background())
		fmt.Printf("errPermission=%v msg=%v\n", errors.Is(err, ErrPermission), err)
		os.Exit(0)
	}
	testutil.Privileged(t)
	_, path := serve(t, fullBackend(newFake()))

	// The test binary sits in a root-only build directory: give nobody a
	// copy it can execute.
	binDir, err := os.MkdirTemp("", "weft-api-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	os.Chmod(binDir, 0o755)
	bin := filepath.Join(binDir, "api.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

	asNobody := func() string {
		cmd := exec.Command(bin, "-test.run", "^TestNonRootIsRefused$")
		cmd.Env = append(os.Environ(), "WEFT_API_TEST_CLIENT="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as nobody: %v: %s", err, out)
		}
		return string(out)
	}
	out := asNobody()
	if !strings.Contains(out, "errPermission=true") || !strings.Contains(out, "run as root") {
		t.Errorf("socket permissions: %s", out)
	}

	// Open the file modes up: the peer credential check must still refuse.
	for p := path; p != "/"; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
			old := fi.Mode().Perm()
			os.Chmod(p, old|0o005)
			t.Cleanup(func() { os.Chmod(p, old) })
		}
	}
	os.Chmod(path, 0o666)
	out = asNobody()
	t.Logf("as nobody with open modes: %s", out)
	if !strings.Contains(out, "errPermission=true") || !strings.Contains(out, "root only") {
		t.Errorf("peer credential check: %s", out)
	}
}
