package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
)

// agentStopTimeout bounds how long down waits for the agent to exit after
// SIGTERM: its own shutdown takes at most a few seconds.
const agentStopTimeout = 20 * time.Second

func downCommand() *cli.Command {
	return &cli.Command{
		Name:      "down",
		Usage:     "stop this node: the agent, its WireGuard tunnel and its eBPF datapath (the node stays a member; up or join bring it back)",
		UsageText: "meshctl down [--config-file FILE] [--socket PATH]",
		Description: `Stops the agent (the systemd unit, which is also disabled, the background
process, or an agent running under 'join --foreground' elsewhere), then
removes the WireGuard device with its userspace helper and the eBPF programs
and pinned maps. Traffic to and from this node stops.

A stopped agent alone (Ctrl-C on 'join --foreground', systemctl stop, a crash)
leaves the tunnel and the datapath up on purpose, so that a restart does not
interrupt traffic; down is how to take them away without leaving the mesh.
down also removes what such a stop left behind.

The configuration, the credentials, the WireGuard key and (on the first node)
the etcd data and mesh CA stay: 'meshctl join' (no token needed) or, on the
first node, 'meshctl up' brings the node back with the same name, key and
address. Meanwhile its records expire with their lease, and its peers drop
it once its tunnel has been silent for two keepalive intervals (see
docs/architecture.md, "Outages"); they take it back when it returns. On the
first node, etcd and
the join service stop too: the other nodes keep their traffic flowing from
their caches. To take the node out of the mesh for good, use 'meshctl leave'.`,
		Flags: []cli.Flag{
			socketFlag(),
			&cli.PathFlag{Name: "config-file", EnvVars: []string{"WEFT_CONFIG"}, Value: defaultConfigFile, Usage: "the agent configuration `FILE`"},
			&cli.PathFlag{Name: "agent-binary", EnvVars: []string{"WEFT_AGENT_BINARY"}, Usage: "weft-agent `PATH`, which removes the tunnel and datapath (default: next to meshctl, else in PATH)"},
		},
		Action: downAction,
	}
}

func downAction(c *cli.Context) error {
	if err := localAgentSupported("down"); err != nil {
		return err
	}
	if err := noArgs(c); err != nil {
		return err
	}
	if err := needRootFor("down"); err != nil {
		return err
	}
	cfgPath := c.Path("config-file")
	cfg, err := config.Load(cfgPath)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no agent configuration at %s: this machine has no node to bring down (give --config-file FILE if it is elsewhere)", cfgPath)
	}
	if err != nil {
		return err
	}
	binary, err := findAgentBinary(c)
	if err != nil {
		return err
	}
	socket := cfg.SocketPath
	if c.IsSet("socket") {
		socket = c.Path("socket")
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	w := c.App.Writer
	if err := stopAgent(c, socket, cfg); err != nil {
		return err
	}
	if err := teardown(ctx, w, binary, cfgPath); err != nil {
		return err
	}
	back := "meshctl join"
	if cfg.Etcd.Embedded.Enabled {
		back = "meshctl up"
	}
	fmt.Fprintf(w, "Node %s is down. Its configuration (%s), credentials and keys (%s) stay: '%s' brings it back.\n", cfg.NodeName, cfgPath, cfg.StateDir, back)
	return nil
}

// stopAgent stops the node's agent however it runs, and says how.
func stopAgent(c *cli.Context, socket string, cfg *config.Config) error {
	ctx, cancel := cmdContext(c)
	defer cancel()
	w := c.App.Writer
	cl := api.NewClient(socket)
	// A unit would start the agent again: it is stopped and disabled (the
	// unit file stays; up and join enable it again).
	if _, err := os.Stat(systemdUnitPath); err == nil && systemdRuns() && sameNetnsAsInit() {
		if out, err := exec.CommandContext(ctx, "systemctl", "disable", "--now", systemdUnitName).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl disable --now %s: %v: %s", systemdUnitName, err, out)
		}
		fmt.Fprintf(w, "Stopped and disabled the %s unit.\n", systemdUnitName)
	}
	defer os.Remove(filepath.Join(cfg.StateDir, "agent.pid"))
	if !agentAnswers(ctx, cl) {
		fmt.Fprintf(w, "The agent is not running (%s).\n", socket)
		return nil
	}
	// The socket may be another node's (WEFT_SOCKET, a second agent on
	// the machine): stop only the agent of this configuration.
	if st, err := cl.Status(ctx); err == nil && (st.Node != cfg.NodeName || st.Cluster != cfg.Cluster) {
		return fmt.Errorf("the agent on %s is node %s of cluster %s, not %s of cluster %s that %s configures: nothing was stopped; give --socket of this node's agent (its configuration says %s)",
			socket, st.Node, st.Cluster, cfg.NodeName, cfg.Cluster, c.Path("config-file"), cfg.SocketPath)
	}
	pid, err := agentPID(socket)
	if err != nil {
		return fmt.Errorf("finding the agent serving %s: %w", socket, err)
	}
	if err := stopAgentPID(pid, agentStopTimeout); err != nil {
		return err
	}
	fmt.Fprintf(w, "Stopped the agent (pid %d).\n", pid)
	return nil
}
