package cli

import (
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/cliout"
)

func nodesCommand() *cli.Command {
	return &cli.Command{
		Name:      "nodes",
		Usage:     "list the mesh's nodes as the local agent knows them",
		UsageText: `meshctl nodes [--socket PATH] [-o table|json]`,
		Description: `Lists every node registered in the mesh: cluster, mesh address, the CIDRs it
owns, the underlay endpoints its peers dial, labels and agent version. The
local node is marked with *. The list comes from the agent's cache of etcd,
so it is available while etcd is briefly unreachable.`,
		Flags:  agentFlags(),
		Action: nodesAction,
	}
}

func nodesAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	nodes, err := agentClient(c).Nodes(ctx)
	if err != nil {
		return err
	}
	sort.Slice(nodes, func(i, j int) bool {
		if nodes[i].Cluster != nodes[j].Cluster {
			return nodes[i].Cluster < nodes[j].Cluster
		}
		return nodes[i].Name < nodes[j].Name
	})
	return render(c, nodes, func() error {
		return cliout.Table(c.App.Writer, []string{"name", "cluster", "mesh ip", "cidrs", "endpoints", "labels", "version"}, nodeRows(nodes))
	})
}

func nodeRows(nodes []api.Node) [][]string {
	rows := make([][]string, 0, len(nodes))
	for _, n := range nodes {
		name := n.Name
		if n.Self {
			name += " *"
		}
		rows = append(rows, []string{name, n.Cluster, n.MeshIP, strings.Join(n.CIDRs, ","), strings.Join(n.Endpoints, ","), identity.FormatLabelMap(n.Labels), n.AgentVersion})
	}
	return rows
}
