package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
)

// How meshctl join and up start the agent.
const (
	// runForeground: the agent is meshctl's child; meshctl waits for it
	// and passes Ctrl-C on. For containers, the lab and debugging.
	runForeground = "foreground"
	// runSystemd: a weft-agent.service unit, enabled and started.
	runSystemd = "systemd"
	// runBackground: a detached process logging to <state-dir>/agent.log,
	// its pid in <state-dir>/agent.pid; for machines without systemd.
	runBackground = "background"
)

const (
	defaultConfigFile = "/etc/weft/agent.yaml"
	systemdUnitPath   = "/etc/systemd/system/weft-agent.service"
	systemdUnitName   = "weft-agent.service"
)

// agentProcFlags are the flags of commands that write the agent's
// configuration and start it.
func agentProcFlags() []cli.Flag {
	return []cli.Flag{
		socketFlag(),
		&cli.PathFlag{Name: "config-file", EnvVars: []string{"WEFT_CONFIG"}, Value: defaultConfigFile, Usage: "the agent configuration `FILE` to write"},
		&cli.PathFlag{Name: "state-dir", EnvVars: []string{"WEFT_STATE_DIR"}, Value: config.DefaultStateDir, Usage: "the agent's state `DIR` (keys, credentials, etcd data)"},
		&cli.PathFlag{Name: "agent-binary", EnvVars: []string{"WEFT_AGENT_BINARY"}, Usage: "weft-agent `PATH` (default: next to meshctl, else in PATH)"},
		&cli.BoolFlag{Name: "foreground", Usage: "run the agent in the foreground as meshctl's child instead of as a service"},
		&cli.DurationFlag{Name: "wait", Value: 60 * time.Second, Usage: "how long to wait for the agent to become ready"},
	}
}

// checkWait refuses a --wait that could never see the agent ready, before
// anything is written or started.
func checkWait(c *cli.Context) error {
	if d := c.Duration("wait"); d <= 0 {
		return fmt.Errorf("--wait %s is not a positive duration: give how long to wait for the agent, e.g. --wait 2m", d)
	}
	return nil
}

// agentLauncher starts the agent; tests replace it.
type agentLauncher func(ctx context.Context, mode string, spec launchSpec) (*agentProc, error)

// launchSpec is what a launcher needs.
type launchSpec struct {
	Binary     string
	ConfigFile string
	StateDir   string
	Out        io.Writer // the user's terminal, for foreground output
}

// agentProc is a started agent: exited is closed (with err set) when a
// child agent exits; nil for a systemd unit.
type agentProc struct {
	Describe string
	exited   chan struct{}
	err      error
	cmd      *exec.Cmd
}

var launch agentLauncher = launchAgent

// findAgentBinary returns --agent-binary, weft-agent next to meshctl, or
// weft-agent from PATH.
// geteuid is os.Geteuid; unit tests that fake the agent start pretend to
// be root.
var geteuid = os.Geteuid

// needRootFor refuses, before anything is written, a command that
// configures and starts the agent: it writes root-only files and the agent
// creates network devices and loads eBPF programs.
func needRootFor(cmd string) error {
	if geteuid() != 0 {
		return fmt.Errorf("meshctl %s needs root (it writes the agent's configuration and starts or stops the agent, which manages network devices and eBPF programs): run it with sudo", cmd)
	}
	return nil
}

func findAgentBinary(c *cli.Context) (string, error) {
	if p := c.Path("agent-binary"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--agent-binary: %w", err)
		}
		return filepath.Abs(p)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "weft-agent")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("weft-agent"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("weft-agent not found next to meshctl or in PATH: install it, or give --agent-binary PATH")
}

// runMode picks how to run the agent: --foreground, else systemd when it
// manages this machine and we are in its network namespace (a unit would
// otherwise run the agent in the wrong one, as in the lab), else a
// background process.
func runMode(c *cli.Context) string {
	if c.Bool("foreground") {
		return runForeground
	}
	if systemdRuns() && sameNetnsAsInit() {
		return runSystemd
	}
	return runBackground
}

// systemdUnit is the unit meshctl installs; Restart=always because the
// datapath survives restarts, so a crash costs nothing but the restart.
func systemdUnit(binary, configFile string) string {
	return fmt.Sprintf(`[Unit]
Description=Weft node agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=%s --config %s
Restart=always
RestartSec=2
# The agent stops without tearing the datapath down: traffic keeps flowing
# while it restarts. 'meshctl leave' removes the node for good.
KillSignal=SIGTERM
# Only what a node agent and its WireGuard helper need: links, routes, tc
# and the TUN device (NET_ADMIN), probes (NET_RAW), eBPF (BPF, PERFMON),
# bpffs and setns into workload namespaces (SYS_ADMIN), the memlock limit
# on older kernels (SYS_RESOURCE). No module loading, no ptrace, no raw I/O.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_RESOURCE
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
`, binary, configFile)
}

func watch(cmd *exec.Cmd, describe string) *agentProc {
	p := &agentProc{Describe: describe, exited: make(chan struct{}), cmd: cmd}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p
}

// waitReady polls the agent's API until it answers healthy, the agent
// exits, or the timeout passes.
func waitReady(ctx context.Context, cl *api.Client, p *agentProc, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var exited <-chan struct{}
	if p != nil {
		exited = p.exited
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		h, err := cl.Health(ctx)
		if err == nil && h.OK {
			return nil
		}
		if err == nil {
			var failing []string
			for _, ch := range h.Checks {
				if !ch.OK {
					failing = append(failing, ch.Name+": "+ch.Message)
				}
			}
			last = errors.New(strings.Join(failing, "; "))
		} else {
			last = err
		}
		select {
		case <-exited:
			why := "it exited with status 0"
			if p.err != nil {
				why = p.err.Error()
			}
			return fmt.Errorf("the agent (%s) exited before it was ready: %s", p.Describe, why)
		case <-ctx.Done():
			return fmt.Errorf("the agent was not ready after %s: %v", timeout, last)
		case <-tick.C:
		}
	}
}

// waitForeground waits for a foreground agent to exit, passing Ctrl-C
// and SIGTERM on to it.
func waitForeground(p *agentProc) error {
	if p == nil || p.exited == nil {
		return nil
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	for {
		select {
		case s := <-sig:
			_ = p.cmd.Process.Signal(s)
		case <-p.exited:
			return p.err
		}
	}
}

// agentAnswers reports whether an agent already serves the socket.
func agentAnswers(ctx context.Context, cl *api.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := cl.Health(ctx)
	return err == nil
}

// writeConfig validates cfg and writes it (0600; its directory 0700 when
// created), atomically.
func writeConfig(cfg *config.Config, path string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	data, err := cfg.Marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append([]byte("# Written by meshctl; see docs/cli.md for the keys.\n"), data...), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
