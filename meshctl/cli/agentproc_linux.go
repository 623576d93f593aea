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
		cmd := exec.Command(s.Binary, args...)
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
		return watch(cmd, fmt.Sprintf("background process %d (log: %s)", pid, logPath)), nil
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
