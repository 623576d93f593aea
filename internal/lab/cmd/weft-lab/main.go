// Command weft-lab is the Weft lab: sites, NAT and nodes in network
// namespaces on this machine, for the demo and the tests (docs/lab.md).
// People reach it as `meshctl lab ...`, which runs weft-lab with the rest
// of the command line; `weft-lab ARGS...` is the same as
// `meshctl lab ARGS...`. The commands are in package internal/lab/labcli.
package main

import (
	"context"
	"os"

	"github.com/weftmesh/weft/internal/lab/labcli"
)

func main() {
	os.Exit(labcli.ExitStatus(labcli.Run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}
