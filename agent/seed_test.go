package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/embedded"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/pki"
)

// seedFiles is a CA bundle and the etcd settings of a seed using it.
func seedFiles(t *testing.T) (pki.Files, config.Etcd) {
	t.Helper()
	f, err := pki.EnsureBundle(filepath.Join(t.TempDir(), "pki"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return f, config.Etcd{CAFile: f.CAFile, CertFile: f.ClientCertFile, KeyFile: f.ClientKey, CAKeyFile: f.CAKeyFile}
}

// issueClient writes a client certificate of ca with common name cn.
func issueClient(t *testing.T, f pki.Files, cn string) (certFile, keyFile string) {
	t.Helper()
	ca, err := pki.LoadCAFiles(f.CAFile, f.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueClient(cn, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, map[string][]byte{"c.crt": certPEM, "c.key": keyPEM}); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
}

func TestCheckExternalSeed(t *testing.T) {
	f, good := seedFiles(t)
	if err := checkExternalSeed(good); err != nil {
		t.Fatalf("a bundle's CA key with its admin certificate: %v", err)
	}
	other, otherEtcd := seedFiles(t)
	nodeCert, nodeKey := issueClient(t, f, kvstore.NodeUser("a", "n1"))

	cases := []struct {
		name string
		edit func(e *config.Etcd)
		want string
	}{
		{"another CA's key", func(e *config.Etcd) { e.CAKeyFile = other.CAKeyFile }, "does not match its certificate"},
		{"missing key", func(e *config.Etcd) { e.CAKeyFile = filepath.Join(t.TempDir(), "ca.key") }, "give the key of the CA etcd trusts"},
		{"no CA certificate", func(e *config.Etcd) { e.CAFile = "" }, "etcd.caKeyFile needs etcd.caFile"},
		{"a node's certificate", func(e *config.Etcd) { e.CertFile, e.KeyFile = nodeCert, nodeKey }, "is joined node a/n1's certificate"},
		{"an admin certificate of another CA", func(e *config.Etcd) { e.CertFile, e.KeyFile = otherEtcd.CertFile, otherEtcd.KeyFile }, "was not issued by the CA of etcd.caFile"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := good
			tc.edit(&e)
			err := checkExternalSeed(e)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// startOpenEtcd starts an etcd with client certificates but no
// authentication, as an operator's etcd may be.
func startOpenEtcd(t *testing.T) *embedded.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := embedded.Start(ctx, embedded.Config{Dir: t.TempDir(), ClientAddr: "127.0.0.1:0", DisableAuth: true, EtcdLogLevel: "fatal"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func seedConfig(srv *embedded.Server, certFile, keyFile string) *config.Config {
	f := srv.Files()
	cfg := config.Default()
	cfg.Etcd.Endpoints = srv.ClientConfig().Endpoints
	cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile, cfg.Etcd.CAKeyFile = f.CAFile, certFile, keyFile, f.CAKeyFile
	return cfg
}

// A seed whose admin certificate is etcd's root user turns authentication
// on, so the certificates it signs for nodes write only their own keys.
func TestExternalSeedTurnsOnAuthentication(t *testing.T) {
	srv := startOpenEtcd(t)
	f := srv.Files()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)

	// An admin certificate that is not etcd root: refused, saying how.
	opsCert, opsKey := issueClient(t, f, "ops")
	_, err := startControlPlane(ctx, seedConfig(srv, opsCert, opsKey), log)
	if err == nil || !strings.Contains(err.Error(), "etcd's authentication is off") || !strings.Contains(err.Error(), "etcdctl auth enable") {
		t.Fatalf("a seed with CN=ops on an etcd without authentication: %v", err)
	}

	cp, err := startControlPlane(ctx, seedConfig(srv, f.ClientCertFile, f.ClientKey), log)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	if !cp.seed() {
		t.Error("the agent with etcd.caKeyFile is not the seed")
	}
	on, err := cp.kv.AuthEnabled(ctx)
	if err != nil || !on {
		t.Fatalf("authentication on: %v, %v", on, err)
	}
	// A node's certificate without its user may do nothing now.
	nodeCert, nodeKey := issueClient(t, f, kvstore.NodeUser("default", "n1"))
	node := &kvstoretest.Server{Kind: "embedded", Config: srv.ClientConfig(), Files: f}
	node.Config.CertFile, node.Config.KeyFile = nodeCert, nodeKey
	if _, err := kvstoretest.Etcd(t, node).Put(ctx, "weft/v1/policies/x", "{}"); err == nil {
		t.Fatal("a node certificate wrote a policy after the seed turned authentication on")
	}
	// A second start finds it on and changes nothing.
	cp2, err := startControlPlane(ctx, seedConfig(srv, f.ClientCertFile, f.ClientKey), log)
	if err != nil {
		t.Fatalf("restarting the seed: %v", err)
	}
	cp2.Close()
}
