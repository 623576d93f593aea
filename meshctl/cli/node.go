package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/internal/cliout"
)

func nodeCommand() *cli.Command {
	clusterFlag := func() cli.Flag {
		return &cli.StringFlag{Name: "cluster", Usage: "`CLUSTER` of the node (default: this agent's)"}
	}
	return &cli.Command{
		Name:  "node",
		Usage: "list nodes, remove a node that is gone, revoke a compromised one",
		UsageText: `meshctl node list
meshctl node remove NAME [--cluster C]
meshctl node revoke NAME [--cluster C] [--reason TEXT]
meshctl node revoke --clear NAME [--cluster C]
meshctl node revoked`,
		Description: `remove and revoke take another node out of the mesh at once and need admin
rights: run them on the mesh's first node (where 'meshctl up' ran). Every peer
drops the node immediately, without the grace an outage gets. See
docs/security.md, "Removal and revocation".`,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list the mesh's nodes (the same as 'meshctl nodes')",
				UsageText: "meshctl node list [-o table|json]",
				Flags:     agentFlags(),
				Action:    nodesAction,
			},
			{
				Name:      "remove",
				Aliases:   []string{"rm"},
				Usage:     "take a node that is gone (a crashed or retired machine) out of the mesh; its name may join again",
				UsageText: "meshctl node remove NAME [--cluster C] [-o table|json]",
				Description: `For a machine that will not come back as it was (crashed, reinstalled,
retired), where 'meshctl leave' cannot run. In this order: the node's etcd user
and role are deleted (its certificate reads and writes nothing any more), its
node record is marked leaving (every peer drops it at once instead of keeping
it as in an outage) and deleted, with its endpoints, identity references,
label grant and CIDR in one transaction. The name is then free: the machine
can join again with a new token ('meshctl token create', then 'meshctl join').

For a compromised machine use 'meshctl node revoke', which also refuses its
certificate everywhere.

Examples:
  meshctl node remove b1
  meshctl node remove vm-7 --cluster west -o json`,
				Flags:  agentFlags(clusterFlag()),
				Action: nodeRemoveAction,
			},
			{
				Name:      "revoke",
				Usage:     "remove a compromised node and refuse its certificate everywhere",
				UsageText: "meshctl node revoke NAME [--cluster C] [--reason TEXT] [-o table|json]\nmeshctl node revoke --clear NAME [--cluster C]",
				Description: `Everything 'meshctl node remove' does, after first recording the revocation at
revoked/<cluster>/<node> in etcd (nodes may read it, never write it). From that
moment every agent drops the node's WireGuard peer and endpoints and ignores
any record that appears for it, the agents' mesh API refuses its certificate,
and the first node's join service refuses it (node services, renewal) and
refuses the name to any new join. Its etcd user is deleted, so its certificate
can neither read nor write etcd. The revocation stays until cleared.

--clear lifts the revocation: the name may join again, with a new token (the
old certificate stays useless: its etcd user is gone). It changes nothing else.

Examples:
  meshctl node revoke b1 --reason "disk image leaked"
  meshctl node revoke --clear b1`,
				Flags: agentFlags(clusterFlag(),
					&cli.StringFlag{Name: "reason", Usage: "why, kept in the revocation record (`TEXT`, at most 256 characters)"},
					&cli.BoolFlag{Name: "clear", Usage: "lift the node's revocation instead, so its name may join again"},
				),
				Action: nodeRevokeAction,
			},
			{
				Name:      "revoked",
				Usage:     "list the revoked nodes",
				UsageText: "meshctl node revoked [-o table|json]",
				Flags:     agentFlags(),
				Action:    nodeRevokedAction,
			},
		},
	}
}

