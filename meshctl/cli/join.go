package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/pki"
)

func joinCommand() *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "join this machine to a mesh with a token, then start the agent",
		UsageText: "meshctl join TOKEN|--token-file FILE [--name NAME] [--labels k=v,...] [--wait D] [--foreground] [-- AGENT-FLAGS...]",
		Description: `Presents TOKEN (from 'meshctl token create') to the mesh's join service over
TLS, checking that the service's certificate comes from the mesh CA whose
SHA-256 the token carries. The service answers with this node's client
certificate (for a key made here, which never leaves the machine), the mesh
CA, the etcd endpoints, the cluster and the labels. meshctl writes them to
<state-dir>/credentials and the agent configuration to --config-file, then
starts the agent: as a systemd unit where systemd runs, else as a background
process, or in the foreground with --foreground.

The token is secret: on a shared machine give it with --token-file FILE (or
--token-file - for stdin) or the WEFT_TOKEN environment variable, so it does
not show in ps.

Flags after -- are weft-agent flags written into the configuration file (for
example -- --wg-port 51900 --underlay-endpoints 198.18.3.10:51900).

Once the agent is ready, join waits up to --wait (default 30s) until the node
has completed a WireGuard handshake with a peer, printing progress; if none
answers it says the node is cut off, and why that might be, and exits 1
(with --foreground it warns and keeps the agent running). --wait 0 returns
as soon as the agent is ready.

Running join again on a machine that already joined this mesh does not use
the token again (it may be left out): it (re)starts the agent, also after
'meshctl down'. The configuration written by the first join is kept; flags
that differ from it are ignored with a note. A machine that belongs to
another mesh must 'meshctl leave' first. With --foreground, Ctrl-C stops the
agent but leaves the tunnel and the datapath up, so traffic keeps flowing
until the agent returns; 'meshctl down' removes them. See docs/join.md.

Example:
  meshctl join weft1.eyJz... --name vm-1 --labels app=db
  WEFT_TOKEN=weft1.eyJz... meshctl join --name vm-1`,
		Flags: append(agentProcFlags(),
			&cli.StringFlag{Name: "name", Usage: "node `NAME` (default: the host name)"},
			&cli.StringFlag{Name: "labels", Usage: "labels `k=v,...` of this machine (the token's win on the same key)"},
			&cli.BoolFlag{Name: "strict", Usage: "strict mode: drop unencrypted traffic between mesh nodes' underlay addresses except WireGuard, the join service and etcd"},
			&cli.BoolFlag{Name: "relay", Usage: "serve as a relay for mesh nodes that cannot reach each other directly (needs an address the others reach; it forwards their WireGuard packets, which it cannot read: docs/nat.md)"},
			&cli.PathFlag{Name: "token-file", Usage: "read the join token from `FILE` (- for stdin) instead of the command line, where ps shows it"},
			// For `make bench-join`: where the join's time goes.
			&cli.BoolFlag{Name: "timings", Usage: "print the duration of each step of the join to stderr"},
		),
		Action: joinAction,
	}
}

func nodeName(c *cli.Context) (string, error) {
	name := c.String("name")
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("no --name and no host name: %w", err)
		}
		name = strings.ToLower(h)
	}
	if err := config.ValidateName("node", name); err != nil {
		if !c.IsSet("name") {
			return "", fmt.Errorf("the host name is not usable as a node name (%v): give --name", err)
		}
		return "", fmt.Errorf("--name: %w", err)
	}
	return name, nil
}

// joinArgs splits TOKEN from the agent flags after --. The token comes
// from the command line, --token-file or WEFT_TOKEN, in that order; ""
// when there is none (a machine that joined before needs none).
func joinArgs(c *cli.Context) (string, []string, error) {
	pos, agentArgs, err := splitArgs(c)
	// Without a token urfave/cli parses every flag and consumes the "--":
	// what is left starts with a flag, and is all the agent's (it would
	// have refused an unknown flag before the "--").
	if args := c.Args().Slice(); len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "--" && args[0] != "-" {
		pos, agentArgs, err = nil, args, nil
	}
	if err != nil {
		return "", nil, err
	}
	if len(pos) > 1 {
		return "", nil, fmt.Errorf("join takes one token, got %d arguments (agent flags go after --)", len(pos))
	}
	file := c.Path("token-file")
	switch {
	case len(pos) == 1 && file != "":
		return "", nil, errors.New("the token is given twice, as an argument and with --token-file: give one")
	case len(pos) == 1:
		return pos[0], agentArgs, nil
	case file != "":
		tok, err := readTokenFile(c, file)
		return tok, agentArgs, err
	}
	return strings.TrimSpace(os.Getenv("WEFT_TOKEN")), agentArgs, nil
}

