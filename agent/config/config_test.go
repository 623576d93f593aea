package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/identity"
)

// runFlags parses args with the agent's flags and returns what FromCLI
// builds (or its error).
func runFlags(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	var cfg *Config
	var cfgErr error
	app := &cli.App{
		Name:  "weft-agent",
		Flags: Flags(),
		Action: func(c *cli.Context) error {
			cfg, cfgErr = FromCLI(c)
			return nil
		},
	}
	if err := app.Run(append([]string{"weft-agent"}, args...)); err != nil {
		t.Fatalf("flag parsing: %v", err)
	}
	return cfg, cfgErr
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const externalEtcd = `
nodeName: vm-1
etcd:
  endpoints: [https://198.18.0.1:2379]
  caFile: /etc/weft/ca.pem
  certFile: /etc/weft/node.pem
  keyFile: /etc/weft/node-key.pem
`

func TestFileThenEnvThenFlags(t *testing.T) {
	path := writeFile(t, externalEtcd+`
cluster: east
labels: {app: web}
wireguard: {listenPort: 40000, interface: wg-file}
log: {format: json}
workloads:
  - netns: web-1
    labels: {app: web, vm:tier: front}
`)
	t.Setenv("WEFT_WG_PORT", "41000")
	t.Setenv("WEFT_CLUSTER", "west")
	cfg, err := runFlags(t, "--config", path, "--cluster", "north", "--labels", "app=db,vm:zone=a")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "vm-1" {
		t.Errorf("nodeName from the file: got %q", cfg.NodeName)
	}
	if cfg.WireGuard.ListenPort != 41000 {
		t.Errorf("WEFT_WG_PORT should override the file: got %d", cfg.WireGuard.ListenPort)
	}
	if cfg.WireGuard.Interface != "wg-file" {
		t.Errorf("unset flag must not override the file: interface %q", cfg.WireGuard.Interface)
	}
	if cfg.Cluster != "north" {
		t.Errorf("flag should win over env and file: cluster %q", cfg.Cluster)
	}
	if got := identity.FormatLabelMap(cfg.Labels); got != "app=db,vm:zone=a" {
		t.Errorf("labels: %q", got)
	}
	if cfg.Log.Format != "json" || cfg.Log.Level != "info" {
		t.Errorf("log: %+v", cfg.Log)
	}
	if len(cfg.Workloads) != 1 || cfg.Workloads[0].Labels["vm:tier"] != "front" {
		t.Errorf("workloads: %+v", cfg.Workloads)
	}
	if cfg.SocketPath != DefaultSocketPath || cfg.WireGuard.PersistentKeepalive.D() != DefaultKeepalive {
		t.Errorf("defaults lost: socket %q keepalive %s", cfg.SocketPath, cfg.WireGuard.PersistentKeepalive.D())
	}
}

func TestFlagsAlone(t *testing.T) {
	cfg, err := runFlags(t, "--node-name", "seed", "--embedded-etcd",
		"--embedded-etcd-client-url", "https://198.18.0.1:2379", "--state-dir", "/tmp/weft-seed",
		"--socket", "/tmp/weft-seed/agent.sock", "--wg-keepalive", "0s",
		"--underlay-endpoints", "198.18.0.1:51833,198.18.0.2:51833", "--lease-ttl", "5s")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Etcd.Embedded.Enabled {
		t.Error("embedded etcd not enabled")
	}
	if got := cfg.EtcdClientEndpoints(); len(got) != 1 || got[0] != "https://198.18.0.1:2379" {
		t.Errorf("client endpoints of the embedded etcd: %v", got)
	}
	if cfg.EtcdDataDir() != "/tmp/weft-seed/etcd" {
		t.Errorf("data dir: %s", cfg.EtcdDataDir())
	}
	if len(cfg.Underlay.Endpoints) != 2 {
		t.Errorf("underlay endpoints: %v", cfg.Underlay.Endpoints)
	}
	if cfg.WireGuard.PersistentKeepalive != 0 || cfg.Etcd.LeaseTTL.D() != 5*time.Second {
		t.Errorf("durations: keepalive %s lease %s", cfg.WireGuard.PersistentKeepalive.D(), cfg.Etcd.LeaseTTL.D())
	}
}

func TestValidateNamesTheField(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		field string
	}{
		{"no etcd", "nodeName: a\n", "etcd.endpoints: no etcd endpoints"},
		{"plain http etcd", strings.Replace(externalEtcd, "https://", "http://", 1), "etcd.endpoints[0]"},
		{"missing key file", strings.Replace(externalEtcd, "  keyFile: /etc/weft/node-key.pem\n", "", 1), "etcd.keyFile: missing"},
		{"bad node name", strings.Replace(externalEtcd, "vm-1", "VM_1", 1), "nodeName"},
		{"port", externalEtcd + "wireguard: {listenPort: 70000}\n", "wireguard.listenPort"},
		{"long interface", externalEtcd + "wireguard: {interface: averyveryverylongname}\n", "wireguard.interface"},
		{"mode", externalEtcd + "wireguard: {mode: magic}\n", "wireguard.mode"},
		{"rotate too often", externalEtcd + "wireguard: {rotateEvery: 10s}\n", "wireguard.rotateEvery: 10s is too short"},
		{"underlay", externalEtcd + "underlay: {endpoints: [198.18.0.1]}\n", "underlay.endpoints[0]"},
		{"pool host bits", externalEtcd + "ipam: {meshPool: 100.64.0.1/16}\n", "ipam.meshPool"},
		{"prefix", externalEtcd + "ipam: {meshPool: 100.64.0.0/16, nodePrefixLength: 8}\n", "ipam.nodePrefixLength"},
		{"prefix without pool", externalEtcd + "ipam: {nodePrefixLength: 200}\n", "ipam.nodePrefixLength"},
		{"log level", externalEtcd + "log: {level: loud}\n", "log.level"},
		{"relative state", externalEtcd + "stateDir: state\n", "stateDir"},
		{"label source", externalEtcd + "labels: {mesh:kind: vm}\n", "labels: label \"mesh:kind\": the mesh: source is reserved"},
		{"dup workload", externalEtcd + "workloads: [{netns: a}, {netns: a}]\n", "workloads[1].netns"},
		{"bad workload label", externalEtcd + "workloads: [{netns: a, labels: {app: 'x y'}}]\n", "workloads[0].labels"},
		{"wildcard advertise", "nodeName: s\netcd: {embedded: {enabled: true, clientURL: 'https://0.0.0.0:2379'}}\n", "etcd.embedded.advertiseClientURL"},
		{"bad join listen", "nodeName: s\netcd: {embedded: {enabled: true}}\njoin: {listen: nope}\n", "join.listen"},
		{"metrics", externalEtcd + "metrics: {address: 'x:0'}\n", "metrics.address"},
		{"metrics allow", externalEtcd + "metrics: {allow: ['10.0.0.1/8']}\n", "metrics.allow[0]"},
		{"lease", externalEtcd + "  leaseTTL: 1s\n", "etcd.leaseTTL"},
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
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error does not name %q:\n%v", tc.field, err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg, err := Parse([]byte(externalEtcd + "wireguard: {listenPort: 0, mode: x}\nlog: {format: xml}\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	for _, f := range []string{"wireguard.listenPort", "wireguard.mode", "log.format"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("missing %s in %v", f, err)
		}
	}
}

