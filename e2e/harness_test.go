// Package e2e holds the end-to-end tests: they build the real binaries,
// bring up a lab of network namespaces, start a seed with `meshctl up`, join
// nodes with `meshctl join`, and check what a user would see — traffic,
// policy verdicts, CLI output. They need root and are skipped by -short.
package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// binDir holds meshctl, weft-agent and weft-lab built for this run: weft-lab
// next to meshctl, where meshctl looks for it first, so `meshctl lab` from
// binDir runs the lab of the same build.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	code := func() int {
		if os.Geteuid() == 0 && !testing.Short() {
			dir, err := os.MkdirTemp("", "weft-e2e-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			for _, b := range []struct{ out, pkg string }{
				{"meshctl", "github.com/weftmesh/weft/meshctl"},
				{"weft-agent", "github.com/weftmesh/weft/agent/cmd/weft-agent"},
				{"weft-lab", "github.com/weftmesh/weft/internal/lab/cmd/weft-lab"},
			} {
				cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
				cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
				if err := cmd.Run(); err != nil {
					fmt.Fprintln(os.Stderr, "building", b.pkg, err)
					return 1
				}
			}
			binDir = dir
		}
		return m.Run()
	}()
	os.Exit(code)
}

// Mesh is a lab with Weft running on some of its nodes. Subtests take
// their own view with For(t), so a failure is reported where it happens.
type Mesh struct {
	t testing.TB
	*meshState
}

type meshState struct {
	Lab     *lab.Lab
	pinRoot string
	Token   string // reusable join token printed by `meshctl up`
	Seed    string
	mu      sync.Mutex
	nodes   map[string]*MeshNode
}

// For returns the mesh as seen from test t.
func (m *Mesh) For(t testing.TB) *Mesh { return &Mesh{t: t, meshState: m.meshState} }

// MeshNode is one lab node running an agent.
type MeshNode struct {
	Name       string
	Lab        *lab.Node
	StateDir   string
	Socket     string
	ConfigFile string
	Proc       *lab.Process
}

// NewMesh brings up the lab; nothing runs on it yet.
func NewMesh(t testing.TB, spec *lab.Spec) *Mesh {
	t.Helper()
	testutil.E2E(t)
	m := &Mesh{t: t, meshState: &meshState{nodes: map[string]*MeshNode{}}}
	// Registered before the lab, so it runs after the lab's teardown has
	// stopped every agent and WireGuard helper.
	t.Cleanup(m.removeHostState)
	l := labtest.New(t, spec)
	m.Lab = l
	// A bpffs directory of the test's own, so agents of concurrent runs
	// (or of a developer's demo) never share pinned maps.
	m.pinRoot = "/sys/fs/bpf/weft-e2e-" + l.Name()
	return m
}

