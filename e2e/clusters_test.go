package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

type remoteClusterJSON struct {
	Name       string `json:"name"`
	ID         int    `json:"id"`
	MeshPool   string `json:"meshPool"`
	Mode       string `json:"mode"`
	Connected  bool   `json:"connected"`
	Synced     bool   `json:"synced"`
	Nodes      int    `json:"nodes"`
	Endpoints  int    `json:"endpoints"`
	Identities int    `json:"identities"`
	LastError  string `json:"lastError"`
}

type endpointJSON struct {
	Cluster  string   `json:"cluster"`
	Node     string   `json:"node"`
	IP       string   `json:"ip"`
	Identity uint32   `json:"identity"`
	Labels   []string `json:"labels"`
}

var clusterTokenRE = regexp.MustCompile(`weft1\.[A-Za-z0-9_-]+`)

// TestClusterMesh: two clusters, each with its own embedded etcd and seed,
// connected with `meshctl cluster token` and
// `meshctl cluster connect` (mirror mode). Workloads reach each other
// across clusters over the tunnels, identities carry their cluster's id, a
// policy of cluster a admits only mesh:cluster=b,app=web, and a disconnect
// removes the other cluster everywhere.
func TestClusterMesh(t *testing.T) {
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "sa", Nodes: []lab.NodeSpec{{Name: "a1"}, {Name: "a2", Workloads: []lab.WorkloadSpec{{Name: "wa"}}}}},
		{Name: "sb", Nodes: []lab.NodeSpec{{Name: "b1", Workloads: []lab.WorkloadSpec{{Name: "wdb"}}}, {Name: "b2", Workloads: []lab.WorkloadSpec{{Name: "wb"}}}}},
		{Name: "sc", NAT: true, Nodes: []lab.NodeSpec{{Name: "c1", Workloads: []lab.WorkloadSpec{{Name: "wc"}}}}},
	}})
	m.Up("a1", "--cluster", "a")
	m.Join("a2", "")
	m.Up("b1", "--cluster", "b", "--", "--cluster-id", "2", "--mesh-pool", "100.65.0.0/16")
	m.Join("b2", "")
	m.Up("c1", "--cluster", "c", "--", "--cluster-id", "3", "--mesh-pool", "100.66.0.0/16")
	ips := map[string]string{
		"wc":  m.AddWorkload("wc", "app=edge"),
		"wa":  m.AddWorkload("wa", "app=api"),
		"wb":  m.AddWorkload("wb", "app=web"),
		"wdb": m.AddWorkload("wdb", "app=db"),
	}
	for w, ip := range ips {
		m.Echo(w, ip, 8080)
	}
	if !strings.HasPrefix(ips["wc"], "100.66.") {
		t.Fatalf("wc got %s, outside cluster c's pool 100.66.0.0/16", ips["wc"])
	}
	if !strings.HasPrefix(ips["wb"], "100.65.") || !strings.HasPrefix(ips["wa"], "100.64.") {
		t.Fatalf("workload addresses %v: want a in 100.64.0.0/16, b in 100.65.0.0/16", ips)
	}

	t.Run("a node token does not connect a cluster, and a cluster token does not join a node", func(t *testing.T) {
		m := m.For(t)
		out, err := m.Meshctl("a1", "cluster", "connect", m.Token)
		if err == nil || !strings.Contains(out, "join token for nodes") {
			t.Fatalf("connect with b's node token: %v\n%s", err, out)
		}
	})

	tok := clusterTokenRE.FindString(m.MustMeshctl("b1", "cluster", "token"))
	if tok == "" {
		t.Fatal("meshctl cluster token printed no token")
	}
	start := time.Now()
	out := m.MustMeshctl("a1", "cluster", "connect", tok)
	if !strings.Contains(out, "connected to cluster b (id 2") {
		t.Fatalf("connect said:\n%s", out)
	}
	t.Run("the token works once", func(t *testing.T) {
		m := m.For(t)
		out, err := m.Meshctl("a1", "cluster", "connect", tok)
		if err == nil {
			t.Fatalf("a second connect with the same token succeeded:\n%s", out)
		}
	})

	t.Run("both sides list the other, synced, with its nodes", func(t *testing.T) {
		m := m.For(t)
		for _, side := range []struct{ seed, other string }{{"a1", "b"}, {"b1", "a"}} {
			testutil.Eventually(t, 60*time.Second, side.seed+" sees cluster "+side.other+" synced", func() error {
				var rs []remoteClusterJSON
				m.JSON(side.seed, &rs, "cluster", "status")
				if len(rs) != 1 || rs[0].Name != side.other {
					return fmt.Errorf("clusters %+v", rs)
				}
				r := rs[0]
				if !r.Connected || !r.Synced || r.Nodes != 2 || r.Endpoints < 1 || r.Mode != "mirror" {
					return fmt.Errorf("status %+v", r)
				}
				return nil
			})
		}
	})

	t.Run("every workload reaches every other across the clusters", func(t *testing.T) {
		m := m.For(t)
		for _, from := range []string{"wa", "wb", "wdb"} {
			for _, to := range []string{"wa", "wb", "wdb"} {
				if from == to {
					continue
				}
				testutil.Eventually(t, 60*time.Second, from+" -> "+to, func() error { return m.Talk(from, "tcp", ips[to], 8080, "hello-"+from) })
			}
		}
		t.Logf("cluster connect to all pairs reachable: %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("identity numbers carry their cluster's id", func(t *testing.T) {
		m := m.For(t)
		var eps []endpointJSON
		m.JSON("a2", &eps, "endpoints")
		seen := map[string]bool{}
		for _, e := range eps {
			id := identity.NumericIdentity(e.Identity)
			want := map[string]int{"a": 1, "b": 2}[e.Cluster]
			if id.IsReserved() {
				continue
			}
			if id.ClusterID() != want {
				t.Errorf("endpoint %s of cluster %s has identity %d (cluster id %d), want cluster id %d", e.IP, e.Cluster, e.Identity, id.ClusterID(), want)
			}
			seen[e.Cluster] = true
		}
		if !seen["a"] || !seen["b"] {
			t.Fatalf("a2 lists endpoints of clusters %v, want a and b: %+v", seen, eps)
		}
	})

	t.Run("cluster c behind NAT connects to a and b by pushing its records: every workload reaches every other, encrypted", func(t *testing.T) {
		m := m.For(t)
		// Before c is connected to b, b and c do not reach each other.
		if err := m.Talk("wb", "tcp", ips["wc"], 8080, "no"); err == nil {
			t.Fatal("wb reaches wc before b and c are connected")
		}
		for _, seed := range []struct{ node, name string }{{"a1", "a"}, {"b1", "b"}} {
			tok := clusterTokenRE.FindString(m.MustMeshctl(seed.node, "cluster", "token"))
			out := m.MustMeshctl("c1", "cluster", "connect", tok, "--push")
			if !strings.Contains(out, "connected to cluster "+seed.name) {
				t.Fatalf("connect to %s said:\n%s", seed.name, out)
			}
			testutil.Eventually(t, 60*time.Second, seed.node+" sees c pushed and synced", func() error {
				var rs []remoteClusterJSON
				m.JSON(seed.node, &rs, "cluster", "status", "c")
				if len(rs) != 1 || rs[0].Mode != "pushed" || !rs[0].Connected || !rs[0].Synced || rs[0].Nodes != 1 || rs[0].Endpoints < 1 {
					return fmt.Errorf("status %+v", rs)
				}
				return nil
			})
		}
		capFile := filepath.Join(t.TempDir(), "underlay.pcap")
		tcpdump, err := m.Lab.Start(m.Lab.Internet(), "tcpdump", "tcpdump", "--immediate-mode", "-i", "any", "-U", "-s", "0", "-w", capFile)
		if err != nil {
			t.Fatal(err)
		}
		m.waitOutput(tcpdump, regexp.MustCompile(`listening on`), 30*time.Second, "tcpdump to attach")
		marker := "WEFT-CLUSTERS-PLAINTEXT-7c2e"
		all := []string{"wa", "wb", "wdb", "wc"}
		for _, from := range all {
			for _, to := range all {
				if from != to {
					testutil.Eventually(t, 60*time.Second, from+" -> "+to, func() error { return m.Talk(from, "tcp", ips[to], 8080, marker) })
				}
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
			t.Fatal("the underlay capture holds the plaintext marker: traffic between clusters is not encrypted")
		}
		for _, other := range []string{"a", "b"} {
			m.MustMeshctl("c1", "cluster", "disconnect", other)
		}
		for _, seed := range []string{"a1", "b1"} {
			testutil.Eventually(t, 30*time.Second, seed+" no longer lists c", func() error {
				var rs []remoteClusterJSON
				m.JSON(seed, &rs, "cluster", "list")
				for _, r := range rs {
					if r.Name == "c" {
						return fmt.Errorf("clusters %+v", rs)
					}
				}
				return nil
			})
		}
	})

	t.Run("a policy of cluster a admits only mesh:cluster=b,app=web", func(t *testing.T) {
		m := m.For(t)
		pol := writeFile(t, "api.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: api}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - from: [{matchLabels: {"mesh:cluster": b, app: web}}]
      ports: [{port: 8080, protocol: TCP}]
`)
		m.MustMeshctl("a1", "policy", "apply", "-f", pol, "--timeout", "60s")
		testutil.Eventually(t, 30*time.Second, "wb (b, app=web) reaches wa", func() error { return m.Talk("wb", "tcp", ips["wa"], 8080, "allowed") })
		testutil.Eventually(t, 30*time.Second, "wdb (b, app=db) is denied", func() error {
			if err := m.Talk("wdb", "tcp", ips["wa"], 8080, "denied"); err == nil {
				return fmt.Errorf("wdb reached wa")
			}
			return nil
		})
		m.MustMeshctl("a1", "policy", "delete", "api")
	})

	t.Run("cluster b's etcd unreachable for 60 s: cross-cluster flows lose no ping, a shows b disconnected, then resynced", func(t *testing.T) {
		m := m.For(t)
		b1 := m.node("b1").Lab.Netns
		nft := func(args ...string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if out, err := m.Lab.Exec(ctx, b1, append([]string{"nft"}, args...)...); err != nil {
				t.Fatalf("nft %v in b1's namespace: %v: %s", args, err, out)
			}
		}
		const outageFor = 60 * time.Second
		count := int((outageFor + 15*time.Second) / (50 * time.Millisecond))
		ping, err := m.Lab.Start(m.Lab.Workload("wa").Netns, "ping-outage", "ping", "-n", "-q", "-i", "0.05", "-c", strconv.Itoa(count), "-W", "2", ips["wb"])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ping.Stop() })
		time.Sleep(3 * time.Second)
		nft("add", "table", "inet", "weft_e2e_cm_outage")
		nft("add", "chain", "inet", "weft_e2e_cm_outage", "in", "{ type filter hook input priority -10 ; }")
		// Cluster a's seed (its mirror) no longer reaches b's etcd; b itself
		// goes on (its own nodes keep their leases).
		nft("add", "rule", "inet", "weft_e2e_cm_outage", "in", "ip", "saddr", m.node("a1").Lab.Underlay.String(), "tcp", "dport", "2379", "drop")
		outageStart := time.Now()
		removed := false
		t.Cleanup(func() {
			if !removed {
				nft("delete", "table", "inet", "weft_e2e_cm_outage")
			}
		})
		testutil.Eventually(t, 40*time.Second, "a1 shows b disconnected", func() error {
			var rs []remoteClusterJSON
			m.JSON("a1", &rs, "cluster", "status")
			if len(rs) != 1 || rs[0].Connected || rs[0].LastError == "" {
				return fmt.Errorf("status %+v", rs)
			}
			if rs[0].Nodes != 2 || rs[0].Endpoints < 2 {
				return fmt.Errorf("the last known state is not kept: %+v", rs[0])
			}
			return nil
		})
		time.Sleep(time.Until(outageStart.Add(outageFor)))
		nft("delete", "table", "inet", "weft_e2e_cm_outage")
		removed = true
		select {
		case <-ping.Done():
		case <-time.After(2 * time.Minute):
			t.Fatal("ping did not finish")
		}
		mm := pingStatsRE.FindStringSubmatch(ping.Output())
		if mm == nil {
			t.Fatalf("no ping statistics in:\n%s", ping.Output())
		}
		sent, _ := strconv.Atoi(mm[1])
		recv, _ := strconv.Atoi(mm[2])
		t.Logf("b's etcd outage: %d pings sent wa -> wb, %d received", sent, recv)
		if sent != count || recv != sent {
			t.Fatalf("the outage lost %d of %d pings", sent-recv, sent)
		}
		testutil.Eventually(t, 60*time.Second, "a1 shows b connected and synced again", func() error {
			var rs []remoteClusterJSON
			m.JSON("a1", &rs, "cluster", "status")
			if len(rs) != 1 || !rs[0].Connected || !rs[0].Synced || rs[0].Nodes != 2 {
				return fmt.Errorf("status %+v", rs)
			}
			return nil
		})
	})

	t.Run("observe --cluster b, status --all and the connectivity test on a1 span cluster b", func(t *testing.T) {
		m := m.For(t)
		// Cross-cluster traffic, seen by a2's datapath (wa's node).
		testutil.Eventually(t, 30*time.Second, "wb -> wa", func() error { return m.Talk("wb", "tcp", ips["wa"], 8080, "observe-b") })
		type flowEnd struct {
			IP      string `json:"ip"`
			Name    string `json:"name"`
			Node    string `json:"node"`
			Cluster string `json:"cluster"`
		}
		type flowJSON struct {
			Node        string  `json:"node"`
			Cluster     string  `json:"cluster"`
			Source      flowEnd `json:"source"`
			Destination flowEnd `json:"destination"`
		}
		testutil.Eventually(t, 30*time.Second, "a flow from b/b2 to a/a2 among observe --cluster b", func() error {
			out, err := m.Meshctl("a1", "observe", "--all-nodes", "--cluster", "b", "--last", "-1", "-o", "json")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !strings.Contains(out, "connected clusters not queried") || !strings.Contains(out, "b (2 nodes)") {
				return fmt.Errorf("no note that cluster b's nodes were left out:\n%s", out)
			}
			found := false
			for _, line := range strings.Split(out, "\n") {
				if !strings.HasPrefix(line, "{") {
					continue // the note on stderr
				}
				var f flowJSON
				if err := json.Unmarshal([]byte(line), &f); err != nil {
					return fmt.Errorf("line %q: %v", line, err)
				}
				if f.Cluster != "a" {
					return fmt.Errorf("a flow seen by %s/%s: only cluster a's nodes are asked", f.Cluster, f.Node)
				}
				if f.Source.Cluster != "b" && f.Destination.Cluster != "b" {
					return fmt.Errorf("a flow with no end in b passed --cluster b: %s", line)
				}
				s, d := f.Source, f.Destination
				if s.IP == ips["wb"] && s.Cluster == "b" && s.Node == "b2" && d.IP == ips["wa"] && d.Cluster == "a" && d.Node == "a2" && d.Name != "" {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("no flow %s (b/b2) -> %s (a/a2) with both ends named:\n%s", ips["wb"], ips["wa"], out)
			}
			return nil
		})
		out := m.MustMeshctl("a1", "observe", "--node", "a2", "--cluster", "b", "--last", "-1")
		if !strings.Contains(out, "b/b2 ") || !strings.Contains(out, "a/a2 ") {
			t.Errorf("the table does not name both ends as cluster/node:\n%s", out)
		}

		out = m.MustMeshctl("a1", "status", "--all")
		for _, want := range []string{"a/a1", "a/a2", "b/b1", "b/b2", "remote cluster: not queried"} {
			if !strings.Contains(out, want) {
				t.Errorf("status --all lacks %q:\n%s", want, out)
			}
		}
		var hm struct {
			Nodes []struct {
				Node    string `json:"node"`
				Cluster string `json:"cluster"`
				Remote  bool   `json:"remote"`
			} `json:"nodes"`
			Down []string `json:"down"`
		}
		m.JSON("a1", &hm, "status", "--all")
		remote := 0
		for _, n := range hm.Nodes {
			if n.Remote != (n.Cluster != "a") {
				t.Errorf("status --all row %s/%s: remote=%v", n.Cluster, n.Node, n.Remote)
			}
			if n.Remote && n.Cluster == "b" {
				remote++
			}
		}
		if remote != 2 || len(hm.Down) != 0 {
			t.Errorf("status --all: %d rows of b (want 2), down %v", remote, hm.Down)
		}

		rep := connectivity(t, m, "a1", "--timeout", "15s")
		if s := scenario(rep, "across clusters"); s.Result != "pass" {
			t.Errorf("across clusters: %+v, want b1 and b2 reached from a1 through the tunnel", s)
		}
	})

	t.Run("disconnect removes the other cluster on both sides", func(t *testing.T) {
		m := m.For(t)
		m.MustMeshctl("a1", "cluster", "disconnect", "b")
		for _, seed := range []string{"a1", "b1"} {
			testutil.Eventually(t, 30*time.Second, seed+" lists no cluster", func() error {
				var rs []remoteClusterJSON
				m.JSON(seed, &rs, "cluster", "list")
				if len(rs) != 0 {
					return fmt.Errorf("clusters %+v", rs)
				}
				return nil
			})
		}
		testutil.Eventually(t, 30*time.Second, "a2 has no endpoint and no peer of b", func() error {
			var eps []endpointJSON
			m.JSON("a2", &eps, "endpoints")
			for _, e := range eps {
				if e.Cluster == "b" {
					return fmt.Errorf("endpoint %+v", e)
				}
			}
			var st statusJSON
			m.JSON("a2", &st, "status")
			for _, p := range st.Peers {
				if strings.HasPrefix(p.Node, "b/") {
					return fmt.Errorf("peer %+v", p)
				}
			}
			return nil
		})
		if err := m.Talk("wa", "tcp", ips["wb"], 8080, "gone"); err == nil {
			t.Fatal("wa still reaches wb after the disconnect")
		}
	})

	t.Run("direct mode: agents watch the other etcd themselves", func(t *testing.T) {
		m := m.For(t)
		tok := clusterTokenRE.FindString(m.MustMeshctl("a1", "cluster", "token"))
		out := m.MustMeshctl("b1", "cluster", "connect", tok, "--mode", "direct")
		if !strings.Contains(out, "mode direct") {
			t.Fatalf("connect said:\n%s", out)
		}
		testutil.Eventually(t, 60*time.Second, "wb -> wa in direct mode", func() error { return m.Talk("wb", "tcp", ips["wa"], 8080, "direct") })
		var rs []remoteClusterJSON
		m.JSON("b1", &rs, "cluster", "status")
		if len(rs) != 1 || rs[0].Mode != "direct" || rs[0].Nodes != 2 {
			t.Fatalf("b1's status in direct mode: %+v", rs)
		}
		m.MustMeshctl("b1", "cluster", "disconnect", "a")
		testutil.Eventually(t, 30*time.Second, "wb no longer reaches wa", func() error {
			if err := m.Talk("wb", "tcp", ips["wa"], 8080, "gone"); err == nil {
				return fmt.Errorf("wb reaches wa")
			}
			return nil
		})
	})
}