func TestFileErrors(t *testing.T) {
	t.Run("unknown key", func(t *testing.T) {
		_, err := Load(writeFile(t, externalEtcd+"wireguards: {}\n"))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "wireguards") {
			t.Errorf("want an error naming the unknown key, got %v", err)
		}
	})
	t.Run("unknown key names its line", func(t *testing.T) {
		_, err := Load(writeFile(t, externalEtcd+"workloads:\n  - name: web\n    lables: {app: web}\n"))
		line := strings.Count(externalEtcd, "\n") + 3
		want := fmt.Sprintf(`line %d: unknown field "lables"`, line)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "JSON") {
			t.Errorf("want %q (and no JSON internals), got %v", want, err)
		}
	})
	t.Run("wrong type names the key", func(t *testing.T) {
		_, err := Load(writeFile(t, externalEtcd+"wireguard:\n  listenPort: abc\n"))
		want := fmt.Sprintf("line %d: wireguard.listenPort: a string where a whole number is expected", strings.Count(externalEtcd, "\n")+2)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q, got %v", want, err)
		}
	})
	t.Run("bad duration", func(t *testing.T) {
		_, err := Load(writeFile(t, externalEtcd+"wireguard: {persistentKeepalive: 25}\n"))
		if err == nil || !strings.Contains(err.Error(), "duration") {
			t.Errorf("want a duration error, got %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := runFlags(t, "--config", "/nonexistent/weft.yaml")
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/weft.yaml") {
			t.Errorf("want the path in the error, got %v", err)
		}
	})
	t.Run("bad labels flag", func(t *testing.T) {
		_, err := runFlags(t, "--config", writeFile(t, externalEtcd), "--labels", "app")
		if err == nil || !strings.Contains(err.Error(), "--labels") {
			t.Errorf("want an error naming --labels, got %v", err)
		}
	})
}

