// Command join measures, in a lab of network namespaces with the real
// binaries, the two times a user of a mesh notices:
//
//   - join-to-reachable: from the start of `meshctl join` on a new node
//     (token exchange and agent start included) until the new node gets the
//     first answer to a ping it sends to the seed's mesh address, on another
//     site; with where the time goes (meshctl's steps, the agent's startup
//     steps, the first WireGuard handshake);
//   - policy propagation: `meshctl policy apply` (which waits, by default,
//     until every node reports the change compiled into its datapath) from
//     its start until it returns, and whether real traffic agrees: a client
//     workload sends new UDP flows to a server workload on each of 10 nodes,
//     the change flips them from answered to dropped (or back), and no probe
//     sent after apply returned may still get the old verdict.
//
// It needs root and the binaries built by `make build`; run it with
// `make bench-join`. The lab and everything in it are removed at the end.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftmesh/weft/internal/lab"
)

// anchorJoin is the anchor of the join figure: Tailscale measured on this
// machine (real tailscaled nodes and Tailscale's test control server on one
// LAN), from daemon start to the first ping answered.
const anchorJoin = 250 * time.Millisecond

// Goals from the issue.
const (
	goalJoin   = 250 * time.Millisecond
	goalPolicy = 100 * time.Millisecond
)

const probePort = 7000

func main() {
	var (
		bin      = flag.String("bin", "bin", "directory holding meshctl and weft-agent")
		joins    = flag.Int("joins", 10, "nodes to join (one join each), and the nodes policy propagation is measured on")
		changes  = flag.Int("changes", 10, "policy changes to measure")
		interval = flag.Duration("probe-interval", 5*time.Millisecond, "time between two rounds of policy probes")
		pingIvl  = flag.Duration("ping-interval", 2*time.Millisecond, "time between two pings of a joining node")
		verbose  = flag.Bool("v", false, "log the lab's progress")
		keepLogs = flag.String("logs", "", "copy every process's output into this directory before the lab goes")
	)
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-join needs root (network namespaces, eBPF, WireGuard): sudo make bench-join")
		os.Exit(1)
	}
	if *joins < 1 || *joins > 40 || *changes < 1 {
		fmt.Fprintln(os.Stderr, "-joins must be 1..40 and -changes at least 1")
		os.Exit(2)
	}
	abs, err := filepath.Abs(*bin)
	if err == nil {
		for _, b := range []string{"meshctl", "weft-agent"} {
			if _, err = os.Stat(filepath.Join(abs, b)); err != nil {
				err = fmt.Errorf("%w (run make build first)", err)
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-join:", err)
		os.Exit(1)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	b := &bench{bin: abs, log: log, joins: *joins, interval: *interval, pingInterval: *pingIvl, logsDir: *keepLogs}
	err = b.run(ctx, *changes)
	b.teardown()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-join:", err)
		os.Exit(1)
	}
}

type bench struct {
	bin          string
	log          *slog.Logger
	joins        int
	interval     time.Duration
	pingInterval time.Duration
	logsDir      string

	lab     *lab.Lab
	short   string // unique part of device names
	pinRoot string
	token   string
	nodes   map[string]*node
	seedIP  net.IP
}

type node struct {
	name, netns, dir string
	proc             *lab.Process
	meshIP           net.IP // IPv4 mesh address, once known
	site             string
	nat              bool
}

func (b *bench) teardown() {
	if b.lab == nil {
		return
	}
	if b.logsDir != "" {
		_ = os.MkdirAll(b.logsDir, 0o755)
		for _, n := range b.nodes {
			if n.proc != nil {
				_ = os.WriteFile(filepath.Join(b.logsDir, n.name+".log"), []byte(n.proc.Output()), 0o644)
			}
		}
	}
	if err := b.lab.Down(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-join: removing the lab:", err)
	}
	_ = os.RemoveAll(b.pinRoot)
	for _, n := range b.nodes {
		_ = os.RemoveAll(n.dir)
	}
}

// nodeNames: the seed, then j1..jN.
func joinName(i int) string   { return fmt.Sprintf("j%d", i+1) }
func serverName(i int) string { return fmt.Sprintf("s%d", i+1) }

// spec: the seed (and the probing client workload) on site1; the joining
// nodes alternate between a public site2 and site3 behind NAT, each with a
// server workload for the policy probes.
func (b *bench) spec() *lab.Spec {
	s := &lab.Spec{Name: "bj" + b.short, Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed", Workloads: []lab.WorkloadSpec{{Name: "cli"}}}}},
		{Name: "site2"},
		{Name: "site3", NAT: true},
	}}
	for i := 0; i < b.joins; i++ {
		site := 1 + i%2
		s.Sites[site].Nodes = append(s.Sites[site].Nodes, lab.NodeSpec{Name: joinName(i), Workloads: []lab.WorkloadSpec{{Name: serverName(i)}}})
	}
	return s
}