// readTokenFile reads a join token from file ("-": stdin). A file others
// can read is used, with a note: the token admits machines to the mesh.
func readTokenFile(c *cli.Context, file string) (string, error) {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(c.App.Reader, 64<<10))
		file = "stdin"
	} else {
		var fi os.FileInfo
		if fi, err = os.Stat(file); err == nil {
			if fi.IsDir() {
				return "", fmt.Errorf("--token-file %s is a directory: give the file that holds the token", file)
			}
			if fi.Mode().Perm()&0o077 != 0 {
				fmt.Fprintf(c.App.ErrWriter, "note: %s is readable by other users (mode %04o): the token admits machines to the mesh; chmod 600 it\n", file, fi.Mode().Perm())
			}
		}
		if err == nil {
			var f *os.File
			if f, err = os.Open(file); err == nil {
				data, err = io.ReadAll(io.LimitReader(f, 64<<10))
				f.Close()
			}
		}
	}
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if len(data) >= 64<<10 {
		// A token is about 100 bytes: this is some other file (or
		// /dev/zero), not a token; do not read it to the end.
		return "", fmt.Errorf("--token-file %s is 64 KiB or more: it must hold the token alone", file)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty: write the token from 'meshctl token create' into it", file)
	}
	if strings.ContainsAny(tok, " \t\n") {
		return "", fmt.Errorf("--token-file %s holds more than one word: it must hold the token alone", file)
	}
	return tok, nil
}

// errNoToken is join's refusal when there is neither a token nor an
// earlier join to start again.
var errNoToken = errors.New("join needs the token: meshctl join TOKEN, --token-file FILE or WEFT_TOKEN (make one with 'meshctl token create' on the mesh's first node)")

