package config

import "testing"

// TestStrict: strict mode comes from the file key `strict` and the
// --strict flag (as meshctl up/join pass it after `--`); it is off by
// default.
func TestStrict(t *testing.T) {
	if Default().Strict {
		t.Fatal("strict mode is on by default")
	}
	c, err := Parse([]byte("strict: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Strict {
		t.Fatal("strict: true in the file did not turn strict mode on")
	}
	cfg := Default()
	cfg.NodeName = "n1"
	cfg.Etcd.Endpoints = []string{"https://198.18.0.1:2379"}
	cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile = "/etc/weft/ca.pem", "/etc/weft/cert.pem", "/etc/weft/key.pem"
	if err := cfg.ApplyArgs([]string{"--strict"}); err != nil {
		t.Fatal(err)
	}
	if !cfg.Strict {
		t.Fatal("--strict did not turn strict mode on")
	}
	if err := cfg.ApplyArgs([]string{"--strict=false"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Strict {
		t.Fatal("--strict=false left strict mode on")
	}
}
