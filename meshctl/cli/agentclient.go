package cli

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
	"github.com/weftmesh/weft/internal/cliout"
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
	return append([]cli.Flag{socketFlag(), cliout.Flag()}, extra...)
}

// agentClient returns a client for the agent named by --socket, or for
// the seed's admin API when the command was given --admin-credentials
// (loaded by withAdminCredentials).
func agentClient(c *cli.Context) *api.Client {
	if cl, ok := c.App.Metadata[adminCredentialsFlag].(*api.Client); ok {
		return cl
	}
	return api.NewClient(c.Path("socket"))
}

// cmdContext is the context of one command: cancelled by Ctrl-C or
// SIGTERM, so a hung agent never hangs meshctl.
func cmdContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
}

// splitArgs separates what urfave/cli left unparsed: it stops at the
// first positional argument, but users write flags after it too
// (`meshctl join TOKEN --name vm-1`). Flags of the command found among the
// arguments are set; the rest are positional, and everything after "--"
// is passed through (agent flags).
func splitArgs(c *cli.Context) (pos, passthrough []string, err error) {
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return pos, args[i+1:], nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := commandFlag(c.Command, name)
		if f == nil {
			return nil, nil, fmt.Errorf("unknown flag %s (see meshctl %s --help)", a, cmdName(c))
		}
		canonical := f.Names()[0]
		if _, isBool := f.(*cli.BoolFlag); isBool {
			if !hasVal {
				val = "true"
			}
		} else if !hasVal {
			if i+1 >= len(args) {
				return nil, nil, fmt.Errorf("%s needs a value", a)
			}
			i++
			val = args[i]
		}
		if err := c.Set(canonical, val); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", a, err)
		}
	}
	return pos, nil, nil
}

// cmdName is the command's name without "meshctl": "endpoint remove".
func cmdName(c *cli.Context) string {
	return strings.TrimPrefix(c.Command.HelpName, c.App.Name+" ")
}

func commandFlag(cmd *cli.Command, name string) cli.Flag {
	if cmd == nil {
		return nil
	}
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// noArgs refuses positional arguments a command does not take: a stray
// word is usually a mistyped flag.
func noArgs(c *cli.Context) error {
	pos, rest, err := splitArgs(c)
	if err != nil {
		return err
	}
	if len(pos)+len(rest) > 0 {
		return fmt.Errorf("%s takes no arguments, got %q (see --help)", cmdName(c), strings.Join(append(pos, rest...), " "))
	}
	return nil
}

// oneArg returns the single positional argument named what; flags may
// follow it.
func oneArg(c *cli.Context, what string) (string, error) {
	pos, rest, err := splitArgs(c)
	if err != nil {
		return "", err
	}
	pos = append(pos, rest...)
	switch len(pos) {
	case 1:
		return pos[0], nil
	case 0:
		return "", fmt.Errorf("%s needs the %s: meshctl %s %s", cmdName(c), what, cmdName(c), strings.ToUpper(what))
	default:
		return "", fmt.Errorf("%s takes one %s, got %d arguments: %q", cmdName(c), what, len(pos), strings.Join(pos, " "))
	}
}

// render prints v as JSON, or calls table for people.
func render(c *cli.Context, v any, table func() error) error {
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	if format == "json" {
		return cliout.JSON(c.App.Writer, v)
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
