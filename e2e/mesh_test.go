package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// meshSpec: three sites, the third behind NAT. site1-n1 is the seed; four
// nodes join, one of them (site3-n1) behind NAT. Workloads web, db and
// cache sit on different sites.
func meshSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "vm1", Workloads: []lab.WorkloadSpec{{Name: "web"}}}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "vm2", Workloads: []lab.WorkloadSpec{{Name: "db"}}}, {Name: "vm3"}}},
		{Name: "site3", NAT: true, Nodes: []lab.NodeSpec{{Name: "vm4", Workloads: []lab.WorkloadSpec{{Name: "cache"}}}}},
	}}
}

type peerJSON struct {
	Node          string    `json:"node"`
	AllowedIPs    []string  `json:"allowedIPs"`
	LastHandshake time.Time `json:"lastHandshake"`
}

type statusJSON struct {
	Node   string     `json:"node"`
	MeshIP string     `json:"meshIP"`
	CIDRs  []string   `json:"cidrs"`
	Peers  []peerJSON `json:"peers"`
	Tunnel struct {
		Kind string `json:"kind"`
	} `json:"tunnel"`
}

// TestMesh is the whole user story on one lab, step by step: a seed, four
// joins (one behind NAT), encrypted reachability, policy, restart, tokens,
// leave and crash.
func TestMesh(t *testing.T) {
	m := NewMesh(t, meshSpec())
	m.Up("seed")
	for _, n := range []struct{ name, labels string }{{"vm1", "app=web-vm"}, {"vm2", ""}, {"vm3", ""}, {"vm4", "site=nat"}} {
		m.Join(n.name, n.labels)
	}
	ips := map[string]string{
		"web":   m.AddWorkload("web", "app=web"),
		"db":    m.AddWorkload("db", "app=db"),
		"cache": m.AddWorkload("cache", "app=cache"),
	}
	for w, ip := range ips {
		if !strings.HasPrefix(ip, "100.64.") {
			t.Fatalf("workload %s got %s, outside the mesh pool 100.64.0.0/16", w, ip)
		}
		m.Echo(w, ip, 5432)
		m.Echo(w, ip, 5353)
		m.Echo(w, ip, 8080)
	}

	t.Run("every node sees every other as a peer", func(t *testing.T) {
		m := m.For(t)
		for _, n := range []string{"seed", "vm1", "vm2", "vm3", "vm4"} {
			testutil.Eventually(t, 30*time.Second, n+" has 4 peers", func() error {
				var st statusJSON
				m.JSON(n, &st, "status")
				if len(st.Peers) != 4 {
					return fmt.Errorf("%d peers: %+v", len(st.Peers), st.Peers)
				}
				if st.Tunnel.Kind != "userspace" && st.Tunnel.Kind != "kernel" {
					return fmt.Errorf("tunnel kind %q", st.Tunnel.Kind)
				}
				return nil
			})
		}
	})

	t.Run("every workload reaches every other, encrypted on the wire", func(t *testing.T) {
		m := m.For(t)
		capFile := filepath.Join(t.TempDir(), "underlay.pcap")
		tcpdump, err := m.Lab.Start(m.Lab.Internet(), "tcpdump", "tcpdump", "--immediate-mode", "-i", "any", "-U", "-s", "0", "-w", capFile)
		if err != nil {
			t.Fatal(err)
		}
		m.waitOutput(tcpdump, regexp.MustCompile(`listening on`), 30*time.Second, "tcpdump to attach")
		marker := "WEFT-PLAINTEXT-MARKER-4b1d"
		for _, from := range []string{"web", "db", "cache"} {
			for _, to := range []string{"web", "db", "cache"} {
				if from == to {
					continue
				}
				testutil.Eventually(t, 30*time.Second, from+" -> "+to, func() error {
					if err := m.Talk(from, "tcp", ips[to], 8080, marker); err != nil {
						return err
					}
					return m.Talk(from, "udp", ips[to], 5353, marker)
				})
			}
		}
		time.Sleep(500 * time.Millisecond) // the last packets reach the file (-U)
		_ = tcpdump.Stop()
		data, err := os.ReadFile(capFile)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) < 2000 {
			t.Fatalf("the capture holds only %d bytes: it missed the transfers; tcpdump said:\n%s", len(data), tcpdump.Output())
		}
		if bytes.Contains(data, []byte(marker)) {
			t.Fatal("the underlay capture holds the plaintext marker: traffic between sites is not encrypted")
		}
		out, _ := hostCmd("tcpdump", "-nn", "-r", capFile, "udp port 51833")
		if n := strings.Count(out, "\n"); n < 12 {
			t.Fatalf("expected WireGuard packets (UDP 51833) between sites, saw %d:\n%s", n, out)
		}
	})

	t.Run("policy: allow web to db on 5432/tcp and 5353/udp only", func(t *testing.T) {
		m := m.For(t)
		pol := writeFile(t, "db.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}, {port: 5353, protocol: UDP}]
`)
		// Policies are the admin's: a joined VM is refused, the seed applies.
		if out, err := m.Meshctl("vm1", "policy", "apply", "-f", pol); err == nil || !strings.Contains(out+err.Error(), "admin") {
			t.Fatalf("policy apply on a joined VM: want refused for lack of admin rights, got %v:\n%s", err, out)
		}
		applyPolicy(t, m, "seed", pol)
		matrix := []verdictCase{
			{"web", "tcp", "db", 5432, true}, {"web", "udp", "db", 5353, true},
			{"web", "tcp", "db", 8080, false}, {"cache", "tcp", "db", 5432, false}, {"cache", "udp", "db", 5353, false},
			{"db", "tcp", "web", 8080, true}, // web is not isolated
		}
		checkMatrix(t, m, ips, matrix)

		// An invalid policy is refused whole with file, line and reason, and
		// nothing changes.
		bad := writeFile(t, "bad.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: cache}}]
      ports: [{port: 99999, protocol: TCP}]
`)
		out, err := m.Meshctl("vm2", "policy", "apply", "-f", bad)
		if err == nil {
			t.Fatalf("an invalid policy was accepted:\n%s", out)
		}
		if !regexp.MustCompile(`bad\.yaml:\d+`).MatchString(out) || !strings.Contains(out, "99999") {
			t.Fatalf("the error does not name the file, line and bad value:\n%s", out)
		}
		checkMatrix(t, m, ips, matrix)

		// Change it: cache may reach db on 5432 too.
		pol2 := writeFile(t, "db2.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}, {matchLabels: {app: cache}}]
      ports: [{port: 5432, protocol: TCP}]
`)
		applyPolicy(t, m, "seed", pol2)
		checkMatrix(t, m, ips, []verdictCase{
			{"web", "tcp", "db", 5432, true}, {"cache", "tcp", "db", 5432, true},
			{"web", "udp", "db", 5353, false}, {"cache", "tcp", "db", 8080, false},
		})
		m.MustMeshctl("seed", "policy", "delete", "db")
		checkMatrix(t, m, ips, []verdictCase{{"cache", "tcp", "db", 8080, true}, {"web", "udp", "db", 5353, true}})
	})

	t.Run("agent restart under a running ping loses nothing", func(t *testing.T) {
		m := m.For(t)
		w := m.Lab.Workload("web")
		ping, err := m.Lab.Start(w.Netns, "ping-db", "ping", "-i", "0.05", "-W", "1", ips["db"])
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		n := m.node("vm2")
		_ = n.Proc.Stop() // meshctl join --foreground and the agent with it
		p, err := m.startJoin(n, m.Token, "")
		if err != nil {
			t.Fatal(err)
		}
		n.Proc = p
		m.waitOutput(p, regexp.MustCompile(`Already joined`), 30*time.Second, "join to restart the agent")
		m.WaitHealthy("vm2")
		time.Sleep(time.Second)
		_ = syscall.Kill(ping.Pid, syscall.SIGINT)
		<-ping.Done()
		sent, recv := pingCounts(t, ping.Output())
		t.Logf("ping across the agent restart: %d sent, %d received", sent, recv)
		if sent < 20 {
			t.Fatalf("ping sent only %d packets:\n%s", sent, ping.Output())
		}
		if recv < sent-1 { // the last one may be in flight at SIGINT
			t.Fatalf("the restart lost %d of %d pings", sent-recv, sent)
		}
		checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}})
	})

	t.Run("tokens refused clearly", func(t *testing.T) {
		m := m.For(t)
		var tok struct {
			ID        string `json:"id"`
			JoinToken string `json:"joinToken"`
		}
		m.JSON("seed", &tok, "token", "create", "--ttl", "10m")
		m.MustMeshctl("seed", "token", "revoke", tok.ID)
		out := joinExpectError(t, m, "vm3", tok.JoinToken)
		if !strings.Contains(out, "revoked") {
			t.Fatalf("revoked token: message does not say so:\n%s", out)
		}
		out = joinExpectError(t, m, "vm3", m.ExpiredToken(t))
		if !strings.Contains(out, "expired") {
			t.Fatalf("expired token: message does not say so:\n%s", out)
		}
		// Single-use token: its one use by another machine, then a second.
		m.JSON("seed", &tok, "token", "create", "--ttl", "10m")
		// The first use succeeds (the agent binary given is /bin/false, so
		// only the token exchange happens); the second is refused.
		out, err := joinOnce(t, m, "vm3", tok.JoinToken, "/bin/false")
		if !strings.Contains(out, "Joined the mesh") {
			t.Fatalf("the first use of a fresh token was refused: %v\n%s", err, out)
		}
		out = joinExpectError(t, m, "vm3", tok.JoinToken)
		if !strings.Contains(out, "used 1 of 1 times") {
			t.Fatalf("used-up token: message does not say so:\n%s", out)
		}
		// A token whose CA fingerprint is not the mesh CA's.
		pin := "sha256:" + strings.Repeat("ab", 32)
		forged := tokenWithCA(t, tok.JoinToken, pin)
		out = joinExpectError(t, m, "vm3", forged)
		if !strings.Contains(out, "the token pins CA "+pin) {
			t.Fatalf("wrong-CA token: message does not mention the CA:\n%s", out)
		}
	})

	t.Run("a node that leaves is dropped by its peers with its routes", func(t *testing.T) {
		m := m.For(t)
		var st statusJSON
		m.JSON("vm3", &st, "status")
		cidr := st.CIDRs[0]
		m.MustMeshctl("vm3", "leave")
		testutil.Eventually(t, 20*time.Second, "peers drop vm3", func() error { return noPeer(m, "seed", "vm3", cidr) })
	})

	t.Run("a crashed node is dropped after its lease expires", func(t *testing.T) {
		m := m.For(t)
		var st statusJSON
		m.JSON("vm4", &st, "status")
		cidr := st.CIDRs[0]
		n := m.node("vm4")
		// The machine dies: the agent is SIGKILLed with everything else
		// running in the node (the WireGuard helper included), and its
		// network namespace is removed.
		killProcessTree(n.Proc.Pid)
		for _, pid := range pidsInNetns(t, n.Lab.Netns) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if out, err := hostCmd("ip", "netns", "del", n.Lab.Netns); err != nil {
			t.Fatalf("removing the crashed node's namespace: %v: %s", err, out)
		}
		// A machine that dies loses its /var/run with it; here that
		// directory is the host's, so the dead helper's UAPI socket goes
		// by hand (the mesh's cleanup fails on any socket left over).
		_ = os.Remove(filepath.Join("/var/run/wireguard", m.wgName("vm4")+".sock"))
		testutil.Eventually(t, 40*time.Second, "peers drop the crashed vm4", func() error {
			if err := noPeer(m, "seed", "vm4", cidr); err != nil {
				return err
			}
			return noPeer(m, "vm1", "vm4", cidr)
		})
	})
}

type verdictCase struct {
	from, network, to string
	port              int
	allowed           bool
}

func checkMatrix(t *testing.T, m *Mesh, ips map[string]string, cases []verdictCase) {
	t.Helper()
	for _, c := range cases {
		name := fmt.Sprintf("%s -> %s %d/%s", c.from, c.to, c.port, c.network)
		testutil.Eventually(t, 20*time.Second, name, func() error {
			err := m.Talk(c.from, c.network, ips[c.to], c.port, "hello")
			switch {
			case c.allowed && err != nil:
				return fmt.Errorf("want allowed: %v", err)
			case !c.allowed && err == nil:
				return fmt.Errorf("want denied, but the echo came back")
			}
			return nil
		})
	}
}

func applyPolicy(t *testing.T, m *Mesh, node, file string) {
	t.Helper()
	out := m.MustMeshctl(node, "policy", "apply", "-f", file)
	if !strings.Contains(out, "db") {
		t.Fatalf("policy apply output does not name the policy:\n%s", out)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// joinOnce runs `meshctl join` for a throwaway node name from a lab node.
func joinOnce(t *testing.T, m *Mesh, node, token, agentBinary string) (string, error) {
	dir := t.TempDir()
	out, err := m.Lab.Exec(t.Context(), m.Lab.Node(node).Netns, filepath.Join(binDir, "meshctl"), "join", token, "--name", "probe",
		"--state-dir", dir, "--config-file", filepath.Join(dir, "agent.yaml"), "--socket", filepath.Join(dir, "a.sock"),
		"--agent-binary", agentBinary, "--wait", "2s")
	return string(out), err
}

func joinExpectError(t *testing.T, m *Mesh, node, token string) string {
	t.Helper()
	out, err := joinOnce(t, m, node, token, filepath.Join(binDir, "weft-agent"))
	if err == nil {
		t.Fatalf("join with a bad token succeeded:\n%s", out)
	}
	return out
}

func noPeer(m *Mesh, on, gone, cidr string) error {
	var st statusJSON
	out, err := m.Meshctl(on, "status", "-o", "json")
	if err != nil {
		return fmt.Errorf("status on %s: %v", on, err)
	}
	if err := jsonUnmarshal(out, &st); err != nil {
		return err
	}
	for _, p := range st.Peers {
		if p.Node == gone {
			return fmt.Errorf("%s still has peer %s", on, gone)
		}
		for _, a := range p.AllowedIPs {
			if a == cidr {
				return fmt.Errorf("%s still routes %s to a peer", on, cidr)
			}
		}
	}
	routes, _ := m.Lab.Exec(context.Background(), m.node(on).Lab.Netns, "ip", "route", "show", cidr)
	if strings.TrimSpace(string(routes)) != "" {
		return fmt.Errorf("%s still has a route for %s: %s", on, cidr, routes)
	}
	return nil
}

func pingCounts(t *testing.T, out string) (sent, recv int) {
	t.Helper()
	mm := regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`).FindStringSubmatch(out)
	if mm == nil {
		t.Fatalf("no ping summary in:\n%s", out)
	}
	sent, _ = strconv.Atoi(mm[1])
	recv, _ = strconv.Atoi(mm[2])
	return sent, recv
}

// killProcessTree SIGKILLs a lab process's whole group (meshctl and the
// agent it runs): a crash, with no chance to clean up.
func killProcessTree(pid int) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}