func joinAction(c *cli.Context) error {
	// First: off Linux nothing else about the command matters.
	if err := localAgentSupported("join"); err != nil {
		return err
	}
	tokStr, agentArgs, err := joinArgs(c)
	if err != nil {
		return err
	}
	var tok *join.Token
	if tokStr == "" {
		if _, err := os.Stat(c.Path("config-file")); errors.Is(err, os.ErrNotExist) {
			return errNoToken
		}
	} else {
		t, err := join.ParseToken(tokStr)
		if err != nil {
			return err
		}
		tok = &t
	}
	name, err := nodeName(c)
	if err != nil {
		return err
	}
	labels, err := labelsFlag(c, "labels")
	if err != nil {
		return err
	}
	if err := checkAgentArgs(agentArgs); err != nil {
		return err
	}
	if err := checkWait(c); err != nil {
		return err
	}
	if err := needRootFor("join"); err != nil {
		return err
	}
	binary, err := findAgentBinary(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	w := c.App.Writer
	cfgPath := c.Path("config-file")
	timed := stepTimer(c)

	cfg, joined, err := alreadyJoined(cfgPath, tok, name, c.IsSet("name"))
	if err != nil {
		return err
	}
	if !joined && tok == nil {
		return errNoToken
	}
	if joined {
		if tok != nil {
			fmt.Fprintf(w, "Already joined this mesh as %s (cluster %s, configuration %s): the token is not used again.\n", cfg.NodeName, cfg.Cluster, cfgPath)
		} else {
			fmt.Fprintf(w, "Joined before as %s (cluster %s, configuration %s): starting the agent again.\n", cfg.NodeName, cfg.Cluster, cfgPath)
		}
		warnIgnoredJoinFlags(c, cfg, cfgPath, labels, agentArgs)
	} else {
		var creds *join.Credentials
		if err := timed("join service exchange", func() (err error) {
			creds, err = join.Join(ctx, *tok, join.Request{NodeName: name, Labels: labels})
			return err
		}); err != nil {
			return err
		}
		for _, o := range creds.Overridden {
			fmt.Fprintf(c.App.ErrWriter, "note: label %s was replaced by the token's value\n", o)
		}
		if err := timed("write credentials and configuration", func() (err error) {
			if cfg, err = configFromCredentials(c, creds, agentArgs); err != nil {
				return err
			}
			if err := writeConfig(cfg, cfgPath); err != nil {
				return fmt.Errorf("writing the agent configuration: %w", err)
			}
			return nil
		}); err != nil {
			return err
		}
		fmt.Fprintf(w, "Joined the mesh as %s in cluster %s (labels %s); credentials in %s, configuration %s.\n",
			cfg.NodeName, cfg.Cluster, orDash(identity.FormatLabelMap(cfg.Labels)), filepath.Dir(cfg.Etcd.CertFile), cfgPath)
	}
	var proc *agentProc
	if err := timed("start the agent and wait until it is ready", func() (err error) {
		proc, err = startAgent(ctx, c, cfg, cfgPath, binary)
		return err
	}); err != nil {
		return err
	}
	if err := waitAfterStart(ctx, c, w, c.App.ErrWriter, cfg.SocketPath, proc, false); err != nil {
		return err
	}
	if c.Bool("foreground") {
		return waitForeground(proc)
	}
	return nil
}

// warnIgnoredJoinFlags says which flags of a repeated join the existing
// configuration overrides, as up does: a join that finds this machine
// joined keeps what the first join wrote.
func warnIgnoredJoinFlags(c *cli.Context, cfg *config.Config, cfgPath string, labels map[string]string, agentArgs []string) {
	var ignored []string
	if c.IsSet("strict") && c.Bool("strict") != cfg.Strict {
		ignored = append(ignored, fmt.Sprintf("--strict=%v (the configuration says %v)", c.Bool("strict"), cfg.Strict))
	}
	if c.IsSet("relay") && c.Bool("relay") != cfg.Relay.Enabled {
		ignored = append(ignored, fmt.Sprintf("--relay=%v (the configuration says %v)", c.Bool("relay"), cfg.Relay.Enabled))
	}
	if c.IsSet("labels") {
		// The join service writes a VM's labels as vm:key.
		have := map[string]string{}
		for k, v := range cfg.Labels {
			have[strings.TrimPrefix(k, "vm:")] = v
		}
		for k, v := range labels {
			if cur, ok := have[strings.TrimPrefix(k, "vm:")]; !ok || cur != v {
				ignored = append(ignored, "--labels")
				break
			}
		}
	}
	for _, f := range []string{"state-dir", "socket"} {
		if !c.IsSet(f) {
			continue
		}
		cur := cfg.StateDir
		if f == "socket" {
			cur = cfg.SocketPath
		}
		if filepath.Clean(c.Path(f)) != filepath.Clean(cur) {
			ignored = append(ignored, fmt.Sprintf("--%s (the configuration says %s)", f, cur))
		}
	}
	if len(agentArgs) > 0 {
		probe := *cfg
		if err := probe.ApplyArgs(agentArgs); err != nil || !sameConfig(&probe, cfg) {
			ignored = append(ignored, "the agent flags after -- ("+strings.Join(agentArgs, " ")+")")
		}
	}
	if len(ignored) > 0 {
		fmt.Fprintf(c.App.ErrWriter, "note: %s ignored: the configuration in %s is used as it is (edit it and restart the agent: 'meshctl down', then 'meshctl join'; or 'meshctl leave' and join with a new token)\n", strings.Join(ignored, ", "), cfgPath)
	}
}

// sameConfig compares two configurations as they would be written.
func sameConfig(a, b *config.Config) bool {
	da, err1 := a.Marshal()
	db, err2 := b.Marshal()
	return err1 == nil && err2 == nil && string(da) == string(db)
}

// stepTimer runs a step of the join and, with --timings, prints how long it
// took in the agent's log format (step="..." took=...).
func stepTimer(c *cli.Context) func(step string, f func() error) error {
	if !c.Bool("timings") {
		return func(_ string, f func() error) error { return f() }
	}
	return func(step string, f func() error) error {
		t0 := time.Now()
		err := f()
		fmt.Fprintf(c.App.ErrWriter, "meshctl timing step=%q took=%s\n", step, time.Since(t0))
		return err
	}
}

// checkAgentArgs validates the agent flags before the token is presented,
// so a typo in them does not use up a single-use token.
func checkAgentArgs(args []string) error {
	probe := config.Default()
	probe.Etcd.Endpoints = []string{"https://placeholder:2379"}
	probe.Etcd.CAFile, probe.Etcd.CertFile, probe.Etcd.KeyFile = "/ca.pem", "/node.pem", "/node-key.pem"
	if err := probe.ApplyArgs(args); err != nil {
		return fmt.Errorf("agent flags after --: %w", err)
	}
	return nil
}

// alreadyJoined makes join idempotent: a configuration whose CA is the
// token's means this machine joined before; one for another mesh (or the
// first node of a mesh) is refused rather than overwritten.
// tok is nil when none was given: any configuration of a joined node is
// then taken as it is.
func alreadyJoined(cfgPath string, tok *join.Token, name string, nameGiven bool) (*config.Config, bool, error) {
	if _, err := os.Stat(cfgPath); errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, false, fmt.Errorf("an agent configuration exists but does not load (fix or remove it): %w", err)
	}
	if cfg.Etcd.Embedded.Enabled {
		return nil, false, fmt.Errorf("this machine is the first node of a mesh (%s has embedded etcd): it cannot join another one", cfgPath)
	}
	caPEM, err := os.ReadFile(cfg.Etcd.CAFile)
	if err != nil {
		return nil, false, fmt.Errorf("%s exists but its CA %s does not read (%v): run 'meshctl leave' to start over", cfgPath, cfg.Etcd.CAFile, err)
	}
	ca, err := pki.ParseCertPEM(caPEM)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", cfg.Etcd.CAFile, err)
	}
	if fp := pki.Fingerprint(ca); tok != nil && fp != tok.CAHash {
		return nil, false, fmt.Errorf("this machine already belongs to another mesh (CA %s, configuration %s): run 'meshctl leave' first", fp, cfgPath)
	}
	if nameGiven && cfg.NodeName != name {
		return nil, false, fmt.Errorf("this machine already joined this mesh as %s: run 'meshctl leave' first to join as %s", cfg.NodeName, name)
	}
	return cfg, true, nil
}

