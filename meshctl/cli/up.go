package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
)

// Ports of the first node's services.
const (
	etcdClientPort = 2379
	joinPort       = 51834
)

func upCommand() *cli.Command {
	return &cli.Command{
		Name:      "up",
		Usage:     "start the first node of a new mesh (embedded etcd, mesh CA, join service) and print a join token",
		UsageText: "meshctl up [--name NAME] [--cluster C] [--advertise-address IP] [--wait D] [--foreground] [-- AGENT-FLAGS...]",
		Description: `On a machine with nothing else running, writes an agent configuration with the
embedded control plane and starts the agent: a single-member etcd (TLS only),
the mesh CA, the join service, and the node itself. Then it creates a join
token and prints the command to run on each VM.

Other nodes reach this one at --advertise-address (default: the address of
the default route): etcd on port 2379, the join service on 51834, WireGuard on
51833. Flags after -- are weft-agent flags written into the configuration.

Once the agent is ready, up prints the token and then waits up to --wait
(default 30s) for a WireGuard handshake with a peer, as join does; the first
node of a new mesh has no peer yet, and up says so and returns.

Running up again on the first node starts the agent if it is not running
(also after 'meshctl down') and prints a fresh token; the configuration it
wrote the first time is kept, and flags that differ from it are ignored with
a note. If an agent already answers on --socket, up uses that agent as it
is and writes nothing: it prints a token when the agent is a first node and
refuses when it is a joined node. See docs/join.md.

Example:
  meshctl up --name seed --advertise-address 198.18.1.10`,
		Flags: append(agentProcFlags(),
			&cli.StringFlag{Name: "name", Usage: "node `NAME` (default: the host name)"},
			&cli.StringFlag{Name: "cluster", Value: config.DefaultCluster, Usage: "`CLUSTER` of this node (and default of tokens)"},
			&cli.StringFlag{Name: "labels", Usage: "labels `k=v,...` of this node"},
			&cli.StringFlag{Name: "advertise-address", Usage: "`IP` other nodes reach this one at (default: the default route's source address)"},
			&cli.DurationFlag{Name: "token-ttl", Value: defaultTokenTTL, Usage: "validity of the printed join token"},
			&cli.IntFlag{Name: "token-max-uses", Value: 1, Usage: "how many machines may join with the printed token (`N`)"},
			// Off by default until every caller applies policies on the
			// seed (docs/security.md, "Turning it on").
			&cli.BoolFlag{Name: "strict", Usage: "strict mode: drop unencrypted traffic between mesh nodes' underlay addresses except WireGuard, the join service and etcd"},
			&cli.BoolFlag{Name: "relay", Usage: "serve as a relay for mesh nodes that cannot reach each other directly (needs an address the others reach; it forwards their WireGuard packets, which it cannot read: docs/nat.md)"},
			&cli.BoolFlag{Name: "rbac", Value: true, Usage: "etcd authentication with per-node roles: a joined node's certificate writes only its own keys; policies and tokens only from this node (--rbac=false: every node's certificate is etcd root, as before)"},
		),
		Action: upAction,
	}
}

// defaultRouteAddress is the source address the kernel would use towards
// the internet. Connecting a UDP socket sends nothing; it only resolves
// the route.
func defaultRouteAddress() (netip.Addr, error) {
	conn, err := net.Dial("udp4", "192.0.2.1:9") // TEST-NET-1: never actually contacted
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no default route to take an address from (%v): give --advertise-address IP", err)
	}
	defer conn.Close()
	ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

// seedConfig builds the first node's configuration from the flags.
func seedConfig(c *cli.Context, agentArgs []string) (*config.Config, error) {
	name, err := nodeName(c)
	if err != nil {
		return nil, err
	}
	labels, err := labelsFlag(c, "labels")
	if err != nil {
		return nil, err
	}
	var addr netip.Addr
	if s := c.String("advertise-address"); s != "" {
		if addr, err = netip.ParseAddr(s); err != nil || addr.IsUnspecified() || addr.Zone() != "" {
			return nil, fmt.Errorf("--advertise-address %q is not an IP address other nodes can reach", s)
		}
	} else if addr, err = defaultRouteAddress(); err != nil {
		return nil, err
	}
	cfg := config.Default()
	cfg.NodeName = name
	cfg.Cluster = c.String("cluster")
	cfg.Labels = labels
	cfg.StateDir = c.Path("state-dir")
	cfg.SocketPath = c.Path("socket")
	cfg.Etcd.Embedded.Enabled = true
	cfg.Relay.Enabled = c.Bool("relay")
	cfg.Strict = c.Bool("strict")
	cfg.Etcd.Embedded.RBAC = c.Bool("rbac")
	cfg.Etcd.Embedded.ClientURL = "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(etcdClientPort))
	cfg.Join.Listen = net.JoinHostPort(addr.String(), strconv.Itoa(joinPort))
	if err := cfg.ApplyArgs(agentArgs); err != nil {
		return nil, err
	}
	// After the agent flags, which may move the WireGuard port.
	if len(cfg.Underlay.Endpoints) == 0 {
		cfg.Underlay.Endpoints = []string{net.JoinHostPort(addr.String(), strconv.Itoa(cfg.WireGuard.ListenPort))}
	}
	return cfg, nil
}

