package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/pki"
)

// etcdFrom is a plain etcd client of endpoint from lab namespace ns.
func etcdFrom(t *testing.T, l *lab.Lab, ns, endpoint, caFile, certFile, keyFile string) *clientv3.Client {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return l.Dial(ctx, ns, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ec.Close() })
	return ec
}

// TestRBACExternalEtcd is what docs/security.md asks of the operator of an
// existing etcd cluster (Debian's etcd 3.4 as its own process): turn on
// authentication with the mesh's admin certificate (CN=root) as root, and
// give each node certificate a user and role of NodeRole's permissions. The
// agents with the admin certificate keep working; a node certificate without
// a user can do nothing; with its role it reads what agents read and writes
// only its own keys.
func TestRBACExternalEtcd(t *testing.T) {
	m, files, clientURL := externalEtcdMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The operator's step 1 (etcdctl role add root; user add root
	// --no-password; user grant-role root root; auth enable), with the
	// admin certificate.
	admin := kvstore.FromEtcd(etcdFrom(t, m.Lab, m.Lab.Node("etcd").Netns, clientURL, files.CAFile, files.ClientCertFile, files.ClientKey), 0, nil)
	if err := admin.EnableAuth(ctx); err != nil {
		t.Fatalf("enabling auth on the existing etcd: %v", err)
	}

	for _, name := range []string{"a", "b"} {
		n := m.newNode(name)
		args := []string{filepath.Join(binDir, "weft-agent"), "--node-name", name,
			"--etcd-endpoints", clientURL, "--etcd-ca", files.CAFile, "--etcd-cert", files.ClientCertFile, "--etcd-key", files.ClientKey,
			"--state-dir", n.StateDir, "--socket", n.Socket}
		args = append(args, m.agentFlags(n)[1:]...)
		p, err := m.Lab.Start(n.Lab.Netns, "agent-"+name, args...)
		if err != nil {
			t.Fatal(err)
		}
		n.Proc = p
		m.waitOutput(p, regexp.MustCompile(`agent ready`), 60*time.Second, "agent on "+name)
	}
	wa, wb := m.AddWorkload("wa", "app=a"), m.AddWorkload("wb", "app=b")
	m.Echo("wb", wb, 7000)
	testutil.Eventually(t, 30*time.Second, "wa -> wb over an etcd with auth on", func() error {
		return m.Talk("wa", "tcp", wb, 7000, "auth on")
	})
	_ = wa

	// A node certificate of the same CA without an etcd user: nothing.
	ca, err := pki.LoadCAFiles(files.CAFile, files.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueClient(kvstore.NodeUser("default", "vm-9"), []string{"weft:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	ndir := t.TempDir()
	if err := pki.WriteFiles(ndir, map[string][]byte{"node.pem": certPEM, "node-key.pem": keyPEM}); err != nil {
		t.Fatal(err)
	}
	vm9 := etcdFrom(t, m.Lab, m.Lab.Node("a").Netns, clientURL, files.CAFile, filepath.Join(ndir, "node.pem"), filepath.Join(ndir, "node-key.pem"))
	if _, err := vm9.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); err == nil {
		t.Fatal("a node certificate without an etcd user reads the mesh")
	}
	// The operator's step 2 for vm-9 (docs/security.md), then it reads
	// what agents read and writes only its own keys.
	if err := admin.EnsureNodeUser(ctx, "default", "vm-9"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "vm-9 reads nodes", func() error {
		resp, err := vm9.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix())
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 2 {
			return fmt.Errorf("%d node records, want 2", len(resp.Kvs))
		}
		return nil
	})
	for what, err := range map[string]error{
		"read tokens":       func() error { _, err := vm9.Get(ctx, kvstore.TokensPrefix, clientv3.WithPrefix()); return err }(),
		"delete a's record": func() error { _, err := vm9.Delete(ctx, kvstore.NodeKey("default", "a")); return err }(),
		"write a policy":    func() error { _, err := vm9.Put(ctx, kvstore.PolicyKey("evil"), "{}"); return err }(),
		"auth disable":      func() error { _, err := vm9.AuthDisable(ctx); return err }(),
		"member add":        func() error { _, err := vm9.MemberAdd(ctx, []string{"https://198.18.99.1:2380"}); return err }(),
	} {
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("vm-9 %s: %v, want permission denied", what, err)
		}
	}
	if _, err := vm9.Put(ctx, kvstore.NodeKey("default", "vm-9"), "{}"); err != nil {
		t.Errorf("vm-9 writing its own node key: %v", err)
	}
	var nodes []struct {
		Name string `json:"name"`
	}
	m.JSON("a", &nodes, "nodes")
	if len(nodes) != 2 {
		t.Errorf("meshctl nodes on a lists %d nodes, want 2 (vm-9's junk record must be skipped): %+v", len(nodes), nodes)
	}
}
