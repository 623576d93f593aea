package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/cliout"
	"github.com/weftmesh/weft/policy"
)

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:  "policy",
		Usage: "apply, inspect, delete and trace network policies",
		UsageText: `meshctl policy apply -f FILE [--wait=false] [--timeout D]
meshctl policy get NAME
meshctl policy list
meshctl policy delete NAME
meshctl policy trace --from k=v,...|ENTITY --to k=v,...|ENTITY --port 5432/tcp|icmp|any`,
		Description: `Policies are YAML documents (apiVersion weft.dev/v1, kind Policy; see
docs/policy.md) stored in the mesh and enforced by every node's datapath.
'apply' validates every document of the file before writing any, and writes
them in one transaction: an invalid file is refused with file, line and
reason, and nothing changes.`,
		Subcommands: []*cli.Command{
			{
				Name:      "apply",
				Usage:     "validate and store the policies of a YAML file (- for stdin)",
				UsageText: "meshctl policy apply -f FILE [--wait=false] [--timeout D] [-o table|json]",
				Description: `Creates or replaces each policy (by metadata.name) of the file; documents are
separated by ---. All of them are written in one etcd transaction, so every
node sees the whole file change at once.

By default apply then waits until every node of the mesh reports the new
revision compiled into its datapath, prints how long each took, and exits
with status 1 naming the nodes that did not within --timeout (the policies
stay stored; those nodes enforce them once they catch up). --wait=false
returns as soon as the policies are stored.

Example:
  meshctl policy apply -f db.yaml`,
				Flags: agentFlags(
					&cli.PathFlag{Name: "file", Aliases: []string{"f"}, Usage: "policy `FILE` (YAML; - reads stdin)", Required: true},
					&cli.BoolFlag{Name: "wait", Value: true, Usage: "wait until every node enforces the policies (--wait=false: return once stored)"},
					&cli.DurationFlag{Name: "timeout", Value: defaultPolicyWait, Usage: "how long --wait waits for every node"},
				),
				Action: policyApplyAction,
			},
			{
				Name:        "get",
				Usage:       "print a stored policy",
				UsageText:   "meshctl policy get NAME [-o table|json]",
				Description: `Prints the document as applied (YAML); -o json adds its revision.`,
				Flags:       agentFlags(),
				Action:      policyGetAction,
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list the policies and what they select on this node",
				UsageText: "meshctl policy list [-o table|json]",
				Flags:     agentFlags(),
				Action:    policyListAction,
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete a policy from the mesh",
				UsageText: "meshctl policy delete NAME",
				Flags:     []cli.Flag{socketFlag()},
				Action:    policyDeleteAction,
			},
			{
				Name:      "trace",
				Usage:     "explain whether a connection between two label sets is allowed",
				UsageText: "meshctl policy trace --from k=v,...|ENTITY --to k=v,...|ENTITY --port PORT/PROTO|icmp|any [-o table|json]",
				Description: `Evaluates the stored policies for a connection from an endpoint with the
--from labels to one with the --to labels, the way the datapath would: the
source's egress rules, then the destination's ingress rules; deny wins. It
names the rule that decided each direction and where it was written
(policy/section[index], file:line as applied).

A side may be an entity instead of labels: world (outside the mesh), host
(the node itself), remote-node (another node's own address), or any
reserved identity as reserved:NAME. Labels may carry any source, mesh:
included (mesh:cluster=east), since they describe an endpoint.

--port any asks about every protocol and port at once: ALLOW only when
rules allow them all, DENY when any deny rule names some of them.

Exit status: 0 for ALLOW, 1 for DENY (the verdict is printed either way),
2 for a command line it cannot run, so scripts can test a connection:
  meshctl policy trace --from app=web --to app=db --port 5432 && echo allowed

Examples:
  meshctl policy trace --from app=web --to app=db --port 5432/tcp
  meshctl policy trace --from world --to app=db --port any
  meshctl policy trace --from app=web --to app=db --port icmp`,
				Flags: agentFlags(
					&cli.StringFlag{Name: "from", Usage: "the source: labels `k=v,...` or an entity (world, host, remote-node)", Required: true},
					&cli.StringFlag{Name: "to", Usage: "the destination: labels `k=v,...` or an entity (world, host, remote-node)", Required: true},
					&cli.StringFlag{Name: "port", Usage: "destination `PORT/PROTO` (5432/tcp, 53/udp, 5432 for TCP, icmp, any)", Required: true},
				),
				Action: policyTraceAction,
			},
		},
	}
}

// defaultPolicyWait bounds `policy apply --wait`: nodes enforce a change
// in well under a second (docs/benchmarks.md); a node that has not in 30 s
// is down or cut off.
const defaultPolicyWait = 30 * time.Second

func policyApplyAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	file := c.Path("file")
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(c.App.Reader, 4<<20))
		file = "<stdin>"
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return fmt.Errorf("reading the policy file: %w", err)
	}
	// The agent validates too; checking here first names the file's
	// mistakes even when the agent is not running.
	if _, err := policy.Parse(file, data); err != nil {
		return fmt.Errorf("policy not applied, nothing changed: %w", err)
	}
	req := api.ApplyPolicyRequest{Filename: file, Document: string(data)}
	if c.Bool("wait") {
		if c.Duration("timeout") <= 0 {
			return usagef(c.Command.HelpName, "--timeout %v: give a positive duration (or --wait=false not to wait)", c.Duration("timeout"))
		}
		req.Wait = api.Duration(c.Duration("timeout"))
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	res, err := agentClient(c).ApplyPolicy(ctx, req)
	if err != nil && req.Wait != 0 && strings.Contains(err.Error(), `unknown field "wait"`) {
		// An agent older than --wait refuses the request as a whole
		// (nothing was written): apply without waiting, and say so.
		fmt.Fprintln(c.App.ErrWriter, "note: the agent is older than 'policy apply --wait' (restart it on the new version); applying without waiting for the nodes to enforce")
		req.Wait = 0
		res, err = agentClient(c).ApplyPolicy(ctx, req)
	}
	if err != nil {
		return fmt.Errorf("policy not applied, nothing changed: %w", err)
	}
	if err := render(c, res, func() error { return printApplied(c.App.Writer, res) }); err != nil {
		return err
	}
	return notEnforced(res.Enforcement)
}

func printApplied(w io.Writer, res api.ApplyPolicyResult) error {
	for _, p := range res.Policies {
		if _, err := fmt.Fprintf(w, "policy %s %s (revision %d)\n", p.Name, p.Action, p.Revision); err != nil {
			return err
		}
	}
	e := res.Enforcement
	if e == nil {
		return nil
	}
	n := 0
	rows := make([][]string, 0, len(e.Nodes))
	for _, ne := range e.Nodes {
		enforced, took, why := "no", "-", ne.Error
		if ne.Enforced {
			n++
			enforced, took, why = "yes", time.Duration(ne.Took).Round(time.Millisecond).String(), "-"
		}
		rows = append(rows, []string{ne.Cluster + "/" + ne.Node, enforced, took, why})
	}
	fmt.Fprintf(w, "enforced on %d of %d nodes (revision %d):\n", n, len(e.Nodes), e.Revision)
	return cliout.Table(w, []string{"node", "enforced", "took", "error"}, rows)
}

// notEnforced is the error of an apply whose wait ended with nodes that
// did not report the policies enforced.
func notEnforced(e *api.PolicyEnforcement) error {
	if e == nil || e.Complete {
		return nil
	}
	var missing []string
	for _, ne := range e.Nodes {
		if !ne.Enforced {
			missing = append(missing, ne.Cluster+"/"+ne.Node)
		}
	}
	return fmt.Errorf("policies stored (revision %d), but %d of %d nodes did not report them enforced within %v: %s. "+
		"They enforce them once their agent catches up; check them with 'meshctl status --all'",
		e.Revision, len(missing), len(e.Nodes), time.Duration(e.Timeout), strings.Join(missing, ", "))
}

func policyGetAction(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	p, err := agentClient(c).GetPolicy(ctx, name)
	if err != nil {
		return err
	}
	return render(c, p, func() error {
		doc := p.Document
		if !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		_, err := io.WriteString(c.App.Writer, doc)
		return err
	})
}

func policyListAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	ps, err := agentClient(c).Policies(ctx)
	if err != nil {
		return err
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return render(c, ps, func() error {
		rows := make([][]string, 0, len(ps))
		for _, p := range ps {
			source := "-"
			if p.File != "" {
				source = fmt.Sprintf("%s:%d", p.File, p.Line)
			}
			sel := strings.Join(p.SelectedEndpoints, ",")
			if sel == "" {
				sel = "-"
			}
			rows = append(rows, []string{p.Name, strconv.FormatInt(p.Revision, 10), sel, strconv.Itoa(p.Entries), source})
		}
		return cliout.Table(c.App.Writer, []string{"name", "revision", "selects here", "entries", "applied from"}, rows)
	})
}

func policyDeleteAction(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	if err := agentClient(c).DeletePolicy(ctx, name); err != nil {
		return fmt.Errorf("deleting policy %s: %w", name, err)
	}
	_, err = fmt.Fprintf(c.App.Writer, "policy %s deleted\n", name)
	return err
}

