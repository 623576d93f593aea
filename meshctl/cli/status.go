package cli

import (
	"errors"
	"fmt"

	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/cliout"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the local node: tunnel, datapath, etcd, health and peers with handshake ages",
		UsageText: `meshctl status [--all] [--socket PATH] [-o table|json]`,
		Description: `Asks the local agent (over its root-only socket) for the node's state:
its name, cluster and mesh address; the WireGuard device (kernel or userspace
implementation, port, public key); whether the eBPF datapath is attached;
whether etcd is reachable (the datapath keeps working from the agent's cache
when it is not); the agent's health checks; and every peer with the age of its
last WireGuard handshake.

With --all, it shows the whole mesh instead: every node's probes to every
other node through the tunnel, as a reachability matrix of round-trip times,
and the nodes that are down (their agent stopped answering probes or gossip;
a node is shown down within a few seconds). The local agent reads the other
agents' views over the mesh (see docs/observability.md).

Exit status is 1 when the agent cannot be reached or a health check fails
(with --all: when a node is down), so scripts can use it as a readiness probe.`,
		Flags:  agentFlags(&cli.BoolFlag{Name: "all", Usage: "show every node and the reachability matrix"}),
		Action: statusAction,
	}
}

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
	if c.Bool("all") {
		return statusAll(ctx, c, cl)
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return err
	}
	h, err := cl.Health(ctx)
	if err != nil {
		return err
	}
	v := statusView{Status: st, Health: h}
	if err := render(c, v, func() error { return printStatus(c, v) }); err != nil {
		return err
	}
	if !h.OK {
		return errors.New("the agent reports failing health checks (see above)")
	}
	return nil
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
		var failing []string
		for _, ch := range v.Health.Checks {
			if !ch.OK {
				failing = append(failing, ch.Name+": "+ch.Message)
			}
		}
		health = "FAILING: " + strings.Join(failing, "; ")
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
	return cliout.Table(w, []string{"node", "cluster", "endpoint", "allowed ips", "handshake", "rx", "tx"}, peerRows(st.Peers))
}

func peerRows(peers []api.Peer) [][]string {
	rows := make([][]string, 0, len(peers))
	for _, p := range peers {
		rows = append(rows, []string{p.Node, p.Cluster, p.Endpoint, strings.Join(p.AllowedIPs, ","), age(p.LastHandshake), bytesSize(p.RxBytes), bytesSize(p.TxBytes)})
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
