// Command kubelab-cleanup removes what crashed Kubernetes tests left
// behind: the cgroups (and the container processes in them) of kubelet
// nodes whose network namespace is gone. Run it after `meshctl lab down`
// has removed the labs; nodes of running labs are never touched. As root.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/weftmesh/weft/internal/kubelab"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kubelab-cleanup (no arguments): removes the cgroups of Kubernetes test nodes whose network namespace is gone")
		os.Exit(2)
	}
	removed, err := kubelab.Cleanup(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	for _, r := range removed {
		fmt.Println("removed", r)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubelab-cleanup:", err)
		os.Exit(1)
	}
	if len(removed) == 0 {
		fmt.Println("no leftovers of Kubernetes test nodes")
	}
}
