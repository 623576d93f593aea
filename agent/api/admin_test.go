package api

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/pki"
)

type noTokens struct{}

func (noTokens) ConsumeToken(context.Context, string, string, time.Time) (join.Grant, error) {
	return join.Grant{}, join.Errorf(join.CodeTokenUnknown, "no")
}

type issuer struct{}

func (issuer) IssueAdminCredential(context.Context, AdminCredentialRequest) (AdminCredential, error) {
	return AdminCredential{Name: "minted"}, nil
}

// syncBuffer is a log sink the server's goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// adminSeed serves the admin API the way the seed does: the local API's
// admin handler behind a real join service (TLS 1.3, the mesh CA).
func adminSeed(t *testing.T) (*pki.CA, string, *syncBuffer) {
	t.Helper()
	ca, err := pki.NewCA("test mesh")
	if err != nil {
		t.Fatal(err)
	}
	b := fullBackend(newFake())
	b.AdminCredentials = issuer{}
	log := &syncBuffer{}
	local := NewServer(b, slog.New(slog.NewTextHandler(log, nil)))
	srv, err := join.NewServer(join.ServerConfig{
		CA: ca, Tokens: noTokens{}, Cluster: "east", Hosts: []string{"127.0.0.1"},
		EtcdEndpoints: []string{"https://198.18.0.1:2379"}, Admin: local.AdminHandler(),
		Log: slog.New(slog.NewTextHandler(log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ca, l.Addr().String(), log
}

func credential(t *testing.T, ca, signer *pki.CA, server, cn string, orgs []string) AdminCredential {
	t.Helper()
	cert, key, err := signer.IssueClientFor(cn, orgs, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return AdminCredential{Name: cn, Server: server, CA: string(ca.CertPEM), Cert: string(cert), Key: string(key)}
}

func TestAdminAPIServesAdminsOnly(t *testing.T) {
	ca, addr, log := adminSeed(t)
	ctx := context.Background()
	admin, err := NewAdminClient(credential(t, ca, ca, addr, join.AdminCommonName("alice"), []string{join.AdminOrganization}), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateToken(ctx, TokenRequest{TTL: Duration(time.Hour), MaxUses: 1})
	if err != nil || tok.ID != "abc" {
		t.Fatalf("an admin's token create: %+v %v", tok, err)
	}
	if nodes, err := admin.Nodes(ctx); err != nil || len(nodes) != 2 {
		t.Fatalf("an admin's nodes: %v %v", nodes, err)
	}
	if !strings.Contains(log.String(), "holder=alice") || !strings.Contains(log.String(), "path=/admin/v1/tokens") {
		t.Errorf("the admin request is not in the seed's audit log:\n%s", log)
	}

	// What acts on the seed machine, and minting credentials, stay on
	// the local socket.
	if _, err := admin.AddEndpoint(ctx, EndpointSpec{Netns: "x"}); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "not part of the admin API") {
		t.Errorf("endpoint add over the admin API: %v", err)
	}
	if err := admin.Leave(ctx); !errors.Is(err, ErrNotSupported) {
		t.Errorf("leave over the admin API: %v", err)
	}
	if c, err := admin.IssueAdminCredential(ctx, AdminCredentialRequest{Name: "bob"}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("an admin credential minted another over the admin API: %+v %v", c, err)
	}

	// Certificates of the same CA made for something else are refused.
	for name, cred := range map[string]AdminCredential{
		"node certificate":    credential(t, ca, ca, addr, join.NodeCommonName("east", "vm-1"), []string{join.NodeOrganization}),
		"cluster certificate": credential(t, ca, ca, addr, join.ClusterCommonName("west"), []string{join.ClusterOrganization}),
		"admin CN, node org":  credential(t, ca, ca, addr, join.AdminCommonName("mallory"), []string{join.NodeOrganization}),
		"admin org, node CN":  credential(t, ca, ca, addr, join.NodeCommonName("east", "vm-1"), []string{join.AdminOrganization}),
		"admin and node orgs": credential(t, ca, ca, addr, join.AdminCommonName("mallory"), []string{join.AdminOrganization, join.NodeOrganization}),
		"admin with no name":  credential(t, ca, ca, addr, "admin:", []string{join.AdminOrganization}),
		"root (etcd's admin)": credential(t, ca, ca, addr, "root", nil),
	} {
		c, err := NewAdminClient(cred, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Tokens(ctx); !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "meshctl admin credential create") {
			t.Errorf("%s: listing tokens gave %v, want a permission error saying how to get an admin credential", name, err)
		}
	}

	// A stranger's CA: the TLS handshake fails, nothing is served.
	other, err := pki.NewCA("stranger")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewAdminClient(credential(t, ca, other, addr, join.AdminCommonName("eve"), []string{join.AdminOrganization}), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if toks, err := c.Tokens(ctx); err == nil {
		t.Errorf("a certificate of another CA was accepted: %v", toks)
	}
	// A client that does not trust the seed's CA refuses the server.
	fake, err := pki.NewCA("impostor")
	if err != nil {
		t.Fatal(err)
	}
	cred := credential(t, ca, ca, addr, join.AdminCommonName("alice"), []string{join.AdminOrganization})
	cred.CA = string(fake.CertPEM)
	c, _ = NewAdminClient(cred, "", nil)
	if _, err := c.Tokens(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a server outside the credential's CA was trusted: %v", err)
	}
}

func TestAdminCredentialFileIsChecked(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"not json":  "weft1.abc",
		"no server": `{"ca":"x","cert":"y","key":"z"}`,
		"no key":    `{"server":"198.51.100.7:51834","ca":"x","cert":"y"}`,
	} {
		p := dir + "/" + strings.ReplaceAll(name, " ", "-")
		if err := writeFile(p, body); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadAdminCredential(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want an error naming the file", name, err)
		}
	}
	if _, err := NewAdminClient(AdminCredential{Server: "198.51.100.7:51834", CA: "junk", Cert: "y", Key: "z"}, "", nil); err == nil || !strings.Contains(err.Error(), "ca") {
		t.Errorf("a credential without a PEM CA: %v", err)
	}
}

func writeFile(path, body string) error { return os.WriteFile(path, []byte(body), 0o600) }
