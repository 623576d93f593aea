package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftmesh/weft/agent/api"
)

// fakeAgent records the plugin's calls and answers as told.
type fakeAgent struct {
	mu     sync.Mutex
	socket string
	adds   []api.CNIRequest
	dels   []api.CNIRequest
	checks []api.CNIRequest
	// addErrs are returned by the first ADDs, in order; then result.
	addErrs   []error
	addErr    error // returned by every ADD once addErrs are spent, when set
	result    api.CNIResult
	delErr    error
	checkErr  error
	health    api.Health
	healthErr error
}

func (f *fakeAgent) CNIAdd(_ context.Context, req api.CNIRequest) (api.CNIResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, req)
	if len(f.addErrs) > 0 {
		err := f.addErrs[0]
		f.addErrs = f.addErrs[1:]
		return api.CNIResult{}, err
	}
	if f.addErr != nil {
		return api.CNIResult{}, f.addErr
	}
	return f.result, nil
}

func (f *fakeAgent) CNIDel(_ context.Context, req api.CNIRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, req)
	return f.delErr
}

func (f *fakeAgent) CNICheck(_ context.Context, req api.CNIRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, req)
	return f.checkErr
}

func (f *fakeAgent) Health(context.Context) (api.Health, error) { return f.health, f.healthErr }

// fakeSandbox answers for the pod's namespace.
type fakeSandbox struct {
	gone     bool
	goneErr  error
	checkErr error
	checked  []string // "netns ifName addr"
}

func (s *fakeSandbox) Gone(string, string) (bool, error) { return s.gone, s.goneErr }

func (s *fakeSandbox) CheckAddress(netns, ifName string, addr netip.Addr) error {
	s.checked = append(s.checked, netns+" "+ifName+" "+addr.String())
	return s.checkErr
}

// notRunning is the client's error when nothing listens on the socket.
func notRunning(sock string) error {
	return fmt.Errorf("%w (nothing listens on %s): start it ...", api.ErrAgentNotRunning, sock)
}

type harness struct {
	netns  string // a file standing for the pod's namespace
	p      *Plugin
	agent  *fakeAgent
	pods   *fakeSandbox
	stdout *bytes.Buffer
}

func newHarness(t *testing.T) *harness {
	netns := filepath.Join(t.TempDir(), "cni-0a1b")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h := &harness{netns: netns, agent: &fakeAgent{result: agentAnswer, health: api.Health{OK: true, Checks: []api.HealthCheck{{Name: "datapath", OK: true}}}}, pods: &fakeSandbox{}, stdout: &bytes.Buffer{}}
	h.p = &Plugin{
		Agent: func(socket string) Agent {
			h.agent.mu.Lock()
			h.agent.socket = socket
			h.agent.mu.Unlock()
			return h.agent
		},
		Host:       hostLinks,
		Pods:       h.pods,
		Stdout:     h.stdout,
		Stderr:     io.Discard,
		Backoff:    time.Millisecond,
		MaxBackoff: 20 * time.Millisecond,
	}
	return h
}

const kubeletArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=1b2c3d4e-0000-4000-8000-000000000001"

func (h *harness) args(conf string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c0ffee", Netns: h.netns, IfName: "eth0", Args: kubeletArgs, Path: "/opt/cni/bin", StdinData: []byte(conf)}
}

const primaryConf = `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","agentSocket":"/run/weft-test/agent.sock","timeout":"1s"}`

func chainedConf(prev string) string {
	return `{"cniVersion":"1.0.0","name":"kindnet","type":"weft-cni","agentSocket":"/run/weft-test/agent.sock","chainedAfter":"ptp, portmap","prevResult":` + prev + `}`
}

// cniError returns err as the CNI error the runtime would read.
func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error result", err, err)
	}
	return e
}

