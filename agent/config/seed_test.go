package config

import (
	"errors"
	"strings"
	"testing"
)

// A seed on an existing etcd: etcd.caKeyFile (--etcd-ca-key) with the
// join service's settings, as the embedded seed has them.
func TestExternalSeedFlags(t *testing.T) {
	cfg, err := runFlags(t, "--node-name", "a1", "--etcd-endpoints", "https://198.18.0.1:2379,https://198.18.0.2:2379,https://198.18.0.3:2379",
		"--etcd-ca", "/etc/weft/ca.crt", "--etcd-cert", "/etc/weft/root.crt", "--etcd-key", "/etc/weft/root.key",
		"--etcd-ca-key", "/etc/weft/ca.key", "--join-listen", "198.18.0.4:51834")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Etcd.CAKeyFile != "/etc/weft/ca.key" || !cfg.Seed() {
		t.Fatalf("caKeyFile %q, seed %v: want the key and a seed", cfg.Etcd.CAKeyFile, cfg.Seed())
	}
	if got := cfg.JoinAdvertise(); got != "198.18.0.4:51834" {
		t.Errorf("join advertise %q, want the listen address", got)
	}
	if len(cfg.EtcdClientEndpoints()) != 3 {
		t.Errorf("endpoints %v, want all three", cfg.EtcdClientEndpoints())
	}
}

func TestSeedIsTheCAKeyHolder(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		seed bool
	}{
		{"embedded", "nodeName: s\netcd: {embedded: {enabled: true}}\n", true},
		{"existing etcd, node", externalEtcd, false},
		{"existing etcd, CA key", externalEtcd + "  caKeyFile: /etc/weft/ca.key\njoin: {listen: '198.18.0.4:51834'}\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if cfg.Seed() != tc.seed {
				t.Errorf("Seed() = %v, want %v", cfg.Seed(), tc.seed)
			}
		})
	}
}

func TestExternalSeedValidation(t *testing.T) {
	seed := externalEtcd + "  caKeyFile: /etc/weft/ca.key\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"relative key", externalEtcd + "  caKeyFile: ca.key\njoin: {listen: '198.18.0.4:51834'}\n", `etcd.caKeyFile: "ca.key" must be an absolute path`},
		{"no CA certificate", strings.Replace(seed, "  caFile: /etc/weft/ca.pem\n", "", 1) + "join: {listen: '198.18.0.4:51834'}\n", "etcd.caFile: missing"},
		{"no admin certificate", strings.Replace(seed, "  certFile: /etc/weft/node.pem\n", "", 1) + "join: {listen: '198.18.0.4:51834'}\n", "etcd.certFile: missing"},
		{"wildcard join address", seed, "join.advertise: the join service listens on the wildcard address"},
		{"bad join listen", seed + "join: {listen: nope}\n", "join.listen"},
		{"bad join advertise", seed + "join: {listen: ':51834', advertise: 'x'}\n", "join.advertise"},
		{"bad node certificate validity", seed + "join: {listen: '198.18.0.4:51834', nodeCertValidity: 1s}\n", "join.nodeCertValidity"},
		{"kubernetes", seed + "join: {listen: '198.18.0.4:51834'}\nkubernetes: {enabled: true}\n", "etcd.caKeyFile: a Kubernetes node's agent is not a seed"},
		{"with the embedded etcd", "nodeName: s\netcd: {caKeyFile: /etc/weft/ca.key, embedded: {enabled: true}}\n", "etcd.caKeyFile: the embedded etcd keeps its own CA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = cfg.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("want ErrInvalid, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not say %q:\n%v", tc.want, err)
			}
		})
	}
	// A wildcard listen address is fine once the advertised one is set.
	cfg, err := Parse([]byte(seed + "join: {listen: ':51834', advertise: '198.18.0.4:51834'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("wildcard listen with an advertised address: %v", err)
	}
}
