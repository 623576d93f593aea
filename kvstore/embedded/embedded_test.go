package embedded_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/embedded"
	"github.com/weftmesh/weft/pki"
)

// A restarted embedded server keeps its data and its CA, so existing agents
// keep trusting it; a stopped one no longer answers.
func TestRestartKeepsDataAndCA(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	cfg := embedded.Config{Dir: dir, ClientAddr: "127.0.0.1:0", EtcdLogLevel: "fatal"}
	srv, err := embedded.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ca1, err := os.ReadFile(srv.Files().CAFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kvstore.New(ctx, srv.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PutPolicy(ctx, kvstore.Policy{Name: "keep", Format: "yaml", Document: "kind: Policy"}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.Close()
	srv.Close() // harmless twice

	stopped := srv.ClientConfig()
	stopped.DialTimeout = time.Second
	if c, err := kvstore.New(ctx, stopped); err == nil {
		c.Close()
		t.Fatal("a stopped server still answers")
	}

	srv2, err := embedded.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv2.Close)
	ca2, _ := os.ReadFile(srv2.Files().CAFile)
	if !bytes.Equal(ca1, ca2) {
		t.Fatal("restart generated a new CA: existing clients would stop trusting the server")
	}
	c2, err := kvstore.New(ctx, srv2.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if p, err := c2.GetPolicy(ctx, "keep"); err != nil || p.Document != "kind: Policy" {
		t.Fatalf("data after restart: %+v, %v", p, err)
	}
}

func TestConfigRefused(t *testing.T) {
	for _, cfg := range []embedded.Config{
		{},
		{Dir: t.TempDir(), ClientAddr: "no-port"},
		{Dir: t.TempDir(), ClientAddr: "127.0.0.1:99999"},
		{Dir: t.TempDir(), ClientAddr: "127.0.0.1:0", EtcdLogLevel: "loud"},
	} {
		if srv, err := embedded.Start(context.Background(), cfg); !errors.Is(err, embedded.ErrInvalidConfig) {
			if srv != nil {
				srv.Close()
			}
			t.Errorf("Start(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

// The embedded etcd starts with authentication on: the admin certificate
// (CN=root) is root, any other certificate of the same CA is nobody until
// it is given a user. DisableAuth leaves it off, as before per-node roles.
func TestAuthOnByDefault(t *testing.T) {
	ctx := context.Background()
	for _, disable := range []bool{false, true} {
		srv, err := embedded.Start(ctx, embedded.Config{Dir: t.TempDir(), ClientAddr: "127.0.0.1:0", EtcdLogLevel: "fatal", DisableAuth: disable})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		admin, err := kvstore.New(ctx, srv.ClientConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close()
		if on, err := admin.AuthEnabled(ctx); err != nil || on == disable {
			t.Fatalf("DisableAuth=%v: auth enabled = %v, %v", disable, on, err)
		}
		ca, err := pki.LoadCAFiles(srv.Files().CAFile, srv.Files().CAKeyFile)
		if err != nil {
			t.Fatal(err)
		}
		cert, key, err := ca.IssueClient(kvstore.NodeUser("default", "vm-1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := pki.WriteFiles(dir, map[string][]byte{"c.pem": cert, "k.pem": key}); err != nil {
			t.Fatal(err)
		}
		cfg := srv.ClientConfig()
		cfg.CertFile, cfg.KeyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
		node, err := kvstore.New(ctx, cfg)
		switch {
		case disable && err != nil:
			t.Fatalf("without auth a CA certificate is refused: %v", err)
		case !disable && (err == nil || !kvstore.IsPermissionDenied(err)):
			t.Fatalf("with auth on, a certificate without a user connected (or failed otherwise): %v", err)
		}
		if node != nil {
			node.Close()
		}
	}
}