func TestAddPrimary(t *testing.T) {
	h := newHarness(t)
	if err := h.p.Add(h.args(primaryConf)); err != nil {
		t.Fatal(err)
	}
	if h.agent.socket != "/run/weft-test/agent.sock" {
		t.Errorf("asked the agent on %q, want the configuration's agentSocket", h.agent.socket)
	}
	want := api.CNIRequest{ContainerID: "c0ffee", Netns: h.netns, IfName: "eth0", PodNamespace: "shop", PodName: "web-0", PodUID: "1b2c3d4e-0000-4000-8000-000000000001"}
	if len(h.agent.adds) != 1 || fmt.Sprint(h.agent.adds[0]) != fmt.Sprint(want) {
		t.Fatalf("the agent got %+v, want one ADD %+v", h.agent.adds, want)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct{ Address string }
	}
	if err := json.Unmarshal(h.stdout.Bytes(), &res); err != nil || res.CNIVersion != "1.0.0" || len(res.IPs) != 1 || res.IPs[0].Address != "100.64.3.17/32" {
		t.Errorf("stdout %s (%v), want a 1.0.0 result with 100.64.3.17/32", h.stdout, err)
	}
}

func TestAddChainedPassesPrevResultOn(t *testing.T) {
	h := newHarness(t)
	if err := h.p.Add(h.args(chainedConf(ptpResult))); err != nil {
		t.Fatal(err)
	}
	if len(h.agent.adds) != 1 || h.agent.adds[0].Chained == nil {
		t.Fatalf("the agent got %+v, want one chained ADD", h.agent.adds)
	}
	if got := *h.agent.adds[0].Chained; got.HostIface != "vethd00df00d" || got.IP != netip.MustParseAddr("100.65.0.9") {
		t.Errorf("Chained = %+v, want ptp's host veth and the pod's address", got)
	}
	if !jsonEqual(t, h.stdout.Bytes(), []byte(ptpResult)) {
		t.Errorf("stdout %s\nis not prevResult unchanged:\n%s", h.stdout, ptpResult)
	}
}

func TestAddChainedRefusesWithoutVeth(t *testing.T) {
	h := newHarness(t)
	macvlan := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-0a1b"}],"ips":[{"interface":0,"address":"100.64.0.5/24"}]}`
	e := cniError(t, h.p.Add(h.args(strings.Replace(chainedConf(macvlan), "ptp, portmap", "macvlan", 1))))
	if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "weft-cni chained after macvlan needs a veth-based plugin (bridge, ptp)") {
		t.Errorf("error %+v", e)
	}
	if len(h.agent.adds) != 0 {
		t.Errorf("the agent was asked anyway: %+v", h.agent.adds)
	}
	if h.stdout.Len() != 0 {
		t.Errorf("a result was printed: %s", h.stdout)
	}
}

func TestAddWithoutTheNamespace(t *testing.T) {
	h := newHarness(t)
	a := h.args(primaryConf)
	a.Netns = filepath.Join(t.TempDir(), "gone")
	e := cniError(t, h.p.Add(a))
	if e.Code != types.ErrInvalidNetNS || !strings.Contains(e.Msg, "the pod's network namespace "+a.Netns+" (CNI_NETNS) is not there") {
		t.Errorf("error %+v", e)
	}
	if len(h.agent.adds) != 0 {
		t.Error("the agent was asked anyway")
	}
}

func TestAddWithoutPodArgs(t *testing.T) {
	h := newHarness(t)
	a := h.args(primaryConf)
	a.Args = "IgnoreUnknown=1"
	e := cniError(t, h.p.Add(a))
	if e.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(e.Details, "the runtime must pass K8S_POD_NAMESPACE, K8S_POD_NAME") {
		t.Errorf("error %+v", e)
	}
	if len(h.agent.adds) != 0 {
		t.Error("the agent was asked for a pod without a name")
	}
}

// The agent restarting with its DaemonSet pod: the socket is missing, then
// the agent is not ready, then the connection drops mid-request; ADD waits
// through all of it.
func TestAddWaitsForTheAgent(t *testing.T) {
	h := newHarness(t)
	h.agent.addErrs = []error{
		notRunning("/run/weft-test/agent.sock"),
		&api.Error{Code: api.CodeUnavailable, Message: "the datapath is loading"},
		fmt.Errorf("talking to the agent on x: %w", io.ErrUnexpectedEOF),
	}
	if err := h.p.Add(h.args(primaryConf)); err != nil {
		t.Fatal(err)
	}
	if n := len(h.agent.adds); n != 4 {
		t.Errorf("%d ADDs reached the agent, want 4 (three failures, then success)", n)
	}
	if h.stdout.Len() == 0 {
		t.Error("no result printed")
	}
}

