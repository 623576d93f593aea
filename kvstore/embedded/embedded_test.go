package embedded_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/embedded"
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
