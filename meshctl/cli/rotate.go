package cli

import (
	"fmt"

	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/cliout"
)

func rotateKeyCommand() *cli.Command {
	return &cli.Command{
		Name:      "rotate-key",
		Usage:     "replace this node's WireGuard key without interrupting traffic",
		UsageText: "meshctl rotate-key [--force] [--socket PATH] [-o table|json]",
		Description: `Asks the local agent to rotate its WireGuard key. The agent announces the
next key in its node record, waits until every other node's agent reports
the key installed on its WireGuard device, switches to it, waits for the
peers' handshakes with it and then retires the old key. Traffic keeps
flowing throughout (see docs/tunnel.md, "Hitless key rotation").

If some peers do not confirm within 20s (their agent is down or
unreachable), the rotation is aborted and the node keeps its key; --force
rotates anyway, and those peers cannot reach this node until they read its
new record. Prints the old and new public keys, how long it took and what
each peer did.`,
		Flags: agentFlags(
			&cli.BoolFlag{Name: "force", Usage: "switch even if some peers did not confirm the next key"},
		),
		Action: rotateKeyAction,
	}
}

func rotateKeyAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if _, err := cliout.Format(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	res, err := agentClient(c).RotateKey(ctx, api.RotateKeyRequest{Force: c.Bool("force")})
	if err != nil {
		return fmt.Errorf("rotating the WireGuard key: %w", err)
	}
	if res.Peers == nil {
		res.Peers = []api.RotatedPeer{}
	}
	return render(c, res, func() error {
		w := c.App.Writer
		fmt.Fprintf(w, "Old key: %s\nNew key: %s\nTook:    %s\n\n", res.OldPublicKey, res.NewPublicKey, time.Duration(res.Took).Round(time.Millisecond))
		rows := make([][]string, 0, len(res.Peers))
		for _, p := range res.Peers {
			rows = append(rows, []string{p.Node, p.Cluster, yesNo(p.Installed), yesNo(p.Handshake), p.Error})
		}
		return cliout.Table(w, []string{"peer", "cluster", "installed", "handshake", "error"}, rows)
	})
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
