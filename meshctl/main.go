// Command meshctl is the Weft command-line interface: it talks to a
// weft-agent over its API socket, starts and joins nodes, and drives the
// network-namespace lab used by tests and the demo. The commands are in
// package meshctl/cli.
package main

import (
	"context"
	"os"

	"github.com/weftmesh/weft/meshctl/cli"
)

func main() {
	os.Exit(cli.ExitStatus(cli.Run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}
