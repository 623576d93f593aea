package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"io"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/internal/cliout"
)

func observeCommand() *cli.Command {
	return &cli.Command{
		Name:  "observe",
		Usage: "show flows: connections the policy admitted and packets it dropped, with both ends named",
		UsageText: `meshctl observe [--follow] [--last N] [--since DURATION] [--from-label k=v] [--to-label k=v]
    [--from-ip IP] [--to-ip IP] [--port P] [--protocol tcp|udp|icmp] [--verdict forwarded|dropped]
    [--cluster NAME] [--node NAME | --all-nodes] [-o table|json]`,
		Description: `Every agent keeps the most recent flows its datapath saw (8192 by default,
flows.buffer): the first packet of every connection the policy admitted, and
dropped packets with the reason. Each flow names both ends: address, port,
identity, labels, the node holding the address as CLUSTER/NODE (of this
cluster or a connected one) and the workload's name when it is a mesh endpoint.

Without --node, flows come from the local agent; --node NAME (or CLUSTER/NAME)
asks another node's agent and --all-nodes asks every node's, merged in time
order. Other agents are reached by the local one over the mesh (mutual TLS with
the mesh CA, see docs/observability.md). The agents of a connected cluster
(docs/clusters.md) answer only their own cluster's nodes: --all-nodes leaves
them out and says so; run meshctl on one of their nodes for their flows.

Filters combine with AND; --from-label/--to-label may repeat and take key=value
or source:key=value (app=web matches vm:app=web and k8s:app=web). --port matches
either end; --cluster NAME matches flows either end of which is in cluster NAME
(its endpoint or node, or its identity's mesh:cluster label), e.g. the traffic
between this cluster and a connected one. With --follow, new flows are printed as they come until Ctrl-C.
-o json prints one JSON flow per line.`,
		Flags: agentFlags(
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new flows"},
			&cli.IntFlag{Name: "last", Value: 20, Usage: "print the newest `N` stored flows that match first (-1: all)"},
			&cli.DurationFlag{Name: "since", Usage: "only flows of the last `DURATION` (e.g. 5m)"},
			&cli.StringSliceFlag{Name: "from-label", Usage: "source has label `k=v` (repeatable)"},
			&cli.StringSliceFlag{Name: "to-label", Usage: "destination has label `k=v` (repeatable)"},
			&cli.StringFlag{Name: "from-ip", Usage: "source address `IP`"},
			&cli.StringFlag{Name: "to-ip", Usage: "destination address `IP`"},
			&cli.UintFlag{Name: "port", Usage: "either end's `PORT`"},
			&cli.StringFlag{Name: "protocol", Usage: "tcp, udp, icmp, icmpv6 or sctp"},
			&cli.StringFlag{Name: "verdict", Usage: "forwarded or dropped"},
			&cli.StringFlag{Name: "cluster", Usage: "either end is in cluster `NAME`"},
			&cli.StringFlag{Name: "node", Usage: "ask the agent of node `NAME` (or CLUSTER/NAME)"},
			&cli.BoolFlag{Name: "all-nodes", Usage: "ask every node's agent and merge by time"},
		),
		Action: observeAction,
	}
}

// flowRequestFromFlags validates the flags into a request.
func flowRequestFromFlags(c *cli.Context) (api.FlowRequest, error) {
	req := api.FlowRequest{Last: c.Int("last"), Follow: c.Bool("follow")}
	if req.Last < -1 {
		return req, fmt.Errorf("--last %d: give a count, or -1 for every stored flow", req.Last)
	}
	if d := c.Duration("since"); d != 0 {
		if d < 0 {
			return req, fmt.Errorf("--since %s: give a positive duration such as 5m", d)
		}
		req.Since = now().Add(-d)
	}
	if p := c.Uint("port"); p != 0 {
		if p > 65535 {
			return req, fmt.Errorf("--port %d is not a port (1-65535)", p)
		}
		req.Filter.Port = uint16(p)
	}
	req.Filter.FromLabels = c.StringSlice("from-label")
	req.Filter.ToLabels = c.StringSlice("to-label")
	req.Filter.FromIP = c.String("from-ip")
	req.Filter.ToIP = c.String("to-ip")
	req.Filter.Protocol = strings.ToLower(c.String("protocol"))
	req.Filter.Verdict = c.String("verdict")
	req.Filter.Cluster = c.String("cluster")
	if err := req.Filter.Validate(); err != nil {
		return req, err
	}
	if c.IsSet("node") && c.Bool("all-nodes") {
		return req, errors.New("--node and --all-nodes exclude each other")
	}
	return req, nil
}

