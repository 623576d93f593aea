package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/health"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// controlSpec: a seed, a web VM with a workload, and a database VM on
// another site.
func controlSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "cseed"}, {Name: "cweb", Workloads: []lab.WorkloadSpec{{Name: "cwebapp"}}}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "cdb"}}},
	}}
}

// isolateDB is the docs' own example: the VM joined with --labels app=db
// takes ingress from app=web on 5432 only.
const isolateDB = `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]
`

// TestIsolatedVMKeepsControlTraffic: a policy that isolates a VM's host
// endpoint (its labels select it) must not cut the agents off from each
// other: status --all, health probes, gossip and observe --all-nodes work
// to and from it, while user policy still decides everything else — other
// ports of the same node addresses, and workloads on the agents' ports.
//
// The policy is applied before the VM joins, so none of the agents'
// connections to it predates the isolation (conntrack would carry those).
func TestIsolatedVMKeepsControlTraffic(t *testing.T) {
	m := NewMesh(t, controlSpec())
	m.Up("cseed")
	m.Join("cweb", "app=web")
	applyNamedPolicy(t, m, "cseed", "db", writeFile(t, "db.yaml", isolateDB))
	m.Join("cdb", "app=db")
	meshIP := map[string]string{}
	for _, n := range []string{"cseed", "cweb", "cdb"} {
		var st statusJSON
		m.JSON(n, &st, "status")
		meshIP[n] = st.MeshIP
	}
	app := m.AddWorkload("cwebapp", "app=web")
	db := m.node("cdb").Lab.Netns
	for _, port := range []int{5432, 8080} {
		addr := net.JoinHostPort(meshIP["cdb"], fmt.Sprint(port))
		l, err := m.Lab.Listen(db, "tcp", addr)
		if err != nil {
			t.Fatalf("listen on %s in cdb: %v", addr, err)
		}
		testutil.EchoTCP(t, l)
	}
	// The policy is in force on cdb: the web VM reaches the database.
	testutil.Eventually(t, 60*time.Second, "cweb reaches cdb:5432 (allowed by the policy)", func() error {
		return talkFromNode(m, "cweb", meshIP["cdb"], 5432)
	})

	t.Run("status --all sees every node reach the isolated VM and back", func(t *testing.T) {
		m := m.For(t)
		for _, from := range []string{"cseed", "cdb"} {
			testutil.Eventually(t, 60*time.Second, "every pair up in status --all on "+from, func() error {
				return allUp(m, from, 3)
			})
		}
		out, err := m.Meshctl("cseed", "status", "--all")
		if err != nil || !strings.Contains(out, "Reachability") || !strings.Contains(out, "(3 nodes, 0 down)") {
			t.Fatalf("status --all on cseed: %v\n%s", err, out)
		}
	})

	t.Run("observe --all-nodes reads the isolated VM's flows", func(t *testing.T) {
		m := m.For(t)
		// A denied attempt gives cdb a flow of its own to show.
		if err := talkFromNode(m, "cseed", meshIP["cdb"], 8080); err == nil {
			t.Fatal("cseed reached cdb:8080: the policy allows only app=web on 5432")
		}
		testutil.Eventually(t, 30*time.Second, "cdb's flows in observe --all-nodes on cseed", func() error {
			flows, err := observeFlows(m, "cseed", "--all-nodes", "--last", "-1", "--to-ip", meshIP["cdb"])
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.Node == "cdb" {
					return nil
				}
			}
			return fmt.Errorf("%d flows, none from cdb", len(flows))
		})
		if _, err := observeFlows(m, "cseed", "--node", "cdb", "--last", "1"); err != nil {
			t.Fatalf("observe --node cdb on cseed: %v", err)
		}
	})

	t.Run("the agents' connections are shown forwarded", func(t *testing.T) {
		m := m.For(t)
		testutil.Eventually(t, 30*time.Second, "a forwarded flow from cseed's agent to cdb:51835", func() error {
			flows, err := observeFlows(m, "cdb", "--verdict", "forwarded", "--last", "-1",
				"--from-ip", meshIP["cseed"], "--to-ip", meshIP["cdb"], "--port", fmt.Sprint(meshtls.DefaultPort))
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.Verdict == "forwarded" && f.Direction == "ingress" && f.Destination.Port == meshtls.DefaultPort {
					if !f.NodeControl {
						return fmt.Errorf("the agents' connection is not marked node-control: %+v", f)
					}
					return nil
				}
			}
			return fmt.Errorf("flows %+v", flows)
		})
	})

	t.Run("policy still decides everything else", func(t *testing.T) {
		m := m.For(t)
		// Other ports of a node address: the seed and the web VM's
		// agents' address, on ports the policy does not open.
		for _, c := range []struct {
			from string
			port int
		}{{"cseed", 5432}, {"cseed", 8080}, {"cweb", 8080}} {
			if err := talkFromNode(m, c.from, meshIP["cdb"], c.port); err == nil {
				t.Errorf("%s reached cdb:%d: the policy allows only app=web on 5432", c.from, c.port)
			}
		}
		// A workload on the agents' ports: even one the policy lets in on
		// 5432 is no node.
		for _, port := range []int{meshtls.DefaultPort, health.DefaultGossipPort} {
			if err := dialOnce(t, m, m.Lab.Workload("cwebapp").Netns, net.JoinHostPort(meshIP["cdb"], fmt.Sprint(port))); err == nil {
				t.Errorf("workload cwebapp (%s) connected to cdb's agent port %d", app, port)
			}
		}
		if err := m.Talk("cwebapp", "tcp", meshIP["cdb"], 5432, "allowed"); err != nil {
			t.Errorf("cwebapp (app=web) to cdb:5432: %v, want allowed", err)
		}
		// cdb says why, and the drop names the workload and the port.
		testutil.Eventually(t, 30*time.Second, "cdb's drop of cwebapp on 51835 in observe", func() error {
			flows, err := observeFlows(m, "cdb", "--verdict", "dropped", "--last", "-1", "--from-ip", app,
				"--port", fmt.Sprint(meshtls.DefaultPort))
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.Reason == bpf.ReasonPolicyDefault.String() && f.Destination.IP == meshIP["cdb"] {
					return nil
				}
			}
			return fmt.Errorf("flows %+v", flows)
		})
	})
}

