package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
)

func leaveCommand() *cli.Command {
	return &cli.Command{
		Name:      "leave",
		Usage:     "take this node out of the mesh and remove its configuration, credentials and keys",
		UsageText: "meshctl leave [--force] [--keep-config]",
		Description: `Asks the agent to leave: it removes the node's records, workloads, datapath
and tunnel, so its peers drop it at once, and exits. Then meshctl stops the
service (the systemd unit or background process join or up started), removes
the unit, and removes the configuration file and the node's state: its
credentials, its WireGuard key, its workload list and the agent's log and, on
the first node, the etcd data and the mesh CA with its key. The machine can
then join again (as a new node, with a new key).

If the agent is not running, the node's records expire with its lease and
leave cleans up locally, the WireGuard device and eBPF datapath (pins
included) too. On the first node of a mesh (embedded etcd) leave takes the
whole mesh down and needs --force. docs/uninstall.md lists what is left (the
binaries) and how to remove it.`,
		Flags: []cli.Flag{
			socketFlag(),
			&cli.PathFlag{Name: "config-file", EnvVars: []string{"WEFT_CONFIG"}, Value: defaultConfigFile, Usage: "the agent configuration `FILE`"},
			&cli.PathFlag{Name: "agent-binary", EnvVars: []string{"WEFT_AGENT_BINARY"}, Usage: "weft-agent `PATH`, which removes the tunnel and datapath when no agent runs (default: next to meshctl, else in PATH)"},
			&cli.BoolFlag{Name: "force", Usage: "leave even if this is the first node (it removes the mesh's etcd data and CA)"},
			&cli.BoolFlag{Name: "keep-config", Usage: "keep the configuration, credentials, keys and etcd data"},
		},
		Action: leaveAction,
	}
}

func leaveAction(c *cli.Context) error {
	// First: off Linux nothing else about the command matters.
	if err := localAgentSupported("leave"); err != nil {
		return err
	}
	if err := noArgs(c); err != nil {
		return err
	}
	if err := needRootFor("leave"); err != nil {
		return err
	}
	w := c.App.Writer
	cfgPath := c.Path("config-file")
	cfg, err := config.Load(cfgPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		cfg = nil
	case err != nil:
		return err
	case cfg.Etcd.Embedded.Enabled && !c.Bool("force"):
		return fmt.Errorf("this is the first node of the mesh (embedded etcd, mesh CA and join service): leaving takes the mesh down for every node; add --force if that is what you want")
	}
	socket := c.Path("socket")
	if cfg != nil && !c.IsSet("socket") {
		socket = cfg.SocketPath
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	agentRan := true
	// The agent answers at once and then removes the node: its pid says
	// when it is done, before anything is removed under it.
	pid, _ := agentPID(socket)
	if !isAgentProcess(pid) {
		pid = 0
	}
	switch err := api.NewClient(socket).Leave(ctx); {
	case errors.Is(err, api.ErrAgentNotRunning):
		agentRan = false
		fmt.Fprintf(w, "The agent is not running: its records expire with its lease; cleaning up locally.\n")
	case err != nil:
		return fmt.Errorf("the agent could not leave: %w", err)
	default:
		if pid > 0 && !waitExit(pid, agentStopTimeout) {
			return fmt.Errorf("the agent (pid %d) is still running %s after it was asked to leave: see its log, stop it, and run leave again", pid, agentStopTimeout)
		}
		fmt.Fprintf(w, "The node left the mesh.\n")
	}
	if _, err := os.Stat(systemdUnitPath); err == nil {
		if out, err := exec.CommandContext(ctx, "systemctl", "disable", "--now", systemdUnitName).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl disable --now %s: %v: %s", systemdUnitName, err, out)
		}
		if err := os.Remove(systemdUnitPath); err != nil {
			return err
		}
		_ = exec.CommandContext(ctx, "systemctl", "daemon-reload").Run()
		fmt.Fprintf(w, "Removed the %s unit.\n", systemdUnitName)
	}
	if cfg == nil {
		return nil
	}
	stopBackgroundAgent(cfg.StateDir)
	if !agentRan {
		// What a stopped agent left for its restart: the agent that would
		// have removed it on leaving is not there.
		binary, err := findAgentBinary(c)
		if err != nil {
			return fmt.Errorf("removing the tunnel and datapath: %w", err)
		}
		if err := teardown(ctx, w, binary, cfgPath); err != nil {
			return err
		}
	}
	if c.Bool("keep-config") {
		return nil
	}
	removed, err := removeNodeState(cfg, cfgPath)
	if len(removed) > 0 {
		fmt.Fprintf(w, "Removed %s.\n", strings.Join(removed, ", "))
	}
	return err
}

// nodeStateEntries are what the agent and meshctl keep in the state
// directory. leave removes exactly these, so a state directory pointed at
// a shared place by mistake loses nothing else.
var nodeStateEntries = []string{
	"credentials",    // join: node certificate, key, mesh CA certificate
	"wireguard",      // the WireGuard private key, the helper's log
	"pki",            // first node: the mesh CA and its key, etcd's TLS material
	"etcd",           // first node: the embedded etcd's data
	"workloads.json", // workloads to attach again after a restart
	"agent.pid",
	"agent.log",
}

// removeNodeState removes the node's state and configuration; it returns
// what it removed.
func removeNodeState(cfg *config.Config, cfgPath string) ([]string, error) {
	if err := removableDir("the state directory (stateDir)", cfg.StateDir); err != nil {
		return nil, err
	}
	paths := []string{}
	// Only a directory a Weft node used: its WireGuard key or its join
	// credentials are there. Generic names such as pki or etcd are not
	// removed from a directory that merely exists (stateDir: /etc).
	if dirExists(filepath.Join(cfg.StateDir, "wireguard")) || dirExists(filepath.Join(cfg.StateDir, "credentials")) {
		for _, e := range nodeStateEntries {
			paths = append(paths, filepath.Join(cfg.StateDir, e))
		}
	}
	if d := cfg.EtcdDataDir(); cfg.Etcd.Embedded.Enabled && !strings.HasPrefix(d, cfg.StateDir+string(filepath.Separator)) {
		// An etcd data directory of its own: what etcd made in it, then
		// the directory if that leaves it empty (below).
		if err := removableDir("the embedded etcd's data directory", d); err != nil {
			return nil, err
		}
		paths = append(paths, filepath.Join(d, "member"))
		defer func() { _ = os.Remove(d) }()
	}
	paths = append(paths, cfgPath)
	var removed []string
	var errs []error
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", p, err))
			continue
		}
		removed = append(removed, p)
	}
	// The directories themselves when nothing else is in them (the pin
	// root is shared by the nodes of a lab).
	for _, d := range []string{cfg.StateDir, cfg.BPF.PinPath} {
		if err := os.Remove(d); err == nil {
			removed = append(removed, d)
		}
	}
	return removed, errors.Join(errs...)
}

// removableDir refuses a directory leave must not remove things from: not
// absolute or not clean (relative to wherever meshctl runs), or the root.
func removableDir(what, d string) error {
	if d == "" || !filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/" {
		return fmt.Errorf("%s is %q in the configuration: leave removes only below an absolute, clean directory other than /; fix the configuration file and run leave again (nothing was removed)", what, d)
	}
	return nil
}

func dirExists(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}