// removeHostState removes what the mesh left outside its namespaces: the
// agents' bpffs pins (they outlive an agent by design) and, as a failure,
// any userspace WireGuard UAPI socket the lab's teardown did not see
// unlinked.
func (m *Mesh) removeHostState() {
	if m.Lab == nil {
		return
	}
	if m.pinRoot != "" {
		if err := os.RemoveAll(m.pinRoot); err != nil {
			m.t.Errorf("removing pins: %v", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name := range m.nodes {
		sock := filepath.Join("/var/run/wireguard", m.wgName(name)+".sock")
		if _, err := os.Stat(sock); err == nil {
			m.t.Errorf("%s is left after the lab's teardown", sock)
			_ = os.Remove(sock)
		}
	}
}

func (m *Mesh) node(name string) *MeshNode {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodes[name]
}

func (m *Mesh) newNode(name string) *MeshNode {
	ln := m.Lab.Node(name)
	if ln == nil {
		m.t.Fatalf("lab has no node %q", name)
	}
	dir := filepath.Join(m.t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		m.t.Fatal(err)
	}
	n := &MeshNode{Name: name, Lab: ln, StateDir: dir, Socket: filepath.Join(dir, "agent.sock"), ConfigFile: filepath.Join(dir, "agent.yaml")}
	m.mu.Lock()
	m.nodes[name] = n
	m.mu.Unlock()
	return n
}

// agentFlags are the per-node weft-agent flags that let several agents
// share one kernel: their own WireGuard device name (the userspace UAPI
// socket directory is global) and their own bpffs pin root.
func (m *Mesh) agentFlags(n *MeshNode) []string {
	return []string{"--", "--wg-interface", m.wgName(n.Name), "--bpf-pin-path", m.pinRoot, "--wg-mode", "userspace", "--lease-ttl", "5s", "--wg-keepalive", "5s", "--log-level", "debug"}
}

// wgName is a node's WireGuard device name, unique per lab (the UAPI
// socket directory is shared by every namespace) and at most 15 bytes.
func (m *Mesh) wgName(node string) string {
	// A short hash of the lab's name keeps two labs of one test process
	// (whose names differ only at the end) apart.
	h := sha256.Sum256([]byte(m.Lab.Name()))
	name := fmt.Sprintf("w%x-%s", h[:2], node)
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}

func (m *Mesh) procFlags(n *MeshNode) []string {
	return []string{"--socket", n.Socket, "--state-dir", n.StateDir, "--config-file", n.ConfigFile,
		"--agent-binary", filepath.Join(binDir, "weft-agent"), "--foreground"}
}

var tokenRE = regexp.MustCompile(`weft1\.[A-Za-z0-9_-]+`)

// Up runs `meshctl up` on a node and waits for the join token it prints.
// flags are meshctl up's; those after a "--" are the agent's, added to
// the mesh's own.
func (m *Mesh) Up(name string, flags ...string) {
	m.t.Helper()
	n := m.newNode(name)
	upFlags, agentExtra := flags, []string(nil)
	if i := slices.Index(flags, "--"); i >= 0 {
		upFlags, agentExtra = flags[:i], flags[i+1:]
	}
	args := append([]string{"up", "--name", name, "--advertise-address", n.Lab.Underlay.String(), "--token-max-uses", "100"}, upFlags...)
	args = append(args, m.procFlags(n)...)
	args = append(args, m.agentFlags(n)...)
	args = append(args, agentExtra...)
	p, err := m.Lab.Start(n.Lab.Netns, "agent-"+name, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
	if err != nil {
		m.t.Fatalf("meshctl up: %v", err)
	}
	n.Proc = p
	m.Seed = name
	m.waitOutput(p, tokenRE, 90*time.Second, "meshctl up to print a join token")
	m.Token = tokenRE.FindString(p.Output())
}

// Join runs `meshctl join` on a node (in the foreground, supervised by the
// lab) and waits until the agent answers on its socket.
func (m *Mesh) Join(name, labels string) *MeshNode {
	m.t.Helper()
	n := m.newNode(name)
	p, err := m.startJoin(n, m.Token, labels)
	if err != nil {
		m.t.Fatal(err)
	}
	n.Proc = p
	m.waitOutput(p, regexp.MustCompile(`(?i)agent .*(ready|running)|Joined the mesh`), 60*time.Second, "meshctl join on "+name)
	m.WaitHealthy(name)
	return n
}

func (m *Mesh) startJoin(n *MeshNode, token, labels string) (*lab.Process, error) {
	args := []string{"join", token, "--name", n.Name}
	if labels != "" {
		args = append(args, "--labels", labels)
	}
	args = append(args, m.procFlags(n)...)
	args = append(args, m.agentFlags(n)...)
	return m.Lab.Start(n.Lab.Netns, "agent-"+n.Name, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
}

// waitOutput waits until the process output matches re, failing with the
// output when the process exits first or time runs out.
func (m *Mesh) waitOutput(p *lab.Process, re *regexp.Regexp, timeout time.Duration, what string) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if re.MatchString(p.Output()) {
			return
		}
		select {
		case <-p.Done():
			if re.MatchString(p.Output()) {
				return
			}
			m.t.Fatalf("waiting for %s: the process exited (%v); output:\n%s", what, p.Err(), p.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	m.t.Fatalf("waiting for %s: timed out after %s; output:\n%s", what, timeout, p.Output())
}

// Meshctl runs meshctl inside a node's namespace against its agent.
func (m *Mesh) Meshctl(node string, args ...string) (string, error) {
	n := m.node(node)
	if n == nil {
		m.t.Fatalf("no agent on %s", node)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"env", "WEFT_SOCKET=" + n.Socket, "WEFT_CONFIG=" + n.ConfigFile, filepath.Join(binDir, "meshctl")}, args...)
	out, err := m.Lab.Exec(ctx, n.Lab.Netns, full...)
	return string(out), err
}

// MustMeshctl is Meshctl that fails the test on error.
func (m *Mesh) MustMeshctl(node string, args ...string) string {
	m.t.Helper()
	out, err := m.Meshctl(node, args...)
	if err != nil {
		m.t.Fatalf("meshctl %s on %s: %v\n%s", strings.Join(args, " "), node, err, out)
	}
	return out
}

// JSON runs a meshctl command with -o json and decodes its output.
func (m *Mesh) JSON(node string, v any, args ...string) {
	m.t.Helper()
	out := m.MustMeshctl(node, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		m.t.Fatalf("meshctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// WaitHealthy waits until a node's agent reports healthy.
func (m *Mesh) WaitHealthy(node string) {
	m.t.Helper()
	testutil.Eventually(m.t, 60*time.Second, "agent on "+node+" healthy", func() error {
		out, err := m.Meshctl(node, "status")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// AddWorkload makes a lab workload namespace a mesh endpoint and returns
// its mesh address.
func (m *Mesh) AddWorkload(workload, labels string) string {
	m.t.Helper()
	w := m.Lab.Workload(workload)
	if w == nil {
		m.t.Fatalf("lab has no workload %q", workload)
	}
	var ep struct {
		IP string `json:"ip"`
	}
	m.JSON(w.Node, &ep, "endpoint", "add", "--netns", w.Netns, "--labels", labels)
	if ep.IP == "" {
		m.t.Fatalf("endpoint add %s returned no address", workload)
	}
	return ep.IP
}

// Echo servers: a TCP and a UDP echo in a workload namespace on a port.
func (m *Mesh) Echo(workload, ip string, port int) {
	m.t.Helper()
	w := m.Lab.Workload(workload)
	addr := net.JoinHostPort(ip, fmt.Sprint(port))
	l, err := m.Lab.Listen(w.Netns, "tcp", addr)
	if err != nil {
		m.t.Fatalf("listen tcp %s in %s: %v", addr, workload, err)
	}
	pc, err := m.Lab.ListenPacket(w.Netns, "udp", addr)
	if err != nil {
		l.Close()
		m.t.Fatalf("listen udp %s in %s: %v", addr, workload, err)
	}
	testutil.EchoTCP(m.t, l)
	testutil.EchoUDP(m.t, pc)
}

// Talk sends a message from a workload to ip:port over tcp or udp and
// expects it echoed; the error says what failed.
func (m *Mesh) Talk(from, network, ip string, port int, msg string) error {
	w := m.Lab.Workload(from)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := m.Lab.Dial(ctx, w.Netns, network, net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		return fmt.Errorf("%s dial: %w", network, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return fmt.Errorf("%s write: %w", network, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s read: %w", network, err)
	}
	if strings.TrimSpace(line) != msg {
		return fmt.Errorf("%s echo: got %q, want %q", network, line, msg)
	}
	return nil
}
