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
		CommandNotFound:      unknownCommand,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		os.Exit(1)
	}
}

// unknownCommand replaces urfave/cli's "No help topic" with what is
// wrong and where to look; it cannot return an error, so it exits.
func unknownCommand(c *cli.Context, name string) {
	parent := "meshctl"
	if c.Command != nil {
		if full := c.Command.FullName(); full != "" && full != parent {
			parent += " " + full
		}
	}
	fmt.Fprintf(os.Stderr, "meshctl: unknown command %q for %q: see %s --help\n", name, parent, parent)
	os.Exit(1)
}

// commands gathers the command groups; each group lives in its own file
// and registers itself with register() from an init function.
func commands() []*cli.Command { return registered }

var registered []*cli.Command

func register(c *cli.Command) { registered = append(registered, c) }
