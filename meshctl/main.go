// Command meshctl is the Weft command-line interface: it talks to a
// weft-agent over its API socket and starts and joins nodes; `meshctl lab`
// hands over to the weft-lab binary. The commands are in package
// meshctl/cli.
package main

import (
	"context"
	"os"

	"github.com/weftmesh/weft/meshctl/cli"
)

func main() {
	os.Exit(cli.ExitStatus(cli.Run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}
