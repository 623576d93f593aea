package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/cliout"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the local node: tunnel, datapath, etcd, health and peers with their paths (direct or relay) and handshake ages",
		UsageText: `meshctl status [--all] [--wait[=DURATION]] [--socket PATH] [-o table|json]`,
		Description: `Asks the local agent (over its root-only socket) for the node's state:
its name, cluster and mesh address; the WireGuard device (kernel or userspace
implementation, port, public key); whether the eBPF datapath is attached;
whether etcd is reachable (the datapath keeps working from the agent's cache
when it is not); the agent's health checks; and every peer with the age of its
last WireGuard handshake.

A node is healthy when its tunnel, datapath and etcd are, and it reaches its
peers: every peer must have completed a WireGuard handshake in the last 3
minutes. A peer added less than 10 seconds ago is given that long for its
first one ("waiting"; the node still counts as healthy). A peer with no
handshake since then ("never") or none for 3 minutes ("stale") makes the node
unhealthy, and status names it. A node with no peers yet (a new mesh of one)
is healthy.

With --wait, status waits until the node is healthy and every peer has
handshaken (none still waiting), up to DURATION (--wait alone: 2m), printing
progress on stderr; then it prints the status. For scripts and cloud-init:
'meshctl join TOKEN && meshctl status --wait=2m'. It also waits for an agent
that is still starting.

With --all, it shows the whole mesh instead: every node's probes to every
other node through the tunnel, as a reachability matrix of round-trip times,
and the nodes that are down (their agent stopped answering probes or gossip;
a node is shown down within a few seconds). The local agent reads the other
agents' views over the mesh (see docs/observability.md).

Exit status is 1 when the agent cannot be reached or the node is not healthy
(with --wait: not healthy in time; with --all: a node is down), so scripts
can use it as a readiness probe.`,
		Flags: agentFlags(
			&cli.BoolFlag{Name: "all", Usage: "show every node and the reachability matrix"},
			&cli.GenericFlag{Name: "wait", Value: &waitValue{}, Usage: "wait until the node is healthy, at most `DURATION` (--wait=30s or --wait 30s; --wait alone waits 2m)"},
		),
		Action: statusAction,
	}
}

// defaultStatusWait is how long a bare --wait waits: a join over a slow
// link with a NAT to traverse is healthy well within it.
const defaultStatusWait = 2 * time.Minute

// waitValue is --wait[=DURATION]: a flag that takes an optional value
// (the flag package's bool-flag form), off by default.
type waitValue struct{ d time.Duration }

func (w *waitValue) String() string {
	if w == nil || w.d == 0 {
		return ""
	}
	return w.d.String()
}

func (w *waitValue) Set(s string) error {
	switch s {
	case "true":
		w.d = defaultStatusWait
	case "false":
		w.d = 0
	default:
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return fmt.Errorf("not a duration: write --wait=30s or --wait=2m, or --wait alone for %s", defaultStatusWait)
		}
		w.d = d
	}
	return nil
}

// joinWaitValue writes `status --wait 30s` as `--wait=30s`: status's --wait
// may go without a value, so the flag parser would take "30s" for an
// argument (status takes none). Run applies it to status command lines
// only; only a following word that is a duration is joined, and nothing
// after a "--" is touched.
func joinWaitValue(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if (a == "--wait" || a == "-wait") && i+1 < len(args) {
			if d, err := time.ParseDuration(args[i+1]); err == nil && d >= 0 {
				out = append(out, a+"="+args[i+1])
				i++
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// IsBoolFlag lets --wait go without a value.
func (w *waitValue) IsBoolFlag() bool { return true }

// statusView is the -o json form: the agent's status and health.
type statusView struct {
	api.Status
	Health api.Health `json:"health"`
}

func statusAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	cl := agentClient(c)
	wait := c.Generic("wait").(*waitValue).d
	if c.Bool("all") {
		if wait > 0 {
			return usagef(c.Command.HelpName, "--wait applies to the local node: use it without --all")
		}
		return statusAll(ctx, c, cl)
	}
	var (
		v   statusView
		err error
	)
	if wait > 0 {
		v, err = waitHealthy(ctx, cl, wait, c.App.ErrWriter)
		if err != nil && v.Node == "" {
			return err
		}
	} else {
		if v, err = readStatus(ctx, cl); err != nil {
			return err
		}
	}
	if rerr := render(c, v, func() error { return printStatus(c, v) }); rerr != nil {
		return rerr
	}
	if err != nil {
		return err
	}
	if !v.Health.OK {
		return fmt.Errorf("the node is not healthy: %s", strings.Join(failing(v.Health), "; "))
	}
	return nil
}

func readStatus(ctx context.Context, cl *api.Client) (statusView, error) {
	st, err := cl.Status(ctx)
	if err != nil {
		return statusView{}, err
	}
	h, err := cl.Health(ctx)
	if err != nil {
		return statusView{}, err
	}
	return statusView{Status: st, Health: h}, nil
}

// ready is what --wait waits for: every check passes and no peer is
// still waiting for its first handshake.
func ready(h api.Health) (bool, string) {
	if !h.OK {
		return false, strings.Join(failing(h), "; ")
	}
	var waiting []string
	for _, p := range h.Peers {
		if p.State != "ok" {
			waiting = append(waiting, p.Node+": "+p.Message)
		}
	}
	if len(waiting) > 0 {
		return false, "peers: " + strings.Join(waiting, "; ")
	}
	return true, ""
}

// waitHealthy polls the agent until ready, printing on progress what it
// waits for when that changes (and every 10 s). At the timeout it returns
// the last status read and why it is not ready.
func waitHealthy(ctx context.Context, cl *api.Client, timeout time.Duration, progress io.Writer) (statusView, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		v         statusView
		why, said string
		saidAt    time.Time
	)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := readStatus(ctx, cl)
		switch {
		case err == nil:
			v = got
			ok, reason := ready(v.Health)
			if ok {
				if said != "" {
					fmt.Fprintf(progress, "meshctl: healthy after %s\n", time.Since(start).Round(100*time.Millisecond))
				}
				return v, nil
			}
			why = reason
		case ctx.Err() != nil:
		default:
			why = "the agent does not answer yet: " + err.Error()
		}
		if why != said || time.Since(saidAt) >= 10*time.Second {
			fmt.Fprintf(progress, "meshctl: waiting for the node to be healthy (%s of %s): %s\n", time.Since(start).Round(time.Second), timeout, why)
			said, saidAt = why, time.Now()
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return v, fmt.Errorf("the node is not healthy after %s: %s (see docs/troubleshooting.md)", timeout, why)
			}
			return v, ctx.Err()
		case <-tick.C:
		}
	}
}

