package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
)

// now is the clock for ages and expiries in tables; tests pin it.
var now = time.Now

// socketFlag is --socket, on every command that talks to the agent.
func socketFlag() *cli.PathFlag {
	return &cli.PathFlag{
		Name:    "socket",
		EnvVars: []string{"WEFT_SOCKET"},
		Value:   config.DefaultSocketPath,
		Usage:   "the local agent's API socket `PATH`",
	}
}

// agentFlags are the flags of a command that talks to the agent and
// prints a table or JSON.
func agentFlags(extra ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{socketFlag(), outputFlag()}, extra...)
}

// agentClient returns a client for the agent named by --socket.
func agentClient(c *cli.Context) *api.Client {
	return api.NewClient(c.Path("socket"))
}

// cmdContext is the context of one command: cancelled by Ctrl-C or
// SIGTERM, so a hung agent never hangs meshctl.
func cmdContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
}

// noArgs refuses positional arguments a command does not take: a stray
// word is usually a mistyped flag.
func noArgs(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("%s takes no arguments, got %q (see --help)", c.Command.FullName(), strings.Join(c.Args().Slice(), " "))
	}
	return nil
}

// oneArg returns the single positional argument named what.
func oneArg(c *cli.Context, what string) (string, error) {
	switch c.Args().Len() {
	case 1:
		return c.Args().First(), nil
	case 0:
		return "", fmt.Errorf("%s needs the %s: meshctl %s %s", c.Command.FullName(), what, c.Command.FullName(), strings.ToUpper(what))
	default:
		return "", fmt.Errorf("%s takes one %s, got %d arguments: %q", c.Command.FullName(), what, c.Args().Len(), strings.Join(c.Args().Slice(), " "))
	}
}

// render prints v as JSON, or calls table for people.
func render(c *cli.Context, v any, table func() error) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(c.App.Writer, v)
	}
	return table()
}

// labelsFlag parses a --labels k=v,... flag.
func labelsFlag(c *cli.Context, name string) (map[string]string, error) {
	l, err := config.ParseLabels(c.String(name))
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", name, err)
	}
	return l, nil
}

// age renders how long ago t was, "never" for the zero time.
func age(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now().Sub(t)
	if d < 0 {
		d = 0
	}
	return shortDuration(d) + " ago"
}

// shortDuration renders 75s as 1m15s and 26h as 1d2h: two units at most.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// yesNo renders a bool for a table.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