func (b *bench) run(ctx context.Context, changes int) error {
	b.short = strconv.FormatInt(int64(os.Getpid()), 36)
	b.nodes = map[string]*node{}
	b.pinRoot = "/sys/fs/bpf/weft-bench-" + b.short
	fmt.Printf("bench-join: lab of %d nodes (seed on site1; joining nodes alternate between site2 and site3 behind NAT)\n", b.joins+1)
	l, err := lab.Up(ctx, b.spec(), b.log)
	if err != nil {
		return fmt.Errorf("bringing up the lab: %w", err)
	}
	b.lab = l
	if err := b.up(ctx); err != nil {
		return err
	}

	fmt.Printf("\n### Join to reachable (%d joins)\n", b.joins)
	fmt.Println("Each node runs `meshctl join --foreground` (token exchange, configuration, agent start); it pings the seed's mesh address (site1) every", b.pingInterval, "from the moment join starts; the figure is the first echo reply.")
	var results []joinResult
	for i := 0; i < b.joins; i++ {
		r, err := b.join(ctx, joinName(i))
		if err != nil {
			return err
		}
		results = append(results, r)
		fmt.Printf("  %-4s %-6s reachable after %7.1f ms   (agent started at %6.1f ms, node registered at %6.1f ms, agent ready at %6.1f ms)\n",
			r.node, r.site, ms(r.reach), ms(r.agentStart), ms(r.registered), ms(r.ready))
	}
	b.reportJoins(results)

	fmt.Printf("\n### Policy propagation (%d changes, enforced on %d nodes)\n", changes, b.joins)
	prop, err := b.policyBench(ctx, changes)
	if err != nil {
		return err
	}
	b.reportPolicy(prop)
	return nil
}

func (b *bench) agentFlags(n *node) []string {
	return []string{"--", "--wg-interface", "wb" + b.short + "-" + n.name, "--bpf-pin-path", b.pinRoot, "--log-level", "debug"}
}

func (b *bench) procFlags(n *node) []string {
	return []string{"--socket", filepath.Join(n.dir, "agent.sock"), "--state-dir", n.dir, "--config-file", filepath.Join(n.dir, "agent.yaml"),
		"--agent-binary", filepath.Join(b.bin, "weft-agent"), "--foreground"}
}

func (b *bench) newNode(name string) (*node, error) {
	ln := b.lab.Node(name)
	if ln == nil {
		return nil, fmt.Errorf("the lab has no node %s", name)
	}
	dir, err := os.MkdirTemp("", "weft-bench-join-"+name+"-")
	if err != nil {
		return nil, err
	}
	n := &node{name: name, netns: ln.Netns, dir: dir, site: ln.Site, nat: ln.NAT}
	b.nodes[name] = n
	return n, nil
}

var tokenRE = regexp.MustCompile(`weft1\.[A-Za-z0-9_-]+`)

// up starts the seed with `meshctl up` and learns its mesh address.
func (b *bench) up(ctx context.Context) error {
	n, err := b.newNode("seed")
	if err != nil {
		return err
	}
	ln := b.lab.Node("seed")
	args := append([]string{filepath.Join(b.bin, "meshctl"), "up", "--name", "seed", "--advertise-address", ln.Underlay.String(), "--token-max-uses", "1000"}, b.procFlags(n)...)
	args = append(args, b.agentFlags(n)...)
	t0 := time.Now()
	n.proc, err = b.lab.Start(n.netns, "agent-seed", args...)
	if err != nil {
		return err
	}
	if err := waitOutput(ctx, n.proc, tokenRE, 90*time.Second); err != nil {
		return fmt.Errorf("meshctl up: %w", err)
	}
	b.token = tokenRE.FindString(n.proc.Output())
	var st struct {
		MeshIP string `json:"meshIP"`
	}
	if err := b.meshctlJSON(ctx, "seed", &st, "status"); err != nil {
		return err
	}
	b.seedIP = net.ParseIP(st.MeshIP).To4()
	if b.seedIP == nil {
		return fmt.Errorf("seed status has no IPv4 mesh address: %q", st.MeshIP)
	}
	n.meshIP = b.seedIP
	fmt.Printf("seed up in %.0f ms (embedded etcd, CA, join service), mesh address %s\n", ms(time.Since(t0)), b.seedIP)
	return nil
}

func waitOutput(ctx context.Context, p *lab.Process, re *regexp.Regexp, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if re.MatchString(p.Output()) {
			return nil
		}
		select {
		case <-p.Done():
			if re.MatchString(p.Output()) {
				return nil
			}
			return fmt.Errorf("the process exited (%v):\n%s", p.Err(), p.Output())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %q:\n%s", timeout, re, p.Output())
		}
	}
}

