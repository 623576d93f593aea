//go:build linux

// up, join and leave run the agent on this machine, which only Linux
// does; agentproc_other_test.go checks what they say elsewhere.

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/pki"
)

// singleUseStore is a token store with one single-use token.
type singleUseStore struct {
	mu    sync.Mutex
	calls int
	used  bool
}

const testSecret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I"

func (s *singleUseStore) ConsumeToken(_ context.Context, id, secret string, _ time.Time) (join.Grant, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if id != "t1" || secret != testSecret {
		return join.Grant{}, fmt.Errorf("%w: token %s is not known", join.ErrTokenUnknown, id)
	}
	if s.used {
		return join.Grant{}, fmt.Errorf("%w: token t1 was used 1 of 1 times; ask for a new one", join.ErrTokenUsedUp)
	}
	s.used = true
	return join.Grant{TokenID: id, Labels: map[string]string{"zone": "a"}}, nil
}

// joinService runs a real join service on loopback and returns a token
// for it.
func joinService(t *testing.T, store join.TokenStore) (join.Token, *pki.CA) {
	t.Helper()
	ca, err := pki.NewCA("meshctl-test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := join.NewServer(join.ServerConfig{CA: ca, Tokens: store, Cluster: "east", Hosts: []string{"127.0.0.1"},
		EtcdEndpoints: []string{"https://198.18.1.10:2379"}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return join.Token{Server: l.Addr().String(), ID: "t1", Secret: testSecret, CAHash: ca.Fingerprint()}, ca
}

// fakeLaunch replaces the agent start: it reads the configuration meshctl
// wrote (as the agent would) and serves a fake agent on its socket.
func fakeLaunch(t *testing.T) (*[]string, *fakeAgent) {
	t.Helper()
	var modes []string
	agent := &fakeAgent{healthy: true}
	old := launch
	launch = func(_ context.Context, mode string, s launchSpec) (*agentProc, error) {
		cfg, err := config.Load(s.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("the agent could not load what meshctl wrote: %w", err)
		}
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		modes = append(modes, mode)
		serveFake(t, agent, cfg.SocketPath)
		return &agentProc{Describe: "fake agent", exited: make(chan struct{})}, nil
	}
	oldEuid := geteuid
	geteuid = func() int { return 0 }
	t.Cleanup(func() { launch, geteuid = old, oldEuid })
	return &modes, agent
}

type paths struct{ dir, cfg, state, sock, bin string }

func newPaths(t *testing.T) paths {
	dir := t.TempDir()
	bin := filepath.Join(dir, "weft-agent")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	return paths{dir: dir, cfg: filepath.Join(dir, "etc", "agent.yaml"), state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "run", "agent.sock"), bin: bin}
}

func (p paths) flags() []string {
	return []string{"--config-file", p.cfg, "--state-dir", p.state, "--socket", p.sock, "--agent-binary", p.bin}
}

