package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
)

// lifecycleSpec: a seed and two VMs on one site, one VM on another.
func lifecycleSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "lseed"}, {Name: "l1"}, {Name: "l2"}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "l3"}}},
	}}
}

// meshctlIn runs meshctl with args in a node's namespace, not through the
// node's agent environment: the flags say which agent, configuration and
// state are meant.
func (m *Mesh) meshctlIn(node string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := m.Lab.Exec(ctx, m.Lab.Node(node).Netns, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
	return string(out), err
}

// nodeFlags are the flags that point meshctl join, up, down and leave at
// a node's own configuration, state, socket and agent binary.
func nodeFlags(n *MeshNode) []string {
	return []string{"--config-file", n.ConfigFile, "--state-dir", n.StateDir, "--socket", n.Socket, "--agent-binary", filepath.Join(binDir, "weft-agent")}
}

// linkExists says whether the node's WireGuard device is in its namespace.
func (m *Mesh) linkExists(node string) bool {
	_, err := m.Lab.Exec(context.Background(), m.Lab.Node(node).Netns, "ip", "link", "show", m.wgName(node))
	return err == nil
}

// pinDir is the agent's bpffs scope of a node of the default cluster.
func (m *Mesh) pinDir(node string) string { return filepath.Join(m.pinRoot, "default_"+node) }

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q:\n%s", what, w, out)
		}
	}
}

