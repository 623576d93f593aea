package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/pki"
)

// etcdMember is one member of a lab etcd cluster: its process and what
// starts it again.
type etcdMember struct {
	name, netns string
	args        []string
	proc        *lab.Process
}

// threeMemberEtcd starts an etcd cluster of Debian's etcd-server, one
// member on each of the lab nodes, with TLS between peers and client
// certificates for clients (one bundle whose certificates name all three
// addresses). It returns the bundle, the client URLs and the members.
func threeMemberEtcd(t *testing.T, m *Mesh, nodes ...string) (pki.Files, []string, []*etcdMember) {
	t.Helper()
	var ips, clientURLs, initial []string
	for _, n := range nodes {
		ip := m.Lab.Node(n).Underlay.String()
		ips = append(ips, ip)
		clientURLs = append(clientURLs, "https://"+ip+":2379")
		initial = append(initial, n+"=https://"+ip+":2380")
	}
	dir := t.TempDir()
	files, err := pki.EnsureBundle(filepath.Join(dir, "pki"), ips)
	if err != nil {
		t.Fatal(err)
	}
	var members []*etcdMember
	for i, n := range nodes {
		peerURL := "https://" + ips[i] + ":2380"
		mb := &etcdMember{name: n, netns: m.Lab.Node(n).Netns, args: []string{"etcd",
			"--name", n, "--data-dir", filepath.Join(dir, "data-"+n),
			"--listen-client-urls", clientURLs[i], "--advertise-client-urls", clientURLs[i],
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "weft-e2e-a",
			"--initial-cluster-state", "new",
			"--cert-file", files.ServerCertFile, "--key-file", files.ServerKey,
			"--trusted-ca-file", files.CAFile, "--client-cert-auth",
			"--peer-cert-file", files.ServerCertFile, "--peer-key-file", files.ServerKey,
			"--peer-trusted-ca-file", files.CAFile, "--peer-client-cert-auth"}}
		mb.start(t, m, false)
		members = append(members, mb)
	}
	for _, mb := range members {
		m.waitOutput(mb.proc, regexp.MustCompile(`(?i)ready to serve client requests|serving client (traffic|requests) securely`), 90*time.Second, "etcd member "+mb.name+" to serve")
	}
	return files, clientURLs, members
}

// start starts the member's process (again); wait waits until it serves.
func (mb *etcdMember) start(t *testing.T, m *Mesh, wait bool) {
	t.Helper()
	p, err := m.Lab.Start(mb.netns, "etcd-"+mb.name, mb.args...)
	if err != nil {
		t.Fatal(err)
	}
	mb.proc = p
	if wait {
		m.waitOutput(p, regexp.MustCompile(`(?i)ready to serve client requests|serving client (traffic|requests) securely`), 90*time.Second, "etcd member "+mb.name+" to serve again")
	}
}

