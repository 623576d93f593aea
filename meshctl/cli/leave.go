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
		Usage:     "take this node out of the mesh and remove its agent configuration",
		UsageText: "meshctl leave [--force] [--keep-config]",
		Description: `Asks the agent to leave: it removes the node's records, workloads and
datapath, so its peers drop it at once, and exits. Then meshctl stops the
service (the systemd unit or background process join or up started) and
removes the configuration file and the node's credentials, so the machine
can join again.

If the agent is not running, the node's records expire with its lease and
leave cleans up locally. On the first node of a mesh (embedded etcd) leave
takes the whole mesh down and needs --force.`,
		Flags: []cli.Flag{
			socketFlag(),
			&cli.PathFlag{Name: "config-file", EnvVars: []string{"WEFT_CONFIG"}, Value: defaultConfigFile, Usage: "the agent configuration `FILE`"},
			&cli.BoolFlag{Name: "force", Usage: "leave even if this is the first node (it removes the mesh's etcd and CA)"},
			&cli.BoolFlag{Name: "keep-config", Usage: "keep the configuration and credentials"},
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
	switch err := api.NewClient(socket).Leave(ctx); {
	case errors.Is(err, api.ErrAgentNotRunning):
		fmt.Fprintf(w, "The agent is not running: its records expire with its lease; cleaning up locally.\n")
	case err != nil:
		return fmt.Errorf("the agent could not leave: %w", err)
	default:
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
	if cfg != nil {
		stopBackgroundAgent(cfg.StateDir)
	}
	if c.Bool("keep-config") || cfg == nil {
		return nil
	}
	var removed []string
	for _, p := range []string{filepath.Join(cfg.StateDir, "credentials"), cfgPath} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("removing %s: %w", p, err)
		}
		removed = append(removed, p)
	}
	fmt.Fprintf(w, "Removed %s.\n", strings.Join(removed, " and "))
	return nil
}