// meshctl runs meshctl against a node's agent, inside its namespace.
func (b *bench) meshctl(ctx context.Context, node string, args ...string) ([]byte, error) {
	n := b.nodes[node]
	full := append([]string{"env", "WEFT_SOCKET=" + filepath.Join(n.dir, "agent.sock"), filepath.Join(b.bin, "meshctl")}, args...)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return b.lab.Exec(ctx, n.netns, full...)
}

func (b *bench) meshctlJSON(ctx context.Context, node string, v any, args ...string) error {
	out, err := b.meshctl(ctx, node, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("meshctl %s -o json: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// ---- join to reachable ----

type joinResult struct {
	node, site string
	reach      time.Duration // first echo reply, from the start of meshctl join
	agentStart time.Duration // the agent's first log line
	registered time.Duration // the node record is written
	ready      time.Duration // the agent logs "agent ready"
	handshake  time.Duration // the seed's last handshake with the node (first one)
	steps      map[string]time.Duration
	order      []string // steps in the order they were logged
	pairs      []pairResult
}

// pairResult is one direction of one pair with the joining node: the
// first ping from -> to answered, from the start of meshctl join.
type pairResult struct {
	from, to       string
	natFrom, natTo bool
	reach          time.Duration
}

type pairPing struct {
	from, to *node
	p        *pinger
}

// pairInterval is the ping interval of the all-pairs measurement: coarser
// than the seed ping, since up to 2N pingers run at once.
const pairInterval = 5 * time.Millisecond

// goalPairs is the bound on the all-pairs p99.
const goalPairs = time.Second

var (
	stepRE      = regexp.MustCompile(`(?m)^(?:time=(\S+) level=\S+ msg="startup step done" |meshctl timing )step="([^"]+)" took=(\S+)`)
	startLineRE = regexp.MustCompile(`(?m)^time=(\S+) level=INFO msg="starting weft-agent"`)
	readyLineRE = regexp.MustCompile(`(?m)^time=(\S+) level=INFO msg="agent ready"`)
	runningRE   = regexp.MustCompile(`The agent is running as`)
	readyIPRE   = regexp.MustCompile(`msg="agent ready" meshIP=(\S+)`)
)

func (b *bench) join(ctx context.Context, name string) (joinResult, error) {
	n, err := b.newNode(name)
	if err != nil {
		return joinResult{}, err
	}
	r := joinResult{node: name, site: b.lab.Node(name).Site, steps: map[string]time.Duration{}}
	p, err := newPinger(b.lab, n.netns, b.seedIP)
	if err != nil {
		return r, err
	}
	defer p.close()
	// Every pair with the new node, both ways: the new node pings every
	// node already in the mesh from the start; every node pings the new
	// one from the moment its mesh address is known (the agent logs it
	// when ready), so that direction is an upper bound.
	var outs []*pairPing
	for _, o := range b.nodes {
		if o == n || o.meshIP == nil {
			continue
		}
		pp, err := newPinger(b.lab, n.netns, o.meshIP)
		if err != nil {
			return r, err
		}
		defer pp.close()
		outs = append(outs, &pairPing{from: n, to: o, p: pp})
	}
	args := append([]string{filepath.Join(b.bin, "meshctl"), "join", b.token, "--name", name, "--timings"}, b.procFlags(n)...)
	args = append(args, b.agentFlags(n)...)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t0 := time.Now()
	go p.run(pctx, b.pingInterval)
	for _, pp := range outs {
		go pp.p.run(pctx, pairInterval)
	}
	n.proc, err = b.lab.Start(n.netns, "agent-"+name, args...)
	if err != nil {
		return r, err
	}
	select {
	case at := <-p.first:
		r.reach = at.Sub(t0)
	case <-n.proc.Done():
		return r, fmt.Errorf("meshctl join on %s exited: %v\n%s", name, n.proc.Err(), n.proc.Output())
	case <-time.After(60 * time.Second):
		return r, fmt.Errorf("%s: no ping answered within 60s:\n%s\n%s", name, n.proc.Output(), b.wgShow(ctx))
	case <-ctx.Done():
		return r, ctx.Err()
	}
	if err := waitOutput(ctx, n.proc, readyIPRE, 60*time.Second); err != nil {
		return r, fmt.Errorf("meshctl join on %s: %w", name, err)
	}
	n.meshIP = net.ParseIP(readyIPRE.FindStringSubmatch(n.proc.Output())[1]).To4()
	if n.meshIP == nil {
		return r, fmt.Errorf("%s logged no IPv4 mesh address when ready", name)
	}
	var ins []*pairPing
	for _, o := range b.nodes {
		if o == n || o.meshIP == nil {
			continue
		}
		pg, err := newPinger(b.lab, o.netns, n.meshIP)
		if err != nil {
			return r, err
		}
		defer pg.close()
		ins = append(ins, &pairPing{from: o, to: n, p: pg})
		go pg.run(pctx, pairInterval)
	}
	for _, pp := range append(outs, ins...) {
		select {
		case at := <-pp.p.first:
			r.pairs = append(r.pairs, pairResult{from: pp.from.name, to: pp.to.name, natFrom: pp.from.nat, natTo: pp.to.nat, reach: at.Sub(t0)})
		case <-time.After(30 * time.Second):
			return r, fmt.Errorf("%s -> %s: no ping answered within 30s of %s's join:\n%s", pp.from.name, pp.to.name, name, b.wgShow(ctx))
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	cancel()
	if err := waitOutput(ctx, n.proc, runningRE, 60*time.Second); err != nil {
		return r, fmt.Errorf("meshctl join on %s: %w", name, err)
	}
	out := n.proc.Output()
	for _, m := range stepRE.FindAllStringSubmatch(out, -1) {
		d, err := time.ParseDuration(m[3])
		if err != nil {
			continue
		}
		if _, dup := r.steps[m[2]]; !dup {
			r.order = append(r.order, m[2])
		}
		r.steps[m[2]] = d
		if m[2] == "register node" && m[1] != "" {
			if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				r.registered = at.Sub(t0)
			}
		}
	}
	if m := startLineRE.FindStringSubmatch(out); m != nil {
		if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
			r.agentStart = at.Sub(t0)
		}
	}
	if m := readyLineRE.FindStringSubmatch(out); m != nil {
		if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
			r.ready = at.Sub(t0)
		}
	}
	var st struct {
		Peers []struct {
			Node          string    `json:"node"`
			LastHandshake time.Time `json:"lastHandshake"`
		} `json:"peers"`
	}
	if err := b.meshctlJSON(ctx, "seed", &st, "status"); err == nil {
		for _, pe := range st.Peers {
			if pe.Node == name && !pe.LastHandshake.IsZero() {
				r.handshake = pe.LastHandshake.Sub(t0)
			}
		}
	}
	// Let the mesh settle (every node adds the new peer) before the next.
	time.Sleep(300 * time.Millisecond)
	return r, nil
}

// wgShow describes every node's WireGuard device, for a failure report.
func (b *bench) wgShow(ctx context.Context) string {
	var sb strings.Builder
	for name, n := range b.nodes {
		out, _ := b.lab.Exec(ctx, n.netns, "wg", "show", "wb"+b.short+"-"+name)
		routes, _ := b.lab.Exec(ctx, n.netns, "ip", "route")
		fmt.Fprintf(&sb, "--- %s\n%s%s", name, out, routes)
	}
	return sb.String()
}

// pinger sends ICMP echo requests from a namespace and reports when the
// first reply from dst arrives.
type pinger struct {
	conn  net.PacketConn
	dst   *net.IPAddr
	id    uint16
	first chan time.Time
}

func newPinger(l *lab.Lab, netns string, dst net.IP) (*pinger, error) {
	c, err := l.ListenPacket(netns, "ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("ICMP socket in %s: %w", netns, err)
	}
	p := &pinger{conn: c, dst: &net.IPAddr{IP: dst}, id: uint16(os.Getpid()) ^ uint16(time.Now().UnixNano()), first: make(chan time.Time, 1)}
	go p.read()
	return p, nil
}

func (p *pinger) close() { _ = p.conn.Close() }

func (p *pinger) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for seq := uint16(0); ; seq++ {
		msg := make([]byte, 16)
		msg[0] = 8 // echo request
		binary.BigEndian.PutUint16(msg[4:], p.id)
		binary.BigEndian.PutUint16(msg[6:], seq)
		binary.BigEndian.PutUint64(msg[8:], uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
		_, _ = p.conn.WriteTo(msg, p.dst) // fails until a route exists: that is the point
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *pinger) read() {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		now := time.Now()
		ip, ok := from.(*net.IPAddr)
		if !ok || !ip.IP.Equal(p.dst.IP) || n < 8 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:]) != p.id {
			continue
		}
		select {
		case p.first <- now:
		default:
		}
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func (b *bench) reportJoins(rs []joinResult) {
	var reach []time.Duration
	for _, r := range rs {
		reach = append(reach, r.reach)
	}
	p50 := percentile(reach, 50)
	fmt.Printf("\njoin-to-reachable over %d joins: p50 %.1f ms, p90 %.1f ms, min %.1f ms, max %.1f ms\n",
		len(rs), ms(p50), ms(percentile(reach, 90)), ms(percentile(reach, 0)), ms(percentile(reach, 100)))
	fmt.Printf("  vs the anchor (Tailscale, %v from daemon start on this machine): %.2fx the anchor's time; goal p50 <= %v: %s\n",
		anchorJoin, float64(p50)/float64(anchorJoin), goalJoin, metOrNot(p50 <= goalJoin))
	b.reportPairs(rs)
	fmt.Println("\nWhere the time goes (medians over the joins; times from the start of meshctl join):")
	milestones := []struct {
		name string
		get  func(joinResult) time.Duration
	}{
		{"agent process logs its first line", func(r joinResult) time.Duration { return r.agentStart }},
		{"node record written (peers can add it)", func(r joinResult) time.Duration { return r.registered }},
		{"agent ready (logs \"agent ready\")", func(r joinResult) time.Duration { return r.ready }},
		{"first handshake with the seed (seed's view)", func(r joinResult) time.Duration { return r.handshake }},
		{"first ping answered", func(r joinResult) time.Duration { return r.reach }},
	}
	for _, m := range milestones {
		var ds []time.Duration
		for _, r := range rs {
			if d := m.get(r); d != 0 {
				ds = append(ds, d)
			}
		}
		if len(ds) > 0 {
			fmt.Printf("  at %7.1f ms  %s\n", ms(percentile(ds, 50)), m.name)
		}
	}
	fmt.Println("Step durations (medians; the agent's steps may overlap, see docs/benchmarks.md):")
	var order []string
	seen := map[string]bool{}
	for _, r := range rs {
		for _, s := range r.order {
			if !seen[s] {
				seen[s] = true
				order = append(order, s)
			}
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return stepRank(order[i]) < stepRank(order[j]) })
	for _, s := range order {
		var ds []time.Duration
		for _, r := range rs {
			if d, ok := r.steps[s]; ok {
				ds = append(ds, d)
			}
		}
		who := "agent  "
		if isMeshctlStep(s) {
			who = "meshctl"
		}
		fmt.Printf("  %s %-45s %7.1f ms\n", who, s, ms(percentile(ds, 50)))
	}
}

func isMeshctlStep(s string) bool {
	return s == "join service exchange" || s == "write credentials and configuration" || s == "start the agent and wait until it is ready"
}

// stepRank orders steps: meshctl's first, then the agent's as they appear.
func stepRank(s string) int {
	switch s {
	case "join service exchange":
		return 0
	case "write credentials and configuration":
		return 1
	case "start the agent and wait until it is ready":
		return 2
	}
	return 3
}

// ---- policy propagation ----

type propResult struct {
	change     int
	allow      bool
	applyTook  time.Duration // meshctl policy apply --wait, start to return: enforced on every node
	slowest    time.Duration // the slowest node's own report (apply's "took")
	fromStart  time.Duration // last node enforcing by the probes, from apply's start
	fromReturn time.Duration // last node enforcing by the probes, from apply returning
	perNode    []time.Duration
	stale      int // nodes whose probes never flipped
	// oldAfter counts nodes that gave the old verdict to a probe sent after
	// apply returned: what --wait promises never happens.
	oldAfter int
}

// applyJSON is what `meshctl policy apply -o json` prints that the bench
// reads.
type applyJSON struct {
	Enforcement *struct {
		Complete bool `json:"complete"`
		Nodes    []struct {
			Node     string `json:"node"`
			Enforced bool   `json:"enforced"`
			Took     string `json:"took"`
		} `json:"nodes"`
	} `json:"enforcement"`
}

const policyTmpl = `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: bench-prop}
spec:
  endpointSelector: {matchLabels: {app: bench-srv}}
  ingress:
    - from: [{matchLabels: {app: bench-cli}}]
      ports: [{port: %d, protocol: UDP}]
`

func (b *bench) policyBench(ctx context.Context, changes int) ([]propResult, error) {
	var cliIP net.IP
	var srvIPs []net.IP
	addEP := func(workload, labels string) (net.IP, error) {
		w := b.lab.Workload(workload)
		var ep struct {
			IP string `json:"ip"`
		}
		if err := b.meshctlJSON(ctx, w.Node, &ep, "endpoint", "add", "--netns", w.Netns, "--labels", labels); err != nil {
			return nil, fmt.Errorf("endpoint add %s: %w", workload, err)
		}
		return net.ParseIP(ep.IP).To4(), nil
	}
	var err error
	if cliIP, err = addEP("cli", "app=bench-cli"); err != nil {
		return nil, err
	}
	for i := 0; i < b.joins; i++ {
		ip, err := addEP(serverName(i), "app=bench-srv")
		if err != nil {
			return nil, err
		}
		srvIPs = append(srvIPs, ip)
		pc, err := b.lab.ListenPacket(b.lab.Workload(serverName(i)).Netns, "udp4", net.JoinHostPort(ip.String(), strconv.Itoa(probePort)))
		if err != nil {
			return nil, err
		}
		defer pc.Close()
		go echo(pc)
	}
	dir, err := os.MkdirTemp("", "weft-bench-policy-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	allowFile, denyFile := filepath.Join(dir, "allow.yaml"), filepath.Join(dir, "deny.yaml")
	// "deny" opens another port: the servers stay isolated, the probes' port
	// is no longer allowed.
	if err := os.WriteFile(allowFile, fmt.Appendf(nil, policyTmpl, probePort), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(denyFile, fmt.Appendf(nil, policyTmpl, probePort+1), 0o644); err != nil {
		return nil, err
	}
	pr := &prober{lab: b.lab, netns: b.lab.Workload("cli").Netns, src: cliIP, targets: srvIPs, nextPort: 20000}
	// Start allowed everywhere: apply, then wait for every server to answer.
	if out, err := b.meshctl(ctx, "seed", "policy", "apply", "-f", allowFile); err != nil {
		return nil, fmt.Errorf("policy apply: %w: %s", err, out)
	}
	if err := pr.waitAll(ctx, true, 30*time.Second); err != nil {
		return nil, fmt.Errorf("before the first change: %w", err)
	}
	fmt.Printf("A client workload on the seed sends a new UDP flow (fresh source port) to a server workload on each of the %d joined nodes every %v;\n", b.joins, b.interval)
	fmt.Println("each change alternates the policy between allowing and not allowing that port; a node enforces the change from the first round after which all its probes have the new outcome.")
	fmt.Println("apply runs with --wait (the default): it returns once every node reports the change enforced.")
	var res []propResult
	allow := true
	for c := 0; c < changes; c++ {
		allow = !allow
		file := denyFile
		if allow {
			file = allowFile
		}
		r, err := b.change(ctx, pr, c+1, allow, file)
		if err != nil {
			return nil, err
		}
		res = append(res, r)
		verb := "deny "
		if allow {
			verb = "allow"
		}
		fmt.Printf("  change %2d (%s): apply --wait took %6.1f ms (slowest node's report %6.1f ms); probes: every node enforcing %6.1f ms after apply started, %6.1f ms after it returned%s%s\n",
			r.change, verb, ms(r.applyTook), ms(r.slowest), ms(r.fromStart), ms(r.fromReturn), staleNote(r.stale), oldNote(r.oldAfter))
		time.Sleep(200 * time.Millisecond)
	}
	return res, nil
}

func oldNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("; %d nodes gave the OLD verdict after apply returned", n)
}

func staleNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("; %d nodes never flipped", n)
}

func echo(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// change applies one policy change while probing, and finds when each
// node started enforcing it.
func (b *bench) change(ctx context.Context, pr *prober, idx int, allow bool, file string) (propResult, error) {
	r := propResult{change: idx, allow: allow}
	const maxWindow = 4 * time.Second
	rounds := int(maxWindow/b.interval) + 1
	run, err := pr.start(rounds)
	if err != nil {
		return r, err
	}
	defer run.close()
	go run.send(ctx, b.interval)
	time.Sleep(50 * time.Millisecond) // rounds under the old policy
	t0 := time.Now()
	out, err := b.meshctl(ctx, "seed", "policy", "apply", "-f", file, "--wait", "-o", "json")
	tRet := time.Now()
	if err != nil {
		return r, fmt.Errorf("policy apply --wait: %w: %s", err, out)
	}
	r.applyTook = tRet.Sub(t0)
	var res applyJSON
	if err := json.Unmarshal(out, &res); err != nil || res.Enforcement == nil || !res.Enforcement.Complete {
		return r, fmt.Errorf("policy apply --wait did not report every node enforcing (%v): %s", err, out)
	}
	for _, n := range res.Enforcement.Nodes {
		if d, err := time.ParseDuration(n.Took); err == nil && d > r.slowest {
			r.slowest = d
		}
	}
	// Probe until every target has shown the new outcome for a while.
	deadline := time.Now().Add(maxWindow - 100*time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if run.settled(allow, 100*time.Millisecond) {
			time.Sleep(100 * time.Millisecond)
			break
		}
	}
	run.stop()
	time.Sleep(150 * time.Millisecond) // late replies
	flips := run.flips(allow, t0)
	r.oldAfter = run.oldAfter(allow, tRet)
	var last time.Time
	for _, f := range flips {
		if f.IsZero() {
			r.stale++
			continue
		}
		r.perNode = append(r.perNode, f.Sub(tRet))
		if f.After(last) {
			last = f
		}
	}
	r.fromReturn = last.Sub(tRet)
	r.fromStart = last.Sub(t0)
	return r, nil
}

// prober sends UDP probes from the client workload to every server.
type prober struct {
	lab      *lab.Lab
	netns    string
	src      net.IP
	targets  []net.IP
	nextPort int
}

// probeRun is one measurement: rounds of probes, each from its own socket
// (its own source port, never reused in the run, so connection tracking
// never lets a probe through on an earlier flow's verdict).
type probeRun struct {
	p       *prober
	socks   []net.PacketConn
	mu      sync.Mutex
	sent    []time.Time   // by round
	replied [][]time.Time // by round, target
	stopped chan struct{}
	once    sync.Once
}

func (pr *prober) start(rounds int) (*probeRun, error) {
	run := &probeRun{p: pr, stopped: make(chan struct{})}
	for i := 0; i < rounds; i++ {
		if pr.nextPort > 60000 {
			pr.nextPort = 20000
		}
		c, err := pr.lab.ListenPacket(pr.netns, "udp4", net.JoinHostPort(pr.src.String(), strconv.Itoa(pr.nextPort)))
		pr.nextPort++
		if err != nil {
			run.close()
			return nil, fmt.Errorf("probe socket: %w", err)
		}
		run.socks = append(run.socks, c)
	}
	run.replied = make([][]time.Time, rounds)
	for i := range run.replied {
		run.replied[i] = make([]time.Time, len(pr.targets))
	}
	for i, c := range run.socks {
		go run.read(i, c)
	}
	return run, nil
}

func (run *probeRun) read(round int, c net.PacketConn) {
	buf := make([]byte, 64)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if n < 4 {
			continue
		}
		t := int(binary.BigEndian.Uint16(buf[2:]))
		run.mu.Lock()
		if t < len(run.replied[round]) && run.replied[round][t].IsZero() {
			run.replied[round][t] = now
		}
		run.mu.Unlock()
	}
}

func (run *probeRun) send(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i, c := range run.socks {
		run.mu.Lock()
		run.sent = append(run.sent, time.Now())
		run.mu.Unlock()
		for t, ip := range run.p.targets {
			msg := make([]byte, 4)
			binary.BigEndian.PutUint16(msg, uint16(i))
			binary.BigEndian.PutUint16(msg[2:], uint16(t))
			_, _ = c.WriteTo(msg, &net.UDPAddr{IP: ip, Port: probePort})
		}
		select {
		case <-ctx.Done():
			return
		case <-run.stopped:
			return
		case <-tick.C:
		}
	}
}

func (run *probeRun) stop() { run.once.Do(func() { close(run.stopped) }) }

func (run *probeRun) close() {
	run.stop()
	for _, c := range run.socks {
		_ = c.Close()
	}
}

// settled says every target answered as allow says for every round sent
// between 2*quiet and quiet ago (replies of the last quiet may be in flight).
func (run *probeRun) settled(allow bool, quiet time.Duration) bool {
	run.mu.Lock()
	defer run.mu.Unlock()
	now := time.Now()
	checked := 0
	for i, at := range run.sent {
		age := now.Sub(at)
		if age > 2*quiet || age < quiet {
			continue
		}
		checked++
		for t := range run.p.targets {
			if !run.replied[i][t].IsZero() != allow {
				return false
			}
		}
	}
	return checked > 0
}

// flips returns, per target, the send time of the first round after which
// (and including which) every round had the new outcome; zero when the last
// round still had the old one. Rounds sent before since are ignored.
func (run *probeRun) flips(allow bool, since time.Time) []time.Time {
	run.mu.Lock()
	defer run.mu.Unlock()
	out := make([]time.Time, len(run.p.targets))
	for t := range run.p.targets {
		flip := -1
		for i := len(run.sent) - 1; i >= 0; i-- {
			if !run.replied[i][t].IsZero() != allow {
				break
			}
			flip = i
		}
		if flip >= 0 {
			at := run.sent[flip]
			if at.Before(since) {
				at = since // enforced before apply even started: cannot be
			}
			out[t] = at
		}
	}
	return out
}

// oldAfter counts the targets that gave the old outcome (allow says the
// new one) to a round sent at or after since.
func (run *probeRun) oldAfter(allow bool, since time.Time) int {
	run.mu.Lock()
	defer run.mu.Unlock()
	n := 0
	for t := range run.p.targets {
		for i, at := range run.sent {
			if !at.Before(since) && !run.replied[i][t].IsZero() != allow {
				n++
				break
			}
		}
	}
	return n
}

// waitAll probes until every target answers (or not) as allow says.
func (pr *prober) waitAll(ctx context.Context, allow bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		run, err := pr.start(1)
		if err != nil {
			return err
		}
		go run.send(ctx, time.Millisecond)
		time.Sleep(300 * time.Millisecond)
		ok := true
		run.mu.Lock()
		var missing []string
		for t, ip := range pr.targets {
			if !run.replied[0][t].IsZero() != allow {
				ok = false
				missing = append(missing, ip.String())
			}
		}
		run.mu.Unlock()
		run.close()
		if ok {
			return nil
		}
		if time.Now().Add(300 * time.Millisecond).After(deadline) {
			return fmt.Errorf("probes to %v did not get the expected outcome (allowed=%v)", missing, allow)
		}
	}
	return errors.New("timed out")
}

func (b *bench) reportPolicy(rs []propResult) {
	var apply, slowest, fromStart, all []time.Duration
	stale, old := 0, 0
	for _, r := range rs {
		apply = append(apply, r.applyTook)
		slowest = append(slowest, r.slowest)
		fromStart = append(fromStart, r.fromStart)
		all = append(all, r.perNode...)
		stale += r.stale
		old += r.oldAfter
	}
	p50 := percentile(apply, 50)
	fmt.Printf("\npolicy propagation over %d changes on %d nodes: apply --wait (start to return, every node enforcing): p50 %.1f ms, p99 %.1f ms, min %.1f ms, max %.1f ms\n",
		len(rs), b.joins, ms(p50), ms(percentile(apply, 99)), ms(percentile(apply, 0)), ms(percentile(apply, 100)))
	fmt.Printf("  the slowest node's own report: p50 %.1f ms, p99 %.1f ms; by the probes, every node enforcing after apply started: p50 %.1f ms, p99 %.1f ms (single nodes p50 %.1f ms after apply returned)\n",
		ms(percentile(slowest, 50)), ms(percentile(slowest, 99)), ms(percentile(fromStart, 50)), ms(percentile(fromStart, 99)), ms(percentile(all, 50)))
	fmt.Printf("  probes sent after apply returned that got the old verdict: %d node-changes of %d; goal p50 <= %v and none old: %s\n",
		old, len(rs)*b.joins, goalPolicy, metOrNot(p50 <= goalPolicy && stale == 0 && old == 0))
	if stale > 0 {
		fmt.Printf("  WARNING: %d node-changes never showed the new outcome within the window\n", stale)
	}
	fmt.Println("  (p99 of few changes is their maximum; negative after-return times: the node enforced before meshctl had exited; resolution: one probe round)")
}

// ---- helpers ----

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// percentile interpolates linearly between the closest ranks (p in 0..100).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	pos := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	frac := pos - float64(lo)
	return s[lo] + time.Duration(frac*float64(s[hi]-s[lo]))
}

