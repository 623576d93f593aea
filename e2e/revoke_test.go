package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
)

func revokeSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "a1", Workloads: []lab.WorkloadSpec{{Name: "web"}}}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "b1", Workloads: []lab.WorkloadSpec{{Name: "db"}}}, {Name: "c1"}}},
	}}
}

// peerOf reports whether node on's `meshctl status -o json` lists a peer
// for gone (by name, or by its CIDR among the allowed IPs).
func peerOf(m *Mesh, on, gone, cidr string) (bool, error) {
	var st statusJSON
	out, err := m.Meshctl(on, "status", "-o", "json")
	if err != nil {
		return false, fmt.Errorf("status on %s: %v: %s", on, err, out)
	}
	if err := jsonUnmarshal(out, &st); err != nil {
		return false, err
	}
	for _, p := range st.Peers {
		if p.Node == gone {
			return true, nil
		}
		for _, a := range p.AllowedIPs {
			if a == cidr {
				return true, nil
			}
		}
	}
	return false, nil
}

// nodeServiceAs calls the seed's node services (POST /v1/ipam) from
// node's namespace with node's own certificate and returns the status and
// body of the answer.
func (m *Mesh) nodeServiceAs(t *testing.T, node string) (int, string) {
	t.Helper()
	tok, err := join.ParseToken(m.Token)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(m.node(node).StateDir, "credentials")
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ := net.SplitHostPort(tok.Server)
	ns := m.node(node).Lab.Netns
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return m.Lab.Dial(ctx, ns, network, addr)
		},
	}}
	resp, err := hc.Post("https://"+tok.Server+"/v1/ipam", "application/json", strings.NewReader(`{"prefixLength":24}`))
	if err != nil {
		t.Fatalf("node services from %s: %v", node, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestRevoke: `meshctl node revoke b1` on the seed of a mesh of seed, a1
// and b1 with workloads takes b1 off every peer within a second; b1's own
// certificate is then refused by etcd (it can neither read nor write back
// its record) and by the seed's node services, a1 -> b1 workload traffic
// stops while a1 <-> seed goes on, and the name cannot join again until
// the revocation is cleared. Then `meshctl node remove` of a crashed node
// frees its name for a reinstalled machine with a fresh token.
func TestRevoke(t *testing.T) {
	m := NewMesh(t, revokeSpec())
	m.Up("seed")
	m.Join("a1", "app=web-vm")
	m.Join("b1", "")
	m.Join("c1", "")
	ips := map[string]string{"web": m.AddWorkload("web", "app=web"), "db": m.AddWorkload("db", "app=db")}
	m.Echo("db", ips["db"], 5432)
	checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}})
	var seedSt, b1St statusJSON
	m.JSON("seed", &seedSt, "status")
	m.JSON("b1", &b1St, "status")
	b1CIDR := b1St.CIDRs[0]
	if err := pingOnce(m, "web", seedSt.MeshIP); err != nil {
		t.Fatalf("a1 -> seed before the revocation: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, "a1 has b1 as a peer", func() error {
		if ok, err := peerOf(m, "a1", "b1", b1CIDR); err != nil || !ok {
			return fmt.Errorf("no peer for b1 on a1 (%v)", err)
		}
		return nil
	})

	// A node credential may not revoke: a1 is told to use the first node.
	if out, err := m.Meshctl("a1", "node", "revoke", "c1"); err == nil || !strings.Contains(out, "admin") {
		t.Errorf("node revoke on a1 (a node credential): %v\n%s", err, out)
	}
	if out, err := m.Meshctl("seed", "node", "revoke", "nobody"); err == nil || !strings.Contains(out, "no node") {
		t.Errorf("node revoke of an unknown node: %v\n%s", err, out)
	}

	out := m.MustMeshctl("seed", "node", "revoke", "b1", "--reason", "e2e")
	returned := time.Now()
	t.Logf("meshctl node revoke b1:\n%s", out)
	var dropped time.Duration
	for {
		ok, err := peerOf(m, "a1", "b1", b1CIDR)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			dropped = time.Since(returned)
			break
		}
		if time.Since(returned) > 10*time.Second {
			t.Fatal("a1 still has a peer for b1 10 s after the revocation")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("a1 had no peer for b1 %v after `meshctl node revoke` returned (target: 1 s)", dropped)
	if dropped > time.Second {
		t.Errorf("a1 dropped b1 %v after the revocation, want within 1 s", dropped)
	}
	testutil.Eventually(t, 5*time.Second, "the seed drops b1 and its route", func() error { return noPeer(m, "seed", "b1", b1CIDR) })
	testutil.Eventually(t, 5*time.Second, "a1 drops b1's route", func() error { return noPeer(m, "a1", "b1", b1CIDR) })

	t.Run("traffic to b1 stops, a1 and the seed still talk", func(t *testing.T) {
		m := m.For(t)
		checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, false}})
		if err := pingOnce(m, "web", seedSt.MeshIP); err != nil {
			t.Errorf("a1 -> seed after the revocation: %v", err)
		}
	})

	t.Run("etcd refuses b1's certificate", func(t *testing.T) {
		m := m.For(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b1 := m.nodeEtcd("b1")
		refused := func(what string, err error) {
			t.Helper()
			if err == nil {
				t.Errorf("%s: allowed with b1's revoked certificate", what)
				return
			}
			msg := err.Error()
			if !strings.Contains(msg, "permission denied") && !strings.Contains(msg, "user name not found") && !strings.Contains(msg, "authentication failed") {
				t.Errorf("%s: %v, want an authorization refusal", what, err)
				return
			}
			t.Logf("%s: refused: %v", what, err)
		}
		_, err := b1.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix())
		refused("read the node records", err)
		rec := fmt.Sprintf(`{"version":1,"cluster":"default","name":"b1","wgPublicKey":"fQXi8u/HqgTnHuceVQszd41SCwgLEkqQYQNiFfnGHSU=","cidrs":[%q]}`, b1CIDR)
		_, err = b1.Put(ctx, kvstore.NodeKey("default", "b1"), rec)
		refused("write its record back", err)
		// Nothing of b1 is left but its revocation, readable by a1.
		admin := m.adminEtcd()
		resp, err := admin.Get(ctx, kvstore.NodeKey("default", "b1"))
		if err != nil || len(resp.Kvs) != 0 {
			t.Errorf("b1's record after the revocation: %v %v", resp, err)
		}
		a1 := m.nodeEtcd("a1")
		resp, err = a1.Get(ctx, kvstore.RevokedKey("default", "b1"))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("a1 reads b1's revocation: %v %v", resp, err)
		}
		var r kvstore.Revocation
		if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil || r.Reason != "e2e" || len(r.Serials) == 0 {
			t.Errorf("revocation record %s: %v", resp.Kvs[0].Value, err)
		}
		_, err = a1.Delete(ctx, kvstore.RevokedKey("default", "b1"))
		if err == nil {
			t.Error("a1 deleted b1's revocation")
		}
	})

	t.Run("the seed's node services refuse b1's certificate", func(t *testing.T) {
		m := m.For(t)
		status, body := m.nodeServiceAs(t, "b1")
		if status != http.StatusForbidden || !strings.Contains(body, `"code":"revoked"`) || !strings.Contains(body, "revoked") {
			t.Errorf("node services with b1's certificate: %d %s", status, body)
		}
		t.Logf("node services answered b1: %d %s", status, strings.TrimSpace(body))
		if status, body := m.nodeServiceAs(t, "a1"); status != http.StatusOK {
			t.Errorf("node services with a1's certificate: %d %s", status, body)
		}
	})

	t.Run("the revoked name cannot join until cleared", func(t *testing.T) {
		m := m.For(t)
		out := joinAs(t, m, "b1", "b1", m.Token)
		if !strings.Contains(out, "revoked") || !strings.Contains(out, "--clear") {
			t.Errorf("join as b1 after the revocation:\n%s", out)
		}
		list := m.MustMeshctl("seed", "node", "revoked")
		if !strings.Contains(list, "b1") || !strings.Contains(list, "e2e") {
			t.Errorf("node revoked:\n%s", list)
		}
		m.MustMeshctl("seed", "node", "revoke", "--clear", "b1")
		if out, err := m.Meshctl("seed", "node", "revoke", "--clear", "b1"); err == nil || !strings.Contains(out, "not revoked") {
			t.Errorf("clearing twice: %v\n%s", err, out)
		}
	})

	t.Run("a crashed node is removed and its name joins again", func(t *testing.T) {
		m := m.For(t)
		var st statusJSON
		m.JSON("c1", &st, "status")
		cidr := st.CIDRs[0]
		n := m.node("c1")
		// The machine dies, as in TestMesh: everything in it is killed.
		killProcessTree(n.Proc.Pid)
		for _, pid := range pidsInNetns(t, n.Lab.Netns) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = os.Remove(filepath.Join("/var/run/wireguard", m.wgName("c1")+".sock"))
		// Reinstalled with the same name, it cannot join while the mesh
		// still holds the name (its CIDR outlives the lease).
		tokOut := m.MustMeshctl("seed", "token", "create", "-o", "json")
		var tok struct {
			JoinToken string `json:"joinToken"`
		}
		if err := json.Unmarshal([]byte(tokOut), &tok); err != nil {
			t.Fatal(err)
		}
		if out := joinAs(t, m, "c1", "c1", tok.JoinToken); !strings.Contains(out, "in use") {
			t.Errorf("join of the reinstalled c1 before the removal:\n%s", out)
		}
		out := m.MustMeshctl("seed", "node", "remove", "c1")
		removed := time.Now()
		if !strings.Contains(out, "removed") || !strings.Contains(out, cidr) {
			t.Errorf("node remove c1:\n%s", out)
		}
		testutil.Eventually(t, 5*time.Second, "peers drop c1 at once", func() error {
			if err := noPeer(m, "seed", "c1", cidr); err != nil {
				return err
			}
			return noPeer(m, "a1", "c1", cidr)
		})
		t.Logf("peers dropped the removed c1 within %v (an expired lease alone takes the silence limit)", time.Since(removed))
		if out, err := m.Meshctl("seed", "node", "remove", "c1"); err == nil || !strings.Contains(out, "no node") {
			t.Errorf("removing c1 twice: %v\n%s", err, out)
		}
		// The reinstalled machine: a fresh state directory, a new token.
		tokOut = m.MustMeshctl("seed", "token", "create", "-o", "json")
		if err := json.Unmarshal([]byte(tokOut), &tok); err != nil {
			t.Fatal(err)
		}
		m.Token = tok.JoinToken
		m.Join("c1", "")
		var again statusJSON
		m.JSON("c1", &again, "status")
		testutil.Eventually(t, 20*time.Second, "a1 has the rejoined c1 as a peer", func() error {
			if ok, err := peerOf(m, "a1", "c1", again.CIDRs[0]); err != nil || !ok {
				return fmt.Errorf("no peer for the rejoined c1 on a1 (%v)", err)
			}
			return nil
		})
	})
}

// joinAs runs `meshctl join` for name from a lab node with a throwaway
// state directory and expects it to be refused; it returns the output.
func joinAs(t *testing.T, m *Mesh, node, name, token string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := m.Lab.Exec(t.Context(), m.Lab.Node(node).Netns, filepath.Join(binDir, "meshctl"), "join", token, "--name", name,
		"--state-dir", dir, "--config-file", filepath.Join(dir, "agent.yaml"), "--socket", filepath.Join(dir, "a.sock"),
		"--agent-binary", filepath.Join(binDir, "weft-agent"), "--wait", "2s")
	if err == nil {
		t.Fatalf("join as %s succeeded:\n%s", name, out)
	}
	return string(out)
}
