package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/cni/install"
	"github.com/weftmesh/weft/cni/plugin"
	"github.com/weftmesh/weft/internal/version"
)

const pluginHelp = `Run by the container runtime, with CNI_COMMAND set and no arguments, weft-cni is
the CNI plugin: it asks this node's Weft agent (its API socket) to connect the
pod and prints the CNI result. It speaks CNI ` + "%s" + ` (ADD, DEL, CHECK,
VERSION; STATUS and GC from 1.1.0).

Network configuration keys (type "weft-cni"):
  agentSocket   the agent's API socket (default ` + plugin.DefaultAgentSocket + `)
  timeout       how long ADD waits for the agent while it starts or restarts,
                e.g. "60s" (default), at most ` + "5m" + `
  logFile       where the plugin logs (default: warnings on the runtime's stderr)
A prevResult (weft-cni after another plugin in a conflist) means chained mode:
the previous plugin (bridge, ptp) made the pod's veth and address, and weft-cni
has the agent enforce policy on it.`

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:        "weft-cni",
		Usage:       "Weft's CNI plugin, and its installer for Kubernetes nodes",
		UsageText:   "weft-cni install|uninstall [flags]\n(as a CNI plugin: CNI_COMMAND=... weft-cni < config.json)",
		Description: fmt.Sprintf(pluginHelp, strings.Join(plugin.SupportedVersions, ", ")),
		Version:     version.Version,
		Writer:      stdout,
		ErrWriter:   stderr,
		Commands:    []*cli.Command{installCommand(), uninstallCommand()},
		// Errors are returned to main, which prints them once.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		// run reports an unknown command; the default would print help.
		CommandNotFound: func(*cli.Context, string) {},
	}
}

func commandUsageError(c *cli.Context, err error, _ bool) error {
	return usageError{fmt.Errorf("%w (see weft-cni %s --help)", err, c.Command.Name)}
}

// usageError is a command line weft-cni cannot run: exit status 2.
type usageError struct{ error }

func dirFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "bin-dir", Value: "/opt/cni/bin", Usage: "the runtime's CNI plugin directory (the host's /opt/cni/bin, e.g. mounted at /host/opt/cni/bin)"},
		&cli.StringFlag{Name: "conf-dir", Value: "/etc/cni/net.d", Usage: "the runtime's CNI configuration directory (the host's /etc/cni/net.d, e.g. mounted at /host/etc/cni/net.d)"},
	}
}

func installCommand() *cli.Command {
	return &cli.Command{
		Name:      "install",
		Usage:     "copy weft-cni into the CNI bin dir and configure it (primary, or chained into the existing conflist)",
		UsageText: "weft-cni install --bin-dir DIR --conf-dir DIR --mode primary|chained [--chain-into NAME] [--agent-socket PATH] [--log-file PATH] [--timeout 60s]",
		Description: `Copies this executable to <bin-dir>/weft-cni (atomically, mode 0755), then:

  --mode primary   writes <conf-dir>/` + install.PrimaryConflist + `, which sorts first, so the runtime
                   uses it: weft-cni is the pods' network.
  --mode chained   appends {"type": "weft-cni", ...} to the plugins of an existing conflist:
                   --chain-into (a file name in conf-dir or a network's name), else the
                   file the runtime uses (the first *.conf, *.conflist or *.json by name).
                   The file as it was is kept as <file>` + install.BackupSuffix + ` for uninstall; a
                   single-plugin .conf is turned into a .conflist of the same name.

Run again, it changes nothing; with the other mode, it undoes the first. It
refuses a conf dir with nothing to chain into, a file the runtime could not
read, and a cniVersion weft-cni does not speak, saying which.`,
		OnUsageError: commandUsageError,
		Flags: append(dirFlags(),
			&cli.StringFlag{Name: "mode", Value: string(install.Primary), Usage: "primary (weft-cni is the network) or chained (after the cluster's bridge or ptp plugin)"},
			&cli.StringFlag{Name: "chain-into", Usage: "with --mode chained: the conflist to chain into, a file name in --conf-dir or a network's name (default: the one the runtime uses)"},
			&cli.StringFlag{Name: "agent-socket", Value: plugin.DefaultAgentSocket, Usage: "the agent's API socket, as the plugin sees it on the host"},
			&cli.StringFlag{Name: "log-file", Usage: "where the plugin logs, on the host (default: warnings on the runtime's stderr)"},
			&cli.DurationFlag{Name: "timeout", Value: plugin.DefaultTimeout, Usage: "how long a pod's ADD waits for the agent while it (re)starts"},
		),
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError{fmt.Errorf("install takes no arguments (got %q): give everything as flags", c.Args().Slice())}
			}
			did, err := install.Install(install.Options{
				BinDir: c.String("bin-dir"), ConfDir: c.String("conf-dir"),
				Mode: install.Mode(c.String("mode")), ChainInto: c.String("chain-into"),
				AgentSocket: c.String("agent-socket"), LogFile: c.String("log-file"), Timeout: c.Duration("timeout"),
			})
			printDone(c.App.Writer, did)
			return err
		},
	}
}

func uninstallCommand() *cli.Command {
	return &cli.Command{
		Name:      "uninstall",
		Usage:     "remove what install made, restoring a conflist weft-cni was chained into",
		UsageText: "weft-cni uninstall --bin-dir DIR --conf-dir DIR",
		Description: `Removes <bin-dir>/weft-cni and <conf-dir>/` + install.PrimaryConflist + `, and takes weft-cni out of
a conflist it was chained into: restored byte for byte from its backup when
nothing else changed in it, else edited to drop weft-cni only. Running it
again changes nothing. Pods connected by weft-cni need it for their DEL:
uninstall after they are gone.`,
		OnUsageError: commandUsageError,
		Flags:        dirFlags(),
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError{fmt.Errorf("uninstall takes no arguments (got %q)", c.Args().Slice())}
			}
			did, err := install.Uninstall(c.String("bin-dir"), c.String("conf-dir"))
			printDone(c.App.Writer, did)
			return err
		},
	}
}

func printDone(w io.Writer, did []string) {
	for _, d := range did {
		fmt.Fprintln(w, d)
	}
}

// run runs the command line (without the program's name).
func run(args []string, stdout, stderr io.Writer) error {
	app := newApp(stdout, stderr)
	err := app.Run(append([]string{"weft-cni"}, args...))
	if err == nil && len(args) > 0 && !strings.HasPrefix(args[0], "-") && app.Command(args[0]) == nil {
		return usageError{fmt.Errorf("no command %q: use install or uninstall (weft-cni --help)", args[0])}
	}
	return err
}

// exitStatus prints err and returns the process's exit status: 0, 1 for a
// failed command, 2 for a command line that cannot run.
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "weft-cni:", err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}
