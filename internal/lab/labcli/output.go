package labcli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

// The output helpers below are meshctl/cli's (output.go), copied so that
// the lab prints its tables and JSON as meshctl does without importing
// meshctl's command package.

// printTable writes rows under upper-case headers in aligned columns. An
// empty cell is shown as "-" so columns stay readable and parseable.
func printTable(w io.Writer, headers []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	up := make([]string, len(headers))
	for i, h := range headers {
		up[i] = strings.ToUpper(h)
	}
	fmt.Fprintln(tw, strings.Join(up, "\t"))
	for _, row := range rows {
		cells := make([]string, len(row))
		for i, c := range row {
			if c == "" {
				c = "-"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// printJSON writes v as indented JSON followed by a newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// outputFlag is the -o/--output flag of lab status.
func outputFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "output format: table or json",
		// Checked before the command runs, so a typo is named before
		// anything else is looked at.
		Action: func(c *cli.Context, _ string) error { _, err := outputFormat(c); return err }}
}

// outputFormat returns the validated value of outputFlag.
func outputFormat(c *cli.Context) (string, error) {
	switch f := c.String("output"); f {
	case "table", "json":
		return f, nil
	default:
		return "", fmt.Errorf("--output %q is not a format: use table or json", f)
	}
}
