package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/internal/cliout"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "connect this cluster to other clusters, each with its own etcd",
		UsageText: `meshctl cluster token [--ttl 1h]
meshctl cluster connect TOKEN [--mode mirror|direct] [--push]
meshctl cluster list
meshctl cluster status [NAME]
meshctl cluster disconnect NAME`,
		Description: `Each cluster has its own control plane (etcd and first node). Connecting two
gives each a read-only etcd credential for the other, scoped to what agents
need (cluster record, nodes, endpoints, identities, grants, revocations; never
tokens or policies). Workloads of connected clusters reach each other over
WireGuard tunnels node to node, and policies select them by labels
(mesh:cluster=NAME included).

  1. On the other cluster's first node:  meshctl cluster token
  2. On this cluster's first node:       meshctl cluster connect TOKEN

Both directions are set up in that one step; the token works once. Clusters
whose names, ids or ranges (mesh pool, pod CIDRs) collide are refused with
the collision named. See docs/clusters.md.`,
		Subcommands: []*cli.Command{
			{
				Name:      "token",
				Usage:     "make a one-time cluster token another cluster connects with",
				UsageText: "meshctl cluster token [--ttl 1h] [-o table|json]",
				Flags: agentFlags(
					&cli.DurationFlag{Name: "ttl", Value: defaultTokenTTL, Usage: "how long the token is valid (1m to 720h)"},
				),
				Action: clusterTokenAction,
			},
			{
				Name:      "connect",
				Usage:     "connect this cluster to the cluster that made TOKEN (both directions)",
				UsageText: "meshctl cluster connect TOKEN [--mode mirror|direct] [--push] [-o table|json]",
				Description: `--mode mirror (the default): this cluster's first node copies the other
cluster's records into this cluster's etcd, and agents watch only their own
etcd, so the other etcd sees one watcher per connected cluster. --mode direct:
every agent of this cluster watches the other etcd itself (small meshes).

--push: for a cluster whose etcd and join service the other cluster cannot
reach (behind NAT). The other cluster gives this one a credential that may
also write the other etcd's mirror/<this cluster>/ (nothing else), and this
cluster's first node pushes its own records there; the other cluster's
agents check them as they check any remote cluster's records.`,
				Flags: agentFlags(
					&cli.StringFlag{Name: "mode", Value: "mirror", Usage: "how agents get the other cluster's records: `mirror` or direct"},
					&cli.BoolFlag{Name: "push", Usage: "this cluster cannot be reached from the other (behind NAT): push its records into the other cluster's etcd"},
				),
				Action: clusterConnectAction,
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list the connected clusters",
				UsageText: "meshctl cluster list [-o table|json]",
				Flags:     agentFlags(),
				Action:    clusterListAction,
			},
			{
				Name:      "status",
				Usage:     "show each connected cluster's state: connected, synced, counts, last error, lag",
				UsageText: "meshctl cluster status [NAME] [-o table|json]",
				Flags:     agentFlags(),
				Action:    clusterStatusAction,
			},
			{
				Name:  "disconnect",
				Usage: "disconnect a cluster (both directions)",
				Description: `The other cluster is told with the credential it issued, then this side's
connection, its mirror and the other cluster's etcd user here are removed; its
nodes stop being peers and its endpoints leave the datapath on every node. An
unreachable other cluster keeps its side until disconnect runs there too.`,
				UsageText: "meshctl cluster disconnect NAME",
				Flags:     []cli.Flag{socketFlag()},
				Action:    clusterDisconnectAction,
			},
		},
	}
}

func clusterTokenAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ttl, err := tokenTTL(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	tok, err := agentClient(c).CreateClusterToken(ctx, api.ClusterTokenRequest{TTL: api.Duration(ttl)})
	if err != nil {
		return fmt.Errorf("creating a cluster token: %w", err)
	}
	return render(c, tok, func() error {
		_, err := fmt.Fprintf(c.App.Writer, `Cluster token %s (connects a cluster to cluster %s, single use, expires %s):

  %s

It is shown only now. On the first node of the cluster to connect, as root:

  meshctl cluster connect %s
`, tok.ID, tok.Cluster, tok.ExpiresAt.Local().Format(time.RFC3339), tok.JoinToken, tok.JoinToken)
		return err
	})
}