// TestClusterOnThreeMemberEtcd: cluster a's control plane is an existing
// 3-member etcd (its seed a1 an agent with --etcd-ca-key), cluster b runs
// the embedded etcd; they connect as any two clusters do. Losing one etcd
// member changes nothing; losing quorum keeps every tunnel and route
// (no ping lost between a and b), refuses writes with an error naming etcd
// and its quorum, and b shows a not synced; with the members back,
// everything recovers.
func TestClusterOnThreeMemberEtcd(t *testing.T) {
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "sa", Nodes: []lab.NodeSpec{{Name: "e1"}, {Name: "e2"}, {Name: "e3"}, {Name: "a1"}, {Name: "a2", Workloads: []lab.WorkloadSpec{{Name: "wa"}}}}},
		{Name: "sb", Nodes: []lab.NodeSpec{{Name: "b1", Workloads: []lab.WorkloadSpec{{Name: "wb"}}}}},
	}})
	files, endpoints, members := threeMemberEtcd(t, m, "e1", "e2", "e3")

	// The seed of cluster a on the existing etcd.
	a1 := m.newNode("a1")
	joinAddr := a1.Lab.Underlay.String() + ":51834"
	args := []string{filepath.Join(binDir, "weft-agent"), "--node-name", "a1", "--cluster", "a",
		"--etcd-endpoints", strings.Join(endpoints, ","), "--etcd-ca", files.CAFile, "--etcd-cert", files.ClientCertFile, "--etcd-key", files.ClientKey,
		"--etcd-ca-key", files.CAKeyFile, "--join-listen", joinAddr,
		"--state-dir", a1.StateDir, "--socket", a1.Socket}
	args = append(args, m.agentFlags(a1)[1:]...)
	p, err := m.Lab.Start(a1.Lab.Netns, "agent-a1", args...)
	if err != nil {
		t.Fatal(err)
	}
	a1.Proc = p
	m.waitOutput(p, regexp.MustCompile(`agent ready`), 90*time.Second, "seed agent a1")
	if !strings.Contains(p.Output(), "turned on the existing etcd's authentication") {
		t.Errorf("the seed with the CN=root admin certificate did not say it turned on etcd's authentication:\n%s", p.Output())
	}
	m.WaitHealthy("a1")
	tokOut := m.MustMeshctl("a1", "token", "create", "--reusable", "--max-uses", "10")
	m.Token, m.Seed = tokenRE.FindString(tokOut), "a1"
	if m.Token == "" {
		t.Fatalf("token create on a1 printed no token:\n%s", tokOut)
	}
	m.Join("a2", "")

	m.Up("b1", "--cluster", "b", "--", "--cluster-id", "2", "--mesh-pool", "100.65.0.0/16")
	ips := map[string]string{"wa": m.AddWorkload("wa", "app=api"), "wb": m.AddWorkload("wb", "app=web")}
	for w, ip := range ips {
		m.Echo(w, ip, 8080)
	}
	tok := clusterTokenRE.FindString(m.MustMeshctl("b1", "cluster", "token"))
	if tok == "" {
		t.Fatal("meshctl cluster token on b1 printed no token")
	}
	if out := m.MustMeshctl("a1", "cluster", "connect", tok); !strings.Contains(out, "connected to cluster b (id 2") {
		t.Fatalf("connect said:\n%s", out)
	}
	bSeesA := func(want func(r remoteClusterJSON) error) func() error {
		return func() error {
			var rs []remoteClusterJSON
			m.JSON("b1", &rs, "cluster", "status")
			if len(rs) != 1 || rs[0].Name != "a" {
				return fmt.Errorf("clusters %+v", rs)
			}
			return want(rs[0])
		}
	}
	synced := func(r remoteClusterJSON) error {
		if !r.Connected || !r.Synced || r.Nodes != 2 || r.Endpoints < 1 {
			return fmt.Errorf("status %+v", r)
		}
		return nil
	}
	testutil.Eventually(t, 60*time.Second, "b1 sees a connected and synced", bSeesA(synced))
	for _, c := range [][2]string{{"wa", "wb"}, {"wb", "wa"}} {
		testutil.Eventually(t, 60*time.Second, c[0]+" -> "+c[1], func() error { return m.Talk(c[0], "tcp", ips[c[1]], 8080, "hello-"+c[0]) })
	}

	// A policy for endpoints that do not exist: writing it is what
	// counts, and it must not change what the pings below see.
	policy := func(name string) string {
		return writeFile(t, name+".yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: `+name+`}
spec:
  endpointSelector: {matchLabels: {app: batch}}
  ingress:
    - from: [{matchLabels: {"mesh:cluster": b, app: web}}]
      ports: [{port: 8080, protocol: TCP}]
`)
	}
	// pings runs a continuous ping between a and b in both directions
	// for d and reports the lost ones.
	type pinger struct {
		p     *lab.Process
		count int
		what  string
	}
	startPings := func(t *testing.T, d time.Duration, tag string) []pinger {
		count := int(d / (50 * time.Millisecond))
		var ps []pinger
		for _, c := range [][2]string{{"wa", "wb"}, {"wb", "wa"}} {
			p, err := m.Lab.Start(m.Lab.Workload(c[0]).Netns, "ping-"+tag+"-"+c[0], "ping", "-n", "-q", "-i", "0.05", "-c", strconv.Itoa(count), "-W", "2", ips[c[1]])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Stop() })
			ps = append(ps, pinger{p, count, c[0] + " -> " + c[1]})
		}
		return ps
	}
	checkPings := func(t *testing.T, ps []pinger) {
		for _, pg := range ps {
			select {
			case <-pg.p.Done():
			case <-time.After(3 * time.Minute):
				t.Fatalf("ping %s did not finish", pg.what)
			}
			mm := pingStatsRE.FindStringSubmatch(pg.p.Output())
			if mm == nil {
				t.Fatalf("no ping statistics for %s in:\n%s", pg.what, pg.p.Output())
			}
			sent, _ := strconv.Atoi(mm[1])
			recv, _ := strconv.Atoi(mm[2])
			t.Logf("%s: %d pings sent, %d received", pg.what, sent, recv)
			if sent != pg.count || recv != sent {
				t.Errorf("%s lost %d of %d pings", pg.what, sent-recv, sent)
			}
		}
	}

	t.Run("one etcd member lost: no ping lost, b still synced, a's seed still writes", func(t *testing.T) {
		m := m.For(t)
		ps := startPings(t, 30*time.Second, "member")
		time.Sleep(3 * time.Second)
		if err := members[0].proc.Stop(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if !members[0].proc.Running() {
				members[0].start(t, m, true)
			}
		}()
		time.Sleep(5 * time.Second)
		m.MustMeshctl("a1", "policy", "apply", "-f", policy("one-member-lost"), "--timeout", "60s")
		testutil.Eventually(t, 30*time.Second, "b1 sees a connected and synced with a member down", bSeesA(synced))
		if out := m.MustMeshctl("a1", "token", "create"); tokenRE.FindString(out) == "" {
			t.Errorf("token create on a1 with a member down printed no token:\n%s", out)
		}
		checkPings(t, ps)
		m.MustMeshctl("a1", "policy", "delete", "one-member-lost")
	})

	t.Run("quorum lost: the datapath stays, writes fail naming etcd's quorum, b shows a not synced; then everything recovers", func(t *testing.T) {
		m := m.For(t)
		if members[0].proc.Running() {
			if err := members[0].proc.Stop(); err != nil {
				t.Fatal(err)
			}
		}
		ps := startPings(t, 75*time.Second, "quorum")
		time.Sleep(3 * time.Second)
		if err := members[1].proc.Stop(); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				for _, mb := range members[:2] {
					if !mb.proc.Running() {
						mb.start(t, m, false)
					}
				}
			}
		}()
		for _, w := range [][]string{
			{"policy", "apply", "-f", policy("majority-lost"), "--timeout", "20s"},
			{"token", "create"},
		} {
			start := time.Now()
			out, err := m.Meshctl("a1", w...)
			t.Logf("meshctl %s without quorum (%s): %v\n%s", w[0]+" "+w[1], time.Since(start).Round(time.Millisecond), err, out)
			if err == nil {
				t.Errorf("meshctl %s %s succeeded without etcd quorum:\n%s", w[0], w[1], out)
				continue
			}
			if !regexp.MustCompile(`(?i)etcd`).MatchString(out) || !regexp.MustCompile(`(?i)quorum`).MatchString(out) {
				t.Errorf("meshctl %s %s without etcd quorum does not name etcd and its quorum:\n%s", w[0], w[1], out)
			}
		}
		testutil.Eventually(t, 60*time.Second, "b1 shows a disconnected or not synced, with an error", bSeesA(func(r remoteClusterJSON) error {
			if (r.Connected && r.Synced) || r.LastError == "" {
				return fmt.Errorf("status %+v", r)
			}
			if r.Nodes != 2 {
				return fmt.Errorf("the last known state of a is not kept: %+v", r)
			}
			return nil
		}))
		checkPings(t, ps)

		for _, mb := range members[:2] {
			mb.start(t, m, false)
		}
		restarted = true
		for _, mb := range members[:2] {
			m.waitOutput(mb.proc, regexp.MustCompile(`(?i)ready to serve client requests|serving client (traffic|requests) securely`), 90*time.Second, "etcd member "+mb.name+" to serve again")
		}
		testutil.Eventually(t, 90*time.Second, "a1 writes again", func() error {
			out, err := m.Meshctl("a1", "policy", "apply", "-f", policy("majority-back"), "--timeout", "30s")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		testutil.Eventually(t, 90*time.Second, "b1 sees a connected and synced again", bSeesA(synced))
		for _, c := range [][2]string{{"wa", "wb"}, {"wb", "wa"}} {
			testutil.Eventually(t, 30*time.Second, c[0]+" -> "+c[1]+" after recovery", func() error { return m.Talk(c[0], "tcp", ips[c[1]], 8080, "back-"+c[0]) })
		}
		m.MustMeshctl("a1", "policy", "delete", "majority-back")
	})
}
