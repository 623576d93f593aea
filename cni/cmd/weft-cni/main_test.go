package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// The tests run weft-cni as a runtime does: the binary, built once, with
// CNI_* in its environment and the network configuration on stdin.
var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// weftCNI returns the path of the weft-cni binary built from this package.
func weftCNI(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "weft-cni-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "weft-cni")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// fakeAgent is the agent's CNI backend and health, recording requests.
type fakeAgent struct {
	mu     sync.Mutex
	adds   []api.CNIRequest
	dels   []api.CNIRequest
	checks []api.CNIRequest
	result api.CNIResult
	// datapathDown makes the health check say the datapath is not attached.
	datapathDown bool
}

func (f *fakeAgent) CNIAdd(_ context.Context, req api.CNIRequest) (api.CNIResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, req)
	if req.Chained != nil {
		return api.CNIResult{IP: req.Chained.IP, HostIface: req.Chained.HostIface, Identity: 300}, nil
	}
	return f.result, nil
}

func (f *fakeAgent) CNIDel(_ context.Context, req api.CNIRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, req)
	return nil
}

func (f *fakeAgent) CNICheck(_ context.Context, req api.CNIRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, req)
	for _, a := range f.adds {
		if a.ContainerID == req.ContainerID && a.IfName == req.IfName {
			return nil
		}
	}
	return api.Errorf(api.CodeNotFound, "no attachment %s/%s", req.ContainerID, req.IfName)
}

func (f *fakeAgent) Status(context.Context) (api.Status, error) { return api.Status{Node: "n1"}, nil }

func (f *fakeAgent) Health(context.Context) (api.Health, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.Health{OK: !f.datapathDown, Checks: []api.HealthCheck{{Name: "datapath", OK: !f.datapathDown}}}, nil
}

func (f *fakeAgent) requests() (adds, dels, checks []api.CNIRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.adds), slices.Clone(f.dels), slices.Clone(f.checks)
}

// socketDir is a short directory for the agent's socket: a unix socket's
// path must fit in 107 bytes, which t.TempDir's long names may not.
func socketDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "wcni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serveAgent serves a on socket, through the agent's own server code,
// until the test ends.
func serveAgent(t *testing.T, socket string, a *fakeAgent) {
	t.Helper()
	l, err := api.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{CNI: a, Status: a}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("fake agent: %v", err)
		}
	})
}

// call is one plugin execution as a runtime makes it.
type call struct {
	cmd, containerID, netns, ifName, args string
	conf                                  string
	// path is CNI_PATH, where a plugin finds its IPAM plugin.
	path string
	// wrap runs the plugin through another command (ip netns exec).
	wrap []string
}

type outcome struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (o outcome) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", o.code, o.stdout, o.stderr)
}

// cniErr is the CNI error result on stdout.
type cniErr struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

func (o outcome) cniError(t *testing.T) cniErr {
	t.Helper()
	if o.code == 0 {
		t.Fatalf("the plugin succeeded, want an error result:\n%s", o)
	}
	var e cniErr
	if err := json.Unmarshal([]byte(o.stdout), &e); err != nil || e.Code == 0 || e.Msg == "" {
		t.Fatalf("stdout is not a CNI error result (%v):\n%s", err, o)
	}
	return e
}

func invoke(t *testing.T, bin string, c call) outcome {
	t.Helper()
	args := append(slices.Clone(c.wrap), bin)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_COMMAND=" + c.cmd,
		"CNI_CONTAINERID=" + c.containerID,
		"CNI_NETNS=" + c.netns,
		"CNI_IFNAME=" + c.ifName,
		"CNI_ARGS=" + c.args,
		"CNI_PATH=" + cmp.Or(c.path, "/opt/cni/bin"),
	}
	cmd.Stdin = strings.NewReader(c.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	o := outcome{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		o.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", bin, err)
	}
	return o
}

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee01;K8S_POD_UID=1b2c3d4e-0000-4000-8000-000000000001"