func TestAddGivesUpAtTheTimeout(t *testing.T) {
	h := newHarness(t)
	h.agent.addErr = notRunning("/run/weft-test/agent.sock")
	start := time.Now()
	e := cniError(t, h.p.Add(h.args(primaryConf))) // timeout 1s
	took := time.Since(start)
	if took < time.Second || took > 5*time.Second {
		t.Errorf("ADD gave up after %v, want the configuration's 1s", took)
	}
	want := "the Weft agent is not running on this node (no /run/weft-test/agent.sock): is the weft DaemonSet pod running? kubectl -n weft-system get pods -l app.kubernetes.io/component=agent -o wide"
	if e.Code != types.ErrTryAgainLater || !strings.HasPrefix(e.Msg, want) || !strings.Contains(e.Msg, "waited 1s") {
		t.Errorf("error %+v\nwant code 11 and %q", e, want)
	}
	if len(h.agent.adds) < 3 {
		t.Errorf("only %d attempts in a second", len(h.agent.adds))
	}
}

// A refusal is final: waiting does not change the agent's mind.
func TestAddDoesNotRetryARefusal(t *testing.T) {
	h := newHarness(t)
	h.agent.addErr = &api.Error{Code: api.CodeInvalid, Message: "pod shop/web-0 is not on this node"}
	e := cniError(t, h.p.Add(h.args(primaryConf)))
	if len(h.agent.adds) != 1 {
		t.Errorf("%d ADDs, want 1", len(h.agent.adds))
	}
	if !strings.Contains(e.Msg, "the Weft agent failed connecting pod shop/web-0: pod shop/web-0 is not on this node") {
		t.Errorf("error %+v", e)
	}
	h = newHarness(t)
	h.agent.addErr = &api.Error{Code: api.CodeNotSupported, Message: "POST /v1/cni/add"}
	if e := cniError(t, h.p.Add(h.args(primaryConf))); !strings.Contains(e.Msg, "does not serve CNI") {
		t.Errorf("an agent without CNI: %+v", e)
	}
}

func TestAddRefusesABadAnswer(t *testing.T) {
	h := newHarness(t)
	h.agent.result.Gateway = netip.Addr{}
	e := cniError(t, h.p.Add(h.args(primaryConf)))
	if !strings.Contains(e.Msg, "not a usable result") || !strings.Contains(e.Details, "gateway") {
		t.Errorf("error %+v", e)
	}
	if h.stdout.Len() != 0 {
		t.Errorf("printed %s", h.stdout)
	}
}