// TestLifecycle: what a user does around the demo path — up against a
// running agent, join again, an agent that cannot start, a node cut off,
// down and back, Ctrl-C, leave, leave --force, lab down --all — and what
// each leaves behind (issue 13, items 9-13).
func TestLifecycle(t *testing.T) {
	m := NewMesh(t, lifecycleSpec())
	m.Up("lseed")
	seed := m.node("lseed")

	t.Run("up against a running agent uses it and writes nothing", func(t *testing.T) {
		m := m.For(t)
		dir := t.TempDir()
		cfg := filepath.Join(dir, "agent.yaml")
		out, err := m.meshctlIn("lseed", "up", "--name", "other", "--socket", seed.Socket, "--config-file", cfg,
			"--state-dir", filepath.Join(dir, "state"), "--agent-binary", filepath.Join(binDir, "weft-agent"))
		if err != nil {
			t.Fatalf("up against the running seed: %v\n%s", err, out)
		}
		mustContain(t, "up", out, "An agent already runs on "+seed.Socket+": the first node lseed of cluster default", "nothing was written",
			"Weft is up: node lseed", "weft1.", "note: --name, --config-file ignored")
		if strings.Contains(out, "other") && strings.Contains(out, "node other") {
			t.Errorf("up reported the new name, not the running agent's:\n%s", out)
		}
		if exists(cfg) || exists(filepath.Join(dir, "state")) {
			t.Errorf("up against a running agent wrote a configuration or state")
		}
	})

	m.Join("l1", "app=web")
	l1 := m.node("l1")

	t.Run("join again warns about the flags it ignores", func(t *testing.T) {
		m := m.For(t)
		before, _ := os.ReadFile(l1.ConfigFile)
		out, err := m.meshctlIn("l1", append(append([]string{"join", "--name", "l1", "--labels", "app=other"}, nodeFlags(l1)...), "--", "--wg-port", "51999")...)
		if err != nil {
			t.Fatalf("join again: %v\n%s", err, out)
		}
		mustContain(t, "join again", out, "Joined before as l1", "note: --labels, the agent flags after -- (--wg-port 51999) ignored", "already running")
		if after, _ := os.ReadFile(l1.ConfigFile); string(after) != string(before) {
			t.Errorf("join again changed the configuration")
		}
	})

	t.Run("an agent that exits before it is ready shows its log", func(t *testing.T) {
		m := m.For(t)
		dir := t.TempDir()
		// lo exists in every namespace and is no WireGuard device: the
		// agent refuses it and exits.
		out, err := m.meshctlIn("l3", "join", m.Token, "--name", "early", "--config-file", filepath.Join(dir, "agent.yaml"),
			"--state-dir", dir, "--socket", filepath.Join(dir, "a.sock"), "--agent-binary", filepath.Join(binDir, "weft-agent"),
			"--", "--wg-interface", "lo", "--bpf-pin-path", m.pinRoot, "--wg-mode", "userspace")
		if err == nil {
			t.Fatalf("join with an unusable interface succeeded:\n%s", out)
		}
		mustContain(t, "early exit", out, "exited before it was ready: exit status 1; the end of "+filepath.Join(dir, "agent.log")+":",
			"interface lo already exists")
	})

	l3 := m.newNode("l3")
	ctx := context.Background()
	nft := func(args ...string) {
		t.Helper()
		if out, err := m.Lab.Exec(ctx, l3.Lab.Netns, append([]string{"nft"}, args...)...); err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
	}

	t.Run("join --wait says a node with WireGuard blocked is cut off", func(t *testing.T) {
		m := m.For(t)
		// In l3's own namespace: WireGuard out and in dropped.
		nft("add", "table", "inet", "cutoff")
		nft("add", "chain", "inet", "cutoff", "out", "{ type filter hook output priority 0 ; }")
		nft("add", "rule", "inet", "cutoff", "out", "udp", "dport", "51833", "drop")
		nft("add", "chain", "inet", "cutoff", "in", "{ type filter hook input priority 0 ; }")
		nft("add", "rule", "inet", "cutoff", "in", "udp", "sport", "51833", "drop")
		args := append(append([]string{"join", m.Token, "--name", "l3", "--wait", "4s"}, nodeFlags(l3)...), m.agentFlags(l3)...)
		out, err := m.meshctlIn("l3", args...)
		if err == nil {
			t.Fatalf("join of a node with WireGuard blocked succeeded:\n%s", out)
		}
		mustContain(t, "cut-off join", out, "The agent is running as background process", "Waiting up to 4s for a WireGuard handshake",
			"this node is cut off: no WireGuard handshake with any of its", "UDP port 51833 blocked", "NAT", "lseed at")
	})

	var key string
	t.Run("down stops the agent and removes the tunnel and datapath, keeping the credentials", func(t *testing.T) {
		m := m.For(t)
		var st struct {
			Tunnel struct {
				PublicKey string `json:"publicKey"`
			} `json:"tunnel"`
		}
		m.JSON("l3", &st, "status")
		key = st.Tunnel.PublicKey
		if !m.linkExists("l3") || !exists(m.pinDir("l3")) {
			t.Fatalf("before down: device %v, pins %v", m.linkExists("l3"), exists(m.pinDir("l3")))
		}
		out, err := m.meshctlIn("l3", append([]string{"down"}, nodeFlags(l3)[:2]...)...) // --config-file only
		if err != nil {
			t.Fatalf("down: %v\n%s", err, out)
		}
		mustContain(t, "down", out, "Stopped the agent (pid", "removed WireGuard device "+m.wgName("l3"), "removed the eBPF datapath pinned in "+m.pinDir("l3"),
			"Node l3 is down", "'meshctl join' brings it back")
		if m.linkExists("l3") {
			t.Error("the WireGuard device is left after down")
		}
		if exists(m.pinDir("l3")) {
			t.Errorf("the pins %s are left after down", m.pinDir("l3"))
		}
		if exists(filepath.Join("/var/run/wireguard", m.wgName("l3")+".sock")) {
			t.Error("the userspace helper's UAPI socket is left after down")
		}
		for _, keep := range []string{l3.ConfigFile, filepath.Join(l3.StateDir, "credentials"), filepath.Join(l3.StateDir, "wireguard", "wireguard.key")} {
			if !exists(keep) {
				t.Errorf("down removed %s", keep)
			}
		}
		if out, err := m.Meshctl("l3", "status"); err == nil {
			t.Errorf("status after down answers:\n%s", out)
		}
	})

	t.Run("join brings a node that is down back, without a token, with its key", func(t *testing.T) {
		m := m.For(t)
		nft("delete", "table", "inet", "cutoff")
		out, err := m.meshctlIn("l3", append([]string{"join"}, nodeFlags(l3)...)...)
		if err != nil {
			t.Fatalf("join after down: %v\n%s", err, out)
		}
		mustContain(t, "join after down", out, "Joined before as l3", "Connected: WireGuard handshake with")
		var st struct {
			Tunnel struct {
				PublicKey string `json:"publicKey"`
			} `json:"tunnel"`
		}
		m.JSON("l3", &st, "status")
		if key == "" || st.Tunnel.PublicKey != key {
			t.Errorf("the key changed across down and join: %q, then %q", key, st.Tunnel.PublicKey)
		}
	})

	m.Join("l2", "")
	l2 := m.node("l2")
	t.Run("Ctrl-C on join --foreground leaves the tunnel up; down removes it", func(t *testing.T) {
		m := m.For(t)
		_ = l2.Proc.Stop() // SIGTERM to meshctl join --foreground and the agent
		if !m.linkExists("l2") || !exists(m.pinDir("l2")) {
			t.Fatalf("after the agent stopped: device %v, pins %v; both stay by design (a restart keeps traffic)", m.linkExists("l2"), exists(m.pinDir("l2")))
		}
		out, err := m.meshctlIn("l2", "down", "--config-file", l2.ConfigFile, "--agent-binary", filepath.Join(binDir, "weft-agent"))
		if err != nil {
			t.Fatalf("down: %v\n%s", err, out)
		}
		mustContain(t, "down", out, "The agent is not running", "removed WireGuard device "+m.wgName("l2"))
		if m.linkExists("l2") || exists(m.pinDir("l2")) {
			t.Errorf("after down: device %v, pins %v", m.linkExists("l2"), exists(m.pinDir("l2")))
		}
	})

	t.Run("leave without a running agent removes the tunnel, pins, keys and credentials", func(t *testing.T) {
		m := m.For(t)
		_ = l1.Proc.Stop()
		out, err := m.meshctlIn("l1", append([]string{"leave"}, "--config-file", l1.ConfigFile, "--socket", l1.Socket, "--agent-binary", filepath.Join(binDir, "weft-agent"))...)
		if err != nil {
			t.Fatalf("leave: %v\n%s", err, out)
		}
		mustContain(t, "leave", out, "The agent is not running", "removed WireGuard device", "removed the eBPF datapath pinned in "+m.pinDir("l1"))
		for _, gone := range []string{m.pinDir("l1"), l1.ConfigFile, filepath.Join(l1.StateDir, "credentials"), filepath.Join(l1.StateDir, "wireguard"),
			filepath.Join(l1.StateDir, "agent.log")} {
			if exists(gone) {
				t.Errorf("leave left %s", gone)
			}
		}
		if m.linkExists("l1") {
			t.Error("leave left the WireGuard device")
		}
	})

	t.Run("lab down --all without --yes lists and removes nothing", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(binDir, "meshctl"), "lab", "down", "--all").CombinedOutput()
		if err == nil && strings.Contains(string(out), "would remove") {
			t.Errorf("lab down --all without --yes listed labs to remove and exited 0:\n%s", out)
		}
		// This test's lab is held by this process: named as left alone.
		if !strings.Contains(string(out), "Left alone") || !strings.Contains(string(out), m.Lab.Name()) {
			t.Errorf("lab down --all does not name this test's lab as left alone:\n%s", out)
		}
		if _, err := lab.Load(m.Lab.Name()); err != nil || !m.linkExists("l3") {
			t.Errorf("lab down --all without --yes removed something: %v", err)
		}
	})

	t.Run("leave --force on the first node removes the CA, its key and the etcd data", func(t *testing.T) {
		m := m.For(t)
		out, err := m.meshctlIn("lseed", "leave", "--force", "--config-file", seed.ConfigFile, "--socket", seed.Socket)
		if err != nil {
			t.Fatalf("leave --force: %v\n%s", err, out)
		}
		mustContain(t, "leave --force", out, "The node left the mesh.")
		for _, gone := range []string{filepath.Join(seed.StateDir, "pki"), filepath.Join(seed.StateDir, "etcd"), filepath.Join(seed.StateDir, "wireguard"), seed.ConfigFile, m.pinDir("lseed")} {
			if exists(gone) {
				t.Errorf("leave --force left %s", gone)
			}
		}
	})
}
