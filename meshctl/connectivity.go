package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
)

func init() {
	register(&cli.Command{
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
  host to workload     this node itself -> every echo workload
  ingress allow/deny   a policy lets the client reach the echoes on 7946 only
  egress allow/deny    a policy lets the client send to the echoes on 7946 only
  deny beats allow     allow everything from the client, deny 7947: 7947 fails
  encryption on wire   a marker sent across nodes never appears in the clear on
                       this node's underlay, and WireGuard packets do
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
	})
}

// Echo ports of the probe workloads.
const (
	probePortA = 7946
	probePortB = 7947
)

// Scenario results.
const (
	resultPass = "pass"
	resultFail = "fail"
	resultSkip = "skip"
)

// ScenarioResult is one scenario's outcome (-o json).
type ScenarioResult struct {
	Name   string `json:"name"`
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"`
	Checks int    `json:"checks"`
}

// ConnectivityReport is the whole run (-o json).
type ConnectivityReport struct {
	Passed    bool             `json:"passed"`
	Run       string           `json:"run"`
	Scenarios []ScenarioResult `json:"scenarios"`
}

// probeNode is a node taking part, with its echo workload.
type probeNode struct {
	api.Node
	client   api.Prober // the node's agent (through the relay for others)
	flows    api.FlowSource
	echo     api.Endpoint
	setupErr error
	nat      bool
	sameSite bool
}

func (n *probeNode) name() string { return n.Cluster + "/" + n.Name }

type connTest struct {
	local   *api.Client
	self    *probeNode
	nodes   []*probeNode // every node, self included
	clientW api.Endpoint
	run     string
	timeout time.Duration
	start   time.Time
	labels  func(role string) map[string]string
	report  ConnectivityReport
	out     io.Writer
	verbose bool
}

func connectivityAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	timeout := c.Duration("timeout")
	if timeout < time.Second || timeout > 5*time.Minute {
		return fmt.Errorf("--timeout %s: use 1s..5m", timeout)
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	var b [3]byte
	_, _ = rand.Read(b[:])
	ct := &connTest{local: agentClient(c), run: hex.EncodeToString(b[:]), timeout: timeout, start: time.Now(),
		out: c.App.Writer, verbose: format == "table"}
	ct.labels = func(role string) map[string]string {
		return map[string]string{"weft-probe-run": ct.run, "weft-probe-role": role}
	}
	ct.report.Run = ct.run
	if err := ct.setup(ctx, c.StringSlice("nodes")); err != nil {
		ct.cleanup()
		return err
	}
	ct.runScenarios(ctx)
	ct.cleanup()
	ct.report.Passed = true
	for _, s := range ct.report.Scenarios {
		if s.Result == resultFail {
			ct.report.Passed = false
		}
	}
	if format == "json" {
		if err := printJSON(c.App.Writer, ct.report); err != nil {
			return err
		}
	} else {
		printReport(c.App.Writer, ct.report)
	}
	if !ct.report.Passed {
		var failed []string
		for _, s := range ct.report.Scenarios {
			if s.Result == resultFail {
				failed = append(failed, s.Name)
			}
		}
		return fmt.Errorf("connectivity test failed: %s", strings.Join(failed, ", "))
	}
	return ctx.Err()
}

func (ct *connTest) progress(format string, args ...any) {
	if ct.verbose {
		fmt.Fprintf(ct.out, format+"\n", args...)
	}
}