func clusterConnectAction(c *cli.Context) error {
	token, err := oneArg(c, "token")
	if err != nil {
		return err
	}
	mode := c.String("mode")
	if mode != "mirror" && mode != "direct" {
		return fmt.Errorf("--mode %q: use mirror or direct", mode)
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	fmt.Fprintln(c.App.ErrWriter, "connecting: exchanging credentials with the other cluster's join service...")
	r, err := agentClient(c).ConnectCluster(ctx, api.ClusterConnectRequest{Token: strings.TrimSpace(token), Mode: mode, Push: c.Bool("push")})
	if err != nil {
		return fmt.Errorf("connecting the cluster: %w", err)
	}
	return render(c, r, func() error {
		_, err := fmt.Fprintf(c.App.Writer, "connected to cluster %s (id %d, mesh pool %s, mode %s)\nboth directions are set up; `meshctl cluster status %s` shows when its records are in\n",
			r.Name, r.ID, r.MeshPool, r.Mode, r.Name)
		return err
	})
}

func clusterListAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	rs, err := agentClient(c).Clusters(ctx)
	if err != nil {
		return err
	}
	return render(c, rs, func() error {
		rows := make([][]string, 0, len(rs))
		for _, r := range rs {
			ranges := append([]string{r.MeshPool}, r.PodCIDRs...)
			rows = append(rows, []string{r.Name, strconv.Itoa(r.ID), strings.Join(ranges, ","), r.Mode, strings.Join(r.EtcdEndpoints, ","), r.ConnectedAt.Local().Format(time.RFC3339)})
		}
		return cliout.Table(c.App.Writer, []string{"cluster", "id", "ranges", "mode", "etcd", "connected"}, rows)
	})
}

func clusterStatusAction(c *cli.Context) error {
	// Flags may follow the name, as with every command.
	pos, rest, err := splitArgs(c)
	if err != nil {
		return err
	}
	pos = append(pos, rest...)
	if len(pos) > 1 {
		return fmt.Errorf("at most one cluster name, got %d arguments: %q", len(pos), strings.Join(pos, " "))
	}
	var name string
	if len(pos) == 1 {
		name = pos[0]
		if err := config.ValidateName("cluster", name); err != nil {
			return err
		}
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	rs, err := agentClient(c).Clusters(ctx)
	if err != nil {
		return err
	}
	if name != "" {
		var one []api.RemoteCluster
		for _, r := range rs {
			if r.Name == name {
				one = append(one, r)
			}
		}
		if len(one) == 0 {
			return fmt.Errorf("cluster %s is not connected (see `meshctl cluster list`)", name)
		}
		rs = one
	}
	return render(c, rs, func() error { return printClusterStatus(c.App.Writer, rs) })
}

func printClusterStatus(w io.Writer, rs []api.RemoteCluster) error {
	rows := make([][]string, 0, len(rs))
	for _, r := range rs {
		state := "disconnected"
		switch {
		case r.Connected && r.Synced:
			state = "connected"
		case r.Connected:
			state = "syncing"
		}
		lastErr := "-"
		if r.LastError != "" {
			lastErr = r.LastError
			if !r.LastErrorAt.IsZero() {
				lastErr += " (" + shortDuration(now().Sub(r.LastErrorAt)) + " ago)"
			}
		}
		rows = append(rows, []string{r.Name, state, yesNo(r.Synced), strconv.Itoa(r.Nodes), strconv.Itoa(r.Endpoints), strconv.Itoa(r.Identities),
			strconv.Itoa(r.Refused), shortDuration(time.Duration(r.Lag)), lastErr})
	}
	return cliout.Table(w, []string{"cluster", "state", "synced", "nodes", "endpoints", "identities", "refused", "lag", "last error"}, rows)
}

func clusterDisconnectAction(c *cli.Context) error {
	name, err := oneArg(c, "cluster name")
	if err != nil {
		return err
	}
	if err := config.ValidateName("cluster", name); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	if err := agentClient(c).DisconnectCluster(ctx, name); err != nil {
		return fmt.Errorf("disconnecting cluster %s: %w", name, err)
	}
	_, err = fmt.Fprintf(c.App.Writer, "cluster %s disconnected: its nodes and endpoints leave this cluster's datapath\n", name)
	return err
}