// allUp checks status --all on a node: n nodes, none down, every probe up
// and every gossip member alive.
func allUp(m *Mesh, from string, n int) error {
	var hm api.HealthMatrix
	if err := statusAllJSON(m, from, &hm); err != nil {
		return err
	}
	if len(hm.Nodes) != n || len(hm.Down) != 0 {
		return fmt.Errorf("%d nodes, down %v", len(hm.Nodes), hm.Down)
	}
	for _, row := range hm.Nodes {
		if row.Error != "" {
			return fmt.Errorf("row %s: %s", row.Node, row.Error)
		}
		if len(row.Probes) != n-1 {
			return fmt.Errorf("row %s probes %d nodes, want %d", row.Node, len(row.Probes), n-1)
		}
		for _, p := range row.Probes {
			if p.State != "up" || p.Member != "alive" {
				return fmt.Errorf("%s -> %s: state %s, member %s (%s)", row.Node, p.Node, p.State, p.Member, p.Error)
			}
		}
	}
	return nil
}

// talkFromNode sends a line over TCP from a node's own namespace (its mesh
// address) and expects it echoed.
func talkFromNode(m *Mesh, from, ip string, port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := m.Lab.Dial(ctx, m.node(from).Lab.Netns, "tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if strings.TrimSpace(line) != "hello" {
		return fmt.Errorf("echo: got %q", line)
	}
	return nil
}

// observeFlows runs `meshctl observe ... -o json` on a node.
func observeFlows(m *Mesh, node string, args ...string) ([]api.Flow, error) {
	out, err := m.Meshctl(node, append(append([]string{"observe"}, args...), "-o", "json")...)
	if err != nil {
		return nil, fmt.Errorf("meshctl observe %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var flows []api.Flow
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var f api.Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return nil, fmt.Errorf("line %q: %v", sc.Text(), err)
		}
		flows = append(flows, f)
	}
	return flows, nil
}