// parsePortProto reads "5432/tcp", "53/udp", "5432" (TCP), "icmp" or
// "any" into a port and an upper-case protocol.
func parsePortProto(s string) (uint16, string, error) {
	portStr, proto, hasProto := strings.Cut(strings.TrimSpace(s), "/")
	if !hasProto {
		switch strings.ToUpper(portStr) {
		case "ICMP", "ANY":
			return 0, strings.ToUpper(portStr), nil
		}
		proto = "tcp"
	}
	proto = strings.ToUpper(proto)
	switch proto {
	case "TCP", "UDP", "SCTP":
	case "ICMP":
		return 0, "", fmt.Errorf("--port %q: ICMP has no port: write --port icmp", s)
	case "ANY":
		return 0, "", fmt.Errorf("--port %q: any covers every port: write --port any", s)
	default:
		return 0, "", fmt.Errorf("--port %q: unknown protocol %q (use tcp, udp, sctp, icmp or any)", s, proto)
	}
	n, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: %q is not a port number (1-65535); example 5432/tcp", s, portStr)
	}
	return uint16(n), proto, nil
}

// traceEntities are the peers a trace side may name instead of labels:
// the reserved identities (identity.LookupReserved).
var traceEntities = []string{"world", "host", "remote-node", "health", "unmanaged", "init"}

// traceSide reads --from or --to: an entity (world, reserved:world) or
// labels of any source.
func traceSide(c *cli.Context, flag string) (map[string]string, error) {
	v := strings.TrimSpace(c.String(flag))
	name := strings.TrimPrefix(v, identity.SourceReserved+":")
	if slices.Contains(traceEntities, name) {
		return map[string]string{identity.SourceReserved + ":" + name: ""}, nil
	}
	switch {
	case v == "mesh" || v == "all":
		return nil, fmt.Errorf("--%s %s: %q is a class of peers in a policy, not one peer; trace an endpoint's labels or one of %s", flag, v, v, strings.Join(traceEntities[:3], ", "))
	case strings.HasPrefix(v, identity.SourceReserved+":"):
		return nil, fmt.Errorf("--%s %s: no reserved identity %q (use %s)", flag, v, name, strings.Join(traceEntities, ", "))
	}
	m, err := identity.SplitLabelList(v)
	if err == nil {
		_, err = identity.ParseLabelMap(m, identity.SourceVM)
	}
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w (or give an entity: %s)", flag, v, err, strings.Join(traceEntities[:3], ", "))
	}
	return m, nil
}

// traceSideText is how the verdict line shows a side.
func traceSideText(m map[string]string) string {
	if len(m) == 1 {
		for k := range m {
			if name, ok := strings.CutPrefix(k, identity.SourceReserved+":"); ok {
				return name
			}
		}
	}
	return identity.FormatLabelMap(m)
}

func policyTraceAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	from, err := traceSide(c, "from")
	if err != nil {
		return err
	}
	to, err := traceSide(c, "to")
	if err != nil {
		return err
	}
	port, proto, err := parsePortProto(c.String("port"))
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	res, err := agentClient(c).TracePolicy(ctx, api.TraceRequest{From: from, To: to, Port: port, Protocol: proto})
	if err != nil {
		return err
	}
	err = render(c, res, func() error {
		w := c.App.Writer
		target := proto
		if port != 0 {
			target = fmt.Sprintf("%d/%s", port, proto)
		}
		fmt.Fprintf(w, "%s -> %s on %s: %s\n", traceSideText(from), traceSideText(to), target, strings.ToUpper(res.Verdict))
		printStep(w, "egress", res.Egress)
		printStep(w, "ingress", res.Ingress)
		if res.Note != "" {
			fmt.Fprintf(w, "  note:    %s\n", res.Note)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if res.Verdict != "allow" {
		// Like `kubectl auth can-i`: the answer is printed, and the
		// status says it for scripts.
		return cli.Exit("", 1)
	}
	return nil
}

func printStep(w io.Writer, dir string, s api.TraceStep) {
	state := "enforced"
	if !s.Enforced {
		state = "not enforced"
	}
	fmt.Fprintf(w, "  %-8s %-5s (%s) %s", dir+":", s.Verdict, state, s.Reason)
	if r := s.Rule; r != nil {
		fmt.Fprintf(w, " [%s/%s[%d]", r.Policy, r.Section, r.Index)
		if r.File != "" && r.Line > 0 {
			fmt.Fprintf(w, " %s:%d", r.File, r.Line)
		}
		fmt.Fprint(w, "]")
	} else if len(s.Policies) > 0 { // an agent that does not name the rule
		fmt.Fprintf(w, " [policies: %s]", strings.Join(s.Policies, ", "))
	}
	fmt.Fprintln(w)
}