func TestMarshalRoundTrip(t *testing.T) {
	cfg, err := Parse([]byte(externalEtcd + "labels: {app: web}\nworkloads: [{netns: w1, labels: {app: x}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(data)
	if err != nil {
		t.Fatalf("re-reading marshalled config: %v\n%s", err, data)
	}
	a, _ := cfg.Marshal()
	b, _ := back.Marshal()
	if !bytes.Equal(a, b) {
		t.Errorf("round trip differs:\n%s\n---\n%s", a, b)
	}
	if err := back.Validate(); err != nil {
		t.Error(err)
	}
}

func TestParseLabels(t *testing.T) {
	good := map[string]string{
		"":                       "",
		"app=web":                "app=web",
		" tier=db , app=x ":      "app=x,tier=db",
		"vm:zone=a,k8s:team=net": "k8s:team=net,vm:zone=a",
		"empty=":                 "empty=",
	}
	for in, want := range good {
		l, err := ParseLabels(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if got := identity.FormatLabelMap(l); got != want {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
	for _, in := range []string{"app", "=x", "app=web,app=db", "a b=c", "app=-x", "mesh:cluster=x", "reserved:host=", "aws:x=y", "app=web,", "app=x,vm:app=y"} {
		if _, err := ParseLabels(in); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

func TestLogger(t *testing.T) {
	cfg := Default()
	cfg.Log = Log{Format: "json", Level: "warn"}
	var buf bytes.Buffer
	log := cfg.NewLogger(&buf)
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	if s := buf.String(); strings.Contains(s, "hidden") || !strings.Contains(s, `"msg":"shown"`) {
		t.Errorf("log output: %q", s)
	}
}

func TestApplyArgs(t *testing.T) {
	cfg, err := Parse([]byte(externalEtcd))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.ApplyArgs([]string{"--wg-interface", "wg-n1", "--bpf-pin-path", "/sys/fs/bpf/weft/n1"}); err != nil {
		t.Fatal(err)
	}
	if cfg.WireGuard.Interface != "wg-n1" || cfg.BPF.PinPath != "/sys/fs/bpf/weft/n1" || cfg.NodeName != "vm-1" {
		t.Errorf("%+v", cfg)
	}
	for args, want := range map[string]string{
		"--no-such-flag":        "no-such-flag",
		"--wg-port 0":           "wireguard.listenPort",
		"--config /x":           "--config cannot",
		"stray":                 "unexpected argument",
		"--labels mesh:kind=vm": "reserved",
	} {
		c2, _ := Parse([]byte(externalEtcd))
		err := c2.ApplyArgs(strings.Fields(args))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an ErrInvalid naming %q, got %v", args, want, err)
		}
	}
}

// TestApplyArgsIgnoresEnvironment: WEFT_* variables set where meshctl runs
// are not folded into the configuration file with the flags after `--`:
// they would replace what the join service answered (the node name its
// certificate carries, the state directory the credentials went to).
func TestApplyArgsIgnoresEnvironment(t *testing.T) {
	cfg, err := Parse([]byte(externalEtcd))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("WEFT_NODE_NAME", "not-the-certificate")
	t.Setenv("WEFT_STATE_DIR", "/elsewhere")
	t.Setenv("WEFT_WG_PORT", "0") // invalid: would fail validation if read
	if err := cfg.ApplyArgs([]string{"--wg-interface", "wg-n1"}); err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "vm-1" || cfg.StateDir == "/elsewhere" || cfg.WireGuard.Interface != "wg-n1" {
		t.Errorf("environment leaked into the configuration: node %q, state dir %q, interface %q", cfg.NodeName, cfg.StateDir, cfg.WireGuard.Interface)
	}
	for _, f := range Flags() { // the agent itself still reads them
		if len(f.Names()) > 0 && f.Names()[0] == FlagNodeName {
			if ev, ok := f.(interface{ GetEnvVars() []string }); !ok || len(ev.GetEnvVars()) == 0 {
				t.Errorf("--%s lost its environment variable for the agent", FlagNodeName)
			}
		}
	}
}

// FuzzParseLabels: what ParseLabels accepts prints back (FormatLabels) to
// the same labels, and every refusal is an error, never a panic.
func FuzzParseLabels(f *testing.F) {
	for _, s := range []string{"", "app=web", " tier=db , app=x ", "vm:zone=a,k8s:team=net", "empty=", "app=x,vm:app=y", "mesh:cluster=x", "=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLabels(s)
		if err != nil {
			return
		}
		again, err := ParseLabels(identity.FormatLabelMap(l))
		if err != nil {
			t.Fatalf("%q parsed, but its formatting %q does not: %v", s, identity.FormatLabelMap(l), err)
		}
		if identity.FormatLabelMap(again) != identity.FormatLabelMap(l) {
			t.Fatalf("%q: round trip changed the labels: %q -> %q", s, identity.FormatLabelMap(l), identity.FormatLabelMap(again))
		}
	})
}

// FuzzParse: refusals wrap ErrInvalid, and a valid configuration (what
// meshctl writes) marshals to YAML that parses back to the same one. Only
// valid ones round-trip: an explicit empty field (nodeName: "") is left
// out by Marshal and comes back as the default.
func FuzzParse(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte(externalEtcd + "labels: {app: web}\nworkloads: [{netns: w1, labels: {app: x}}]\n"))
	f.Add([]byte("wireguard: {listenPort: 70000}\n"))
	f.Add([]byte("nodeName: [x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		if cfg.Validate() != nil {
			return
		}
		a, err := cfg.Marshal()
		if err != nil {
			t.Fatalf("marshalling an accepted configuration: %v", err)
		}
		back, err := Parse(a)
		if err != nil {
			t.Fatalf("re-reading marshalled config: %v\n%s", err, a)
		}
		b, _ := back.Marshal()
		if !bytes.Equal(a, b) {
			t.Fatalf("round trip differs:\n%s\n---\n%s", a, b)
		}
	})
}

func TestKeysAreCaseSensitive(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"NODENAME: x\n", `key "NODENAME": keys are case-sensitive; did you mean "nodeName"?`},
		{"wireguard: {ListenPort: 5}\n", `"wireguard.ListenPort"`},
		{"workloads: [{Netns: a}]\n", `"workloads[0].netns"`},
	} {
		_, err := Parse([]byte(c.doc))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %s", c.doc, err, c.want)
		}
	}
	if _, err := Parse([]byte("nodeName: x\nwireguard: {listenPort: 5}\n")); err != nil {
		t.Fatalf("exact keys refused: %v", err)
	}
}
