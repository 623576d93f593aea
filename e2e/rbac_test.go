package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
)

// EtcdAs is a plain etcd client (no Weft code in between) inside node
// from's namespace, with the certificate and key in certFile/keyFile: what
// an attacker holding that machine's files can do.
func (m *Mesh) EtcdAs(from, caFile, certFile, keyFile string) *clientv3.Client {
	m.t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		m.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		m.t.Fatal(err)
	}
	ns := m.node(from).Lab.Netns
	seed := m.node(m.Seed).Lab.Underlay.String()
	ec, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://" + net.JoinHostPort(seed, "2379")},
		DialTimeout: 10 * time.Second,
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return m.Lab.Dial(ctx, ns, "tcp", addr)
		})},
	})
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { _ = ec.Close() })
	return ec
}

// nodeEtcd is the plain etcd client of a joined node's own credentials.
func (m *Mesh) nodeEtcd(node string) *clientv3.Client {
	dir := filepath.Join(m.node(node).StateDir, "credentials")
	return m.EtcdAs(node, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
}

// adminEtcd is a plain etcd client with the seed's admin certificate, run
// in the seed's namespace: the test's view of what really is stored.
func (m *Mesh) adminEtcd() *clientv3.Client {
	dir := filepath.Join(m.node(m.Seed).StateDir, "etcd", "pki")
	return m.EtcdAs(m.Seed, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
}

func rbacSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "a1", Workloads: []lab.WorkloadSpec{{Name: "web"}}}}},
		{Name: "site2", NAT: true, Nodes: []lab.NodeSpec{{Name: "b1", Workloads: []lab.WorkloadSpec{{Name: "db"}}}, {Name: "c1", Workloads: []lab.WorkloadSpec{{Name: "worker"}, {Name: "rogue"}}}}},
	}}
}