// failing lists the failing checks as "name: message".
func failing(h api.Health) []string {
	var out []string
	for _, ch := range h.Checks {
		if !ch.OK {
			msg := ch.Name
			if ch.Message != "" {
				msg += ": " + ch.Message
			}
			out = append(out, msg)
		}
	}
	return out
}

func printStatus(c *cli.Context, v statusView) error {
	w := c.App.Writer
	st := v.Status
	mesh := st.MeshIP
	if len(st.CIDRs) > 0 {
		mesh += " (CIDRs " + strings.Join(st.CIDRs, ", ") + ")"
	}
	tunnel := fmt.Sprintf("%s, %s, UDP %d, key %s", st.Tunnel.Interface, st.Tunnel.Kind, st.Tunnel.ListenPort, st.Tunnel.PublicKey)
	if !st.Tunnel.Up {
		tunnel += " (DOWN)"
	}
	datapath := "not attached"
	if st.Datapath.Attached {
		datapath = fmt.Sprintf("attached (%d programs, maps in %s)", st.Datapath.Programs, st.Datapath.PinPath)
	}
	if st.Datapath.Error != "" {
		datapath += ": " + st.Datapath.Error
	}
	etcd := "unreachable"
	if st.Etcd.Reachable {
		etcd = "reachable"
	}
	if st.Etcd.Embedded {
		etcd += ", embedded"
	}
	etcd += " (" + strings.Join(st.Etcd.Endpoints, ", ") + ")"
	if st.Etcd.Error != "" {
		etcd += ": " + st.Etcd.Error
	}
	health := "ok"
	if !v.Health.OK {
		health = "FAILING: " + strings.Join(failing(v.Health), "; ")
	} else {
		for _, ch := range v.Health.Checks {
			if ch.Name == "peers" && ch.Message != "" {
				health += " (" + ch.Message + ")"
			}
		}
	}
	rows := [][2]string{
		{"Node", st.Node + " (cluster " + st.Cluster + ")"},
		{"Mesh address", orDash(mesh)},
		{"Agent", st.AgentVersion + ", up " + strings.TrimSuffix(age(st.StartedAt), " ago")},
		{"Tunnel", tunnel},
		{"Datapath", datapath},
		{"Etcd", etcd},
		{"Health", health},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%-13s %s\n", r[0]+":", r[1])
	}
	fmt.Fprintf(w, "\nPeers (%d):\n", len(st.Peers))
	if len(st.Peers) == 0 {
		fmt.Fprintln(w, "  none yet: other nodes appear here once they join")
		return nil
	}
	if err := cliout.Table(w, []string{"node", "cluster", "path", "changed", "allowed ips", "handshake", "state", "rx", "tx"}, peerRows(st.Peers, v.Health.Peers)); err != nil {
		return err
	}
	var bad []api.PeerHealth
	for _, p := range v.Health.Peers {
		if p.State == "never" || p.State == "stale" {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		fmt.Fprintf(w, "\nUnreachable peers (%d of %d):\n", len(bad), len(v.Health.Peers))
		for _, p := range bad {
			fmt.Fprintf(w, "  %s: %s, endpoint %s\n", p.Node, p.Message, orDash(p.Endpoint))
		}
		fmt.Fprintln(w, "  UDP to or from these endpoints may be blocked (a firewall, a NAT): see docs/troubleshooting.md")
	}
	return nil
}

func peerRows(peers []api.Peer, verdicts []api.PeerHealth) [][]string {
	state := map[string]string{}
	for _, v := range verdicts {
		state[v.Cluster+"/"+v.Node] = v.State
	}
	rows := make([][]string, 0, len(peers))
	for _, p := range peers {
		// The path says the endpoint when direct; an agent without path
		// selection reports only the endpoint.
		path, changed := p.Path, "-"
		if path == "" || path == "direct (learned)" {
			path = orDash(p.Endpoint)
		}
		if !p.PathSince.IsZero() {
			changed = age(p.PathSince)
		}
		rows = append(rows, []string{p.Node, p.Cluster, path, changed, strings.Join(p.AllowedIPs, ","), age(p.LastHandshake), state[p.Cluster+"/"+p.Node], bytesSize(p.RxBytes), bytesSize(p.TxBytes)})
	}
	return rows
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesSize renders a byte count with a binary unit.
func bytesSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
