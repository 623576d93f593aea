package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/internal/peercred"
)

// localAgentSupported reports whether this OS can run weft-agent: on
// Linux it can.
func localAgentSupported(string) error { return nil }

// explainForPlatform adds nothing on Linux: "the agent is not running"
// there means what it says.
func explainForPlatform(err error) error { return err }

func systemdRuns() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

func sameNetnsAsInit() bool {
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net")
	return err1 == nil && err2 == nil && self == init
}

func launchAgent(ctx context.Context, mode string, s launchSpec) (*agentProc, error) {
	args := []string{"--config", s.ConfigFile}
	switch mode {
	case runSystemd:
		unit := systemdUnit(s.Binary, s.ConfigFile)
		if old, err := os.ReadFile(systemdUnitPath); err != nil || string(old) != unit {
			if err := os.WriteFile(systemdUnitPath, []byte(unit), 0o644); err != nil {
				return nil, fmt.Errorf("installing %s: %w", systemdUnitPath, err)
			}
			if out, err := exec.CommandContext(ctx, "systemctl", "daemon-reload").CombinedOutput(); err != nil {
				return nil, fmt.Errorf("systemctl daemon-reload: %v: %s", err, out)
			}
		}
		// restart, not start: a rejoin rewrote the configuration.
		if out, err := exec.CommandContext(ctx, "systemctl", "enable", systemdUnitName).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("systemctl enable %s: %v: %s", systemdUnitName, err, out)
		}
		if out, err := exec.CommandContext(ctx, "systemctl", "restart", systemdUnitName).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("systemctl restart %s: %v: %s (journalctl -u weft-agent says why)", systemdUnitName, err, out)
		}
		return &agentProc{Describe: "systemd unit " + systemdUnitName + " (journalctl -u weft-agent for its log)"}, nil

	case runForeground:
		cmd := exec.Command(s.Binary, args...)
		cmd.Env = agentEnv(os.Environ())
		cmd.Stdout, cmd.Stderr = s.Out, s.Out
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", s.Binary, err)
		}
		return watch(cmd, fmt.Sprintf("foreground process %d", cmd.Process.Pid)), nil

	case runBackground:
		if err := os.MkdirAll(s.StateDir, 0o700); err != nil {
			return nil, err
		}
		logPath := filepath.Join(s.StateDir, "agent.log")
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening the agent log: %w", err)
		}
		defer logf.Close()
		var logFrom int64
		if fi, err := logf.Stat(); err == nil {
			logFrom = fi.Size()
		}
		cmd := exec.Command(s.Binary, args...)
		cmd.Env = agentEnv(os.Environ())
		cmd.Stdout, cmd.Stderr = logf, logf
		// Its own session: the agent outlives meshctl and the terminal.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", s.Binary, err)
		}
		pid := cmd.Process.Pid
		if err := os.WriteFile(filepath.Join(s.StateDir, "agent.pid"), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
			return nil, err
		}
		p := watch(cmd, fmt.Sprintf("background process %d (log: %s)", pid, logPath))
		p.logPath, p.logFrom = logPath, logFrom
		return p, nil
	}
	return nil, fmt.Errorf("unknown run mode %q", mode)
}

// stopBackgroundAgent ends an agent meshctl started in the background if
// it did not exit after leaving. Only the pid meshctl recorded is
// signalled, and only if it still runs weft-agent.
func stopBackgroundAgent(stateDir string) {
	pidFile := filepath.Join(stateDir, "agent.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	defer os.Remove(pidFile)
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "weft-agent" {
		return
	}
	for range 50 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
}

// agentPID returns the pid of the process serving the agent's socket, as
// the kernel reports it (SO_PEERCRED): whoever started it (a unit, a
// background process, `join --foreground` in another terminal).
func agentPID(socket string) (int, error) { return peercred.PID(socket, 2*time.Second) }

// stopAgentPID stops the weft-agent process pid with SIGTERM and waits up
// to timeout for it to exit. A pid that does not run weft-agent is not
// signalled.
func stopAgentPID(pid int, timeout time.Duration) error {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("inspecting the agent process %d: %w", pid, err)
	}
	if base := filepath.Base(strings.TrimSuffix(exe, " (deleted)")); base != "weft-agent" {
		return fmt.Errorf("the process serving the agent socket (pid %d, %s) is not weft-agent: stop it yourself", pid, exe)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping the agent (pid %d): %w", pid, err)
	}
	if !waitExit(pid, timeout) {
		return fmt.Errorf("the agent (pid %d) did not exit within %s of SIGTERM", pid, timeout)
	}
	return nil
}

// waitExit waits up to timeout for pid to exit; it reports whether it did.
func waitExit(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		// Gone, or a zombie its parent (`join --foreground`) has yet to reap.
		if !processRuns(pid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// processRuns says pid exists and is not a zombie.
func processRuns(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// isAgentProcess says whether pid runs weft-agent.
func isAgentProcess(pid int) bool {
	if pid <= 0 {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == "weft-agent"
}
