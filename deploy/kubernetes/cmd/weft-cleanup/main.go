// Command weft-cleanup removes Weft from a Kubernetes node once the agent's
// DaemonSet is gone: it waits until no agent answers on the node's socket,
// runs `weft-cni uninstall` (the plugin and its configuration) and
// `weft-agent teardown` (the WireGuard device and eBPF datapath the stopped
// agent left for its restart), logs "weft removed" and then waits, so the
// operator sees every node finish (the weft-cleanup DaemonSet of
// deploy/kubernetes/weft-uninstall.yaml and the chart's cleanup.enabled).
//
// It is a program rather than a shell script because the Weft image holds
// only Weft's static binaries.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
)

// RemovedMessage is what a node logs when Weft is gone from it.
const RemovedMessage = "weft removed"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var c cleanup
	app := &cli.App{
		Name:      "weft-cleanup",
		Usage:     "remove Weft from this Kubernetes node after the weft-agent DaemonSet is gone",
		UsageText: "weft-cleanup [--agent-socket PATH] [--agent-config FILE] [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--done-file FILE] | --done-file FILE --check",
		Description: `Waits until no agent answers on --agent-socket (at most --agent-wait), then
runs 'weft-cni uninstall' and 'weft-agent --config FILE teardown', writes
--done-file, logs "` + RemovedMessage + `" and waits for SIGTERM. A failed step
exits 1 (the kubelet runs it again). The node's state dir (keys, credentials)
stays. With --check it only reports, by its exit status, whether --done-file
exists (the pod's readiness probe).`,
		HideHelpCommand: true,
		Writer:          stdout,
		ErrWriter:       stderr,
		Flags: []cli.Flag{
			&cli.PathFlag{Name: "agent-socket", Value: "/run/weft/agent.sock", Usage: "the agent's API socket `PATH`", Destination: &c.socket},
			&cli.PathFlag{Name: "agent-config", Value: "/var/lib/weft/agent.yaml", Usage: "the agent configuration `FILE` meshctl join wrote", Destination: &c.config},
			&cli.PathFlag{Name: "cni-bin-dir", Value: "/host/opt/cni/bin", Usage: "the node's CNI binary `DIR`", Destination: &c.binDir},
			&cli.PathFlag{Name: "cni-conf-dir", Value: "/host/etc/cni/net.d", Usage: "the node's CNI configuration `DIR`", Destination: &c.confDir},
			&cli.PathFlag{Name: "done-file", Usage: "`FILE` written once the node is clean", Destination: &c.doneFile},
			&cli.DurationFlag{Name: "agent-wait", Value: 2 * time.Minute, Usage: "how long to wait for a running agent to stop", Destination: &c.agentWait},
			&cli.PathFlag{Name: "weft-cni", Value: "/usr/bin/weft-cni", Usage: "weft-cni `PATH`", Destination: &c.cniBinary},
			&cli.PathFlag{Name: "weft-agent", Value: "/usr/bin/weft-agent", Usage: "weft-agent `PATH`", Destination: &c.agentBinary},
			&cli.BoolFlag{Name: "check", Usage: "only exit 0 when --done-file exists, 1 otherwise"},
		},
		Action: func(cc *cli.Context) error {
			if cc.Args().Present() {
				return fmt.Errorf("unexpected argument %q (see --help)", cc.Args().First())
			}
			if cc.Bool("check") {
				return checkDone(c.doneFile)
			}
			c.out = stdout
			c.node = os.Getenv("NODE_NAME")
			c.poll = time.Second
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if err := c.run(ctx); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintf(stderr, "weft-cleanup: %v\n", err)
		return 1
	}
	return 0
}

// checkDone is the readiness probe: the node is clean once the done file
// exists.
func checkDone(file string) error {
	if file == "" {
		return errors.New("--check needs --done-file FILE")
	}
	if _, err := os.Stat(file); err != nil {
		return fmt.Errorf("not done yet: %w", err)
	}
	return nil
}

// cleanup is one node's removal.
type cleanup struct {
	socket, config  string
	binDir, confDir string
	doneFile        string
	agentWait, poll time.Duration
	cniBinary       string
	agentBinary     string
	node            string
	out             io.Writer
}

// run removes Weft from the node, or says which step failed. Both removal
// steps run even when the first fails, so one run reports everything left.
func (c *cleanup) run(ctx context.Context) error {
	if err := c.waitAgentStopped(ctx); err != nil {
		return err
	}
	var errs []error
	fmt.Fprintf(c.out, "removing weft-cni from %s and %s\n", c.binDir, c.confDir)
	if err := c.exec(ctx, c.cniBinary, "uninstall", "--bin-dir", c.binDir, "--conf-dir", c.confDir); err != nil {
		errs = append(errs, fmt.Errorf("removing weft-cni: %w", err))
	}
	switch _, err := os.Stat(c.config); {
	case errors.Is(err, os.ErrNotExist):
		// meshctl join writes it before it starts the agent: without it no
		// agent of this node ever ran, so there is no device or datapath.
		fmt.Fprintf(c.out, "no agent configuration at %s: the agent never joined on this node, no tunnel or datapath to remove\n", c.config)
	case err != nil:
		errs = append(errs, fmt.Errorf("reading the agent configuration: %w", err))
	default:
		fmt.Fprintf(c.out, "removing the agent's WireGuard device and eBPF datapath (configuration %s)\n", c.config)
		if err := c.exec(ctx, c.agentBinary, "--config", c.config, "teardown"); err != nil {
			errs = append(errs, fmt.Errorf("removing the tunnel and datapath: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if c.doneFile != "" {
		if err := os.MkdirAll(filepath.Dir(c.doneFile), 0o755); err != nil {
			return fmt.Errorf("marking the node done: %w", err)
		}
		if err := os.WriteFile(c.doneFile, []byte(RemovedMessage+"\n"), 0o644); err != nil {
			return fmt.Errorf("marking the node done: %w", err)
		}
	}
	node := ""
	if c.node != "" {
		node = " from node " + c.node
	}
	fmt.Fprintf(c.out, "%s%s (its state dir with keys and credentials stays); delete this DaemonSet once every node says so\n", RemovedMessage, node)
	return nil
}

// waitAgentStopped returns once nothing answers on the agent's socket:
// tearing down under a running agent would race it. The weft-agent
// DaemonSet's pods take up to their grace period to go.
func (c *cleanup) waitAgentStopped(ctx context.Context) error {
	deadline := time.Now().Add(c.agentWait)
	said := false
	for {
		conn, err := net.DialTimeout("unix", c.socket, time.Second)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
				return nil
			}
			return fmt.Errorf("checking for a running agent on %s: %w", c.socket, err)
		}
		conn.Close()
		if !said {
			fmt.Fprintf(c.out, "an agent still answers on %s: waiting up to %s for it to stop\n", c.socket, c.agentWait)
			said = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("an agent still answers on %s after %s: remove the weft-agent DaemonSet first (helm uninstall, or kubectl delete -f weft.yaml)", c.socket, c.agentWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.poll):
		}
	}
}

// exec runs one step with its output in this pod's log.
func (c *cleanup) exec(ctx context.Context, bin string, args ...string) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %v: %w", bin, args, err)
	}
	return nil
}
