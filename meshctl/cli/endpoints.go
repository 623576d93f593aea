package cli

import (
	"fmt"

	"sort"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/internal/cliout"
)

func endpointCommand() *cli.Command {
	return &cli.Command{
		Name:      "endpoint",
		Aliases:   []string{"endpoints"},
		Usage:     "list the mesh's endpoints; add or remove this node's workloads",
		UsageText: "meshctl endpoints [-o table|json]\nmeshctl endpoint add --netns NAME [--labels k=v,...]\nmeshctl endpoint list\nmeshctl endpoint remove NAME",
		Description: `An endpoint is a workload with a mesh address and an identity. On a VM, a
network namespace becomes a workload with 'meshctl endpoint add': the agent
connects it with a veth pair, gives it an address from the node's CIDR,
routes it, attaches the datapath programs and registers it in the mesh with
its labels. The same can be declared in the agent's configuration file
(workloads:). Without a subcommand, lists the endpoints.`,
		Flags:  agentFlags(),
		Action: endpointListAction,
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "make a network namespace a workload of this node",
				UsageText: "meshctl endpoint add --netns NAME [--labels k=v,...] [-o table|json]",
				Description: `The namespace must exist ('ip netns add NAME'). Labels are key=value, with an
optional vm: or k8s: source (none means vm:); the agent adds
mesh:cluster=<cluster>. Adding the same namespace again with the same labels
changes nothing; with other labels it is refused (remove it first).

Example:
  meshctl endpoint add --netns web-1 --labels app=web,tier=front`,
				Flags: agentFlags(
					&cli.StringFlag{Name: "netns", Usage: "network namespace `NAME` (as in ip netns)", Required: true},
					&cli.StringFlag{Name: "labels", Usage: "workload labels `k=v,...`"},
				),
				Action: endpointAddAction,
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list the mesh's endpoints (local ones marked *)",
				UsageText: "meshctl endpoint list [--local] [-o table|json]",
				Description: `POLICY says whether a policy isolates a local endpoint: ingress, egress,
ingress+egress or open. Another node's endpoint shows "-": only the agent
that enforces an endpoint knows (run the command on that node).`,
				Flags:  agentFlags(&cli.BoolFlag{Name: "local", Usage: "only this node's workloads"}),
				Action: endpointListAction,
			},
			{
				Name:      "remove",
				Aliases:   []string{"rm"},
				Usage:     "stop treating a network namespace as a workload",
				UsageText: "meshctl endpoint remove NAME",
				Description: `Removes the veth, routes, datapath programs and the endpoint's records; the
namespace itself is left alone.`,
				Flags:  []cli.Flag{socketFlag()},
				Action: endpointRemoveAction,
			},
		},
	}
}

func endpointAddAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	netns := c.String("netns")
	if err := config.ValidateNetnsName(netns); err != nil {
		return fmt.Errorf("--netns: %w", err)
	}
	labels, err := labelsFlag(c, "labels")
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	ep, err := agentClient(c).AddEndpoint(ctx, api.EndpointSpec{Netns: netns, Labels: labels})
	if err != nil {
		return fmt.Errorf("adding endpoint %s: %w", netns, err)
	}
	return render(c, ep, func() error {
		_, err := fmt.Fprintf(c.App.Writer, "endpoint %s: %s, identity %d (%s)\n", ep.Name, ep.IP, ep.Identity, strings.Join(ep.Labels, ","))
		return err
	})
}

func endpointListAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	eps, err := agentClient(c).Endpoints(ctx)
	if err != nil {
		return err
	}
	if c.Bool("local") {
		local := eps[:0]
		for _, e := range eps {
			if e.Local {
				local = append(local, e)
			}
		}
		eps = local
	}
	sort.Slice(eps, func(i, j int) bool {
		a, b := eps[i], eps[j]
		if a.Cluster != b.Cluster {
			return a.Cluster < b.Cluster
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Name < b.Name
	})
	return render(c, eps, func() error {
		return cliout.Table(c.App.Writer, []string{"name", "node", "ip", "identity", "labels", "policy"}, endpointRows(eps))
	})
}

func endpointRows(eps []api.Endpoint) [][]string {
	rows := make([][]string, 0, len(eps))
	for _, e := range eps {
		name := e.Name
		if e.Local {
			name += " *"
		}
		var enforced []string
		if e.IngressEnforced {
			enforced = append(enforced, "ingress")
		}
		if e.EgressEnforced {
			enforced = append(enforced, "egress")
		}
		policy := "open"
		switch {
		case !e.Local:
			// Only the agent enforcing an endpoint knows whether a policy
			// isolates it; the records other nodes read do not say.
			policy = "-"
		case len(enforced) > 0:
			policy = strings.Join(enforced, "+")
		}
		rows = append(rows, []string{name, e.Cluster + "/" + e.Node, e.IP, strconv.FormatUint(uint64(e.Identity), 10), strings.Join(e.Labels, ","), policy})
	}
	return rows
}

func endpointRemoveAction(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	if err := agentClient(c).RemoveEndpoint(ctx, name); err != nil {
		return fmt.Errorf("removing endpoint %s: %w", name, err)
	}
	_, err = fmt.Fprintf(c.App.Writer, "endpoint %s removed\n", name)
	return err
}
