package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

func healthSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "ha"}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "cut"}}},
	}}
}

// run is one meshctl run with its streams apart and its exit status.
type run struct {
	stdout, stderr string
	code           int
}

// meshctlRun runs meshctl in a node's namespace against its agent, keeping
// stdout (the JSON) apart from stderr (the error), and the exit status.
func (m *Mesh) meshctlRun(node string, args ...string) run {
	m.t.Helper()
	n := m.node(node)
	if n == nil {
		m.t.Fatalf("no agent on %s", node)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd, err := m.Lab.Command(ctx, n.Lab.Netns, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
	if err != nil {
		m.t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "WEFT_SOCKET="+n.Socket, "WEFT_CONFIG="+n.ConfigFile)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	r := run{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		m.t.Fatalf("meshctl %s on %s: %v", strings.Join(args, " "), node, err)
	}
	return r
}

// blockUDP drops every UDP packet in and out of a node's namespace (not
// loopback): WireGuard can never complete a handshake, while TCP to the
// join service and etcd still works. The rule lives in the node's lab
// namespace only.
func (m *Mesh) blockUDP(node string) {
	m.t.Helper()
	ruleset := filepath.Join(m.t.TempDir(), "block-udp.nft")
	rules := `table inet weft_e2e_block {
	chain out { type filter hook output priority 0; policy accept; meta l4proto udp oifname != "lo" drop; }
	chain in { type filter hook input priority 0; policy accept; meta l4proto udp iifname != "lo" drop; }
}
`
	if err := os.WriteFile(ruleset, []byte(rules), 0o600); err != nil {
		m.t.Fatal(err)
	}
	ctx := context.Background()
	if out, err := m.Lab.Exec(ctx, node, "nft", "-f", ruleset); err != nil {
		m.t.Fatalf("blocking UDP in %s: %v: %s", node, err, out)
	}
	m.t.Cleanup(func() {
		_, _ = m.Lab.Exec(context.Background(), node, "nft", "delete", "table", "inet", "weft_e2e_block")
	})
}

// joinCutOff joins a node whose network drops the tunnel: join returns as
// soon as the agent is ready (--wait 0s), and the test waits until the
// agent answers on its socket, healthy or not.
func (m *Mesh) joinCutOff(name string) {
	m.t.Helper()
	n := m.newNode(name)
	args := append([]string{filepath.Join(binDir, "meshctl"), "join", m.Token, "--name", name, "--wait", "0s"}, m.procFlags(n)...)
	args = append(args, m.agentFlags(n)...)
	p, err := m.Lab.Start(n.Lab.Netns, "agent-"+name, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	n.Proc = p
	testutil.Eventually(m.t, 90*time.Second, "the agent on "+name+" answering", func() error {
		r := m.meshctlRun(name, "status", "-o", "json")
		if !json.Valid([]byte(r.stdout)) || r.stdout == "" {
			return fmt.Errorf("exit %d: %s%s\njoin output:\n%s", r.code, r.stdout, r.stderr, p.Output())
		}
		return nil
	})
}

type healthJSON struct {
	Health struct {
		OK    bool `json:"ok"`
		Peers []struct {
			Node  string `json:"node"`
			State string `json:"state"`
		} `json:"peers"`
	} `json:"health"`
}

// TestHealth: a healthy mesh says so and exits 0; a node whose UDP is
// blocked (it joins, and never completes a WireGuard handshake) reports
// itself unhealthy, naming its peers, and exits non-zero, also with
// --wait; its peers name it too; `meshctl ping` shows the path and round
// trips to a reachable node and says why a blocked one does not answer.
func TestHealth(t *testing.T) {
	m := NewMesh(t, healthSpec())
	m.Up("seed")
	if r := m.meshctlRun("seed", "status"); r.code != 0 || !strings.Contains(r.stdout, "Health:       ok (no peers yet)\n") {
		t.Fatalf("a new single-node mesh: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	m.Join("ha", "")

	t.Run("healthy mesh exits 0", func(t *testing.T) {
		m := m.For(t)
		r := m.meshctlRun("ha", "status", "--wait=60s")
		if r.code != 0 || !strings.Contains(r.stdout, "Health:       ok (1 of 1 peers handshook)\n") {
			t.Fatalf("status --wait on a healthy node: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r = m.meshctlRun("seed", "--socket", m.node("seed").Socket, "-o", "json", "status")
		var h healthJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &h) != nil || !h.Health.OK || len(h.Health.Peers) != 1 || h.Health.Peers[0].State != "ok" {
			t.Fatalf("meshctl --socket S -o json status on the seed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r = m.meshctlRun("seed", "version", "-o", "json")
		var v struct {
			Client, Agent struct{ Version, GoVersion string }
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.Agent.Version == "" || v.Agent.GoVersion == "" {
			t.Fatalf("version -o json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("ping shows the path and round trips", func(t *testing.T) {
		m := m.For(t)
		r := m.meshctlRun("seed", "ping", "ha", "-c", "3", "--interval", "200ms")
		pong := regexp.MustCompile(`(?m)^pong from ha \(100\.\d+\.\d+\.\d+\) direct (via )?198\.1[89]\.\d+\.\d+:\d+( \(since [\d:]+\))? in [\d.]+(µs|ms)$`)
		if r.code != 0 || len(pong.FindAllString(r.stdout, -1)) != 3 || !strings.Contains(r.stdout, "3 probes sent, 3 answered; round trip min/avg/max ") {
			t.Fatalf("ping ha: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := m.meshctlRun("seed", "ping", "nope"); r.code != 1 || !strings.Contains(r.stderr, `no node "nope" in the mesh`) {
			t.Fatalf("ping an unknown node: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	m.blockUDP("cut")
	m.joinCutOff("cut")

	t.Run("cut-off node is unhealthy and says so", func(t *testing.T) {
		m := m.For(t)
		var last run
		testutil.Eventually(t, 60*time.Second, "cut to report its peers unreachable", func() error {
			last = m.meshctlRun("cut", "status")
			if last.code == 0 || !strings.Contains(last.stdout, "Unreachable peers (2 of 2):") {
				return fmt.Errorf("exit %d\n%s%s", last.code, last.stdout, last.stderr)
			}
			return nil
		})
		for _, want := range []string{"  ha: no handshake since it was added ", "  seed: no handshake since it was added "} {
			if !strings.Contains(last.stdout, want) {
				t.Errorf("status on cut lacks %q:\n%s", want, last.stdout)
			}
		}
		if last.code != 1 || !strings.Contains(last.stderr, "the node is not healthy: peers: 2 of 2 peers unreachable: ha: no handshake since it was added") {
			t.Errorf("status on cut: exit %d, stderr %q", last.code, last.stderr)
		}
		r := m.meshctlRun("cut", "status", "-o", "json")
		var h healthJSON
		if r.code != 1 || json.Unmarshal([]byte(r.stdout), &h) != nil || h.Health.OK || len(h.Health.Peers) != 2 || h.Health.Peers[0].State != "never" || h.Health.Peers[1].State != "never" {
			t.Errorf("status -o json on cut: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}

		r = m.meshctlRun("cut", "status", "--wait=5s")
		if r.code != 1 || !strings.Contains(r.stderr, "meshctl: waiting for the node to be healthy (0s of 5s): peers: 2 of 2 peers unreachable") ||
			!strings.Contains(r.stderr, "the node is not healthy after 5s: peers: 2 of 2 peers unreachable: ha: no handshake since it was added") {
			t.Errorf("status --wait=5s on cut: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("the others name the cut-off node", func(t *testing.T) {
		m := m.For(t)
		testutil.Eventually(t, 60*time.Second, "the seed to report cut unreachable", func() error {
			r := m.meshctlRun("seed", "status")
			if r.code != 1 || !strings.Contains(r.stderr, "1 of 2 peers unreachable: cut: no handshake since it was added") {
				return fmt.Errorf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			return nil
		})
		r := m.meshctlRun("seed", "ping", "cut", "-c", "2", "--interval", "100ms", "--timeout", "500ms")
		nothing := regexp.MustCompile(`(?m)^no answer from cut \(100\.\d+\.\d+\.\d+\) direct (via )?198\.1[89]\.\d+\.\d+:\d+( \(since [\d:]+\))? within 500ms$`)
		if r.code != 1 || len(nothing.FindAllString(r.stdout, -1)) != 2 || !strings.Contains(r.stdout, "2 probes sent, 0 answered\n") {
			t.Errorf("ping cut: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		why := regexp.MustCompile(`no answer from \S+/cut: no WireGuard handshake with \S+/cut since it was added \S+ ago: its UDP endpoint 198\.1[89]\.\d+\.\d+:\d+ does not answer`)
		if !why.MatchString(r.stderr) {
			t.Errorf("ping cut does not say why:\n%s", r.stderr)
		}
	})
}
