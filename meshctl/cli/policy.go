package cli

import (
	"fmt"

	"io"
	"os"
	"sort"
	"strconv"
	"strings"

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
		UsageText: `meshctl policy apply -f FILE
meshctl policy get NAME
meshctl policy list
meshctl policy delete NAME
meshctl policy trace --from k=v,... --to k=v,... --port 5432/tcp`,
		Description: `Policies are YAML documents (apiVersion weft.dev/v1, kind Policy; see
docs/policy.md) stored in the mesh and enforced by every node's datapath.
'apply' validates every document of the file before writing any: an invalid
file is refused with file, line and reason, and nothing changes.`,
		Subcommands: []*cli.Command{
			{
				Name:      "apply",
				Usage:     "validate and store the policies of a YAML file (- for stdin)",
				UsageText: "meshctl policy apply -f FILE [-o table|json]",
				Description: `Creates or replaces each policy (by metadata.name) of the file; documents are
separated by ---. Every node enforces the change within moments.

Example:
  meshctl policy apply -f db.yaml`,
				Flags:  agentFlags(&cli.PathFlag{Name: "file", Aliases: []string{"f"}, Usage: "policy `FILE` (YAML; - reads stdin)", Required: true}),
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
				UsageText: "meshctl policy trace --from k=v,... --to k=v,... --port PORT/PROTO [-o table|json]",
				Description: `Evaluates the stored policies for a connection from an endpoint with the
--from labels to one with the --to labels, the way the datapath would: the
source's egress rules, then the destination's ingress rules; deny wins.

Examples:
  meshctl policy trace --from app=web --to app=db --port 5432/tcp
  meshctl policy trace --from app=web --to app=db --port icmp`,
				Flags: agentFlags(
					&cli.StringFlag{Name: "from", Usage: "labels of the source `k=v,...`", Required: true},
					&cli.StringFlag{Name: "to", Usage: "labels of the destination `k=v,...`", Required: true},
					&cli.StringFlag{Name: "port", Usage: "destination `PORT/PROTO` (5432/tcp, 53/udp, icmp)", Required: true},
				),
				Action: policyTraceAction,
			},
		},
	}
}

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
	ctx, cancel := cmdContext(c)
	defer cancel()
	res, err := agentClient(c).ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: file, Document: string(data)})
	if err != nil {
		return fmt.Errorf("policy not applied, nothing changed: %w", err)
	}
	return render(c, res, func() error {
		for _, p := range res.Policies {
			if _, err := fmt.Fprintf(c.App.Writer, "policy %s %s (revision %d)\n", p.Name, p.Action, p.Revision); err != nil {
				return err
			}
		}
		return nil
	})
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
			rows = append(rows, []string{p.Name, strconv.FormatInt(p.Revision, 10), strings.Join(p.SelectedEndpoints, ","), strconv.Itoa(p.Entries)})
		}
		return cliout.Table(c.App.Writer, []string{"name", "revision", "selects here", "entries"}, rows)
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
	default:
		return 0, "", fmt.Errorf("--port %q: unknown protocol %q (use tcp, udp, sctp or icmp)", s, proto)
	}
	n, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: %q is not a port number (1-65535); example 5432/tcp", s, portStr)
	}
	return uint16(n), proto, nil
}

func policyTraceAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	from, err := labelsFlag(c, "from")
	if err != nil {
		return err
	}
	to, err := labelsFlag(c, "to")
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
	return render(c, res, func() error {
		w := c.App.Writer
		target := proto
		if port != 0 {
			target = fmt.Sprintf("%d/%s", port, proto)
		}
		fmt.Fprintf(w, "%s -> %s on %s: %s\n", identity.FormatLabelMap(from), identity.FormatLabelMap(to), target, strings.ToUpper(res.Verdict))
		printStep(w, "egress", res.Egress)
		printStep(w, "ingress", res.Ingress)
		return nil
	})
}

func printStep(w io.Writer, dir string, s api.TraceStep) {
	state := "enforced"
	if !s.Enforced {
		state = "not enforced"
	}
	fmt.Fprintf(w, "  %-8s %-5s (%s) %s", dir+":", s.Verdict, state, s.Reason)
	if len(s.Policies) > 0 {
		fmt.Fprintf(w, " [policies: %s]", strings.Join(s.Policies, ", "))
	}
	fmt.Fprintln(w)
}