func configFromCredentials(c *cli.Context, creds *join.Credentials, agentArgs []string) (*config.Config, error) {
	cfg := config.Default()
	cfg.StateDir = c.Path("state-dir")
	cfg.SocketPath = c.Path("socket")
	files, err := creds.WriteFiles(filepath.Join(cfg.StateDir, "credentials"))
	if err != nil {
		return nil, fmt.Errorf("saving the credentials: %w", err)
	}
	cfg.NodeName = creds.NodeName
	cfg.Cluster = creds.Cluster
	cfg.Labels = creds.Labels
	cfg.Etcd.Endpoints = creds.EtcdEndpoints
	cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile = files.CA, files.Cert, files.Key
	// The node's etcd role writes only its own keys: new identities and
	// its CIDR come from the join service it joined through.
	cfg.Join.Server = creds.Server
	cfg.Relay.Enabled = c.Bool("relay")
	cfg.Strict = c.Bool("strict")
	if err := cfg.ApplyArgs(agentArgs); err != nil {
		return nil, err
	}
	return cfg, nil
}

// startAgent starts the agent unless one already answers (then it
// returns nil), waits until it is ready and says where it runs.
func startAgent(ctx context.Context, c *cli.Context, cfg *config.Config, cfgPath, binary string) (*agentProc, error) {
	w := c.App.Writer
	cl := api.NewClient(cfg.SocketPath)
	if agentAnswers(ctx, cl) {
		if c.Bool("foreground") {
			return nil, fmt.Errorf("an agent already serves %s: stop it first, or leave out --foreground", cfg.SocketPath)
		}
		fmt.Fprintf(w, "The agent is already running (%s); 'meshctl status' shows its peers.\n", cfg.SocketPath)
		return nil, nil
	}
	proc, err := launch(ctx, runMode(c), launchSpec{Binary: binary, ConfigFile: cfgPath, StateDir: cfg.StateDir, Out: c.App.ErrWriter})
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, cl, proc, c.Duration("ready-timeout")); err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "The agent is running as %s; 'meshctl status' shows its peers.\n", proc.Describe)
	return proc, nil
}
