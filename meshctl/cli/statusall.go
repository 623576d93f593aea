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
		return fmt.Errorf("%d of %d nodes down: %s", len(m.Down), len(m.Nodes), strings.Join(m.Down, ", "))
	}
	return nil
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
	fmt.Fprintf(w, "Mesh health as seen from %s (%d nodes, %d down)\n\n", m.From, len(m.Nodes), len(m.Down))
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
		rows = append(rows, []string{names[i], state, n.MeshIP, note})
	}
	if err := cliout.Table(w, []string{"node", "state", "mesh ip", "note"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nReachability (row probes column through the tunnel; round trip, DOWN, ? not probed yet):")
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
			case n.Error != "":
				row = append(row, "n/a")
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
