package cli

import (
	"fmt"

	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/cliout"
	"github.com/weftmesh/weft/meshctl/connectivity"
)

func connectivityCommand() *cli.Command {
	return &cli.Command{

		Name:      "connectivity",
		Usage:     "check the mesh end to end with probe workloads",
		UsageText: `meshctl connectivity test [--timeout DURATION] [--nodes N1,N2] [-o table|json]`,
		Subcommands: []*cli.Command{{
			Name:      "test",
			Usage:     "put probe workloads on every node and run named scenarios; pass/fail per scenario",
			UsageText: `meshctl connectivity test [--timeout DURATION] [--nodes N1,N2] [-o table|json]`,
			Description: `Creates a client probe workload on this node and an echo workload (TCP and
UDP echo on ports 7946 and 7947) on every node of the mesh (or those given with
--nodes), through the agents' probe API (other nodes' agents are reached over
the mesh), then runs these scenarios:

  same node            client -> echo on this node
  across nodes         client -> echo on another node of this node's site (/24)
  across sites         client -> echo on nodes of other sites
  behind NAT           client -> echo on nodes behind NAT (seen by their peers
                       from another address than the one they announce)
  across clusters      client -> echo on nodes of other clusters sharing this
                       etcd; this node -> every node of a connected cluster, by
                       the health probe its agent answers through the tunnel
                       (a connected cluster's agents answer only their own
                       cluster, so they place no workload); skipped when the
                       mesh has one cluster
  host to workload     this node itself -> every echo workload
  ingress allow/deny   a policy lets the client reach the echoes on 7946 only
  egress allow/deny    a policy lets the client send to the echoes on 7946 only
  deny beats allow     allow everything from the client, deny 7947: 7947 fails
  encryption on wire   a marker sent across nodes (and clusters) never appears in
                       the clear on this node's underlay, and WireGuard packets do
  no unexpected drops  no probe traffic was dropped while no policy applied
  no errors in logs    no agent logged an error during the test

Each scenario prints pass, fail (with the reason: what was tried, what
happened, and the drop reason the datapath recorded) or skip (nothing to test,
e.g. no node behind NAT). Policies and workloads made by the test are removed
at the end, also when it fails or is interrupted. Exit status 1 when a
scenario fails.`,
			Flags: agentFlags(
				&cli.DurationFlag{Name: "timeout", Value: 15 * time.Second, Usage: "how long one check may wait for the mesh to converge"},
				&cli.StringSliceFlag{Name: "nodes", Usage: "only these nodes (NAME or CLUSTER/NAME); default: every node"},
			),
			Action: connectivityAction,
		}},
	}
}

func connectivityAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	timeout := c.Duration("timeout")
	if timeout < time.Second || timeout > 5*time.Minute {
		return fmt.Errorf("--timeout %s: use 1s..5m", timeout)
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	opts := connectivity.Options{Timeout: timeout, Nodes: c.StringSlice("nodes")}
	if format == "table" {
		opts.Progress = c.App.Writer
	}
	rep, err := connectivity.Run(ctx, agentClient(c), opts)
	if err != nil {
		return err
	}
	if format == "json" {
		if err := cliout.JSON(c.App.Writer, rep); err != nil {
			return err
		}
	} else {
		printConnectivityReport(c.App.Writer, rep)
	}
	if !rep.Passed {
		var failed []string
		for _, s := range rep.Scenarios {
			if s.Result == connectivity.Fail {
				failed = append(failed, s.Name)
			}
		}
		return fmt.Errorf("connectivity test failed: %s", strings.Join(failed, ", "))
	}
	return ctx.Err()
}

// printConnectivityReport prints the scenario table and the failures'
// reasons.
func printConnectivityReport(w io.Writer, r connectivity.Report) {
	fmt.Fprintln(w)
	var rows [][]string
	for _, s := range r.Scenarios {
		rows = append(rows, []string{s.Name, strings.ToUpper(s.Result), fmt.Sprint(s.Checks), s.Reason})
	}
	_ = cliout.Table(w, []string{"scenario", "result", "checks", "reason"}, rows)
	pass, fail, skip := 0, 0, 0
	for _, s := range r.Scenarios {
		switch s.Result {
		case connectivity.Pass:
			pass++
		case connectivity.Fail:
			fail++
		default:
			skip++
		}
	}
	fmt.Fprintf(w, "\n%d passed, %d failed, %d skipped\n", pass, fail, skip)
}
