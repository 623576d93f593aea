// Package connectivity is meshctl's end-to-end check of a running mesh
// (`meshctl connectivity test`): through the local agent's API it places a
// probe client on this node and an echo workload on every node, probes
// them in named scenarios (same node, across nodes, sites and clusters,
// behind NAT, from the host, under scenario policies, encryption on the
// wire), checks the flows and logs for surprises, and removes everything it
// made.
//
// The agents of a connected cluster (its own etcd and CA) accept only their
// own cluster's certificates, so this node's agent cannot ask them to place
// an echo workload: their nodes are checked with the health probe each
// agent answers (api.HealthProbePort), sent from this node through the
// tunnel between the clusters.
//
// The scenario policies are real policy documents (policies/*.yaml,
// embedded); see scenarios.go for how a run makes them its own.
package connectivity

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// Echo ports of the probe workloads. The scenario policies name them too
// (policies/*.yaml); a unit test checks they agree.
const (
	PortA = 7946
	PortB = 7947
)

// Scenario results.
const (
	Pass = "pass"
	Fail = "fail"
	Skip = "skip"
)

// ScenarioResult is one scenario's outcome (meshctl's -o json).
type ScenarioResult struct {
	Name   string `json:"name"`
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"`
	Checks int    `json:"checks"`
}

// Report is the whole run (meshctl's -o json).
type Report struct {
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
	local *api.Client
	self  *probeNode
	nodes []*probeNode // every node, self included
	// remote are the nodes of connected clusters: probed, never asked.
	remote  []api.Node
	clientW api.Endpoint
	run     string
	timeout time.Duration
	start   time.Time
	labels  func(role string) map[string]string
	report  Report
	out     io.Writer
	verbose bool
}

// Options are a run's settings.
type Options struct {
	// Timeout is how long one check may wait for the mesh to converge
	// (meshctl allows 1s to 5m).
	Timeout time.Duration
	// Nodes limits the test to these nodes (NAME or CLUSTER/NAME) and this
	// one; none means every node.
	Nodes []string
	// Progress, when set, gets a line per step and scenario, for a person
	// watching a test that takes a while; nil keeps quiet (-o json).
	Progress io.Writer
}

// Run runs the test through agent, the local node's agent (other nodes'
// agents are reached through it). Everything it made is removed before it
// returns, also when it fails or ctx ends. The error is for a test that
// could not start (no node list, no probe client); failed scenarios are in
// the report, Passed false.
func Run(ctx context.Context, agent *api.Client, opts Options) (Report, error) {
	var b [3]byte
	_, _ = rand.Read(b[:])
	ct := &connTest{local: agent, run: hex.EncodeToString(b[:]), timeout: opts.Timeout, start: time.Now(),
		out: opts.Progress, verbose: opts.Progress != nil}
	ct.labels = func(role string) map[string]string {
		return map[string]string{runLabel: ct.run, roleLabel: role}
	}
	ct.report.Run = ct.run
	if err := ct.setup(ctx, opts.Nodes); err != nil {
		ct.cleanup()
		return ct.report, err
	}
	ct.runScenarios(ctx)
	ct.cleanup()
	ct.report.Passed = true
	for _, s := range ct.report.Scenarios {
		if s.Result == Fail {
			ct.report.Passed = false
		}
	}
	return ct.report, nil
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
		if n.Remote {
			ct.remote = append(ct.remote, n)
			continue
		}
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
	if len(ct.remote) > 0 {
		ct.progress("Connectivity test %s: %d nodes, and %d of connected clusters (probed from here); placing probe workloads...", ct.run, len(ct.nodes), len(ct.remote))
	} else {
		ct.progress("Connectivity test %s: %d nodes; placing probe workloads...", ct.run, len(ct.nodes))
	}

	cw, err := ct.local.AddProbeWorkload(ctx, api.ProbeWorkloadRequest{Name: ct.workloadName("c"), Labels: ct.labels("client"), Ports: []uint16{PortA}})
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
				Name: ct.workloadName(fmt.Sprintf("e%d", i)), Labels: ct.labels("echo"), Ports: []uint16{PortA, PortB}})
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