// upArgs returns the agent flags. urfave/cli consumes the "--" before
// them, so every argument left is an agent flag (ApplyArgs validates them:
// a stray word is refused there).
func upArgs(c *cli.Context) ([]string, error) {
	args := c.Args().Slice()
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	return args, nil
}

func upAction(c *cli.Context) error {
	// First: off Linux nothing else about the command matters.
	if err := localAgentSupported("up"); err != nil {
		return err
	}
	agentArgs, err := upArgs(c)
	if err != nil {
		return err
	}
	maxUses := c.Int("token-max-uses")
	if maxUses < 1 || maxUses > 10000 {
		return fmt.Errorf("--token-max-uses %d is out of range: use 1 to 10000", maxUses)
	}
	ttl := c.Duration("token-ttl")
	if ttl < minTokenTTL || ttl > maxTokenTTL {
		return fmt.Errorf("--token-ttl %s is out of range: use 1m to 720h", ttl)
	}
	if err := checkWait(c); err != nil {
		return err
	}
	if err := needRootFor("up"); err != nil {
		return err
	}
	binary, err := findAgentBinary(c)
	if err != nil {
		return err
	}
	cfgPath := c.Path("config-file")
	ctx, cancel := cmdContext(c)
	defer cancel()
	var cfg *config.Config
	_, statErr := os.Stat(cfgPath)
	if statErr == nil {
		if cfg, err = config.Load(cfgPath); err != nil {
			return fmt.Errorf("an agent configuration exists but does not load (fix or remove it): %w", err)
		}
	}
	// An agent that already serves --socket, and is not the one of the
	// configuration, is the node: its identity is read from it, and
	// nothing is written for another one.
	if cfg == nil || (c.IsSet("socket") && filepath.Clean(c.Path("socket")) != filepath.Clean(cfg.SocketPath)) {
		if cl := api.NewClient(c.Path("socket")); agentAnswers(ctx, cl) {
			return upRunning(ctx, c, cl, agentArgs, ttl, maxUses)
		}
	}
	if cfg != nil {
		if !cfg.Etcd.Embedded.Enabled {
			return fmt.Errorf("this machine is configured to join a mesh (%s has no embedded etcd): run 'meshctl leave' before making it a first node", cfgPath)
		}
		fmt.Fprintf(c.App.Writer, "Already the first node %s of cluster %s (configuration %s).\n", cfg.NodeName, cfg.Cluster, cfgPath)
		// The existing configuration wins; say so rather than drop flags
		// without a word.
		ignored := ignoredUpFlags(c, agentArgs)
		for _, f := range []struct{ flag, cur string }{{"socket", cfg.SocketPath}, {"state-dir", cfg.StateDir}} {
			if c.IsSet(f.flag) && filepath.Clean(c.Path(f.flag)) != filepath.Clean(f.cur) {
				ignored = append(ignored, fmt.Sprintf("--%s (the configuration says %s)", f.flag, f.cur))
			}
		}
		if len(ignored) > 0 {
			fmt.Fprintf(c.App.ErrWriter, "note: %s ignored: the configuration in %s is used as it is (edit it, or 'meshctl leave --force' and run up again)\n", strings.Join(ignored, ", "), cfgPath)
		}
	} else if !errors.Is(statErr, os.ErrNotExist) {
		return statErr
	} else {
		if cfg, err = seedConfig(c, agentArgs); err != nil {
			return err
		}
		if err := writeConfig(cfg, cfgPath); err != nil {
			return fmt.Errorf("writing the agent configuration: %w", err)
		}
	}
	proc, err := startAgent(ctx, c, cfg, cfgPath, binary)
	if err != nil {
		return err
	}
	tok, err := api.NewClient(cfg.SocketPath).CreateToken(ctx, api.TokenRequest{TTL: api.Duration(ttl), MaxUses: maxUses})
	if err != nil {
		return fmt.Errorf("the agent is up, but making a join token failed (retry with 'meshctl token create'): %w", err)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "\nWeft is up: node %s, cluster %s; etcd at %s, join service at %s.\n", cfg.NodeName, cfg.Cluster, cfg.EtcdClientEndpoints()[0], cfg.JoinAdvertise())
	// The embedded etcd made an administrative client certificate next to
	// its CA: what an operator's etcdctl (or a second admin machine) uses.
	pkiDir := filepath.Join(cfg.EtcdDataDir(), "pki")
	fmt.Fprintf(w, "Admin credentials for etcd (keep them root-only): CA %s, certificate %s, key %s.\n\n",
		filepath.Join(pkiDir, "ca.crt"), filepath.Join(pkiDir, "client.crt"), filepath.Join(pkiDir, "client.key"))
	if cfg.Etcd.Embedded.RBAC {
		fmt.Fprintf(w, "etcd runs with per-node roles: joined nodes write only their own keys; apply policies and make tokens on this node (docs/security.md).\n\n")
	}
	if err := printCreatedToken(w, tok); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nMore tokens: meshctl token create --help. This token expires in %s.\n", ttl.Round(time.Second))
	if err := waitAfterStart(ctx, c, w, c.App.ErrWriter, cfg.SocketPath, proc, true); err != nil {
		return err
	}
	if c.Bool("foreground") {
		return waitForeground(proc)
	}
	return nil
}

