package cli

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/cliout"
	"github.com/weftmesh/weft/meshctl/spec"
)

// Token lifetimes (spec's: the Terraform provider checks the same).
const (
	minTokenTTL     = spec.MinTokenTTL
	maxTokenTTL     = spec.MaxTokenTTL
	defaultTokenTTL = spec.DefaultTokenTTL
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "create, list and revoke join tokens",
		UsageText: `meshctl token create [--cluster C [--cluster-id N] [--mesh-pool CIDR]] [--labels k=v,...] [--ttl 1h] [--reusable --max-uses N]
meshctl token list
meshctl token revoke ID`,
		Description: `A join token lets one machine (or, reusable, up to --max-uses machines) join the
mesh with 'meshctl join TOKEN' until it expires. The token string carries the
join service's address, the token's id and secret, and the SHA-256 of the mesh
CA, which the joining machine pins. Only a hash of the secret is stored: the
string is shown once, at creation. Run these commands on a node that runs the
join service (the first node, made with 'meshctl up'). See docs/join.md.`,
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "make a join token and print it with the command to run on the new machine",
				UsageText: "meshctl token create [--cluster C [--cluster-id N] [--mesh-pool CIDR]] [--labels k=v,...] [--allow-labels k=v,...] [--pod-cidrs CIDR,...] [--ttl 1h] [--reusable --max-uses N] [-o table|json]",
				Description: `The joining node is placed in --cluster (default: the agent's own) and gets
the --labels; labels it asks for itself are added, but on the same key the
token's value wins. --allow-labels bounds the labels the node may publish
endpoints with (its own and its workloads'): app=web,app=worker, or app=* for
any value of app; other nodes refuse endpoints outside it, and the first node
creates no identity outside it. Without it the node may use any label.
mesh: labels (cluster, kind) are Weft's own and always allowed.

A --cluster the etcd has no record of is created now (shared mode: every
cluster in one etcd), with the lowest free cluster id and the first /16 of
100.64.0.0/10 no other cluster's ranges overlap, or the --cluster-id and
--mesh-pool given; the output shows the cluster's id and pool, and the nodes
the token admits take theirs from it. For an existing cluster, --cluster-id
and --mesh-pool must be its own or left out. See docs/join.md, "Shared mode".

--pod-cidrs makes a token for Kubernetes nodes (the weft DaemonSet's Secret):
each node it admits claims the podCIDR of its Node object as its CIDR in the
mesh, which must lie inside one of these ranges (give the Kubernetes
cluster CIDR, kube-controller-manager --cluster-cidr). The ranges become the
cluster's pod CIDRs; ranges overlapping another cluster's, or the mesh
pool, are refused. See docs/kubernetes.md.

Examples:
  meshctl token create --labels app=db --ttl 30m
  meshctl token create --cluster west --reusable --max-uses 20 --ttl 24h
  meshctl token create --cluster lab --cluster-id 40 --mesh-pool 100.100.0.0/20
  meshctl token create --labels app=web --allow-labels app=web,app=worker
  meshctl token create --pod-cidrs 100.96.0.0/16 --reusable --max-uses 50 --ttl 24h`,
				Flags: agentFlags(
					&cli.StringFlag{Name: "cluster", Usage: "`CLUSTER` the node joins (default: this agent's); a new one is created"},
					&cli.IntFlag{Name: "cluster-id", Usage: fmt.Sprintf("`ID` (1..%d) of a new --cluster (default: the lowest free id)", identity.MaxClusterID)},
					&cli.StringFlag{Name: "mesh-pool", Usage: "`CIDR` inside 100.64.0.0/10 of a new --cluster (default: the first free /16)"},
					&cli.StringFlag{Name: "labels", Usage: "labels `k=v,...` given to the node"},
					&cli.DurationFlag{Name: "ttl", Value: defaultTokenTTL, Usage: "how long the token is valid (1m to 720h)"},
					&cli.BoolFlag{Name: "reusable", Usage: "let several machines join with this token (needs --max-uses)"},
					&cli.IntFlag{Name: "max-uses", Usage: "how many machines may join with a --reusable token (`N`)"},
					&cli.StringFlag{Name: "allow-labels", Usage: "labels `k=v,...` the node may give its workloads (k=* any value); default any"},
					&cli.StringFlag{Name: "pod-cidrs", Usage: "a token for Kubernetes nodes: `CIDR,...` their podCIDRs lie in (the cluster CIDR)"},
				),
				Action: tokenCreateAction,
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list join tokens (never their secrets)",
				UsageText: "meshctl token list [-o table|json]",
				Flags:     agentFlags(),
				Action:    tokenListAction,
			},
			{
				Name:        "revoke",
				Usage:       "revoke a join token: no machine can join with it any more",
				UsageText:   "meshctl token revoke ID",
				Description: `Nodes that already joined with the token keep their credentials.`,
				Flags:       []cli.Flag{socketFlag()},
				Action:      tokenRevokeAction,
			},
		},
	}
}

