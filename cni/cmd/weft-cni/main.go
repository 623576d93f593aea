// Command weft-cni is Weft's CNI plugin and its installer, in one binary.
// Run by a container runtime (CNI_COMMAND set, no arguments) it is the
// plugin (package cni/plugin); `weft-cni install` and `weft-cni uninstall`
// put it on a node and take it off (package cni/install).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weftmesh/weft/cni/plugin"
	"github.com/weftmesh/weft/internal/version"
)

func main() {
	if len(os.Args) == 1 && os.Getenv("CNI_COMMAND") != "" {
		os.Exit(runPlugin(os.Stdout, os.Stderr))
	}
	os.Exit(exitStatus(run(os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}

// runPlugin is the CNI plugin: skel reads the environment and stdin and
// dispatches; an error is printed on stdout as the CNI error JSON the
// runtime reads, with a non-zero exit.
func runPlugin(stdout, stderr io.Writer) int {
	p := plugin.New(stdout, stderr)
	if e := skel.PluginMainFuncsWithError(p.Funcs(), plugin.VersionInfo(), "weft-cni "+version.Version); e != nil {
		b, _ := json.MarshalIndent(e, "", "    ")
		if _, err := fmt.Fprintf(stdout, "%s\n", b); err != nil {
			fmt.Fprintln(stderr, "weft-cni: writing the error result:", err)
		}
		return 1
	}
	return 0
}