// nodeArgs is the NAME argument and the --cluster flag, validated.
func nodeArgs(c *cli.Context) (api.NodeRemoveRequest, error) {
	name, err := oneArg(c, "node name")
	if err != nil {
		return api.NodeRemoveRequest{}, err
	}
	if err := config.ValidateName("node", name); err != nil {
		return api.NodeRemoveRequest{}, err
	}
	req := api.NodeRemoveRequest{Node: name, Cluster: c.String("cluster"), Reason: c.String("reason")}
	if req.Cluster != "" {
		if err := config.ValidateName("cluster", req.Cluster); err != nil {
			return req, fmt.Errorf("--cluster: %w", err)
		}
	}
	if len(req.Reason) > 256 {
		return req, fmt.Errorf("--reason is %d characters long: at most 256", len(req.Reason))
	}
	return req, nil
}

func nodeRemoveAction(c *cli.Context) error {
	req, err := nodeArgs(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	res, err := agentClient(c).RemoveNode(ctx, req)
	if err != nil {
		return fmt.Errorf("removing node %s: %w", req.Node, err)
	}
	return render(c, res, func() error { return printRemoval(c.App.Writer, res) })
}

func nodeRevokeAction(c *cli.Context) error {
	req, err := nodeArgs(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	if c.Bool("clear") {
		if c.IsSet("reason") {
			return fmt.Errorf("--reason goes with a revocation, not with --clear")
		}
		r, err := agentClient(c).ClearRevocation(ctx, req.Cluster, req.Node)
		if err != nil {
			return fmt.Errorf("clearing the revocation of node %s: %w", req.Node, err)
		}
		return render(c, r, func() error {
			_, err := fmt.Fprintf(c.App.Writer, "revocation of node %s/%s cleared: the name may join again with a new token ('meshctl token create')\n", r.Cluster, r.Node)
			return err
		})
	}
	res, err := agentClient(c).RevokeNode(ctx, req)
	if err != nil {
		return fmt.Errorf("revoking node %s: %w", req.Node, err)
	}
	return render(c, res, func() error { return printRemoval(c.App.Writer, res) })
}

func printRemoval(w io.Writer, r api.NodeRemoval) error {
	verb := "removed"
	if r.Revoked {
		verb = "revoked"
	}
	var gone []string
	if r.Record {
		gone = append(gone, "its node record")
	}
	if r.Endpoints > 0 {
		gone = append(gone, fmt.Sprintf("%d endpoints", r.Endpoints))
	}
	if r.IdentityRefs > 0 {
		gone = append(gone, fmt.Sprintf("%d identity references", r.IdentityRefs))
	}
	if len(r.CIDRs) > 0 {
		gone = append(gone, "CIDR "+strings.Join(r.CIDRs, ","))
	}
	if r.Grant {
		gone = append(gone, "its label grant")
	}
	gone = append(gone, "its etcd user")
	if _, err := fmt.Fprintf(w, "node %s/%s %s in %s: deleted %s.\n", r.Cluster, r.Node, verb, time.Duration(r.Took).Round(time.Millisecond).String(), strings.Join(gone, ", ")); err != nil {
		return err
	}
	var err error
	if r.Revoked {
		serials := ""
		if len(r.Serials) > 0 {
			serials = " (serials " + strings.Join(r.Serials, ",") + ")"
		}
		_, err = fmt.Fprintf(w, "Its certificate%s is refused everywhere; the name cannot join again until 'meshctl node revoke --clear %s --cluster %s'.\n", serials, r.Node, r.Cluster)
	} else {
		_, err = fmt.Fprintf(w, "The name is free: the machine can join again with a new token ('meshctl token create').\n")
	}
	return err
}

func nodeRevokedAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	rs, err := agentClient(c).Revocations(ctx)
	if err != nil {
		return err
	}
	return render(c, rs, func() error {
		rows := make([][]string, 0, len(rs))
		for _, r := range rs {
			rows = append(rows, []string{r.Node, r.Cluster, r.RevokedAt.Local().Format(time.RFC3339), strings.Join(r.Serials, ","), r.Reason})
		}
		return cliout.Table(c.App.Writer, []string{"name", "cluster", "revoked", "serials", "reason"}, rows)
	})
}