// TestRBACNodeCredentials replays, with node a1's own certificate and key
// and a plain etcd client from a1's namespace, every control-plane attack
// of issue 12 ("What was shown", point 1) against a mesh made with
// `meshctl up --rbac`: each is refused with a permission error and nothing
// changes, while joins, identities, policies applied on the seed and
// traffic keep working.
func TestRBACNodeCredentials(t *testing.T) {
	m := NewMesh(t, rbacSpec())
	m.Up("seed")
	m.Join("a1", "app=web-vm")
	m.Join("b1", "")
	ips := map[string]string{"web": m.AddWorkload("web", "app=web"), "db": m.AddWorkload("db", "app=db")}
	m.Echo("db", ips["db"], 5432)
	m.Echo("web", ips["web"], 5432)
	applyPolicy(t, m, "seed", writeFile(t, "db.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]
`))
	checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}, {"db", "tcp", "web", 5432, true}})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := m.adminEtcd()
	a1 := m.nodeEtcd("a1")
	snapshot := func() map[string]string {
		t.Helper()
		resp, err := admin.Get(ctx, kvstore.Prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatalf("admin read: %v", err)
		}
		out := map[string]string{}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			// Leased records are rewritten by their owners (heartbeats do
			// not change them, but a workload restart could): compare the
			// shared, admin-owned state and the node records' keys.
			out[k] = string(kv.Value)
		}
		return out
	}
	before := snapshot()
	members, err := admin.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}

	b1Key := kvstore.NodeKey("default", "b1")
	var b1 kvstore.Node
	if err := json.Unmarshal([]byte(before[b1Key]), &b1); err != nil {
		t.Fatalf("b1's record: %v: %q", err, before[b1Key])
	}
	forged := b1
	forged.WGPublicKey = "fQXi8u/HqgTnHuceVQszd41SCwgLEkqQYQNiFfnGHSU="
	forgedJSON, _ := json.Marshal(forged)
	var dbEndpointKey string
	for k := range before {
		if strings.HasPrefix(k, kvstore.EndpointsNodePrefix("default", "b1")) && strings.HasSuffix(k, "/"+ips["db"]) {
			dbEndpointKey = k
		}
	}
	if dbEndpointKey == "" {
		t.Fatalf("no endpoint record for db (%s) under b1", ips["db"])
	}
	var webIdentity uint32
	for k, v := range before {
		if strings.HasPrefix(k, kvstore.EndpointsPrefix) && strings.HasSuffix(k, "/"+ips["web"]) {
			var ep kvstore.Endpoint
			_ = json.Unmarshal([]byte(v), &ep)
			webIdentity = ep.Identity
		}
	}
	relabeled := fmt.Sprintf(`{"version":1,"ip":%q,"identity":%d,"labels":["vm:app=web"],"cluster":"default","node":"b1"}`, ips["db"], webIdentity)
	token := `{"version":1,"id":"tevil","secretSHA256":"` + strings.Repeat("ab", 32) + `","created":"2026-01-01T00:00:00Z","expires":"2099-01-01T00:00:00Z","cluster":"default","uses":0,"maxUses":10000}`

	attacks := []struct {
		name string
		do   func() error
	}{
		{"read every token hash", func() error { _, err := a1.Get(ctx, kvstore.TokensPrefix, clientv3.WithPrefix()); return err }},
		{"read everything", func() error { _, err := a1.Get(ctx, kvstore.Prefix, clientv3.WithPrefix()); return err }},
		{"take a snapshot", func() error {
			rc, err := a1.Snapshot(ctx)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = rc.Read(make([]byte, 1))
			return err
		}},
		{"write a 10,000-use token", func() error { _, err := a1.Put(ctx, kvstore.TokenKey("tevil"), token); return err }},
		{"relabel b1's workload with web's identity", func() error { _, err := a1.Put(ctx, dbEndpointKey, relabeled); return err }},
		{"delete the policy", func() error { _, err := a1.Delete(ctx, kvstore.PolicyKey("db")); return err }},
		{"delete b1's node record", func() error { _, err := a1.Delete(ctx, b1Key); return err }},
		{"rewrite b1's node record with a key a1 controls", func() error { _, err := a1.Put(ctx, b1Key, string(forgedJSON)); return err }},
		{"delete every node record", func() error { _, err := a1.Delete(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); return err }},
		{"create an identity directly", func() error {
			_, err := a1.Put(ctx, kvstore.IdentityIDKey(65000), `{"version":1,"id":65000,"labels":["vm:app=web"]}`)
			return err
		}},
		{"claim a CIDR directly", func() error { _, err := a1.Put(ctx, kvstore.IPAMPrefix+"default/100.64.200.0/24", "{}"); return err }},
		{"replace the gossip key", func() error { _, err := a1.Put(ctx, kvstore.GossipKeyKey, `{"version":1,"key":"AAAA"}`); return err }},
		{"widen its own grant", func() error {
			_, err := a1.Put(ctx, kvstore.GrantKey("default", "a1"), `{"version":1,"cluster":"default","node":"a1","allowLabels":["*"]}`)
			return err
		}},
		{"auth enable", func() error { _, err := a1.AuthEnable(ctx); return err }},
		{"auth disable", func() error { _, err := a1.AuthDisable(ctx); return err }},
		{"widen its own role", func() error {
			_, err := a1.RoleGrantPermission(ctx, kvstore.NodeUser("default", "a1"), "", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add a user", func() error { _, err := a1.UserAdd(ctx, "evil", "evil-password"); return err }},
		{"member add", func() error { _, err := a1.MemberAdd(ctx, []string{"http://198.18.99.1:2380"}); return err }},
	}
	for _, a := range attacks {
		err := a.do()
		if err == nil {
			t.Errorf("%s: allowed with a1's certificate", a.name)
			continue
		}
		if !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s: refused, but not with a permission error: %v", a.name, err)
			continue
		}
		t.Logf("%s: refused: %v", a.name, err)
	}

	// Nothing changed: every admin-owned key and b1's records are as they
	// were, and no member was added.
	after := snapshot()
	for k, v := range before {
		if strings.HasPrefix(k, kvstore.NodesPrefix) || strings.HasPrefix(k, kvstore.EndpointsPrefix) {
			// Leased and owned: the owner may rewrite them, but not to
			// what a1 wrote.
			if got, ok := after[k]; !ok || got == string(forgedJSON) || got == relabeled {
				t.Errorf("%s changed to %q", k, got)
			}
			continue
		}
		if strings.HasPrefix(k, kvstore.IdentityRefsPrefix) {
			continue
		}
		if after[k] != v {
			t.Errorf("%s changed: %q -> %q", k, v, after[k])
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok && !strings.HasPrefix(k, kvstore.IdentityRefsPrefix) {
			t.Errorf("new key %s after the attacks", k)
		}
	}
	if ms, err := admin.MemberList(ctx); err != nil || len(ms.Members) != len(members.Members) {
		t.Errorf("members after the attacks: %v, %v", ms, err)
	}

	// What a1 legitimately needs still works with the same certificate.
	if _, err := a1.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); err != nil {
		t.Errorf("a1 can no longer list nodes: %v", err)
	}
	if _, err := a1.Get(ctx, kvstore.GossipKeyKey); err != nil {
		t.Errorf("a1 can no longer read the gossip key: %v", err)
	}

	// Admin-only commands on a plain VM say what they need.
	out, err := m.Meshctl("a1", "policy", "apply", "-f", writeFile(t, "evil.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{}]
`))
	if err == nil || !strings.Contains(out, "needs admin rights") || !strings.Contains(out, "first node") {
		t.Errorf("policy apply on a1: %v\n%s", err, out)
	}
	out, err = m.Meshctl("a1", "policy", "delete", "db")
	if err == nil || !strings.Contains(out, "needs admin rights") {
		t.Errorf("policy delete on a1: %v\n%s", err, out)
	}
	out, err = m.Meshctl("a1", "token", "create")
	if err == nil || !strings.Contains(out, "admin rights") {
		t.Errorf("token create on a1: %v\n%s", err, out)
	}

	// A join token admits new nodes, not existing ones: joining as b1
	// (which would make b1's keys the newcomer's) is refused.
	dir := t.TempDir()
	raw, err := m.Lab.Exec(ctx, m.Lab.Node("c1").Netns, filepath.Join(binDir, "meshctl"), "join", m.Token, "--name", "b1",
		"--state-dir", dir, "--config-file", filepath.Join(dir, "agent.yaml"), "--socket", filepath.Join(dir, "a.sock"),
		"--agent-binary", "/bin/false", "--wait", "2s")
	if err == nil || !strings.Contains(string(raw), `node name "b1" is in use`) {
		t.Errorf("joining as the existing node b1: %v\n%s", err, raw)
	}

	// The mesh keeps working: traffic flows, a new node joins with a
	// bounded grant, and the policy a1 tried to delete still isolates db.
	checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}, {"db", "tcp", "web", 5432, true}})
	var tok struct {
		JoinToken string `json:"joinToken"`
	}
	m.JSON("seed", &tok, "token", "create", "--allow-labels", "app=worker", "--ttl", "10m")
	m.Token = tok.JoinToken
	m.Join("c1", "")
	ips["worker"] = m.AddWorkload("worker", "app=worker")
	m.Echo("worker", ips["worker"], 5432)
	checkMatrix(t, m, ips, []verdictCase{{"worker", "tcp", "web", 5432, true}, {"web", "tcp", "worker", 5432, true}, {"worker", "tcp", "db", 5432, false}, {"web", "tcp", "db", 5432, true}})
	// A label set outside c1's grant gets no identity from the seed.
	w := m.Lab.Workload("rogue")
	out, err = m.Meshctl("c1", "endpoint", "add", "--netns", w.Netns, "--labels", "app=payments")
	if err == nil || !strings.Contains(out, "outside the node's grant") {
		t.Errorf("endpoint add outside the grant on c1: %v\n%s", err, out)
	}
	resp, err := admin.Get(ctx, kvstore.GrantKey("default", "c1"))
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"app=worker"`) {
		t.Errorf("c1's grant: %v %v", resp, err)
	}
	testutil.Eventually(t, 10*time.Second, "seed healthy", func() error {
		_, err := m.Meshctl("seed", "status")
		return err
	})
}

// restartSeed stops the seed's `meshctl up --foreground` (and its agent
// with it) and runs `meshctl up` again on the same configuration, waiting
// for the fresh token it prints.
func (m *Mesh) restartSeed() {
	m.t.Helper()
	n := m.node(m.Seed)
	_ = n.Proc.Stop()
	args := append([]string{"up"}, m.procFlags(n)...)
	p, err := m.Lab.Start(n.Lab.Netns, "agent-"+n.Name, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
	if err != nil {
		m.t.Fatalf("meshctl up again: %v", err)
	}
	n.Proc = p
	m.waitOutput(p, tokenRE, 90*time.Second, "meshctl up to restart the seed")
}

// TestRBACUpgradeAndRestart turns RBAC on for a mesh that ran without it:
// the seed restarts with etcd.embedded.rbac, gives the nodes it knows their
// etcd users, and the nodes keep working with their old certificates — now
// confined to their own keys — also across a restart of their agent.
func TestRBACUpgradeAndRestart(t *testing.T) {
	m := NewMesh(t, rbacSpec())
	// A mesh made before per-node roles were the default.
	m.Up("seed", "--rbac=false")
	m.Join("a1", "")
	m.Join("b1", "")
	ips := map[string]string{"web": m.AddWorkload("web", "app=web"), "db": m.AddWorkload("db", "app=db")}
	m.Echo("db", ips["db"], 5432)
	checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Without RBAC a node's certificate is etcd root: the finding.
	if _, err := m.nodeEtcd("a1").Get(ctx, kvstore.TokensPrefix, clientv3.WithPrefix()); err != nil {
		t.Fatalf("with --rbac=false a node could not read tokens: %v", err)
	}

	// Turn it on in the seed's configuration and restart the seed.
	cfgFile := m.node("seed").ConfigFile
	data, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(data)
	e := strings.Index(cfg, "\n  embedded:\n")
	if e < 0 {
		t.Fatalf("no etcd.embedded in the seed's configuration:\n%s", cfg)
	}
	e += len("\n  embedded:\n")
	cfg = cfg[:e] + "    rbac: true\n" + cfg[e:]
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	m.restartSeed()
	m.WaitHealthy("seed")
	for _, n := range []string{"a1", "b1"} {
		m.WaitHealthy(n)
	}

	a1 := m.nodeEtcd("a1")
	testutil.Eventually(t, 30*time.Second, "a1 confined to its own keys", func() error {
		_, err := a1.Get(ctx, kvstore.TokensPrefix, clientv3.WithPrefix())
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			return fmt.Errorf("reading tokens with a1's certificate: %v", err)
		}
		if _, err := a1.Get(ctx, kvstore.NodesPrefix, clientv3.WithPrefix()); err != nil {
			return fmt.Errorf("a1 cannot list nodes: %v", err)
		}
		return nil
	})
	if _, err := a1.Delete(ctx, kvstore.NodeKey("default", "b1")); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("deleting b1's record with a1's certificate: %v", err)
	}
	checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}})

	// A node's agent restarts under RBAC: same CIDR (from the seed's node
	// service), its identities referenced again, traffic flows.
	var before, after statusJSON
	m.JSON("b1", &before, "status")
	n := m.node("b1")
	_ = n.Proc.Stop()
	p, err := m.startJoin(n, m.Token, "")
	if err != nil {
		t.Fatal(err)
	}
	n.Proc = p
	m.WaitHealthy("b1")
	m.JSON("b1", &after, "status")
	if strings.Join(before.CIDRs, ",") != strings.Join(after.CIDRs, ",") || before.MeshIP != after.MeshIP {
		t.Errorf("b1's CIDRs changed across a restart: %v %s -> %v %s", before.CIDRs, before.MeshIP, after.CIDRs, after.MeshIP)
	}
	checkMatrix(t, m, ips, []verdictCase{{"web", "tcp", "db", 5432, true}})
}
