package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	// Tailscale's fork of wireguard-go, not golang.zx2c4.com/wireguard: same
	// device/tun/conn/ipc API and UAPI protocol, and about 1.5x the TCP
	// throughput on the same machine (docs/tunnel.md, "Performance").
	"github.com/tailscale/wireguard-go/conn"
	"github.com/tailscale/wireguard-go/device"
	"github.com/tailscale/wireguard-go/ipc"
	"github.com/tailscale/wireguard-go/tun"
)

// HelperFunc returns the command that runs the userspace device for
// interface name with the given MTU; the command must end up calling
// RunUserspaceDevice (see SelfHelper and RunHelperFromEnv).
type HelperFunc func(name string, mtu int) *exec.Cmd

// Environment of a helper started by SelfHelper.
const (
	envHelperName = "WEFT_TUNNEL_DEVICE"
	envHelperMTU  = "WEFT_TUNNEL_MTU"
)

// SelfHelper re-executes the running binary with args (e.g. a hidden
// subcommand) and the device parameters in its environment; that
// subcommand calls RunHelperFromEnv.
func SelfHelper(args ...string) HelperFunc {
	return func(name string, mtu int) *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = "/proc/self/exe"
		}
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), envHelperName+"="+name, envHelperMTU+"="+strconv.Itoa(mtu))
		return cmd
	}
}

// HelperRequested says this process was started by SelfHelper.
func HelperRequested() bool { return os.Getenv(envHelperName) != "" }

// RunHelperFromEnv runs the userspace device described by the environment
// SelfHelper set, until ctx ends.
func RunHelperFromEnv(ctx context.Context, log *slog.Logger) error {
	name := os.Getenv(envHelperName)
	mtu, err := strconv.Atoi(os.Getenv(envHelperMTU))
	if err != nil {
		return fmt.Errorf("%w: %s=%q is not a number", ErrBadConfig, envHelperMTU, os.Getenv(envHelperMTU))
	}
	return RunUserspaceDevice(ctx, name, UserspaceOptions{MTU: mtu, Logger: log, PprofSocket: os.Getenv(envHelperPprof)})
}

// UserspaceOptions tune the userspace device.
type UserspaceOptions struct {
	MTU    int
	Logger *slog.Logger
	// PprofSocket, when set, is a unix socket path on which the device
	// serves Go CPU and heap profiles (WEFT_TUNNEL_PPROF for a helper).
	PprofSocket string
}

// RunUserspaceDevice creates a TUN interface named name, runs wireguard-go
// on it and serves the UAPI socket (so wgctrl and `wg` configure it) until
// ctx ends or the device fails. It is the body of the helper process; the
// device, its peers and its sessions live exactly as long as this call.
func RunUserspaceDevice(ctx context.Context, name string, opts UserspaceOptions) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: interface name %q", ErrBadConfig, name)
	}
	if opts.MTU == 0 {
		opts.MTU = 1420
	}
	if err := checkMTU(opts.MTU); err != nil {
		return err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("interface", name)
	// The TUN is created with IFF_VNET_HDR: wireguard-go then enables TSO
	// and USO offloads, so the kernel hands it 64 KiB TCP segments that it
	// encrypts as a batch and sends with UDP GSO.
	tdev, err := tun.CreateTUN(name, opts.MTU)
	if err != nil {
		return fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		tdev.Close()
		return fmt.Errorf("opening UAPI socket for %s: %w", name, err)
	}
	wlog := &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) { // skip formatting on the data path
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { log.Error(fmt.Sprintf(format, args...)) },
	}
	bind := newRoamingBind(conn.NewDefaultBind(), log)
	defer bind.stop()
	dev := device.NewDevice(tdev, bind, wlog)
	bind.attach(dev)
	defer dev.Close()
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		return fmt.Errorf("listening on UAPI socket for %s: %w", name, err)
	}
	defer uapi.Close()
	errs := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				errs <- err
				return
			}
			go serveUAPI(c, dev, bind)
		}
	}()
	if opts.PprofSocket != "" {
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			if err := servePprof(pctx, opts.PprofSocket, log); err != nil {
				log.Error("profiles unavailable", "err", err)
			}
		}()
	}
	log.Info("userspace WireGuard device running", "mtu", opts.MTU, "batch", dev.BatchSize())
	select {
	case <-ctx.Done():
		log.Info("stopping userspace WireGuard device")
		return nil
	case err := <-errs:
		return fmt.Errorf("UAPI socket of %s: %w", name, err)
	case <-dev.Wait():
		return fmt.Errorf("userspace WireGuard device %s closed", name)
	}
}

