package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procStart reads the start time of a process (clock ticks since boot);
// together with the PID it names one process for its whole life, so a
// recycled PID is never signalled by mistake. A zombie counts as gone.
func procStart(pid int) (uint64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0, false
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return start, true
}

func selfRef() (procRef, error) {
	start, ok := procStart(os.Getpid())
	if !ok {
		return procRef{}, errors.New("lab: cannot read this process's start time from /proc")
	}
	return procRef{Pid: os.Getpid(), Start: start}, nil
}

func (r procRef) alive() bool {
	if r.Pid <= 0 {
		return false
	}
	start, ok := procStart(r.Pid)
	return ok && start == r.Start
}

// Exec runs a command inside one of the lab's namespaces and returns its
// combined output. Only the network namespace is entered (nsenter --net),
// so the command sees the host's filesystem, bpffs included. ns may be a
// namespace name or a node, workload or router name.
func (l *Lab) Exec(ctx context.Context, ns string, args ...string) ([]byte, error) {
	ns, err := l.Resolve(ns)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, errors.New("lab: Exec needs a command")
	}
	out, err := exec.CommandContext(ctx, "nsenter", nsenterArgs(ns, args)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Command returns an unstarted command that runs args inside a lab
// namespace, for callers that need their own stdin/stdout (meshctl lab exec).
func (l *Lab) Command(ctx context.Context, ns string, args ...string) (*exec.Cmd, error) {
	ns, err := l.Resolve(ns)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, errors.New("lab: a command is needed")
	}
	return exec.CommandContext(ctx, "nsenter", nsenterArgs(ns, args)...), nil
}

func nsenterArgs(ns string, args []string) []string {
	return append([]string{"--net=" + NetnsPath(ns), "--"}, args...)
}

// Process is a long-running process started in a lab namespace. Its output
// (stdout and stderr) goes to a file; it is killed on Stop or lab Down. It
// leads its own process group, and what it leaves in that group when it
// exits is killed with it (processes a test starts must not outlive it).
type Process struct {
	Pid     int
	Name    string
	Netns   string
	Args    []string
	LogPath string

	start uint64
	lab   *Lab
	cmd   *exec.Cmd     // nil for a process started by another lab handle
	done  chan struct{} // closed when cmd has been waited for
	err   error

	stopOnce sync.Once
	stopErr  error
}

var procNameRE = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

// Start starts a long-running process inside a lab namespace (nsenter
// --net, so it shares the host's filesystem and bpffs). name labels the
// process in status and names its output file. The process leads its own
// process group, so Stop also ends the children it spawned.
func (l *Lab) Start(ns string, name string, args ...string) (*Process, error) {
	ns, err := l.Resolve(ns)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, errors.New("lab: Start needs a command")
	}
	if name == "" {
		name = filepath.Base(args[0])
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	base := procNameRE.ReplaceAllString(name, "_")
	logPath := filepath.Join(logDir(l.Name()), base+".log")
	for i := 2; ; i++ {
		if _, err := os.Stat(logPath); errors.Is(err, os.ErrNotExist) {
			break
		}
		logPath = filepath.Join(logDir(l.Name()), fmt.Sprintf("%s.%d.log", base, i))
	}
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating output file for %s: %w", name, err)
	}
	defer out.Close()
	cmd := exec.Command("nsenter", nsenterArgs(ns, args)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, ns, err)
	}
	p := &Process{
		Pid: cmd.Process.Pid, Name: name, Netns: ns, Args: append([]string(nil), args...), LogPath: logPath,
		lab: l, cmd: cmd, done: make(chan struct{}),
	}
	p.start, _ = procStart(p.Pid)
	go func() {
		// Wait for the exit without reaping: while the leader is a zombie
		// its PID, and so the group's ID, cannot be reused, and whatever
		// it left in its group is killed safely. Then reap.
		var info unix.Siginfo
		for {
			if err := unix.Waitid(unix.P_PID, p.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != unix.EINTR {
				break
			}
		}
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	rec := procRecord{procRef: procRef{Pid: p.Pid, Start: p.start}, Name: name, Netns: ns, Args: p.Args, Log: logPath}
	if err := l.state.update(func(st *stateFile) { st.Processes = append(st.Processes, rec) }); err != nil {
		l.log.Warn("recording a started process", "name", name, "pid", p.Pid, "err", err)
	}
	l.log.Debug("started", "name", name, "pid", p.Pid, "netns", ns, "output", logPath)
	return p, nil
}

// Output returns what the process has written so far.
func (p *Process) Output() string {
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(output of %s unavailable: %v)", p.Name, err)
	}
	return string(data)
}