// setup places the probe workloads and classifies the nodes.
func (ct *connTest) setup(ctx context.Context, only []string) error {
	nodes, err := ct.local.Nodes(ctx)
	if err != nil {
		return err
	}
	var self api.Node
	for _, n := range nodes {
		if n.Self {
			self = n
		}
	}
	if self.Name == "" {
		return errors.New("the local agent does not list itself among the nodes yet: retry in a moment")
	}
	want := map[string]bool{}
	for _, o := range only {
		if !strings.Contains(o, "/") {
			o = self.Cluster + "/" + o
		}
		want[o] = true
	}
	for _, n := range nodes {
		pn := &probeNode{Node: n}
		if len(want) > 0 && !want[pn.name()] && !n.Self {
			continue
		}
		delete(want, pn.name())
		if n.Self {
			pn.client, pn.flows = ct.local, ct.local
			ct.self = pn
		} else {
			rc := ct.local.Node(n.Cluster, n.Name)
			pn.client, pn.flows = rc, rc
		}
		ct.nodes = append(ct.nodes, pn)
	}
	if len(want) > 0 {
		var missing []string
		for n := range want {
			missing = append(missing, n)
		}
		sort.Strings(missing)
		return fmt.Errorf("--nodes: no such node in the mesh: %s (see `meshctl nodes`)", strings.Join(missing, ", "))
	}
	ct.classify(ctx)
	ct.progress("Connectivity test %s: %d nodes; placing probe workloads...", ct.run, len(ct.nodes))

	cw, err := ct.local.AddProbeWorkload(ctx, api.ProbeWorkloadRequest{Name: ct.workloadName("c"), Labels: ct.labels("client"), Ports: []uint16{probePortA}})
	if err != nil {
		return fmt.Errorf("placing the probe client on this node: %w", err)
	}
	ct.clientW = cw
	var wg sync.WaitGroup
	for i, n := range ct.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			n.echo, n.setupErr = n.client.AddProbeWorkload(cctx, api.ProbeWorkloadRequest{
				Name: ct.workloadName(fmt.Sprintf("e%d", i)), Labels: ct.labels("echo"), Ports: []uint16{probePortA, probePortB}})
			if n.setupErr != nil {
				n.setupErr = fmt.Errorf("no probe workload on %s: %w", n.name(), n.setupErr)
			}
		}()
	}
	wg.Wait()
	return nil
}

func (ct *connTest) workloadName(suffix string) string { return "probe-" + ct.run + "-" + suffix }

// classify marks nodes behind NAT (a peer sees them at another address
// than the ones they announce) and nodes on this node's site (/24).
func (ct *connTest) classify(ctx context.Context) {
	announced := map[string]map[string]bool{}
	for _, n := range ct.nodes {
		announced[n.name()] = map[string]bool{}
		for _, e := range n.Endpoints {
			announced[n.name()][e] = true
		}
	}
	for _, viewer := range ct.nodes {
		cl := ct.local
		if !viewer.Self {
			cl = ct.local.Node(viewer.Cluster, viewer.Name)
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := cl.Status(cctx)
		cancel()
		if err != nil {
			continue
		}
		for _, p := range st.Peers {
			name := p.Cluster + "/" + p.Node
			if a, ok := announced[name]; ok && p.Endpoint != "" && !a[p.Endpoint] {
				for _, n := range ct.nodes {
					if n.name() == name {
						n.nat = true
					}
				}
			}
		}
	}
	site := func(n *probeNode) string {
		for _, e := range n.Endpoints {
			if ap, err := net.ResolveUDPAddr("udp", e); err == nil && ap.IP.To4() != nil {
				return ap.IP.Mask(net.CIDRMask(24, 32)).String()
			}
		}
		return ""
	}
	mine := site(ct.self)
	for _, n := range ct.nodes {
		n.sameSite = !n.Self && mine != "" && site(n) == mine
	}
}

// cleanup removes policies and workloads, with a fresh context: an
// interrupted test cleans up too.
func (ct *connTest) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ct.deletePolicies(ctx)
	if ct.clientW.Name != "" {
		if err := ct.local.RemoveProbeWorkload(ctx, ct.clientW.Name); err != nil {
			ct.progress("cleanup: %v", err)
		}
	}
	for _, n := range ct.nodes {
		if n.echo.Name != "" {
			if err := n.client.RemoveProbeWorkload(ctx, n.echo.Name); err != nil {
				ct.progress("cleanup on %s: %v", n.name(), err)
			}
		}
	}
}

func (ct *connTest) policyNames() []string {
	return []string{"probe-" + ct.run + "-ingress", "probe-" + ct.run + "-egress", "probe-" + ct.run + "-deny"}
}

func (ct *connTest) deletePolicies(ctx context.Context) {
	for _, name := range ct.policyNames() {
		if err := ct.local.DeletePolicy(ctx, name); err != nil && !errors.Is(err, api.ErrNotFound) {
			ct.progress("cleanup: deleting policy %s: %v", name, err)
		}
	}
}

// check is one probe and what it should give.
type check struct {
	from   string // probe workload name; "" = the host
	fromID string // for messages
	to     *probeNode
	port   uint16
	proto  string
	allow  bool
}

func (c check) String() string {
	return fmt.Sprintf("%s -> %s on %s %d/%s", c.fromID, c.to.echo.Name, c.to.name(), c.port, c.proto)
}