// ignoredUpFlags lists the flags that describe a new first node, which a
// configuration (or agent) that exists already overrides.
func ignoredUpFlags(c *cli.Context, agentArgs []string) []string {
	var ignored []string
	for _, f := range []string{"name", "cluster", "labels", "advertise-address", "rbac", "strict", "relay"} {
		if c.IsSet(f) {
			ignored = append(ignored, "--"+f)
		}
	}
	if len(agentArgs) > 0 {
		ignored = append(ignored, "the agent flags after --")
	}
	return ignored
}

// upRunning is up against an agent that already answers on --socket: it
// reports that agent's identity, writes no configuration, and makes a
// token if the agent is a first node.
func upRunning(ctx context.Context, c *cli.Context, cl *api.Client, agentArgs []string, ttl time.Duration, maxUses int) error {
	socket := cl.Socket()
	st, err := cl.Status(ctx)
	if err != nil {
		return fmt.Errorf("an agent answers on %s but its status does not read: %w", socket, err)
	}
	if c.Bool("foreground") {
		return fmt.Errorf("an agent already serves %s (node %s of cluster %s): stop it first ('meshctl down'), or leave out --foreground", socket, st.Node, st.Cluster)
	}
	if !st.Etcd.Embedded {
		return fmt.Errorf("the agent on %s is node %s of cluster %s, which joined a mesh (no embedded etcd): up makes a first node; make tokens on the mesh's first node, or 'meshctl leave' this one first", socket, st.Node, st.Cluster)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "An agent already runs on %s: the first node %s of cluster %s. It is used as it is; nothing was written.\n", socket, st.Node, st.Cluster)
	ignored := ignoredUpFlags(c, agentArgs)
	if c.IsSet("config-file") {
		ignored = append(ignored, "--config-file")
	}
	if len(ignored) > 0 {
		fmt.Fprintf(c.App.ErrWriter, "note: %s ignored: they describe a new node, and the agent on %s exists (change its configuration and restart it instead)\n", strings.Join(ignored, ", "), socket)
	}
	tok, err := cl.CreateToken(ctx, api.TokenRequest{TTL: api.Duration(ttl), MaxUses: maxUses})
	if err != nil {
		return fmt.Errorf("making a join token on %s failed (retry with 'meshctl token create'): %w", socket, err)
	}
	fmt.Fprintf(w, "\nWeft is up: node %s, cluster %s; etcd at %s.\n\n", st.Node, st.Cluster, strings.Join(st.Etcd.Endpoints, ", "))
	if err := printCreatedToken(w, tok); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nMore tokens: meshctl token create --help. This token expires in %s.\n", ttl.Round(time.Second))
	return waitAfterStart(ctx, c, w, c.App.ErrWriter, socket, nil, true)
}
