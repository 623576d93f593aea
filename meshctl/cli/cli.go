// Package cli is meshctl, the Weft command-line interface, as a library:
// Run parses a command line and runs the command, so the meshctl binary is
// a few lines and tests run commands in-process with their own output
// buffers.
//
// Most commands talk to a weft-agent over its API socket (--socket,
// WEFT_SOCKET) and work on any OS, also against a remote agent whose
// socket is forwarded (docs/cli.md, "meshctl from a Mac"). The commands
// that run the agent on this machine (up, join, leave) need Linux; their
// non-Linux builds refuse with what to do instead (the *_linux.go and
// *_other.go files). `meshctl lab` runs the weft-lab binary (lab.go), so
// meshctl itself links nothing that builds network namespaces.
//
// The package imports github.com/urfave/cli/v2 under its own name, cli:
// every command file is written against it.
package cli

import (
	"context"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/cliout"
	"github.com/weftmesh/weft/internal/version"
)

// commands are meshctl's commands in the order `meshctl --help` lists
// them: what a new user runs first (make a mesh, join it, look at it and
// ping a node), then managing the mesh (tokens, leaving, stopping),
// looking inside it (nodes, endpoints, identities), policy and flows, then
// maintenance, this build's version and shell completion, and the test lab
// last.
// urfave/cli keeps this order; adding a command means adding it here.
func commands() []*cli.Command {
	return []*cli.Command{
		upCommand(),
		joinCommand(),
		statusCommand(),
		pingCommand(),
		tokenCommand(),
		clusterCommand(),
		leaveCommand(),
		downCommand(),
		nodesCommand(),
		nodeCommand(),
		endpointCommand(),
		identitiesCommand(),
		policyCommand(),
		observeCommand(),
		rotateKeyCommand(),
		connectivityCommand(),
		adminCommand(),
		versionCommand(),
		completionCommand(),
		labCommand(),
	}
}

// newApp is meshctl's command tree, wired to the given streams. notFound
// receives the unknown-command error, which urfave/cli reports through a
// callback that cannot return one.
func newApp(stdin io.Reader, stdout, stderr io.Writer, notFound *error) *cli.App {
	app := &cli.App{
		Name:                 "meshctl",
		Usage:                "operate a Weft mesh: nodes, workloads, policy, and the test lab",
		UsageText:            "meshctl [--socket PATH] [-o table|json] COMMAND [flags] [arguments]",
		Version:              version.Version,
		EnableBashCompletion: true,
		Commands:             commands(),
		// Global flags: given before the command, they are moved after it
		// (hoistGlobalFlags), so every command keeps its own --socket and
		// -o, and a flag given twice is decided as if written once.
		Flags:     []cli.Flag{socketFlag(), cliout.Flag()},
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		CommandNotFound: func(c *cli.Context, name string) {
			parent, candidates := "meshctl", c.App.VisibleCommands()
			if c.Command != nil {
				if full := c.Command.FullName(); full != "" && full != parent {
					parent += " " + full
					candidates = c.Command.VisibleCommands()
				}
			}
			*notFound = unknownCommand(name, parent, candidates)
		},
		OnUsageError: onUsageError,
		// The default handler exits the process on a cli.Exit error; Run
		// leaves that to ExitStatus, so a test's process survives.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	for _, c := range app.Commands {
		if adminCapable[c.Name] {
			withAdminCredentials(c)
		}
		conventions(c)
	}
	return app
}

// Run runs meshctl with args (the command line without the program name),
// reading stdin and writing to stdout and stderr. ctx ends long commands
// (they also stop on Ctrl-C and SIGTERM). It returns the command's error
// instead of printing it, so tests can inspect it; ExitStatus turns it
// into what the binary prints and its exit status.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var notFound error
	app := newApp(stdin, stdout, stderr, &notFound)
	args, err := hoistGlobalFlags(app.Commands, args)
	if err != nil {
		return err
	}
	if len(args) > 0 && args[0] == "status" {
		args = joinWaitValue(args)
	}
	if err := app.RunContext(ctx, append([]string{"meshctl"}, args...)); err != nil {
		return explainForPlatform(err)
	}
	return notFound
}

// ExitStatus prints err on stderr and returns the process's exit status
// (cliout.ExitStatus, shared with the other command): 0, 1 for a failed
// command, 2 for a usage error.
func ExitStatus(err error, stderr io.Writer) int { return cliout.ExitStatus(err, stderr) }