func conf(version, socket string, extra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"weft","type":"weft-cni","agentSocket":%q%s}`, version, socket, extra)
}

var answer = api.CNIResult{
	IP:        netip.MustParseAddr("100.64.3.17"),
	Gateway:   netip.MustParseAddr("100.64.3.1"),
	HostIface: "weftc0ffee01",
	PodMAC:    "0a:58:64:40:03:11",
	Identity:  300,
	MTU:       1420,
}

// fakeNetns is a file standing for the pod's namespace where the test
// needs no real one: the agent (here a fake) is what enters it.
func fakeNetns(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cni-0a1b")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	o := invoke(t, weftCNI(t), call{cmd: "VERSION", conf: `{"cniVersion":"1.0.0"}`})
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if o.code != 0 || json.Unmarshal([]byte(o.stdout), &v) != nil || !slices.Equal(v.SupportedVersions, []string{"0.4.0", "1.0.0", "1.1.0"}) {
		t.Fatalf("VERSION:\n%s", o)
	}
}

func TestAddDelPrimary(t *testing.T) {
	bin := weftCNI(t)
	sock := filepath.Join(socketDir(t), "agent.sock")
	agent := &fakeAgent{result: answer}
	serveAgent(t, sock, agent)
	netns := fakeNetns(t)
	logFile := filepath.Join(t.TempDir(), "log", "weft-cni.log")

	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			o := invoke(t, bin, call{cmd: "ADD", containerID: "c0ffee01", netns: netns, ifName: "eth0", args: podArgs,
				conf: conf(v, sock, fmt.Sprintf(`,"logFile":%q`, logFile))})
			if o.code != 0 {
				t.Fatalf("ADD failed:\n%s", o)
			}
			var res struct {
				CNIVersion string `json:"cniVersion"`
				Interfaces []struct{ Name, Mac, Sandbox string }
				IPs        []struct {
					Version, Address, Gateway string
					Interface                 int
				}
				Routes []struct{ Dst, GW string }
			}
			if err := json.Unmarshal([]byte(o.stdout), &res); err != nil {
				t.Fatalf("stdout is not a result: %v\n%s", err, o)
			}
			if res.CNIVersion != v || len(res.Interfaces) != 2 || res.Interfaces[0].Name != "weftc0ffee01" || res.Interfaces[0].Sandbox != "" ||
				res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != netns || res.Interfaces[1].Mac != "0a:58:64:40:03:11" ||
				len(res.IPs) != 1 || res.IPs[0].Address != "100.64.3.17/32" || res.IPs[0].Gateway != "100.64.3.1" || res.IPs[0].Interface != 1 ||
				len(res.Routes) != 1 || res.Routes[0].Dst != "0.0.0.0/0" || res.Routes[0].GW != "100.64.3.1" {
				t.Errorf("result:\n%s", o.stdout)
			}
			if o.stderr != "" {
				t.Errorf("stderr %q: with a logFile the plugin logs there", o.stderr)
			}
		})
	}
	adds, _, _ := agent.requests()
	want := api.CNIRequest{ContainerID: "c0ffee01", Netns: netns, IfName: "eth0", PodNamespace: "shop", PodName: "web-0", PodUID: "1b2c3d4e-0000-4000-8000-000000000001"}
	if len(adds) != 3 || fmt.Sprint(adds[0]) != fmt.Sprint(want) {
		t.Errorf("the agent got %+v\nwant 3 of %+v", adds, want)
	}
	log, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(log), `"msg":"pod connected"`) || !strings.Contains(string(log), `"pod":"shop/web-0"`) {
		t.Errorf("log file (%v):\n%s", err, log)
	}

	// DEL, twice, and of what was never added: all succeed.
	for _, id := range []string{"c0ffee01", "c0ffee01", "neveradded"} {
		o := invoke(t, bin, call{cmd: "DEL", containerID: id, netns: netns, ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, "")})
		if o.code != 0 || o.stdout != "" {
			t.Errorf("DEL %s:\n%s", id, o)
		}
	}
	if _, dels, _ := agent.requests(); len(dels) != 3 {
		t.Errorf("the agent got %d DELs, want 3", len(dels))
	}
}

func TestCheck(t *testing.T) {
	bin := weftCNI(t)
	sock := filepath.Join(socketDir(t), "agent.sock")
	agent := &fakeAgent{result: answer}
	serveAgent(t, sock, agent)
	netns := fakeNetns(t)
	add := invoke(t, bin, call{cmd: "ADD", containerID: "c0ffee01", netns: netns, ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, "")})
	if add.code != 0 {
		t.Fatalf("ADD:\n%s", add)
	}
	withPrev := conf("1.0.0", sock, `,"prevResult":`+add.stdout)

	// The agent knows no such attachment: CHECK fails, saying so.
	o := invoke(t, bin, call{cmd: "CHECK", containerID: "other", netns: netns, ifName: "eth0", args: podArgs, conf: withPrev})
	if e := o.cniError(t); !strings.Contains(e.Msg, "no attachment other/eth0") {
		t.Errorf("CHECK of an unknown attachment: %+v", e)
	}
	// The agent knows it but the file standing for the namespace is not
	// one: the interface check fails, naming it.
	o = invoke(t, bin, call{cmd: "CHECK", containerID: "c0ffee01", netns: netns, ifName: "eth0", args: podArgs, conf: withPrev})
	if e := o.cniError(t); !strings.Contains(e.Msg, "the pod's interface is not as ADD left it") || !strings.Contains(e.Details, netns) {
		t.Errorf("CHECK without the pod's namespace: %+v", e)
	}
	// A CHECK with the pod's interface in a real namespace is in the
	// privileged tests (TestChainedAfterRealPlugins, TestCheckPrimaryInNetns).
}

// An agent that is restarting: ADD waits, and connects the pod once the
// agent is back.
func TestAddWaitsForTheAgent(t *testing.T) {
	bin := weftCNI(t)
	sock := filepath.Join(socketDir(t), "agent.sock")
	agent := &fakeAgent{result: answer}
	srv := api.NewServer(api.Backend{CNI: agent, Status: agent}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	listenErr := make(chan error, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		l, err := api.Listen(sock)
		listenErr <- err
		if err == nil {
			_ = srv.Serve(l)
		}
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	o := invoke(t, bin, call{cmd: "ADD", containerID: "c0ffee01", netns: fakeNetns(t), ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, `,"timeout":"20s"`)})
	if err := <-listenErr; err != nil {
		t.Fatal(err)
	}
	if o.code != 0 {
		t.Fatalf("ADD did not wait for the agent:\n%s", o)
	}
	if o.took < time.Second {
		t.Errorf("ADD returned after %v, before the agent was there", o.took)
	}
	if adds, _, _ := agent.requests(); len(adds) != 1 {
		t.Errorf("the agent got %d ADDs", len(adds))
	}
}

func TestAgentNotRunning(t *testing.T) {
	bin := weftCNI(t)
	sock := filepath.Join(socketDir(t), "agent.sock")
	o := invoke(t, bin, call{cmd: "ADD", containerID: "c0ffee01", netns: fakeNetns(t), ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, `,"timeout":"2s"`)})
	e := o.cniError(t)
	if o.took < 2*time.Second || o.took > 10*time.Second {
		t.Errorf("ADD gave up after %v, want the configuration's 2s", o.took)
	}
	want := "the Weft agent is not running on this node (no " + sock + "): is the weft DaemonSet pod running? kubectl -n weft-system get pods -l app.kubernetes.io/component=agent -o wide"
	if e.Code != 11 || !strings.HasPrefix(e.Msg, want) {
		t.Errorf("ADD error %+v\nwant code 11 and %q", e, want)
	}

	// A socket nobody listens on (the agent died): said so.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	o = invoke(t, bin, call{cmd: "ADD", containerID: "c0ffee01", netns: fakeNetns(t), ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, `,"timeout":"1s"`)})
	if e := o.cniError(t); !strings.Contains(e.Msg, "(nothing listens on "+sock+")") {
		t.Errorf("ADD with a dead socket: %+v", e)
	}

	// DEL when the namespace is gone: nothing left to clean.
	gone := filepath.Join(t.TempDir(), "cni-gone")
	for _, netns := range []string{gone, ""} {
		o = invoke(t, bin, call{cmd: "DEL", containerID: "c0ffee01", netns: netns, ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, "")})
		if o.code != 0 || o.stdout != "" {
			t.Errorf("DEL with netns %q gone and no agent:\n%s", netns, o)
		}
	}
	// (DEL with the pod still in its namespace fails: TestChainedAfterRealPlugins.)

	o = invoke(t, bin, call{cmd: "STATUS", conf: conf("1.1.0", sock, "")})
	if e := o.cniError(t); e.Code != 50 || !strings.Contains(e.Msg, "the Weft agent is not running on this node") {
		t.Errorf("STATUS without the agent: %+v", e)
	}
}

func TestStatusAndGC(t *testing.T) {
	bin := weftCNI(t)
	sock := filepath.Join(socketDir(t), "agent.sock")
	agent := &fakeAgent{result: answer}
	serveAgent(t, sock, agent)
	if o := invoke(t, bin, call{cmd: "STATUS", conf: conf("1.1.0", sock, "")}); o.code != 0 || o.stdout != "" {
		t.Errorf("STATUS of a ready agent:\n%s", o)
	}
	agent.mu.Lock()
	agent.datapathDown = true
	agent.mu.Unlock()
	o := invoke(t, bin, call{cmd: "STATUS", conf: conf("1.1.0", sock, "")})
	if e := o.cniError(t); e.Code != 50 || !strings.Contains(e.Msg, "datapath is not attached") {
		t.Errorf("STATUS without the datapath: %+v", e)
	}
	// STATUS is a 1.1.0 command: the runtime does not send it for 1.0.0.
	if e := invoke(t, bin, call{cmd: "STATUS", conf: conf("1.0.0", sock, "")}).cniError(t); e.Code != 1 {
		t.Errorf("STATUS of a 1.0.0 configuration: %+v", e)
	}
	gc := conf("1.1.0", sock, `,"cni.dev/valid-attachments":[{"containerID":"c0ffee01","ifname":"eth0"}]`)
	if o := invoke(t, bin, call{cmd: "GC", conf: gc}); o.code != 0 || o.stdout != "" {
		t.Errorf("GC:\n%s", o)
	}
}

// What the runtime (and `kubectl describe pod`) shows on errors: a CNI
// error result with a code and a message that says what to do.
func TestErrorResults(t *testing.T) {
	bin := weftCNI(t)
	sock := filepath.Join(socketDir(t), "agent.sock")
	agent := &fakeAgent{result: answer}
	serveAgent(t, sock, agent)
	netns := fakeNetns(t)
	for _, tc := range []struct {
		name string
		c    call
		code uint
		msg  string
	}{
		{"no pod in CNI_ARGS", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0", args: "IgnoreUnknown=1", conf: conf("1.0.0", sock, "")},
			4, "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME: weft-cni connects Kubernetes pods, and the runtime must pass K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID"},
		{"bad pod name", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0", args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=Web_0", conf: conf("1.0.0", sock, "")},
			4, `K8S_POD_NAME "Web_0" is not a Kubernetes pod name`},
		{"unknown CNI_ARGS", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0", args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;COLOR=red", conf: conf("1.0.0", sock, "")},
			4, "unknown args"},
		{"long ifName", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0123456789abc", args: podArgs, conf: conf("1.0.0", sock, "")},
			4, "interface name is too long"},
		{"relative netns", call{cmd: "ADD", containerID: "c1", netns: "netns/x", ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, "")},
			4, `CNI_NETNS "netns/x" is not an absolute, clean path`},
		{"old cniVersion", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0", args: podArgs, conf: conf("0.3.1", sock, "")},
			1, "incompatible CNI versions"},
		{"bad timeout", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, `,"timeout":"forever"`)},
			7, `timeout "forever" is not a duration`},
		{"chained after a plugin without a host veth", call{cmd: "ADD", containerID: "c1", netns: netns, ifName: "eth0", args: podArgs,
			conf: conf("1.0.0", sock, `,"chainedAfter":"macvlan","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"`+netns+`"}],"ips":[{"interface":0,"address":"100.64.0.5/24"}]}`)},
			7, "weft-cni chained after macvlan needs a veth-based plugin (bridge, ptp)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := invoke(t, bin, tc.c)
			e := o.cniError(t)
			if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.msg) {
				t.Errorf("error %+v\nwant code %d and %q", e, tc.code, tc.msg)
			}
		})
	}
	if adds, _, _ := agent.requests(); len(adds) != 0 {
		t.Errorf("refused calls reached the agent: %+v", adds)
	}
}
