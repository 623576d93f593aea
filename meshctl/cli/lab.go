package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// The lab is its own binary, weft-lab (internal/lab/cmd/weft-lab, its
// commands in internal/lab/labcli): it builds network namespaces with
// netlink, which meshctl, the CLI that talks to agents over their socket,
// does not link (internal/deptest). `meshctl lab ARGS...` runs `weft-lab
// ARGS...`, as git and kubectl run their plugins; weft-lab speaks as
// `meshctl lab`, so its help and messages are the ones meshctl lab always
// had.

// labBinary is the lab's executable, looked for next to meshctl and then
// in PATH.
const labBinary = "weft-lab"

// executable is os.Executable; tests point it elsewhere.
var executable = os.Executable

func labCommand() *cli.Command {
	return &cli.Command{
		Name:      "lab",
		Usage:     "build and drive a network-namespace lab of sites, NAT and nodes (Linux, needs root)",
		UsageText: "meshctl lab up|status|exec|down [ARGS...]",
		Description: `Runs weft-lab, the lab's binary, with the rest of the command line:
'meshctl lab --help' lists its commands, 'meshctl lab up --help' explains one.
weft-lab is looked for next to meshctl ('make build' puts both in bin/), then
in PATH. See docs/lab.md.`,
		// Everything after "lab" is weft-lab's, --help included.
		SkipFlagParsing: true,
		HideHelp:        true,
		Action:          runLab,
		// Completion is weft-lab's too: it knows the lab's commands and
		// flags.
		BashComplete: func(c *cli.Context) {
			_ = passToLab(c, append(c.Args().Slice(), "--generate-bash-completion"))
		},
	}
}

func runLab(c *cli.Context) error { return passToLab(c, c.Args().Slice()) }

// passToLab runs weft-lab with args and returns its exit status as a
// cli.Exit error (nil for 0).
//
// When meshctl runs with the process's own stdin, stdout and stderr (the
// meshctl binary), weft-lab replaces meshctl by exec(2): it keeps the pid,
// the process group, the terminal and the streams, so Ctrl-C and SIGTERM
// reach the lab as they did when it was part of meshctl, killing meshctl
// (even SIGKILL) kills the lab's builder like before, and the exit status
// is weft-lab's own. Otherwise (a test, or a program calling Run with its
// own streams) weft-lab runs as a child connected to them, in meshctl's
// process group so Ctrl-C at a terminal reaches it too.
func passToLab(c *cli.Context, args []string) error {
	bin, err := findLab(c.Args().First())
	if err != nil {
		return err
	}
	if c.App.Reader == os.Stdin && c.App.Writer == os.Stdout && c.App.ErrWriter == os.Stderr {
		// Exec returns only when exec(2) failed: Windows has none, or bin
		// cannot be run. Running it as a child below then works or says
		// why.
		_ = syscall.Exec(bin, append([]string{bin}, args...), os.Environ())
	}
	cmd := exec.CommandContext(c.Context, bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.App.Reader, c.App.Writer, c.App.ErrWriter
	// Ending ctx is an interrupt, as Ctrl-C is: `lab up` then removes what
	// it built, instead of being killed halfway.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if code := exit.ExitCode(); code > 0 {
			// weft-lab has said what went wrong, if anything.
			return cli.Exit("", code)
		}
		return cli.Exit(fmt.Sprintf("meshctl: lab: %s: %v", bin, err), 1)
	}
	if err != nil {
		return fmt.Errorf("lab: running %s: %w", bin, err)
	}
	return nil
}

// findLab returns weft-lab next to the running meshctl (make build puts
// both in bin/, and a meshctl from one build then runs the lab from the
// same build), else weft-lab in PATH. sub is the lab command asked for,
// for the message when there is none.
func findLab(sub string) (string, error) {
	var next string
	if self, err := executable(); err == nil {
		// A meshctl reached through a symlink (/usr/local/bin/meshctl ->
		// .../bin/meshctl) looks next to the file itself.
		if real, err := filepath.EvalSymlinks(self); err == nil {
			self = real
		}
		next = filepath.Join(filepath.Dir(self), labBinary)
		if fi, err := os.Stat(next); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return next, nil
		}
	}
	if p, err := exec.LookPath(labBinary); err == nil {
		return filepath.Abs(p)
	}
	if runtime.GOOS != "linux" {
		// Without weft-lab here, what the user needs to hear is that the
		// lab is Linux's, not how to build it.
		cmd := "lab"
		if sub != "" && !strings.HasPrefix(sub, "-") {
			cmd += " " + sub
		}
		return "", fmt.Errorf("meshctl %s builds network namespaces, which %s does not have: run it on a Linux machine or VM as root (for example ssh -t HOST sudo meshctl %s ...)", cmd, runtime.GOOS, cmd)
	}
	where := "next to meshctl"
	if next != "" {
		where += " (" + next + ")"
	}
	return "", fmt.Errorf("lab: the lab's commands are the %s binary, which is not %s nor in PATH: `make build` puts it in bin/ next to meshctl; or build it (go build -o DIR/%s ./internal/lab/cmd/weft-lab) and put it next to meshctl or in PATH", labBinary, where, labBinary)
}