// expect runs checks until each gives what it should or the timeout
// passes; it returns the first check that never did, and why.
func (ct *connTest) expect(ctx context.Context, checks []check) (int, error) {
	for _, c := range checks {
		if c.to.setupErr != nil {
			return len(checks), c.to.setupErr
		}
		deadline := time.Now().Add(ct.timeout)
		attempt := time.Now()
		for {
			res, err := ct.self.client.RunProbe(ctx, api.ProbeRequest{From: c.from, To: net.JoinHostPort(c.to.echo.IP, fmt.Sprint(c.port)),
				Protocol: c.proto, Timeout: api.Duration(1500 * time.Millisecond), Payload: "weft-connectivity-" + ct.run})
			if err != nil {
				return len(checks), fmt.Errorf("%s: %w", c, err)
			}
			if res.OK == c.allow {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				if c.allow {
					return len(checks), fmt.Errorf("%s: want the echo back, got %s%s", c, res.Error, ct.dropNote(ctx, c, attempt))
				}
				return len(checks), fmt.Errorf("%s: want it denied, but the echo came back (the policy does not apply)", c)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	return len(checks), nil
}

// dropNote names where and why the datapath dropped a failed check, from
// the flows of both ends.
func (ct *connTest) dropNote(ctx context.Context, c check, since time.Time) string {
	var notes []string
	for _, n := range []*probeNode{ct.self, c.to} {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_ = n.flows.Flows(cctx, api.FlowRequest{Last: 1, Since: since.Add(-time.Second),
			Filter: api.FlowFilter{ToIP: c.to.echo.IP, Port: c.port, Verdict: "dropped"}}, func(l api.FlowLine) error {
			if l.Flow != nil {
				notes = append(notes, fmt.Sprintf("dropped on %s (%s): %s", n.Name, l.Flow.Direction, l.Flow.Reason))
			}
			return nil
		})
		cancel()
		if c.to == ct.self {
			break
		}
	}
	if len(notes) == 0 {
		return " (no drop recorded by either datapath: the tunnel or the echo does not answer)"
	}
	return " (" + strings.Join(notes, "; ") + ")"
}

func (ct *connTest) record(name string, checks int, err error) {
	r := ScenarioResult{Name: name, Result: resultPass, Checks: checks}
	if err != nil {
		r.Result, r.Reason = resultFail, err.Error()
	}
	ct.report.Scenarios = append(ct.report.Scenarios, r)
	ct.progress("  %-20s %s", name, strings.ToUpper(r.Result))
}

func (ct *connTest) skip(name, why string) {
	ct.report.Scenarios = append(ct.report.Scenarios, ScenarioResult{Name: name, Result: resultSkip, Reason: why})
	ct.progress("  %-20s SKIP", name)
}

// pairs builds client -> echo checks to some nodes on both protocols.
func (ct *connTest) pairs(targets []*probeNode, from, fromID string, port uint16, allow bool) []check {
	var out []check
	for _, n := range targets {
		for _, proto := range []string{"tcp", "udp"} {
			out = append(out, check{from: from, fromID: fromID, to: n, port: port, proto: proto, allow: allow})
		}
	}
	return out
}

func (ct *connTest) runScenarios(ctx context.Context) {
	client := ct.clientW.Name
	// Nodes whose probe workload could not be placed fail the scenario of
	// their kind (same node, across sites...) with the reason; the other
	// scenarios run on the nodes that could, so each failure shows once.
	var sameNode, acrossNodes, acrossSites, nat, placed []*probeNode
	for _, n := range ct.nodes {
		if n.setupErr == nil {
			placed = append(placed, n)
		}
		switch {
		case n.Self:
			sameNode = append(sameNode, n)
		case n.nat:
			nat = append(nat, n)
		case n.sameSite:
			acrossNodes = append(acrossNodes, n)
		default:
			acrossSites = append(acrossSites, n)
		}
	}
	ct.progress("Scenarios:")
	baseline := func(name string, targets []*probeNode, why string) {
		if len(targets) == 0 {
			ct.skip(name, why)
			return
		}
		n, err := ct.expect(ctx, ct.pairs(targets, client, client, probePortA, true))
		ct.record(name, n, err)
	}
	baseline("same node", sameNode, "")
	baseline("across nodes", acrossNodes, "no other node on this node's site")
	baseline("across sites", acrossSites, "no node on another site (outside NAT)")
	baseline("behind NAT", nat, "no node is behind NAT (every node is seen at the address it announces)")
	hostChecks := ct.pairs(placed, "", "host "+ct.self.Name, probePortA, true)
	n, err := ct.expect(ctx, hostChecks)
	ct.record("host to workload", n, err)
	ct.encryption(ctx, append(append(acrossNodes, acrossSites...), nat...))
	baselineEnd := time.Now()

	targets := placed
	sel := fmt.Sprintf("{matchLabels: {weft-probe-run: %q, weft-probe-role: %q}}", ct.run, "echo")
	cli := fmt.Sprintf("{matchLabels: {weft-probe-run: %q, weft-probe-role: %q}}", ct.run, "client")
	names := ct.policyNames()

	ct.policyScenario(ctx, "ingress allow/deny", names[0], fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Policy
metadata: {name: %s}
spec:
  endpointSelector: %s
  ingress:
    - from: [%s]
      ports: [{port: %d, protocol: TCP}]
`, names[0], sel, cli, probePortA), append(ct.pairsTCP(targets, client, probePortA, true), ct.pairsTCP(targets, client, probePortB, false)...))

	ct.policyScenario(ctx, "egress allow/deny", names[1], fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Policy
metadata: {name: %s}
spec:
  endpointSelector: %s
  egress:
    - to: [%s]
      ports: [{port: %d, protocol: TCP}]
`, names[1], cli, sel, probePortA), append(ct.pairsTCP(targets, client, probePortA, true), ct.pairsTCP(targets, client, probePortB, false)...))

	ct.policyScenario(ctx, "deny beats allow", names[2], fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Policy
metadata: {name: %s}
spec:
  endpointSelector: %s
  ingress:
    - from: [%s]
  ingressDeny:
    - from: [%s]
      ports: [{port: %d, protocol: TCP}]
`, names[2], sel, cli, cli, probePortB), append(ct.pairsTCP(targets, client, probePortA, true), ct.pairsTCP(targets, client, probePortB, false)...))

	ct.unexpectedDrops(ctx, baselineEnd)
	ct.logErrors(ctx)
}

func (ct *connTest) pairsTCP(targets []*probeNode, from string, port uint16, allow bool) []check {
	var out []check
	for _, n := range targets {
		out = append(out, check{from: from, fromID: from, to: n, port: port, proto: "tcp", allow: allow})
	}
	return out
}

// policyScenario applies a policy, runs checks, and deletes it.
func (ct *connTest) policyScenario(ctx context.Context, name, policyName, doc string, checks []check) {
	if _, err := ct.local.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: policyName + ".yaml", Document: doc}); err != nil {
		ct.record(name, 0, fmt.Errorf("applying the scenario's policy: %w", err))
		return
	}
	n, err := ct.expect(ctx, checks)
	if derr := ct.local.DeletePolicy(ctx, policyName); derr != nil && err == nil {
		err = fmt.Errorf("deleting the scenario's policy: %w", derr)
	}
	ct.record(name, n, err)
	// Let the deletion reach every node before the next scenario.
	time.Sleep(500 * time.Millisecond)
}

// encryption sends a marker to remote echoes while this node watches its
// underlay: WireGuard packets must go by, the marker never in the clear.
func (ct *connTest) encryption(ctx context.Context, remote []*probeNode) {
	const name = "encryption on wire"
	var targets []*probeNode
	for _, n := range remote {
		if n.setupErr == nil {
			targets = append(targets, n)
		}
	}
	if len(targets) == 0 {
		if len(remote) == 0 {
			ct.skip(name, "no other node to send to")
		} else {
			ct.record(name, 0, remote[0].setupErr)
		}
		return
	}
	marker := "WEFT-CLEAR-" + ct.run + "-MARK"
	type wres struct {
		r   api.WireCheckResult
		err error
	}
	done := make(chan wres, 1)
	go func() {
		r, err := ct.local.WireCheck(ctx, api.WireCheckRequest{Marker: marker, Duration: api.Duration(2 * time.Second)})
		done <- wres{r, err}
	}()
	time.Sleep(200 * time.Millisecond) // the capture is open
	sent := 0
	for i := 0; i < 3; i++ {
		for _, n := range targets {
			for _, proto := range []string{"tcp", "udp"} {
				res, err := ct.local.RunProbe(ctx, api.ProbeRequest{From: ct.clientW.Name, To: net.JoinHostPort(n.echo.IP, fmt.Sprint(probePortA)),
					Protocol: proto, Timeout: api.Duration(500 * time.Millisecond), Payload: marker})
				if err == nil && res.OK {
					sent++
				}
			}
		}
	}
	w := <-done
	switch {
	case w.err != nil:
		ct.record(name, sent, fmt.Errorf("watching the underlay: %w", w.err))
	case sent == 0:
		ct.record(name, 0, errors.New("no probe crossed the mesh while watching the underlay"))
	case w.r.Cleartext > 0:
		ct.record(name, sent, fmt.Errorf("the marker crossed this node's underlay in the clear in %d packets: traffic between nodes is not encrypted", w.r.Cleartext))
	case w.r.Tunnel == 0:
		ct.record(name, sent, fmt.Errorf("%d probes crossed the mesh but no WireGuard packet was seen on the underlay (%d packets seen)", sent, w.r.Packets))
	default:
		ct.record(name, sent, nil)
	}
}

// unexpectedDrops looks for drops of probe traffic before any policy was
// applied: there should be none.
func (ct *connTest) unexpectedDrops(ctx context.Context, until time.Time) {
	const name = "no unexpected drops"
	ips := map[string]bool{ct.clientW.IP: true}
	for _, n := range ct.nodes {
		if n.echo.IP != "" {
			ips[n.echo.IP] = true
		}
	}
	var found []string
	var errs []string
	for _, n := range ct.nodes {
		if n.setupErr != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.flows.Flows(cctx, api.FlowRequest{Last: -1, Since: ct.start, Filter: api.FlowFilter{Verdict: "dropped"}}, func(l api.FlowLine) error {
			f := l.Flow
			if f == nil || f.Time.After(until) || !(ips[f.Source.IP] || ips[f.Destination.IP]) {
				return nil
			}
			found = append(found, fmt.Sprintf("%s -> %s:%d/%s dropped on %s (%s)", f.Source.IP, f.Destination.IP, f.Destination.Port, f.Protocol, f.Node, f.Reason))
			return nil
		})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", n.name(), err))
		}
	}
	switch {
	case len(found) > 0:
		if len(found) > 3 {
			found = append(found[:3], fmt.Sprintf("and %d more", len(found)-3))
		}
		ct.record(name, len(ct.nodes), fmt.Errorf("probe traffic was dropped with no policy applied: %s", strings.Join(found, "; ")))
	case len(errs) > 0:
		ct.record(name, len(ct.nodes), fmt.Errorf("could not read the flows of %s", strings.Join(errs, "; ")))
	default:
		ct.record(name, len(ct.nodes), nil)
	}
}

// logErrors asks every agent for the errors it logged during the test.
func (ct *connTest) logErrors(ctx context.Context) {
	const name = "no errors in logs"
	var problems []string
	for _, n := range ct.nodes {
		if n.setupErr != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		le, err := n.client.LogErrors(cctx, ct.start)
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: cannot read its log errors: %v", n.name(), err))
			continue
		}
		if le.Count > 0 {
			first := ""
			if len(le.Recent) > 0 {
				first = ": " + le.Recent[0]
			}
			problems = append(problems, fmt.Sprintf("%s logged %d errors%s", n.name(), le.Count, first))
		}
	}
	if len(problems) > 0 {
		ct.record(name, len(ct.nodes), errors.New(strings.Join(problems, "; ")))
		return
	}
	ct.record(name, len(ct.nodes), nil)
}

// printReport prints the scenario table and the failures' reasons.
func printReport(w io.Writer, r ConnectivityReport) {
	fmt.Fprintln(w)
	var rows [][]string
	for _, s := range r.Scenarios {
		rows = append(rows, []string{s.Name, strings.ToUpper(s.Result), fmt.Sprint(s.Checks), s.Reason})
	}
	_ = printTable(w, []string{"scenario", "result", "checks", "reason"}, rows)
	pass, fail, skip := 0, 0, 0
	for _, s := range r.Scenarios {
		switch s.Result {
		case resultPass:
			pass++
		case resultFail:
			fail++
		default:
			skip++
		}
	}
	fmt.Fprintf(w, "\n%d passed, %d failed, %d skipped\n", pass, fail, skip)
}
