package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/pki"
)

// helperEnv makes the test binary act as a small tool instead of running
// tests; the lab runs it inside a namespace.
const helperEnv = "WEFT_E2E_HELPER"

func runHelper() int {
	var err error
	switch os.Getenv(helperEnv) {
	case "expired-token":
		err = expiredToken(os.Args[len(os.Args)-3], os.Args[len(os.Args)-2], os.Args[len(os.Args)-1])
	case "forge":
		err = forgeHelper(os.Args[max(1, len(os.Args)-6):])
	case "claim-cidr":
		err = claimHelper(os.Args[len(os.Args)-3], os.Args[len(os.Args)-2], os.Args[len(os.Args)-1])
	case "tcx-programs":
		err = tcxProgramsHelper(os.Args[len(os.Args)-1])
	default:
		err = fmt.Errorf("unknown helper %q", os.Getenv(helperEnv))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// expiredToken stores a token that expired an hour ago, with the seed's
// administrative etcd credentials, and prints it as a join token for the
// same join service and CA as template. `meshctl token create` cannot make
// one (its shortest lifetime is a minute), and a test must not wait.
func expiredToken(endpoint, pkiDir, template string) error {
	tmpl, err := join.ParseToken(template)
	if err != nil {
		return err
	}
	files := pki.BundleFiles(pkiDir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv, err := kvstore.New(ctx, kvstore.Config{Endpoints: []string{endpoint}, CAFile: files.CAFile, CertFile: files.ClientCertFile, KeyFile: files.ClientKey})
	if err != nil {
		return err
	}
	defer kv.Close()
	t, secret, err := kv.CreateToken(ctx, kvstore.TokenSpec{Cluster: "default", TTL: time.Minute, MaxUses: 1}, time.Now().Add(-time.Hour))
	if err != nil {
		return err
	}
	fmt.Println(join.Token{Server: tmpl.Server, ID: t.ID, Secret: secret, CAHash: tmpl.CAHash}.String())
	return nil
}

// ExpiredToken returns a join token of this mesh that has expired.
func (m *Mesh) ExpiredToken(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	seed := m.node(m.Seed)
	out, err := m.Lab.Exec(t.Context(), seed.Lab.Netns, "env", helperEnv+"=expired-token", self,
		"https://"+seed.Lab.Underlay.String()+":2379", filepath.Join(seed.StateDir, "etcd", "pki"), m.Token)
	if err != nil {
		t.Fatalf("making an expired token: %v\n%s", err, out)
	}
	tok := tokenRE.FindString(string(out))
	if tok == "" {
		t.Fatalf("no token in helper output:\n%s", out)
	}
	return strings.TrimSpace(tok)
}

// claimHelper asks the seed's node services, with the node credentials in
// credDir, to make cidr the node's CIDR (what a Kubernetes node's agent does
// with its podCIDR), and prints the answer.
func claimHelper(server, credDir, cidr string) error {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return err
	}
	c, err := join.NewServiceClient(server, filepath.Join(credDir, join.CAFile), filepath.Join(credDir, join.CertFile), filepath.Join(credDir, join.KeyFile))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := c.AllocateCIDR(ctx, join.CIDRRequest{Claim: p})
	if err != nil {
		return err
	}
	fmt.Println("claimed", got)
	return nil
}
