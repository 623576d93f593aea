// Command weft-agent is the Weft node agent: it registers the node and its
// workloads in etcd, keeps WireGuard tunnels to every other node and
// programs the eBPF policy datapath.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/version"
)

func main() {
	app := &cli.App{
		Name:    "weft-agent",
		Usage:   "the Weft node agent: mesh registration, WireGuard tunnels and eBPF policy",
		Version: version.Version,
		Action: func(c *cli.Context) error {
			return fmt.Errorf("the agent is not built yet")
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "weft-agent:", err)
		os.Exit(1)
	}
}
