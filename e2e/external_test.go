package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/pki"
)

// TestExternalEtcd runs agents against an etcd cluster Weft did not start:
// Debian's etcd server as its own process, with TLS and client
// certificates, on a node of the lab. Nothing in Weft depends on embedding.
func TestExternalEtcd(t *testing.T) {
	m, files, clientURL := externalEtcdMesh(t)

	for _, name := range []string{"a", "b"} {
		n := m.newNode(name)
		args := []string{filepath.Join(binDir, "weft-agent"), "--node-name", name,
			"--etcd-endpoints", clientURL, "--etcd-ca", files.CAFile, "--etcd-cert", files.ClientCertFile, "--etcd-key", files.ClientKey,
			"--state-dir", n.StateDir, "--socket", n.Socket}
		args = append(args, m.agentFlags(n)[1:]...) // without the "--"
		p, err := m.Lab.Start(n.Lab.Netns, "agent-"+name, args...)
		if err != nil {
			t.Fatal(err)
		}
		n.Proc = p
		m.waitOutput(p, regexp.MustCompile(`agent ready`), 60*time.Second, "agent on "+name)
	}
	wa, wb := m.AddWorkload("wa", "app=a"), m.AddWorkload("wb", "app=b")
	m.Echo("wa", wa, 7000)
	m.Echo("wb", wb, 7000)
	for _, c := range []struct{ from, to string }{{"wa", wb}, {"wb", wa}} {
		testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%s -> %s", c.from, c.to), func() error {
			return m.Talk(c.from, "tcp", c.to, 7000, "over external etcd")
		})
	}
	var nodes []struct {
		Name string `json:"name"`
	}
	m.JSON("a", &nodes, "nodes")
	if len(nodes) != 2 {
		t.Fatalf("meshctl nodes on a lists %d nodes, want 2: %+v", len(nodes), nodes)
	}
}

// externalEtcdMesh is a lab with an etcd process of its own (Debian's
// etcd-server, TLS with client certificates) on node "etcd", and nodes
// "a" (site 1) and "b" (behind NAT, site 2) with a workload each. It
// returns the mesh, etcd's certificate bundle and its client URL.
func externalEtcdMesh(t *testing.T) (*Mesh, pki.Files, string) {
	t.Helper()
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "etcd"}, {Name: "a", Workloads: []lab.WorkloadSpec{{Name: "wa"}}}}},
		{Name: "site2", NAT: true, Nodes: []lab.NodeSpec{{Name: "b", Workloads: []lab.WorkloadSpec{{Name: "wb"}}}}},
	}})
	etcdNode := m.Lab.Node("etcd")
	ip := etcdNode.Underlay.String()
	dir := t.TempDir()
	files, err := pki.EnsureBundle(filepath.Join(dir, "pki"), []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	clientURL, peerURL := "https://"+ip+":2379", "https://"+ip+":2380"
	etcd, err := m.Lab.Start(etcdNode.Netns, "etcd", "etcd",
		"--name", "ext", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "ext="+peerURL, "--initial-cluster-token", "weft-e2e",
		"--cert-file", files.ServerCertFile, "--key-file", files.ServerKey,
		"--trusted-ca-file", files.CAFile, "--client-cert-auth",
		"--peer-cert-file", files.ServerCertFile, "--peer-key-file", files.ServerKey,
		"--peer-trusted-ca-file", files.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	m.waitOutput(etcd, regexp.MustCompile(`(?i)ready to serve client requests|serving client (traffic|requests) securely`), 60*time.Second, "etcd to serve")
	return m, files, clientURL
}