func TestDel(t *testing.T) {
	sock := "/run/weft-test/agent.sock"
	for _, tc := range []struct {
		name     string
		delErr   error
		gone     bool
		wantCode uint // 0: success
	}{
		{name: "deleted", delErr: nil},
		{name: "never added", delErr: &api.Error{Code: api.CodeNotFound, Message: "no attachment"}},
		{name: "agent down, namespace gone", delErr: notRunning(sock), gone: true},
		{name: "agent down, pod still there", delErr: notRunning(sock), gone: false, wantCode: types.ErrTryAgainLater},
		{name: "agent fails", delErr: &api.Error{Code: api.CodeInternal, Message: "detaching: busy"}, gone: true, wantCode: types.ErrInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.agent.delErr = tc.delErr
			h.pods.gone = tc.gone
			a := h.args(primaryConf)
			a.Args = "" // DEL may come without the pod
			err := h.p.Del(a)
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("DEL = %v, want success", err)
				}
			} else if e := cniError(t, err); e.Code != tc.wantCode {
				t.Fatalf("DEL = %+v, want code %d", e, tc.wantCode)
			}
			if len(h.agent.dels) != 1 || h.agent.dels[0].ContainerID != "c0ffee" || h.agent.dels[0].IfName != "eth0" {
				t.Errorf("the agent got %+v", h.agent.dels)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	h := newHarness(t)
	r, _ := PrimaryResult(agentAnswer, "eth0", h.netns, "")
	var prev bytes.Buffer
	if err := PrintResult(&prev, r, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	conf := strings.TrimSuffix(primaryConf, "}") + `,"prevResult":` + prev.String() + `}`
	if err := h.p.Check(h.args(conf)); err != nil {
		t.Fatal(err)
	}
	if len(h.agent.checks) != 1 {
		t.Errorf("the agent got %d CHECKs", len(h.agent.checks))
	}
	if want := h.netns + " eth0 100.64.3.17"; len(h.pods.checked) != 1 || h.pods.checked[0] != want {
		t.Errorf("checked %q in the pod, want %q", h.pods.checked, want)
	}

	h = newHarness(t)
	h.pods.checkErr = errors.New("eth0 in the pod's namespace does not have 100.64.3.17")
	if e := cniError(t, h.p.Check(h.args(conf))); !strings.Contains(e.Msg, "not as ADD left it") || !strings.Contains(e.Details, "does not have 100.64.3.17") {
		t.Errorf("CHECK of a pod without its address: %+v", e)
	}

	h = newHarness(t)
	h.agent.checkErr = &api.Error{Code: api.CodeNotFound, Message: "no attachment c0ffee/eth0"}
	if e := cniError(t, h.p.Check(h.args(conf))); !strings.Contains(e.Msg, "no attachment c0ffee/eth0") {
		t.Errorf("CHECK the agent fails: %+v", e)
	}

	h = newHarness(t)
	if e := cniError(t, h.p.Check(h.args(primaryConf))); !strings.Contains(e.Msg, "without prevResult") {
		t.Errorf("CHECK without prevResult: %+v", e)
	}
}

func TestStatus(t *testing.T) {
	conf := `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","agentSocket":"/run/weft-test/agent.sock"}`
	a := &skel.CmdArgs{StdinData: []byte(conf), Path: "/opt/cni/bin"}

	h := newHarness(t)
	h.agent.health = api.Health{OK: false, Checks: []api.HealthCheck{{Name: "datapath", OK: true}, {Name: "peers", OK: false, Message: "node b: no handshake"}}}
	if err := h.p.Status(a); err != nil {
		t.Errorf("STATUS with a remote peer down = %v, want ready (local pods can be connected)", err)
	}

	h = newHarness(t)
	h.agent.health = api.Health{Checks: []api.HealthCheck{{Name: "datapath", OK: false, Message: "bpffs not mounted"}}}
	if e := cniError(t, h.p.Status(a)); e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "datapath is not attached") || e.Details != "bpffs not mounted" {
		t.Errorf("STATUS without the datapath: %+v", e)
	}

	h = newHarness(t)
	h.agent.healthErr = notRunning("/run/weft-test/agent.sock")
	if e := cniError(t, h.p.Status(a)); e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "the Weft agent is not running on this node") {
		t.Errorf("STATUS without the agent: %+v", e)
	}
}

func TestGC(t *testing.T) {
	h := newHarness(t)
	conf := `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","cni.dev/valid-attachments":[{"containerID":"c0ffee","ifname":"eth0"}]}`
	if err := h.p.GC(&skel.CmdArgs{StdinData: []byte(conf)}); err != nil {
		t.Fatal(err)
	}
	if len(h.agent.dels) != 0 {
		t.Error("GC deleted something")
	}
}

func TestBadConfigIsACNIError(t *testing.T) {
	h := newHarness(t)
	e := cniError(t, h.p.Add(h.args(`{"cniVersion":"0.3.1","name":"weft","type":"weft-cni"}`)))
	if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Details, `cniVersion "0.3.1"`) {
		t.Errorf("error %+v", e)
	}
	a := h.args(primaryConf)
	a.IfName = "a-very-long-ifname"
	if e := cniError(t, h.p.Add(a)); e.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(e.Details, "CNI_IFNAME") {
		t.Errorf("error %+v", e)
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%v: %s", err, a)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}
