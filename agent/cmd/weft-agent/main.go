// Command weft-agent is the Weft node agent: it registers the node and its
// workloads in etcd, keeps WireGuard tunnels to every other node and
// programs the eBPF policy datapath.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/internal/version"
	"github.com/weftmesh/weft/tunnel"
)

// helperCommand is the hidden subcommand the agent re-executes itself with
// to run the userspace WireGuard device in its own process, so that the
// device (and the traffic through it) outlives an agent restart.
const helperCommand = "wireguard-device"

func main() {
	app := &cli.App{
		Name:  "weft-agent",
		Usage: "the Weft node agent: mesh registration, WireGuard tunnels and eBPF policy",
		Description: `weft-agent runs on every node of a Weft mesh. It connects to etcd (or runs an
embedded single-member etcd with --embedded-etcd, which is what 'meshctl up'
does), registers the node and its workloads, keeps one WireGuard peer per other
node, and enforces identity-based policy with eBPF. Configuration comes from
--config FILE, overridden by WEFT_* environment variables (each flag lists its
variable), overridden by flags. Stopping the agent leaves the tunnel and the
datapath in place, so a restart does not interrupt traffic; 'meshctl down'
removes them, 'meshctl leave' the node.`,
		Version: version.Version,
		Flags:   config.Flags(),
		Action:  run,
		Commands: []*cli.Command{{
			Name:  "teardown",
			Usage: "remove the WireGuard device and eBPF datapath a stopped agent of --config left in place (meshctl down and leave run it)",
			Action: func(c *cli.Context) error {
				return teardown(c.Lineage()[1])
			},
		}, {
			Name:   helperCommand,
			Hidden: true,
			Usage:  "run the userspace WireGuard device (started by the agent itself)",
			Action: func(c *cli.Context) error {
				ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
				defer stop()
				return tunnel.RunHelperFromEnv(ctx, nil)
			},
		}},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "weft-agent:", err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("unexpected argument %q (see --help)", c.Args().First())
	}
	cfg, err := config.FromCLI(c)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("weft-agent needs root (it creates network devices and loads eBPF programs)")
	}
	log := cfg.NewLogger(os.Stderr)
	a, err := agent.New(cfg, agent.Options{
		TunnelHelper: tunnel.SelfHelper(helperCommand),
		Logger:       log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return a.Run(ctx)
}

// teardown removes the device and datapath a stopped agent left for its
// restart; the credentials, keys and etcd records stay.
func teardown(c *cli.Context) error {
	cfg, err := config.FromCLI(c)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("weft-agent teardown needs root (it removes network devices and eBPF programs)")
	}
	res, err := agent.Teardown(context.Background(), cfg, agent.Options{TunnelHelper: tunnel.SelfHelper(helperCommand), Logger: cfg.NewLogger(os.Stderr)})
	if res.Interface != "" {
		fmt.Printf("removed WireGuard device %s\n", res.Interface)
	}
	if res.PinDir != "" {
		fmt.Printf("removed the eBPF datapath pinned in %s\n", res.PinDir)
	}
	if err == nil && res.Interface == "" && res.PinDir == "" {
		fmt.Println("no WireGuard device or eBPF datapath of this node was left")
	}
	return err
}
