package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

const benchRelayEnv = "WEFT_BENCH_RELAY"

// TestBenchRelay is `make bench-relay`:
//
//   - TCP throughput (iperf3, 10 s) between two public nodes directly and
//     then, with UDP between their sites cut, through the relay: the same
//     two nodes, the same run;
//   - failover and recovery over N cuts: cut → the first ping answered
//     through the relay, and heal → the path back to direct;
//   - join → reachable for a node behind symmetric NAT: `meshctl join`
//     started → its first ping answered by a node behind another
//     symmetric NAT (which only a relay can connect).
//
// WEFT_BENCH_RELAY=N sets the number of cuts (default 10).
func TestBenchRelay(t *testing.T) {
	if os.Getenv(benchRelayEnv) == "" {
		t.Skip("a benchmark: make bench-relay runs it (" + benchRelayEnv + "=N)")
	}
	cuts, _ := strconv.Atoi(os.Getenv(benchRelayEnv))
	if cuts < 3 {
		cuts = 10
	}
	m := NewMesh(t, &lab.Spec{Name: "relaybench", Sites: []lab.SiteSpec{
		{Name: "pub1", Nodes: []lab.NodeSpec{{Name: "p1"}}},
		{Name: "pub2", Nodes: []lab.NodeSpec{{Name: "p2"}}},
		{Name: "rly", Nodes: []lab.NodeSpec{{Name: "relay"}}},
		{Name: "sym1", NATKind: lab.NATSymmetric, Nodes: []lab.NodeSpec{{Name: "s1"}}},
		{Name: "sym2", NATKind: lab.NATSymmetric, Nodes: []lab.NodeSpec{{Name: "s2"}}},
	}})
	ctx := context.Background()
	m.Up("p1")
	m.joinWith("relay", "--relay")
	m.joinWith("p2")
	m.joinWith("s1")
	waitPath := func(from, to, prefix string, within time.Duration) time.Duration {
		start := time.Now()
		testutil.Eventually(t, within, from+" -> "+to+" "+prefix, func() error {
			if p := m.peerPath(from, to); !strings.HasPrefix(p, prefix) {
				return fmt.Errorf("path %q", p)
			}
			return nil
		})
		return time.Since(start)
	}
	waitPath("p1", "p2", "direct ", time.Minute)

	// Throughput, direct then relayed.
	p2IP := meshIP(t, m, "p2")
	srv, err := m.Lab.Start(m.Lab.Node("p2").Netns, "iperf3-server", "iperf3", "-s", "-B", p2IP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	time.Sleep(500 * time.Millisecond)
	iperf := func(what string) float64 {
		out, err := m.Lab.Exec(ctx, m.Lab.Node("p1").Netns, "iperf3", "-c", p2IP, "-t", "10", "-J")
		if err != nil {
			t.Fatalf("iperf3 %s: %v: %s", what, err, out)
		}
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
				SumSent struct {
					Retransmits int `json:"retransmits"`
				} `json:"sum_sent"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
			t.Fatalf("iperf3 %s: %v: %s", what, err, out)
		}
		// Retransmissions tell a lossy path from one bound by CPU.
		t.Logf("iperf3 %s: %.0f Mb/s, %d retransmissions", what, r.End.SumReceived.BitsPerSecond/1e6, r.End.SumSent.Retransmits)
		return r.End.SumReceived.BitsPerSecond / 1e6
	}
	direct := iperf("direct")
	if err := m.Lab.Cut(ctx, "pub1", "pub2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Lab.HealAll(context.Background()) })
	waitPath("p1", "p2", "relay via", 30*time.Second)
	waitPath("p2", "p1", "relay via", 30*time.Second)
	relayed := iperf("relayed")
	if err := m.Lab.Heal(ctx, "pub1", "pub2"); err != nil {
		t.Fatal(err)
	}
	waitPath("p1", "p2", "direct ", time.Minute)

	// Failover and recovery.
	var failover, recovery []time.Duration
	for i := range cuts {
		time.Sleep(3 * time.Second)
		if err := m.Lab.Cut(ctx, "pub1", "pub2"); err != nil {
			t.Fatal(err)
		}
		cut := time.Now()
		lost := false
		for {
			r := m.meshctlRun("p1", "ping", "p2", "--count", "1", "--timeout", "200ms")
			if r.code != 0 {
				lost = true
			} else if lost || time.Since(cut) > 3*time.Second {
				break
			}
			if time.Since(cut) > 30*time.Second {
				t.Fatalf("cut %d: p2 unreachable for 30s", i)
			}
		}
		failover = append(failover, time.Since(cut))
		waitPath("p1", "p2", "relay via", 30*time.Second)
		if err := m.Lab.Heal(ctx, "pub1", "pub2"); err != nil {
			t.Fatal(err)
		}
		recovery = append(recovery, waitPath("p1", "p2", "direct ", 2*time.Minute))
	}

	// Join -> reachable behind symmetric NAT.
	start := time.Now()
	m.joinWith("s2")
	testutil.Eventually(t, 2*time.Minute, "s2 reaching s1", func() error {
		if r := m.meshctlRun("s2", "ping", "s1", "--count", "1", "--timeout", "300ms"); r.code != 0 {
			return fmt.Errorf("%s%s", r.stdout, r.stderr)
		}
		return nil
	})
	joinReach := time.Since(start)
	path := m.peerPath("s2", "s1")

	fmt.Printf("\nrelay benchmark (%d cuts)\n", cuts)
	fmt.Printf("  TCP throughput p1 -> p2: direct %.0f Mb/s, relayed %.0f Mb/s, ratio %.2f\n", direct, relayed, relayed/direct)
	fmt.Printf("  failover (cut -> answered through the relay): p50 %v p99 %v\n", pct(failover, 50), pct(failover, 99))
	fmt.Printf("  recovery (heal -> direct again):              p50 %v p99 %v\n", pct(recovery, 50), pct(recovery, 99))
	fmt.Printf("  join -> reachable behind symmetric NAT: %v (path %s)\n", joinReach.Round(10*time.Millisecond), path)
}

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))].Round(10 * time.Millisecond)
}

// meshIP reads a node's mesh address from its status.
func meshIP(t *testing.T, m *Mesh, node string) string {
	var st struct {
		MeshIP string `json:"meshIP"`
	}
	m.JSON(node, &st, "status")
	if st.MeshIP == "" {
		t.Fatalf("%s has no mesh address", node)
	}
	return st.MeshIP
}
