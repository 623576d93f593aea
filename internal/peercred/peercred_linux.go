// Package peercred tells which process serves a unix socket, as the kernel
// reports it (SO_PEERCRED): meshctl finds the agent behind its API socket,
// the tunnel the WireGuard helper behind its UAPI socket, without pid files
// that could be stale.
package peercred

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// PID connects to the unix socket at path and returns the pid of the
// process that listens on it.
func PID(path string, timeout time.Duration) (int, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("socket %s: %w", path, err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("socket %s: %w", path, err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials of %s: %w", path, credErr)
	}
	return int(cred.Pid), nil
}
