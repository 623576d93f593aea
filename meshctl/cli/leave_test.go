package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/agent/config"
)

// TestRemoveNodeStateStaysInItsPlace: leave removes a node's own entries
// from its state directory, and nothing from a directory a configuration
// names by mistake (relative, the root, or one no node used), nor an etcd
// data directory outside the state directory unless etcd is embedded, and
// then only what etcd made there.
func TestRemoveNodeStateStaysInItsPlace(t *testing.T) {
	touch := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{"", ".", "state", "/", "/tmp/../tmp"} {
		cfg := config.Default()
		cfg.StateDir = bad
		if _, err := removeNodeState(cfg, filepath.Join(t.TempDir(), "agent.yaml")); err == nil || !strings.Contains(err.Error(), "nothing was removed") {
			t.Errorf("stateDir %q: %v", bad, err)
		}
	}

	// A directory that exists but holds no node: its pki/ and etcd/ stay.
	shared := t.TempDir()
	touch(filepath.Join(shared, "pki", "ca.pem"))
	touch(filepath.Join(shared, "etcd", "other"))
	cfg := config.Default()
	cfg.StateDir = shared
	if _, err := removeNodeState(cfg, filepath.Join(t.TempDir(), "agent.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{"pki/ca.pem", "etcd/other"} {
		if _, err := os.Stat(filepath.Join(shared, keep)); err != nil {
			t.Errorf("leave removed %s from a directory no node used: %v", keep, err)
		}
	}

	// A node's state: its entries go; an outside etcd data dir loses only
	// what etcd made, and only with embedded etcd.
	state, data := t.TempDir(), t.TempDir()
	touch(filepath.Join(state, "wireguard", "wireguard.key"))
	touch(filepath.Join(state, "credentials", "node.crt"))
	touch(filepath.Join(state, "unrelated"))
	touch(filepath.Join(data, "member", "snap", "db"))
	touch(filepath.Join(data, "mine"))
	cfg = config.Default()
	cfg.StateDir = state
	cfg.Etcd.Embedded.DataDir = data
	cfgFile := filepath.Join(t.TempDir(), "agent.yaml")
	touch(cfgFile)
	if _, err := removeNodeState(cfg, cfgFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(data, "member")); err != nil {
		t.Errorf("etcd not embedded: its data dir was touched: %v", err)
	}
	for _, gone := range []string{filepath.Join(state, "wireguard"), filepath.Join(state, "credentials"), cfgFile} {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("%s left after leave: %v", gone, err)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "unrelated")); err != nil {
		t.Errorf("leave removed a file that is not the node's: %v", err)
	}
	touch(filepath.Join(state, "wireguard", "wireguard.key"))
	cfg.Etcd.Embedded.Enabled = true
	if _, err := removeNodeState(cfg, cfgFile); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(data, "member")); !os.IsNotExist(err) {
		t.Errorf("embedded etcd's member directory left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "mine")); err != nil {
		t.Errorf("leave removed a file etcd did not make in its data dir: %v", err)
	}
}
