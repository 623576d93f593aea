// Package cliout is how Weft's command-line tools print: aligned tables for
// people and indented JSON for programs, chosen by one -o/--output flag.
// meshctl and weft-lab share it so their output reads the same.
package cliout

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

// Table writes rows under upper-case headers in aligned columns. An empty
// cell is shown as "-" so columns stay readable and parseable.
func Table(w io.Writer, headers []string, rows [][]string) error {
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

// JSON writes v as indented JSON followed by a newline.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Flag is the -o/--output flag of commands that print tables.
func Flag() *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "output format: table or json",
		// Checked before the command runs, so a typo is named before
		// anything else is done (or found missing).
		Action: func(c *cli.Context, _ string) error { _, err := Format(c); return err }}
}

// Format returns the validated value of Flag.
func Format(c *cli.Context) (string, error) {
	switch f := c.String("output"); f {
	case "table", "json":
		return f, nil
	default:
		return "", fmt.Errorf("--output %q is not a format: use table or json", f)
	}
}

// ExitStatus prints err for a person on stderr and returns the process's
// exit status: 0 for nil; the code of a cli.Exit error (lab exec passes
// on its command's status), printing its message if it has one; else 1,
// with "meshctl: " and the error.
func ExitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if ec, ok := err.(cli.ExitCoder); ok {
		if ec.Error() != "" {
			fmt.Fprintln(stderr, ec)
		}
		return ec.ExitCode()
	}
	fmt.Fprintln(stderr, "meshctl:", err)
	return 1
}