// flowStream is one agent to read flows from.
type flowStream struct {
	name   string
	client api.FlowSource
}

// notQueried says which nodes of connected clusters were left out.
func notQueried(nodes []api.Node) string {
	byCluster := map[string]int{}
	var clusters []string
	for _, n := range nodes {
		if byCluster[n.Cluster] == 0 {
			clusters = append(clusters, n.Cluster)
		}
		byCluster[n.Cluster]++
	}
	sort.Strings(clusters)
	parts := make([]string, len(clusters))
	for i, c := range clusters {
		parts[i] = fmt.Sprintf("%s (%d nodes)", c, byCluster[c])
	}
	return strings.Join(parts, ", ")
}

func observeAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	req, err := flowRequestFromFlags(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	streams, err := flowStreams(ctx, c)
	if err != nil {
		return err
	}
	p := &flowPrinter{w: c.App.Writer, json: format == "json", multi: len(streams) > 1}
	return observe(ctx, streams, req, p, stderrOf(c))
}

// flowStreams picks the agents: the local one, --node, or every node.
func flowStreams(ctx context.Context, c *cli.Context) ([]flowStream, error) {
	cl := agentClient(c)
	if !c.IsSet("node") && !c.Bool("all-nodes") {
		return []flowStream{{name: "local", client: cl}}, nil
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var self api.Node
	for _, n := range nodes {
		if n.Self {
			self = n
		}
	}
	target := func(n api.Node) flowStream {
		if n.Self {
			return flowStream{name: n.Cluster + "/" + n.Name, client: cl}
		}
		return flowStream{name: n.Cluster + "/" + n.Name, client: cl.Node(n.Cluster, n.Name)}
	}
	if c.Bool("all-nodes") {
		var out []flowStream
		var remote []api.Node
		for _, n := range nodes {
			if n.Remote {
				remote = append(remote, n)
				continue
			}
			out = append(out, target(n))
		}
		if len(out) == 0 {
			return nil, errors.New("the agent knows no nodes yet")
		}
		if len(remote) > 0 {
			fmt.Fprintf(stderrOf(c), "meshctl: connected clusters not queried (their agents answer only their own cluster's nodes; run meshctl observe on one of them): %s\n", notQueried(remote))
		}
		return out, nil
	}
	want := c.String("node")
	cluster, name, ok := strings.Cut(want, "/")
	if !ok {
		cluster, name = self.Cluster, want
	}
	for _, n := range nodes {
		if n.Cluster == cluster && n.Name == name {
			if n.Remote {
				return nil, fmt.Errorf("--node %s is in the connected cluster %s, whose agents answer only their own cluster's nodes: run meshctl observe on a node of %s (here, --cluster %s shows this cluster's flows to and from it)", want, cluster, cluster, cluster)
			}
			return []flowStream{target(n)}, nil
		}
	}
	return nil, fmt.Errorf("--node %s: no such node in the mesh (see `meshctl nodes`)", want)
}

// streamEvent is a line of stream i, or its end (done, with err).
type streamEvent struct {
	i    int
	line api.FlowLine
	done bool
	err  error
}

// observe reads every stream and prints their flows merged by time.
func observe(ctx context.Context, streams []flowStream, req api.FlowRequest, p *flowPrinter, errw io.Writer) error {
	events := make(chan streamEvent, 256)
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.client.Flows(ctx, req, func(l api.FlowLine) error {
				select {
				case events <- streamEvent{i: i, line: l}:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			events <- streamEvent{i: i, done: true, err: err}
		}()
	}
	go func() { wg.Wait(); close(events) }()

	m := flows.NewMerger(len(streams))
	var (
		failed []string
		held   []api.Flow // without --follow: printed at the end (the newest req.Last)
	)
	emit := func(fs []api.Flow) {
		if req.Follow {
			for _, f := range fs {
				p.print(f)
			}
			return
		}
		held = append(held, fs...)
	}
	for ev := range events {
		if !ev.done {
			emit(m.Push(ev.i, ev.line))
			continue
		}
		if ev.err != nil && !errors.Is(ev.err, context.Canceled) {
			failed = append(failed, streams[ev.i].name)
			fmt.Fprintf(errw, "meshctl: flows of %s: %v\n", streams[ev.i].name, ev.err)
		}
		emit(m.Close(ev.i))
	}
	emit(m.Flush())
	if !req.Follow {
		if req.Last >= 0 && len(held) > req.Last {
			held = held[len(held)-req.Last:]
		}
		for _, f := range held {
			p.print(f)
		}
		if len(held) == 0 && !p.json {
			fmt.Fprintln(errw, "no flows match (the agent keeps the most recent ones; try --follow, or widen the filters)")
		}
	}
	if lost := m.Lost(); lost > 0 {
		fmt.Fprintf(errw, "meshctl: %d flows were not shown because meshctl read too slowly\n", lost)
	}
	if len(failed) > 0 {
		return fmt.Errorf("could not read the flows of %s", strings.Join(failed, ", "))
	}
	return nil
}

// flowPrinter prints flows as a table (one line each, so it streams) or as
// JSON lines.
type flowPrinter struct {
	w      io.Writer
	json   bool
	multi  bool
	header bool
}

func (p *flowPrinter) print(f api.Flow) {
	if p.json {
		b, _ := json.Marshal(f)
		fmt.Fprintln(p.w, string(b))
		return
	}
	if !p.header {
		p.header = true
		fmt.Fprintf(p.w, "%-15s  %-16s  %-9s  %-7s  %-5s  %-56s  %-56s  %s\n", "TIME", "NODE", "VERDICT", "DIR", "PROTO", "SOURCE", "DESTINATION", "REASON")
	}
	fmt.Fprintln(p.w, formatFlow(f))
}

// formatFlow renders one table line.
func formatFlow(f api.Flow) string {
	reason := f.Reason
	switch {
	case reason != "":
	case f.NodeControl:
		reason = "node-control" // passed as agent-to-agent traffic, not by a policy rule
	default:
		reason = "-"
	}
	if f.TCPFlags != "" {
		reason += " [" + f.TCPFlags + "]"
	}
	return fmt.Sprintf("%-15s  %-16s  %-9s  %-7s  %-5s  %-56s  %-56s  %s",
		f.Time.Local().Format("15:04:05.000000"), clusterNode(f.Cluster, f.Node), strings.ToUpper(f.Verdict), f.Direction, f.Protocol,
		flowEnd(f.Source), flowEnd(f.Destination), reason)
}

// clusterNode names a node as CLUSTER/NODE: node names are unique only
// within a cluster, and flows cross clusters.
func clusterNode(cluster, node string) string {
	switch {
	case cluster == "":
		return node
	case node == "":
		return cluster + "/?" // known by its identity's labels only
	}
	return cluster + "/" + node
}

// flowEnd renders one end: CLUSTER/NODE holding the address, the
// workload's name, address:port and the labels people set (the
// mesh:cluster label every endpoint carries is left out: the cluster is
// named first).
func flowEnd(e api.FlowEndpoint) string {
	addr := e.IP
	if e.Port != 0 {
		addr = joinHostPort(e.IP, e.Port)
	}
	var labels []string
	for _, l := range e.Labels {
		if !strings.HasPrefix(l, "mesh:cluster=") {
			labels = append(labels, l)
		}
	}
	s := addr
	if e.Name != "" {
		s = e.Name + " " + addr
	}
	if where := clusterNode(e.Cluster, e.Node); where != "" {
		s = where + " " + s
	}
	if len(labels) > 0 {
		s += " (" + strings.Join(labels, ",") + ")"
	} else if e.Identity != 0 {
		s += fmt.Sprintf(" (id %d)", e.Identity)
	}
	return s
}

func joinHostPort(ip string, port uint16) string {
	if strings.Contains(ip, ":") {
		return fmt.Sprintf("[%s]:%d", ip, port)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}

// stderrOf is where warnings go.
func stderrOf(c *cli.Context) io.Writer {
	if c.App.ErrWriter != nil {
		return c.App.ErrWriter
	}
	return os.Stderr
}
