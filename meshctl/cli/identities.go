package cli

import (
	"sort"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/cliout"
)

func identitiesCommand() *cli.Command {
	return &cli.Command{
		Name:      "identities",
		Usage:     "list the numeric security identities and their labels",
		UsageText: `meshctl identities [--socket PATH] [-o table|json]`,
		Description: `Every distinct label set in the mesh has one numeric identity, the same on
every node; the datapath carries the number and policy is compiled against
it. Identities below 256 are reserved (host, world, remote-node, ...); the
ENDPOINTS column counts the endpoints that carry each identity.`,
		Flags:  agentFlags(),
		Action: identitiesAction,
	}
}

func identitiesAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	ids, err := agentClient(c).Identities(ctx)
	if err != nil {
		return err
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].ID < ids[j].ID })
	return render(c, ids, func() error {
		return cliout.Table(c.App.Writer, []string{"id", "labels", "endpoints"}, identityRows(ids))
	})
}

func identityRows(ids []api.Identity) [][]string {
	rows := make([][]string, 0, len(ids))
	for _, id := range ids {
		n := strconv.FormatUint(uint64(id.ID), 10)
		if id.Reserved {
			n += " (reserved)"
		}
		rows = append(rows, []string{n, strings.Join(id.Labels, ","), strconv.Itoa(id.Endpoints)})
	}
	return rows
}
