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

// statusAll prints the mesh's reachability matrix (`meshctl status --all`).
func statusAll(ctx context.Context, c *cli.Context, cl *api.Client) error {
	m, err := cl.HealthMatrix(ctx)
	if err != nil {
		return err
	}
	if err := render(c, m, func() error { return printMatrix(c.App.Writer, m) }); err != nil {
		return err
	}
	if len(m.Down) > 0 {
		return fmt.Errorf("%d of %d nodes down: %s", len(m.Down), len(m.Nodes)-remoteCount(m), strings.Join(m.Down, ", "))
	}
	return nil
}

// remoteCount counts the rows of connected clusters' nodes, which are
// listed but not queried.
func remoteCount(m api.HealthMatrix) int {
	n := 0
	for _, r := range m.Nodes {
		if r.Remote {
			n++
		}
	}
	return n
}

// printMatrix prints one line per node (state, address, how its probes
// fare) and the matrix: row = prober, column = probed node.
func printMatrix(w io.Writer, m api.HealthMatrix) error {
	down := map[string]bool{}
	for _, d := range m.Down {
		down[d] = true
	}
	names := make([]string, len(m.Nodes))
	for i, n := range m.Nodes {
		names[i] = n.Cluster + "/" + n.Node
	}
	remote := remoteCount(m)
	fmt.Fprintf(w, "Mesh health as seen from %s (%d nodes, %d down", m.From, len(m.Nodes)-remote, len(m.Down))
	if remote > 0 {
		fmt.Fprintf(w, "; %d of connected clusters, not queried", remote)
	}
	fmt.Fprint(w, ")\n\n")
	var rows [][]string
	for i, n := range m.Nodes {
		state := "up"
		if down[names[i]] {
			state = "DOWN"
		}
		note := ""
		if n.Error != "" {
			note = n.Error
		}
		if n.Remote {
			// A connected cluster's agents answer only their own
			// cluster's nodes; its own status --all shows its health.
			state = "not queried"
			note = fmt.Sprintf("remote cluster: not queried (run `meshctl status --all` on a node of %s)", n.Cluster)
		}
		rows = append(rows, []string{names[i], state, n.MeshIP, note})
	}
	if err := cliout.Table(w, []string{"node", "state", "mesh ip", "note"}, rows); err != nil {
		return err
	}
	legend := "round trip, DOWN, ? not probed yet"
	if remote > 0 {
		legend += ", - not probed: remote cluster"
	}
	fmt.Fprintf(w, "\nReachability (row probes column through the tunnel; %s):\n", legend)
	header := append([]string{"from \\ to"}, shortNames(names)...)
	var matrix [][]string
	for i, n := range m.Nodes {
		row := []string{shortNames(names)[i]}
		byName := map[string]api.Probe{}
		for _, p := range n.Probes {
			byName[p.Cluster+"/"+p.Node] = p
		}
		for j := range m.Nodes {
			switch {
			case i == j:
				row = append(row, "·")
			case n.Remote:
				row = append(row, "-")
			case n.Error != "":
				row = append(row, "n/a")
			case m.Nodes[j].Remote && byName[names[j]].State == "":
				row = append(row, "-") // this cluster's nodes do not probe it
			default:
				row = append(row, probeCell(byName[names[j]]))
			}
		}
		matrix = append(matrix, row)
	}
	return cliout.Table(w, header, matrix)
}

// probeCell renders one probe: its round trip when up.
func probeCell(p api.Probe) string {
	switch p.State {
	case "up":
		return roundTrip(time.Duration(p.RTT))
	case "down":
		return "DOWN"
	default:
		return "?"
	}
}

func roundTrip(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 100*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
	default:
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
}

// shortNames drops the cluster when every node is in the same one.
func shortNames(names []string) []string {
	cluster := ""
	for i, n := range names {
		c, _, _ := strings.Cut(n, "/")
		if i > 0 && c != cluster {
			return names
		}
		cluster = c
	}
	out := make([]string, len(names))
	for i, n := range names {
		_, out[i], _ = strings.Cut(n, "/")
	}
	return out
}
