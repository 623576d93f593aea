package kubelab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// component is one long-running process (etcd, kube-apiserver, kubelet,
// ...) with its output in a log file.
type component struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{} // closed once the process has been reaped
	err     error         // its exit status, once done
}

// startComponent starts argv with stdout and stderr appended to logPath.
// The process dies with the test process (SIGKILL when it goes), so a
// crashed test leaves no etcd or kubelet running, and leads its own
// process group, so a ^C on the terminal reaches only the test.
func startComponent(name, logPath string, argv []string) (*component, error) {
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the log of %s: %w", name, err)
	}
	defer out.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = componentEnv()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, argv[0], err)
	}
	c := &component{name: name, logPath: logPath, cmd: cmd, started: time.Now(), done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// componentEnv is the environment of every component: the test's own,
// without what would point a component at another cluster or at the
// user's files.
func componentEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "KUBECONFIG", "ETCDCTL_API", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE":
			continue
		}
		if strings.HasPrefix(k, "ETCD_") {
			continue // etcd reads its flags from ETCD_* too
		}
		env = append(env, kv)
	}
	return env
}

func (c *component) pid() int { return c.cmd.Process.Pid }

func (c *component) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, then SIGKILL after grace. It returns once
// the process is reaped.
func (c *component) stop(grace time.Duration) error {
	if c == nil || c.exited() {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(grace):
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-c.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", c.name, c.pid())
	}
}

// tail returns the last n lines of the component's log.
func (c *component) tail(n int) string { return tailFile(c.logPath, n) }

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before; all in %s)", len(lines)-n, path)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// failed wraps err with the end of the component's log: the user sees why
// it failed, not only that it did.
func (c *component) failed(err error) error {
	status := "running"
	if c.exited() {
		status = fmt.Sprintf("exited: %v", c.err)
	}
	return fmt.Errorf("%s (%s, log %s): %w\n--- last lines of its log ---\n%s\n---", c.name, status, c.logPath, err, c.tail(logTailLines))
}

const logTailLines = 25

// errExited is what waitReady reports for a component that ended before
// it was ready.
var errExited = errors.New("exited before it was ready")

// waitReady polls check until it succeeds, the component exits, timeout
// passes or ctx ends; the error names the component and quotes its log.
func (c *component) waitReady(ctx context.Context, timeout time.Duration, what string, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 20 * time.Millisecond
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		if c.exited() {
			return c.failed(fmt.Errorf("%w (waiting for %s; last check: %v)", errExited, what, last))
		}
		select {
		case <-ctx.Done():
			return c.failed(fmt.Errorf("not ready after %v waiting for %s: %v", time.Since(c.started).Round(time.Millisecond), what, last))
		case <-c.done:
		case <-time.After(delay):
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// run runs a short command and returns its stdout; the error carries
// stderr.
func run(ctx context.Context, stdin string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = componentEnv()
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return stdout.String(), nil
}
