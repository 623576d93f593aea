// Command meshctl is the Weft command-line interface: it talks to the local
// agent over its unix socket and to etcd for mesh-wide views, and drives the
// network-namespace lab used by tests and the demo.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/version"
)

func main() {
	app := &cli.App{
		Name:                 "meshctl",
		Usage:                "operate a Weft mesh: nodes, workloads, policy, and the test lab",
		Version:              version.Version,
		EnableBashCompletion: true,
		Commands:             commands(),
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		os.Exit(1)
	}
}

// commands gathers the command groups; each group lives in its own file
// and registers itself with register() from an init function.
func commands() []*cli.Command { return registered }

var registered []*cli.Command

func register(c *cli.Command) { registered = append(registered, c) }