// Done is closed when the process has exited. It is nil for a process
// found in the state of a lab another process started.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit status once Done is closed.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Running reports whether the process is still alive.
func (p *Process) Running() bool {
	if p.done != nil {
		select {
		case <-p.done:
			return false
		default:
			return true
		}
	}
	return procRef{Pid: p.Pid, Start: p.start}.alive()
}

// Stop ends the process and its process group: SIGTERM, then SIGKILL if it
// has not exited after a grace period. Stopping an exited process is not
// an error.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		p.stopErr = stopProcess(procRef{Pid: p.Pid, Start: p.start}, p.done)
		if p.lab != nil {
			p.lab.forget(p)
		}
	})
	return p.stopErr
}

const stopGrace = 3 * time.Second

// stopProcess signals the process group led by ref and waits for the
// leader to go. The group is signalled only while ref is verified to be
// the very process we started (PID and start time): its PGID is then ours.
// A group whose leader is already gone is left to the namespace scan of
// Down, since its number could by now belong to somebody else. done, if
// not nil, is closed when our own child has been reaped.
func stopProcess(ref procRef, done <-chan struct{}) error {
	exited := func() bool {
		if done != nil {
			// Our own child: done once reaped, after its group was killed.
			select {
			case <-done:
				return true
			default:
				return false
			}
		}
		return !ref.alive()
	}
	if exited() {
		return nil
	}
	if ref.alive() {
		_ = syscall.Kill(-ref.Pid, syscall.SIGTERM)
	}
	if waitFor(exited, stopGrace) {
		return nil
	}
	if ref.alive() {
		_ = syscall.Kill(-ref.Pid, syscall.SIGKILL)
	}
	if !waitFor(exited, 10*time.Second) {
		return fmt.Errorf("process %d did not exit after SIGKILL", ref.Pid)
	}
	return nil
}

func waitFor(cond func() bool, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(delay)
	}
}

func (l *Lab) forget(p *Process) {
	l.mu.Lock()
	for i, q := range l.procs {
		if q == p {
			l.procs = append(l.procs[:i], l.procs[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	err := l.state.update(func(st *stateFile) {
		for i, r := range st.Processes {
			if r.Pid == p.Pid && r.Start == p.start {
				st.Processes = append(st.Processes[:i], st.Processes[i+1:]...)
				break
			}
		}
	})
	if err != nil {
		l.log.Warn("updating lab state", "err", err)
	}
}

// Listen opens a listener inside a lab namespace (the socket belongs to the
// namespace for its whole life), e.g. Listen(node.Netns, "tcp", ":8080").
func (l *Lab) Listen(ns, network, address string) (net.Listener, error) {
	ns, err := l.Resolve(ns)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	err = inNetns(ns, func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket (UDP) inside a lab namespace.
func (l *Lab) ListenPacket(ns, network, address string) (net.PacketConn, error) {
	ns, err := l.Resolve(ns)
	if err != nil {
		return nil, err
	}
	var pc net.PacketConn
	err = inNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Dial connects from inside a lab namespace.
func (l *Lab) Dial(ctx context.Context, ns, network, address string) (net.Conn, error) {
	ns, err := l.Resolve(ns)
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = inNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
