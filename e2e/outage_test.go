package e2e

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// outageSpec: the seed (the embedded etcd) on site 1, web on site 2, db
// on site 3.
func outageSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "vm1", Workloads: []lab.WorkloadSpec{{Name: "web"}}}}},
		{Name: "site3", Nodes: []lab.NodeSpec{{Name: "vm2", Workloads: []lab.WorkloadSpec{{Name: "db"}}}}},
	}}
}

// outageFor is how long each outage lasts: far longer than the nodes'
// 5 s lease, so every lease expires during it.
const outageFor = 60 * time.Second

// TestOutage: an etcd outage and an agent outage, each 60 s, twelve times
// the lease TTL, lose no ping at 50 a second between workloads on two
// sites under a policy that allows only web -> db, and stall no TCP
// stream: a lost lease is not a node's death (docs/architecture.md,
// "Outages").
func TestOutage(t *testing.T) {
	testutil.E2E(t)
	m := NewMesh(t, outageSpec())
	m.Up("seed")
	m.Join("vm1", "")
	m.Join("vm2", "")
	ips := map[string]string{"web": m.AddWorkload("web", "app=web"), "db": m.AddWorkload("db", "app=db")}
	// db accepts only web: a lost identity for web's address would drop
	// the pings, not just a lost peer.
	applyPolicy(t, m, "seed", writeFile(t, "db.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
`))
	m.Echo("db", ips["db"], 7000)
	testutil.Eventually(t, 30*time.Second, "web -> db", func() error { return pingOnce(m, "web", ips["db"]) })

	run := func(t *testing.T, what string, outage func(), recover func()) {
		count := int((outageFor + 20*time.Second) / (20 * time.Millisecond))
		ping, err := m.Lab.Start(m.Lab.Workload("web").Netns, "ping-"+what, "ping", "-n", "-q", "-i", "0.02",
			"-c", strconv.Itoa(count), "-W", "2", ips["db"])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ping.Stop() })
		stream := startStream(t, m, "web", net.JoinHostPort(ips["db"], "7000"))
		time.Sleep(2 * time.Second)
		outage()
		time.Sleep(outageFor)
		recover()
		select {
		case <-ping.Done():
		case <-time.After(outageFor + time.Minute):
			t.Fatalf("ping did not finish")
		}
		n, err := stream.stop()
		if err != nil {
			t.Errorf("the TCP stream web -> db stalled or broke: %v (%d bytes echoed)", err, n)
		}
		mm := pingStatsRE.FindStringSubmatch(ping.Output())
		if mm == nil {
			t.Fatalf("no ping statistics in:\n%s", ping.Output())
		}
		sent, _ := strconv.Atoi(mm[1])
		recv, _ := strconv.Atoi(mm[2])
		t.Logf("%s: %d pings sent, %d received; TCP stream echoed %d bytes", what, sent, recv, n)
		if sent != count || recv != sent {
			t.Fatalf("%s lost %d of %d pings", what, sent-recv, sent)
		}
		// The mesh is whole again: both nodes registered, peers in place.
		m.WaitHealthy("vm1")
		m.WaitHealthy("vm2")
		testutil.Eventually(t, 30*time.Second, "the seed to list every node again", func() error {
			var nodes []struct{ Name string }
			m.JSON("seed", &nodes, "nodes")
			if len(nodes) != 3 {
				return fmt.Errorf("nodes: %+v", nodes)
			}
			return nil
		})
	}

	t.Run("a 60 s etcd outage loses no ping", func(t *testing.T) {
		seed := m.node("seed").Lab.Netns
		nft := func(args ...string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if out, err := m.Lab.Exec(ctx, seed, append([]string{"nft"}, args...)...); err != nil {
				t.Fatalf("nft %v in the seed's namespace: %v: %s", args, err, out)
			}
		}
		run(t, "etcd outage", func() {
			// Nobody reaches etcd, the seed's own agent included.
			nft("add", "table", "inet", "weft_e2e_outage")
			nft("add", "chain", "inet", "weft_e2e_outage", "in", "{ type filter hook input priority -10 ; }")
			nft("add", "rule", "inet", "weft_e2e_outage", "in", "tcp", "dport", "2379", "drop")
		}, func() {
			nft("delete", "table", "inet", "weft_e2e_outage")
		})
	})

	t.Run("a 60 s agent outage loses no ping", func(t *testing.T) {
		n := m.node("vm2")
		run(t, "agent outage", func() {
			_ = n.Proc.Stop() // meshctl join --foreground and the agent with it; the datapath and tunnel stay
		}, func() {
			p, err := m.startJoin(n, m.Token, "")
			if err != nil {
				t.Fatal(err)
			}
			n.Proc = p
			m.waitOutput(p, regexp.MustCompile(`Already joined`), 30*time.Second, "join to restart the agent")
		})
	})
}