// tokenRequest validates the create flags into an API request (the
// checks and messages are spec.TokenRequest's, which the Terraform
// provider shares).
func tokenRequest(c *cli.Context) (api.TokenRequest, error) {
	t := spec.Token{Cluster: c.String("cluster"), TTL: c.Duration("ttl"), Reusable: c.Bool("reusable")}
	if c.IsSet("cluster-id") {
		id := c.Int("cluster-id")
		t.ClusterID = &id
	}
	if c.IsSet("mesh-pool") {
		p := c.String("mesh-pool")
		t.MeshPool = &p
	}
	// The k=v,... form is parsed in spec, in its turn: a bad --mesh-pool
	// is reported before a bad --labels, as it always was.
	t.LabelList = c.String("labels")
	if s := c.String("allow-labels"); s != "" {
		t.AllowLabels = strings.Split(s, ",")
	}
	if s := c.String("pod-cidrs"); s != "" {
		t.PodCIDRs = strings.Split(s, ",")
	}
	if c.IsSet("max-uses") {
		n := c.Int("max-uses")
		t.MaxUses = &n
	}
	return spec.TokenRequest(t)
}

func tokenCreateAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	req, err := tokenRequest(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	tok, err := agentClient(c).CreateToken(ctx, req)
	if err != nil {
		return fmt.Errorf("creating a token: %w", err)
	}
	return render(c, tok, func() error { return printCreatedToken(c.App.Writer, tok) })
}

// printCreatedToken shows the token once, with what to do with it.
func printCreatedToken(w io.Writer, tok api.CreatedToken) error {
	uses := "single use"
	if tok.MaxUses > 1 {
		uses = fmt.Sprintf("up to %d machines", tok.MaxUses)
	}
	labels := ""
	if len(tok.Labels) > 0 {
		labels = ", labels " + identity.FormatLabelMap(tok.Labels)
	}
	if len(tok.AllowLabels) > 0 {
		labels += ", workloads may use only " + strings.Join(tok.AllowLabels, ",")
	}
	if len(tok.PodCIDRs) > 0 {
		labels += ", Kubernetes nodes with podCIDRs in " + strings.Join(tok.PodCIDRs, ",")
	}
	how := fmt.Sprintf("On the machine to join, as root:\n\n  meshctl join %s --name NODE-NAME\n", tok.JoinToken)
	if len(tok.PodCIDRs) > 0 {
		how = "For the weft DaemonSet, put it in the Secret its nodes read (docs/kubernetes.md):\n\n" +
			"  kubectl create namespace weft-system\n" +
			"  kubectl -n weft-system create secret generic weft-token --from-file=token=FILE-HOLDING-THE-TOKEN\n"
	}
	if _, err := fmt.Fprintf(w, `Join token %s (cluster %s%s, %s, expires %s):

  %s

`, tok.ID, tok.Cluster, labels, uses, tok.ExpiresAt.Local().Format(time.RFC3339), tok.JoinToken); err != nil {
		return err
	}
	// The cluster's id and pool: an agent older than them sends neither.
	if tok.ClusterID != 0 {
		state := "existing"
		if tok.ClusterCreated {
			state = "new (created for this token)"
		}
		if err := cliout.Table(w, []string{"cluster", "id", "mesh pool", "state"}, [][]string{{tok.Cluster, strconv.Itoa(tok.ClusterID), tok.MeshPool, state}}); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(w); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "It is shown only now. %s", how)
	return err
}

func tokenState(t api.Token) string {
	switch {
	case t.Revoked:
		return "revoked"
	case !now().Before(t.ExpiresAt):
		return "expired"
	case t.Uses >= t.MaxUses:
		return "used up"
	}
	return "active"
}

func tokenListAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	toks, err := agentClient(c).Tokens(ctx)
	if err != nil {
		return err
	}
	sort.Slice(toks, func(i, j int) bool { return toks[i].CreatedAt.Before(toks[j].CreatedAt) })
	return render(c, toks, func() error {
		rows := make([][]string, 0, len(toks))
		for _, t := range toks {
			expires := t.ExpiresAt.Local().Format(time.RFC3339)
			if d := t.ExpiresAt.Sub(now()); d > 0 {
				expires += " (in " + shortDuration(d) + ")"
			}
			rows = append(rows, []string{t.ID, t.Cluster, identity.FormatLabelMap(t.Labels), strconv.Itoa(t.Uses) + "/" + strconv.Itoa(t.MaxUses), expires, tokenState(t)})
		}
		return cliout.Table(c.App.Writer, []string{"id", "cluster", "labels", "uses", "expires", "state"}, rows)
	})
}

func tokenRevokeAction(c *cli.Context) error {
	id, err := oneArg(c, "id")
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	if err := agentClient(c).RevokeToken(ctx, id); err != nil {
		return fmt.Errorf("revoking token %s: %w", id, err)
	}
	_, err = fmt.Fprintf(c.App.Writer, "token %s revoked: no machine can join with it any more\n", id)
	return err
}

// tokenTTL is the --ttl of a token (join or cluster), checked.
func tokenTTL(c *cli.Context) (time.Duration, error) {
	ttl := c.Duration("ttl")
	return ttl, spec.TokenTTL(ttl)
}