// policyName is the name a scenario's policy gets in this run, so
// concurrent runs and the cleanup of an interrupted one never mix.
func (ct *connTest) policyName(ps policyScenario) string {
	return "probe-" + ct.run + "-" + strings.TrimSuffix(ps.file, ".yaml")
}

func (ct *connTest) deletePolicies(ctx context.Context) {
	for _, ps := range policyScenarios {
		name := ct.policyName(ps)
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
	r := ScenarioResult{Name: name, Result: Pass, Checks: checks}
	if err != nil {
		r.Result, r.Reason = Fail, err.Error()
	}
	ct.report.Scenarios = append(ct.report.Scenarios, r)
	ct.progress("  %-20s %s", name, strings.ToUpper(r.Result))
}

func (ct *connTest) skip(name, why string) {
	ct.report.Scenarios = append(ct.report.Scenarios, ScenarioResult{Name: name, Result: Skip, Reason: why})
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
	var sameNode, acrossNodes, acrossSites, nat, otherClusters, placed []*probeNode
	for _, n := range ct.nodes {
		if n.setupErr == nil {
			placed = append(placed, n)
		}
		switch {
		case n.Self:
			sameNode = append(sameNode, n)
		case n.Cluster != ct.self.Cluster:
			// Another cluster sharing this etcd (shared mode): its
			// agents answer this one, so it has an echo workload.
			otherClusters = append(otherClusters, n)
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
		n, err := ct.expect(ctx, ct.pairs(targets, client, client, PortA, true))
		ct.record(name, n, err)
	}
	baseline("same node", sameNode, "")
	baseline("across nodes", acrossNodes, "no other node on this node's site")
	baseline("across sites", acrossSites, "no node on another site (outside NAT)")
	baseline("behind NAT", nat, "no node is behind NAT (every node is seen at the address it announces)")
	ct.acrossClusters(ctx, otherClusters)
	hostChecks := ct.pairs(placed, "", "host "+ct.self.Name, PortA, true)
	n, err := ct.expect(ctx, hostChecks)
	ct.record("host to workload", n, err)
	ct.encryption(ctx, append(append(append(acrossNodes, acrossSites...), nat...), otherClusters...))
	baselineEnd := time.Now()

	for _, ps := range policyScenarios {
		ct.policyScenario(ctx, ps, append(ct.pairsTCP(placed, client, PortA, ps.allowA), ct.pairsTCP(placed, client, PortB, ps.allowB)...))
	}

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

// policyScenario applies the scenario's policy, runs checks, and deletes
// it.
func (ct *connTest) policyScenario(ctx context.Context, ps policyScenario, checks []check) {
	name := ct.policyName(ps)
	doc, err := renderPolicy(ps.file, name, ct.run)
	if err != nil {
		ct.record(ps.name, 0, err)
		return
	}
	if _, err := ct.local.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: name + ".yaml", Document: string(doc)}); err != nil {
		ct.record(ps.name, 0, fmt.Errorf("applying the scenario's policy: %w", err))
		return
	}
	n, err := ct.expect(ctx, checks)
	if derr := ct.local.DeletePolicy(ctx, name); derr != nil && err == nil {
		err = fmt.Errorf("deleting the scenario's policy: %w", derr)
	}
	ct.record(ps.name, n, err)
	// Let the deletion reach every node before the next scenario.
	time.Sleep(500 * time.Millisecond)
}

// nodeProbePayload is a health probe (api.HealthProbeMagic, then 8 bytes)
// carrying the run id: a connected cluster's agent echoes it, and it is the
// marker the encryption scenario looks for on the wire.
func nodeProbePayload(run string) string {
	p := api.HealthProbeMagic + "c" + run + strings.Repeat("k", api.HealthProbeLen)
	return p[:api.HealthProbeLen]
}

// probeNodeFromHere sends one health probe from this node (the host) to
// a node's mesh address.
func (ct *connTest) probeNodeFromHere(ctx context.Context, n api.Node, timeout time.Duration) (api.ProbeResult, error) {
	return ct.local.RunProbe(ctx, api.ProbeRequest{To: net.JoinHostPort(n.MeshIP, strconv.Itoa(api.HealthProbePort)),
		Protocol: "udp", Timeout: api.Duration(timeout), Payload: nodeProbePayload(ct.run)})
}

// acrossClusters checks the nodes of other clusters: the echo workloads of
// those sharing this etcd, as for any node, then each node of a connected
// cluster, whose agent answers a health probe from this node through the
// tunnel between the clusters (its agent cannot be asked for a workload).
func (ct *connTest) acrossClusters(ctx context.Context, shared []*probeNode) {
	const name = "across clusters"
	if len(shared) == 0 && len(ct.remote) == 0 {
		ct.skip(name, "no node of another cluster (`meshctl cluster connect` connects one)")
		return
	}
	client := ct.clientW.Name
	n, err := ct.expect(ctx, ct.pairs(shared, client, client, PortA, true))
	if err == nil {
		var m int
		m, err = ct.expectNodes(ctx, ct.remote)
		n += m
	}
	ct.record(name, n, err)
}

// expectNodes probes each node from here until it answers or the timeout
// passes; it returns the first node that never did, and why.
func (ct *connTest) expectNodes(ctx context.Context, nodes []api.Node) (int, error) {
	for _, n := range nodes {
		what := fmt.Sprintf("host %s -> node %s/%s (connected cluster) at %s udp/%d", ct.self.Name, n.Cluster, n.Name, n.MeshIP, api.HealthProbePort)
		if n.MeshIP == "" {
			return len(nodes), fmt.Errorf("node %s/%s of the connected cluster %s announces no mesh address (see `meshctl nodes`)", n.Cluster, n.Name, n.Cluster)
		}
		deadline := time.Now().Add(ct.timeout)
		for {
			res, err := ct.probeNodeFromHere(ctx, n, 1500*time.Millisecond)
			if err != nil {
				return len(nodes), fmt.Errorf("%s: %w", what, err)
			}
			if res.OK {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return len(nodes), fmt.Errorf("%s: want its agent's health probe echo, got %s (see `meshctl status` for the peer's handshake and `meshctl cluster status` for the connection)", what, res.Error)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	return len(nodes), nil
}

// encryption sends a marker to remote echoes, and as a health probe to the
// nodes of connected clusters, while this node watches its underlay:
// WireGuard packets must go by, the marker never in the clear.
func (ct *connTest) encryption(ctx context.Context, remote []*probeNode) {
	const name = "encryption on wire"
	var targets []*probeNode
	for _, n := range remote {
		if n.setupErr == nil {
			targets = append(targets, n)
		}
	}
	var nodes []api.Node
	for _, n := range ct.remote {
		if n.MeshIP != "" {
			nodes = append(nodes, n)
		}
	}
	if len(targets) == 0 && len(nodes) == 0 {
		if len(remote) == 0 {
			ct.skip(name, "no other node to send to")
		} else {
			ct.record(name, 0, remote[0].setupErr)
		}
		return
	}
	// One marker for both kinds of probe: the echo workloads send back
	// anything, a node's agent only a health probe.
	marker := nodeProbePayload(ct.run)
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
				res, err := ct.local.RunProbe(ctx, api.ProbeRequest{From: ct.clientW.Name, To: net.JoinHostPort(n.echo.IP, fmt.Sprint(PortA)),
					Protocol: proto, Timeout: api.Duration(500 * time.Millisecond), Payload: marker})
				if err == nil && res.OK {
					sent++
				}
			}
		}
		for _, n := range nodes {
			if res, err := ct.probeNodeFromHere(ctx, n, 500*time.Millisecond); err == nil && res.OK {
				sent++
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