// reportPairs prints the all-pairs join-to-reachable figures: every pair
// with each joining node, both directions, split by whether an end is
// behind NAT.
func (b *bench) reportPairs(rs []joinResult) {
	groups := []struct {
		name string
		keep func(pairResult) bool
	}{
		{"new node -> every node", func(p pairResult) bool { return p.from == joinedBy(rs, p) }},
		{"every node -> new node", func(p pairResult) bool { return p.to == joinedBy(rs, p) }},
		{"pairs with an end behind NAT", func(p pairResult) bool { return p.natFrom || p.natTo }},
		{"pairs of public nodes", func(p pairResult) bool { return !p.natFrom && !p.natTo }},
		{"all pairs, both directions", func(pairResult) bool { return true }},
	}
	fmt.Printf("\njoin-to-reachable, all pairs (first ping answered from the start of meshctl join; pings every %v;\n", pairInterval)
	fmt.Println("  towards the new node pinging starts when its agent logs its mesh address, so those are upper bounds):")
	var all []time.Duration
	for _, g := range groups {
		var ds []time.Duration
		for _, r := range rs {
			for _, p := range r.pairs {
				if g.keep(p) {
					ds = append(ds, p.reach)
				}
			}
		}
		if len(ds) == 0 {
			continue
		}
		fmt.Printf("  %-32s n=%-4d p50 %7.1f ms  p99 %7.1f ms  max %7.1f ms\n", g.name, len(ds), ms(percentile(ds, 50)), ms(percentile(ds, 99)), ms(percentile(ds, 100)))
		all = ds
	}
	if len(all) > 0 {
		p99 := percentile(all, 99)
		fmt.Printf("  goal p99 <= %v: %s\n", goalPairs, metOrNot(p99 <= goalPairs))
	}
}

// joinedBy names the joining node of the join a pair was measured in.
func joinedBy(rs []joinResult, p pairResult) string {
	for _, r := range rs {
		for _, q := range r.pairs {
			if q == p {
				return r.node
			}
		}
	}
	return ""
}