// helperProc is a running helper; cmd is nil when the helper was started
// by an earlier agent and this one only knows its pid.
type helperProc struct {
	pid  int
	cmd  *exec.Cmd
	done chan struct{}
	log  string

	watchOnce sync.Once
	gone      chan struct{}
}

func (s *system) startHelper(ctx context.Context, cfg Config, mtu int) (*helperProc, error) {
	cmd := cfg.Helper(cfg.Name, mtu)
	logPath := filepath.Join(cfg.StateDir, cfg.Name+"-device.log")
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening helper log: %w", err)
	}
	defer lf.Close()
	if cmd.Stdout == nil {
		cmd.Stdout = lf
	}
	if cmd.Stderr == nil {
		cmd.Stderr = lf
	}
	// Its own session: the helper must outlive the agent, including a
	// Ctrl-C or SIGTERM sent to the agent's process group.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := s.inNetns(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting userspace WireGuard helper: %w", err)
	}
	h := &helperProc{pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), log: logPath}
	if cfg.HelperStarted != nil {
		if err := cfg.HelperStarted(h.pid); err != nil && cfg.Logger != nil {
			cfg.Logger.Warn("the userspace WireGuard helper stays in this process's cgroups: restarting the agent's pod will stop the tunnel", "pid", h.pid, "err", err)
		}
	}
	go func() {
		_ = cmd.Wait() // reap it if it dies while this agent runs
		close(h.done)
	}()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-h.done:
			return nil, fmt.Errorf("userspace WireGuard helper exited during start-up: %s", tailFile(logPath))
		case <-ctx.Done():
			_ = h.stop(5 * time.Second)
			return nil, ctx.Err()
		case <-deadline.C:
			_ = h.stop(5 * time.Second)
			return nil, fmt.Errorf("userspace WireGuard helper did not open %s within 15s: %s", uapiPath(cfg.Name), tailFile(logPath))
		case <-tick.C:
		}
		if pid, err := uapiPeerPID(cfg.Name); err == nil && pid == h.pid {
			if _, err := s.nl.LinkByName(cfg.Name); err == nil {
				return h, nil
			}
		}
	}
}

// stop ends the helper by pid (SIGTERM, then SIGKILL) and waits for it.
func (h *helperProc) stop(grace time.Duration) error {
	if err := syscall.Kill(h.pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if h.exited() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(h.pid, syscall.SIGKILL)
	for range 100 {
		if h.exited() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("pid %d did not exit", h.pid)
}

// exitCh is closed when the helper exits: at once for our child (its
// reaper closes done), through a pidfd for one an earlier agent started.
func (h *helperProc) exitCh() <-chan struct{} {
	if h.done != nil {
		return h.done
	}
	h.watchOnce.Do(func() {
		h.gone = make(chan struct{})
		go watchPid(h.pid, h.gone)
	})
	return h.gone
}

// watchPid closes gone when pid exits. A pidfd becomes readable when its
// process ends; a pid that is already gone closes it at once.
func watchPid(pid int, gone chan struct{}) {
	defer close(gone)
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			return
		}
	}
}

func (h *helperProc) exited() bool {
	if h.done != nil {
		select {
		case <-h.done:
			return true
		default:
			return false
		}
	}
	// Not our child: gone when signal 0 fails, or a zombie waiting for
	// whoever adopted it.
	if err := syscall.Kill(h.pid, 0); err != nil {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", h.pid))
	if err != nil {
		return true
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return true
	}
	return false
}

func tailFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log (" + err.Error() + ")"
	}
	if len(b) > 1000 {
		b = b[len(b)-1000:]
	}
	return fmt.Sprintf("log %s ends with: %s", path, bytes.TrimSpace(b))
}