func TestJoinTwiceAndLeave(t *testing.T) {
	store := &singleUseStore{}
	tok, ca := joinService(t, store)
	modes, agent := fakeLaunch(t)
	p := newPaths(t)

	args := append(append([]string{"join", tok.String(), "--name", "vm-1", "--labels", "app=web"}, p.flags()...), "--", "--wg-interface", "wg-t1", "--wg-port", "51900")
	out, _, err := runApp(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Joined the mesh as vm-1 in cluster east (labels vm:app=web,vm:zone=a)", "The agent is running as fake agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if len(*modes) != 1 || (*modes)[0] != runBackground {
		t.Errorf("started %v, want one background agent (no systemd here)", *modes)
	}
	cfg, err := config.Load(p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "vm-1" || cfg.Cluster != "east" || cfg.WireGuard.Interface != "wg-t1" || cfg.WireGuard.ListenPort != 51900 || cfg.SocketPath != p.sock {
		t.Errorf("config: %+v", cfg)
	}
	if len(cfg.Etcd.Endpoints) != 1 || cfg.Etcd.Endpoints[0] != "https://198.18.1.10:2379" {
		t.Errorf("etcd endpoints %v", cfg.Etcd.Endpoints)
	}
	for _, f := range []string{p.cfg, cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	caPEM, _ := os.ReadFile(cfg.Etcd.CAFile)
	if string(caPEM) != string(ca.CertPEM) {
		t.Error("the saved CA is not the mesh CA")
	}

	// Again: the single-use token is not presented a second time, and the
	// running agent is left alone.
	out, _, err = runApp(t, args...)
	if err != nil {
		t.Fatalf("second join: %v", err)
	}
	if !strings.Contains(out, "Already joined this mesh as vm-1") || !strings.Contains(out, "already running") {
		t.Errorf("second join output:\n%s", out)
	}
	if store.calls != 1 || len(*modes) != 1 {
		t.Errorf("second join: %d token checks, %d agent starts; want 1 and 1", store.calls, len(*modes))
	}
	// Under another name it is refused, not silently renamed.
	_, _, err = runApp(t, append([]string{"join", tok.String(), "--name", "vm-9"}, p.flags()...)...)
	if err == nil || !strings.Contains(err.Error(), "already joined this mesh as vm-1") {
		t.Errorf("rejoin under another name: %v", err)
	}
	// A token of another mesh is refused.
	other, _ := pki.NewCA("other")
	tok2 := tok
	tok2.CAHash = other.Fingerprint()
	_, _, err = runApp(t, append([]string{"join", tok2.String()}, p.flags()...)...)
	if err == nil || !strings.Contains(err.Error(), "already belongs to another mesh") {
		t.Errorf("join of another mesh: %v", err)
	}

	out, _, err = runApp(t, "leave", "--config-file", p.cfg, "--socket", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	if !agent.left || !strings.Contains(out, "The node left the mesh.") {
		t.Errorf("leave: left=%v\n%s", agent.left, out)
	}
	if _, err := os.Stat(p.cfg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("configuration not removed: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(cfg.Etcd.CertFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("credentials not removed: %v", err)
	}
}

func TestJoinRefusals(t *testing.T) {
	store := &singleUseStore{}
	tok, _ := joinService(t, store)
	fakeLaunch(t)
	p := newPaths(t)
	other, _ := pki.NewCA("other")
	wrongCA := tok
	wrongCA.CAHash = other.Fingerprint()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"join"}, "join needs the token"},
		{[]string{"join", "weft1.garbage"}, "malformed join token"},
		{[]string{"join", "hello"}, "must start with"},
		{[]string{"join", tok.String(), "extra"}, "join takes one token"},
		{[]string{"join", tok.String(), "--name", "Bad_Name"}, "--name"},
		{[]string{"join", tok.String(), "--name", "vm-1", "--labels", "app"}, "--labels"},
		{[]string{"join", tok.String(), "--name", "vm-1", "--bogus"}, "unknown flag --bogus"},
		{[]string{"join", wrongCA.String(), "--name", "vm-1"}, "the token pins CA " + other.Fingerprint()},
		{[]string{"join", tok.String(), "--name", "vm-1", "--", "--wg-port", "0"}, "wireguard.listenPort"},
		{[]string{"join", tok.String(), "--name", "vm-1", "--ready-timeout", "0s"}, "--ready-timeout 0s is not a positive duration"},
	} {
		args := append(append([]string{tc.args[0]}, p.flags()...), tc.args[1:]...)
		_, _, err := runApp(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
	if _, err := os.Stat(p.cfg); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused join wrote a configuration")
	}
	// None of the refused joins used the single-use token.
	if store.calls != 0 {
		t.Errorf("refused joins presented the token %d times", store.calls)
	}
	if _, _, err := runApp(t, append([]string{"join", tok.String(), "--name", "vm-1"}, p.flags()...)...); err != nil {
		t.Fatal(err)
	}
	// A second machine with the same single-use token is told it is used up.
	q := newPaths(t)
	_, _, err := runApp(t, append([]string{"join", tok.String(), "--name", "vm-2"}, q.flags()...)...)
	if !errors.Is(err, join.ErrTokenUsedUp) || !strings.Contains(err.Error(), "used 1 of 1 times") {
		t.Errorf("re-used token: %v", err)
	}
}

func TestUpAndLeaveFirstNode(t *testing.T) {
	modes, agent := fakeLaunch(t)
	_ = agent
	p := newPaths(t)
	old := now
	now = func() time.Time { return t0 }
	t.Cleanup(func() { now = old })

	out, _, err := runApp(t, append(append([]string{"up", "--name", "seed", "--advertise-address", "198.18.1.10", "--token-ttl", "2h"}, p.flags()...), "--", "--wg-port", "51900")...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Weft is up: node seed, cluster default; etcd at https://198.18.1.10:2379, join service at 198.18.1.10:51834.",
		"  weft1.TESTTOKEN\n",
		"meshctl join weft1.TESTTOKEN --name NODE-NAME",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q:\n%s", want, out)
		}
	}
	cfg, err := config.Load(p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Etcd.Embedded.Enabled || cfg.Underlay.Endpoints[0] != "198.18.1.10:51900" || cfg.Join.Listen != "198.18.1.10:51834" {
		t.Errorf("seed config: %+v", cfg)
	}
	if len(*modes) != 1 || time.Duration(agent.tokenReq[0].TTL) != 2*time.Hour || agent.tokenReq[0].MaxUses != 1 {
		t.Errorf("modes %v token request %+v", *modes, agent.tokenReq)
	}
	// Again: no second agent, a fresh token.
	out, _, err = runApp(t, append([]string{"up"}, p.flags()...)...)
	if err != nil || !strings.Contains(out, "Already the first node seed") || len(*modes) != 1 || len(agent.tokenReq) != 2 {
		t.Errorf("second up: %v starts=%d tokens=%d\n%s", err, len(*modes), len(agent.tokenReq), out)
	}
	// The first node does not join another mesh, nor leave without --force.
	tok := join.Token{Server: "127.0.0.1:1", ID: "t1", Secret: testSecret, CAHash: "sha256:" + strings.Repeat("0", 64)}
	if _, _, err := runApp(t, append([]string{"join", tok.String()}, p.flags()...)...); err == nil || !strings.Contains(err.Error(), "first node of a mesh") {
		t.Errorf("join on the first node: %v", err)
	}
	if _, _, err := runApp(t, "leave", "--config-file", p.cfg); err == nil || !strings.Contains(err.Error(), "--force") || agent.left {
		t.Errorf("leave without --force: %v left=%v", err, agent.left)
	}
	if _, _, err := runApp(t, "up", "--advertise-address", "0.0.0.0", "--config-file", filepath.Join(p.dir, "other.yaml"), "--agent-binary", p.bin); err == nil || !strings.Contains(err.Error(), "--advertise-address") {
		t.Errorf("wildcard advertise address: %v", err)
	}
}

func TestSystemdUnit(t *testing.T) {
	u := systemdUnit("/usr/local/bin/weft-agent", "/etc/weft/agent.yaml")
	for _, want := range []string{"ExecStart=/usr/local/bin/weft-agent --config /etc/weft/agent.yaml\n", "Restart=always\n", "WantedBy=multi-user.target\n",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_RESOURCE\n", "NoNewPrivileges=yes\n"} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
	for _, never := range []string{"CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_DAC_READ_SEARCH"} {
		if strings.Contains(u, never) {
			t.Errorf("unit grants %s", never)
		}
	}
}

// A --wait that cannot see the agent ready is refused before the
// configuration is written or the agent started.
func TestUpRefusesBadWait(t *testing.T) {
	fakeLaunch(t)
	p := newPaths(t)
	_, _, err := runApp(t, append([]string{"up", "--advertise-address", "198.18.1.10", "--ready-timeout", "-1s"}, p.flags()...)...)
	if err == nil || !strings.Contains(err.Error(), "--ready-timeout -1s is not a positive duration") {
		t.Errorf("up --ready-timeout -1s: %v", err)
	}
	if _, err := os.Stat(p.cfg); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused up wrote a configuration")
	}
}

func TestAgentCommandsNeedRoot(t *testing.T) {
	fakeLaunch(t)
	geteuid = func() int { return 65534 }
	p := newPaths(t)
	tok := join.Token{Server: "127.0.0.1:1", ID: "t1", Secret: testSecret, CAHash: "sha256:" + strings.Repeat("0", 64)}
	for _, args := range [][]string{
		append([]string{"up", "--advertise-address", "198.18.1.10"}, p.flags()...),
		append([]string{"join", tok.String(), "--name", "vm-1"}, p.flags()...),
		{"leave", "--config-file", p.cfg, "--socket", p.sock},
	} {
		_, _, err := runApp(t, args...)
		if err == nil || !strings.Contains(err.Error(), "meshctl "+args[0]+" needs root") || !strings.Contains(err.Error(), "sudo") {
			t.Errorf("%s as a user: %v", args[0], err)
		}
	}
	if _, err := os.Stat(p.cfg); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused command wrote a configuration")
	}
}

func TestUpSaysWhichFlagsAnExistingConfigurationOverrides(t *testing.T) {
	fakeLaunch(t)
	p := newPaths(t)
	cfg := config.Default()
	cfg.NodeName, cfg.StateDir, cfg.SocketPath = "seed", p.state, p.sock
	cfg.Etcd.Embedded.Enabled = true
	data, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p.cfg), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, _ := runApp(t, append([]string{"up", "--name", "other", "--advertise-address", "198.18.1.10"}, p.flags()...)...)
	if !strings.Contains(stderr, "--name, --advertise-address ignored") {
		t.Fatalf("up with an existing configuration did not say which flags it ignored; stderr:\n%s", stderr)
	}
}

// The token comes from --token-file or WEFT_TOKEN (so ps does not show
// it); a bad file is refused with what is wrong, before anything is
// written or the token presented.
func TestJoinTokenFromFileOrEnvironment(t *testing.T) {
	store := &singleUseStore{}
	tok, _ := joinService(t, store)
	fakeLaunch(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	two := filepath.Join(dir, "two")
	os.WriteFile(two, []byte(tok.String()+" "+tok.String()+"\n"), 0o600)
	huge := filepath.Join(dir, "huge")
	os.WriteFile(huge, make([]byte, 1<<20), 0o600)
	p := newPaths(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--token-file", filepath.Join(dir, "missing")}, "--token-file: stat " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{[]string{"--token-file", empty}, "--token-file " + empty + " is empty"},
		{[]string{"--token-file", dir}, "is a directory"},
		{[]string{"--token-file", two}, "holds more than one word"},
		{[]string{"--token-file", huge}, "is 64 KiB or more"},
		{[]string{tok.String(), "--token-file", two}, "the token is given twice"},
	} {
		_, _, err := runApp(t, append(append([]string{"join", "--name", "vm-1"}, p.flags()...), tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("join %v: %v, want %q", tc.args, err, tc.want)
		}
	}
	// Neither a token nor an earlier join.
	if _, _, err := runApp(t, append([]string{"join", "--name", "vm-1"}, p.flags()...)...); err == nil || !strings.Contains(err.Error(), "--token-file FILE or WEFT_TOKEN") {
		t.Errorf("join without a token: %v", err)
	}
	if store.calls != 0 {
		t.Errorf("refused joins presented the token %d times", store.calls)
	}

	// A file others can read is used, with a note.
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte(tok.String()+"\n"), 0o644)
	out, stderr, err := runApp(t, append(append([]string{"join", "--name", "vm-1"}, p.flags()...), "--token-file", loose)...)
	if err != nil || !strings.Contains(out, "Joined the mesh as vm-1") || !strings.Contains(stderr, "readable by other users (mode 0644)") {
		t.Errorf("join --token-file (0644): %v\n%s\n%s", err, out, stderr)
	}

	// WEFT_TOKEN, on another machine.
	store2 := &singleUseStore{}
	tok2, _ := joinService(t, store2)
	t.Setenv("WEFT_TOKEN", tok2.String())
	q := newPaths(t)
	out, _, err = runApp(t, append([]string{"join", "--name", "vm-2"}, q.flags()...)...)
	if err != nil || !strings.Contains(out, "Joined the mesh as vm-2") || store2.calls != 1 {
		t.Errorf("join with WEFT_TOKEN: %v calls=%d\n%s", err, store2.calls, out)
	}
}

// Joining again with other flags says which ones the existing
// configuration overrides, as up does.
func TestJoinAgainSaysWhichFlagsItIgnores(t *testing.T) {
	tok, _ := joinService(t, &singleUseStore{})
	fakeLaunch(t)
	p := newPaths(t)
	if _, _, err := runApp(t, append([]string{"join", tok.String(), "--name", "vm-1", "--labels", "app=web"}, p.flags()...)...); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := runApp(t, append(append([]string{"join", "--name", "vm-1", "--labels", "app=db", "--strict"}, p.flags()...), "--", "--wg-port", "51999")...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--strict=true (the configuration says false)", "--labels", "the agent flags after -- (--wg-port 51999)", "ignored"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("join again: stderr lacks %q:\n%s", want, stderr)
		}
	}
	// The same flags again are not "ignored".
	_, stderr, _ = runApp(t, append([]string{"join", "--name", "vm-1", "--labels", "app=web"}, p.flags()...)...)
	if strings.Contains(stderr, "ignored") {
		t.Errorf("join again with the same flags: %s", stderr)
	}
}

// An agent that exits before it is ready: the error carries the end of
// this run's log, not only "exit status 1".
func TestEarlyExitShowsTheAgentLog(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "weft-agent")
	os.WriteFile(bin, []byte("#!/bin/sh\necho 'level=INFO msg=\"starting weft-agent\"'\necho 'level=ERROR msg=\"opening the tunnel: interface lo is not WireGuard\"'\nexit 1\n"), 0o755)
	// An earlier run's lines are not this run's.
	os.WriteFile(filepath.Join(dir, "agent.log"), []byte("level=ERROR msg=\"from yesterday\"\n"), 0o600)
	p, err := launchAgent(context.Background(), runBackground, launchSpec{Binary: bin, ConfigFile: filepath.Join(dir, "agent.yaml"), StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	err = waitReady(context.Background(), api.NewClient(filepath.Join(dir, "none.sock")), p, time.Minute)
	if err == nil {
		t.Fatal("waitReady of an agent that exits: nil")
	}
	for _, want := range []string{"exited before it was ready: exit status 1", "the end of " + filepath.Join(dir, "agent.log"), "interface lo is not WireGuard", "starting weft-agent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "yesterday") {
		t.Errorf("error shows an earlier run's log: %v", err)
	}
}

// An agent already running on --socket is used as it is: up reads its
// identity and writes no configuration for another node; a joined node's
// agent is refused.
func TestUpAgainstARunningAgentWritesNothing(t *testing.T) {
	fakeLaunch(t)
	f, sock := startFake(t)
	_ = f
	p := newPaths(t)
	p.sock = sock
	_, _, err := runApp(t, append([]string{"up", "--name", "seed", "--advertise-address", "198.18.1.10"}, p.flags()...)...)
	if err == nil || !strings.Contains(err.Error(), "is node vm-1 of cluster east, which joined a mesh") {
		t.Errorf("up against a joined node's agent: %v", err)
	}
	if _, err := os.Stat(p.cfg); !errors.Is(err, os.ErrNotExist) {
		t.Error("up against a running agent wrote a configuration")
	}
}

// TestAgentEnvDropsAgentConfiguration: an agent meshctl starts does not
// inherit the WEFT_* variables the agent reads its configuration from
// (they would override the file up or join wrote); everything else passes.
func TestAgentEnvDropsAgentConfiguration(t *testing.T) {
	got := agentEnv([]string{"PATH=/usr/bin", "WEFT_NODE_NAME=other", "WEFT_ETCD_ENDPOINTS=https://198.18.0.9:2379",
		"WEFT_TUNNEL_PPROF=/tmp/p", "HOME=/root", "WEFT_LOG_LEVEL=debug"})
	want := []string{"PATH=/usr/bin", "WEFT_TUNNEL_PPROF=/tmp/p", "HOME=/root"}
	if !slices.Equal(got, want) {
		t.Fatalf("agentEnv = %q, want %q", got, want)
	}
}
