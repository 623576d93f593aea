package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/lab"
)

// TestAdminAPI: on a real seed, 'meshctl admin credential create' writes
// a root-only credential; with it, meshctl on another machine (a joined
// node's namespace, whose own agent holds only a node credential) creates
// tokens, applies policies and lists nodes through the seed's admin API,
// and the seed logs who did it. A joined node's own certificate, signed by
// the same CA, is refused there, and credentials are minted only on the
// seed.
func TestAdminAPI(t *testing.T) {
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "adseed"}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "advm"}}},
	}})
	m.Up("adseed")
	m.Join("advm", "")
	dir := t.TempDir()
	cred := filepath.Join(dir, "laptop.json")

	var info struct {
		Name, Server, File string
		ExpiresAt          time.Time
	}
	m.JSON("adseed", &info, "admin", "credential", "create", "laptop", "--out", cred, "--ttl", "2h")
	if info.Name != "laptop" || info.File != cred || time.Until(info.ExpiresAt) > 2*time.Hour+time.Minute || time.Until(info.ExpiresAt) < time.Hour {
		t.Errorf("credential create said %+v", info)
	}
	fi, err := os.Stat(cred)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the credential file: %v %v, want mode 0600", fi, err)
	}
	if out, err := m.Meshctl("adseed", "admin", "credential", "create", "laptop", "--out", cred); err == nil || !strings.Contains(out, "exists") {
		t.Errorf("a second create over the same file: %v\n%s", err, out)
	}
	if out, err := m.Meshctl("advm", "admin", "credential", "create", "x", "--out", filepath.Join(dir, "x.json")); err == nil || !strings.Contains(out, "seed") {
		t.Errorf("credential create on a joined node: %v\n%s", err, out)
	}

	// Without the credential the joined node may not make tokens; with it,
	// the same command goes to the seed's admin API.
	if out, err := m.Meshctl("advm", "token", "create"); err == nil {
		t.Fatalf("a joined node created a token with its node credential:\n%s", out)
	}
	var tok api.CreatedToken
	m.JSON("advm", &tok, "--admin-credentials", cred, "token", "create", "--labels", "app=cache", "--ttl", "10m")
	if !strings.HasPrefix(tok.JoinToken, "weft1.") || tok.Labels["vm:app"] != "cache" {
		t.Fatalf("token over the admin API: %+v", tok)
	}
	list := m.MustMeshctl("adseed", "token", "list")
	if !strings.Contains(list, tok.ID) {
		t.Errorf("the seed does not list the token made over the admin API:\n%s", list)
	}
	pol := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pol, []byte(dbFrom("web")), 0o644); err != nil {
		t.Fatal(err)
	}
	m.MustMeshctl("advm", "--admin-credentials", cred, "policy", "apply", "-f", pol)
	var got api.Policy
	m.JSON("adseed", &got, "policy", "get", "qdb")
	if got.Name != "qdb" {
		t.Errorf("policy applied over the admin API: %+v", got)
	}
	var nodes []api.Node
	m.JSON("advm", &nodes, "nodes", "--admin-credentials", cred)
	if len(nodes) != 2 {
		t.Errorf("nodes over the admin API: %+v", nodes)
	}
	if out, err := m.Meshctl("advm", "--admin-credentials", cred, "rotate-key"); err == nil {
		t.Errorf("rotate-key took the admin credential:\n%s", out)
	}

	// The same credential from the root namespace (the Terraform
	// provider's way into a lab), and the joined node's own certificate.
	var c api.AdminCredential
	data, _ := os.ReadFile(cred)
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	ns := m.node("advm").Lab.Netns
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return m.Lab.Dial(ctx, ns, network, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := api.NewAdminClient(c, "", dial)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err := admin.Identities(ctx); err != nil || len(ids) == 0 {
		t.Errorf("identities over the admin API: %v %v", ids, err)
	}
	creds := filepath.Join(m.node("advm").StateDir, "credentials")
	certPEM, err1 := os.ReadFile(filepath.Join(creds, "node.pem"))
	keyPEM, err2 := os.ReadFile(filepath.Join(creds, "node-key.pem"))
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	stolen := c
	stolen.Cert, stolen.Key = string(certPEM), string(keyPEM)
	nodeClient, err := api.NewAdminClient(stolen, "", dial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodeClient.CreateToken(ctx, api.TokenRequest{TTL: api.Duration(time.Hour), MaxUses: 1}); !errors.Is(err, api.ErrPermission) {
		t.Errorf("a node's own certificate on the admin API: %v, want permission denied", err)
	}

	seedLog := m.node("adseed").Proc.Output()
	if !strings.Contains(seedLog, "admin API request") || !strings.Contains(seedLog, "holder=laptop") {
		t.Errorf("the seed's log has no audit line for the admin requests")
	}
	if !strings.Contains(seedLog, "refused a request without an admin certificate") {
		t.Errorf("the seed's log does not name the refused node certificate")
	}
}
