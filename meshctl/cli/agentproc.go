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
		&cli.DurationFlag{Name: "ready-timeout", Value: 60 * time.Second, Usage: "how long to wait for the agent to become ready"},
		&cli.DurationFlag{Name: "wait", Value: defaultConnectWait, Usage: "once the agent is ready, how long to wait for a WireGuard handshake with a peer (0: do not wait)"},
	}
}

// defaultConnectWait bounds --wait: a handshake through the lab or a NAT
// takes well under a second; 30 s covers a slow seed without leaving a
// cut-off node's user waiting for long.
const defaultConnectWait = 30 * time.Second

// checkWait refuses a --ready-timeout that could never see the agent
// ready, or a negative --wait, before anything is written or started.
func checkWait(c *cli.Context) error {
	if d := c.Duration("ready-timeout"); d <= 0 {
		return fmt.Errorf("--ready-timeout %s is not a positive duration: give how long to wait for the agent, e.g. --ready-timeout 2m", d)
	}
	if d := c.Duration("wait"); d < 0 {
		return fmt.Errorf("--wait %s is negative: give how long to wait for a handshake, e.g. --wait 1m, or --wait 0 not to wait", d)
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
	// logPath is the background agent's log, whose last lines say why it
	// exited early; this run's lines start at logFrom.
	logPath string
	logFrom int64
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
			if p.logPath != "" {
				if tail := logTail(p.logPath, p.logFrom, logTailLines); tail != "" {
					return fmt.Errorf("the agent (%s) exited before it was ready: %s; the end of %s:\n%s", p.Describe, why, p.logPath, tail)
				}
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

// logTailLines is how much of the agent's log an early exit shows: the
// error and what led to it, not the whole start-up.
const logTailLines = 15

// logTail returns the last n lines the file at path has after offset
// from, indented, or "" when it cannot be read or has none. At most its
// last 64 KiB are read: a log appended to by many runs stays cheap.
func logTail(path string, from int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxRead = 64 << 10
	off := from
	if fi, err := f.Stat(); err == nil && fi.Size()-off > maxRead {
		off = fi.Size() - maxRead
	}
	buf := make([]byte, maxRead)
	k, _ := f.ReadAt(buf, off)
	lines := strings.Split(strings.TrimRight(string(buf[:k]), "\n"), "\n")
	if off > from && len(lines) > 0 {
		lines = lines[1:] // cut in the middle of a line
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return "  " + strings.Join(lines, "\n  ")
}

// teardown runs `weft-agent teardown` for the configuration at cfgPath:
// it removes the WireGuard device and the eBPF datapath a stopped agent
// left for its restart, and prints what it removed.
func teardown(ctx context.Context, w io.Writer, binary, cfgPath string) error {
	cmd := exec.CommandContext(ctx, binary, "--config", cfgPath, "teardown")
	// The file alone says which device and pins are this node's: a stray
	// WEFT_NODE_NAME or WEFT_BPF_PIN_PATH must not point it at another's.
	cmd.Env = agentEnv(os.Environ())
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	if err != nil {
		return fmt.Errorf("removing the tunnel and datapath (%s --config %s teardown): %v: %s", binary, cfgPath, err, text)
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "removed ") || strings.HasPrefix(l, "no WireGuard") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	return nil
}

// agentEnv is env without the variables the agent reads its configuration
// from (WEFT_NODE_NAME, WEFT_ETCD_*, ...): an agent meshctl starts runs from
// the file up or join wrote, exactly as the systemd unit does, and a
// variable that happens to be set where meshctl runs cannot replace what the
// join service answered (the node name its certificate carries).
func agentEnv(env []string) []string {
	drop := map[string]bool{}
	for _, f := range config.Flags() {
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, name := range ev.GetEnvVars() {
				drop[name] = true
			}
		}
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !drop[name] {
			out = append(out, kv)
		}
	}
	return out
}
