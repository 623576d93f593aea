package kubelab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vishvananda/netns"
)

// netnsDir is where named network namespaces live (`ip netns`, and the lab).
const netnsDir = "/var/run/netns"

var netnsNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$`)

// netnsPath checks that a named network namespace exists and returns its
// file.
func netnsPath(name string) (string, error) {
	if !netnsNameRE.MatchString(name) {
		return "", fmt.Errorf("%q is not a network namespace name (as `ip netns list` shows them)", name)
	}
	p := filepath.Join(netnsDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("network namespace %s: %w (create it first, e.g. with internal/lab)", name, err)
	}
	return p, nil
}

// dialIn returns a dialer whose sockets are made inside the network
// namespace at path: the test process reaches a lab address without any
// route in the machine's own namespace. The socket stays in the namespace
// for its life; only the thread that makes it switches, and it switches
// back (a thread that cannot is left locked, so Go retires it).
func dialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, fmt.Errorf("reading the current network namespace: %w", err)}
				return
			}
			defer orig.Close()
			target, err := netns.GetFromPath(path)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, fmt.Errorf("opening %s: %w", path, err)}
				return
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				runtime.UnlockOSThread()
				ch <- result{nil, fmt.Errorf("entering %s: %w", path, err)}
				return
			}
			var d net.Dialer
			c, derr := d.DialContext(ctx, network, addr)
			if err := netns.Set(orig); err != nil {
				if c != nil {
					c.Close()
				}
				ch <- result{nil, fmt.Errorf("leaving %s: %w", path, err)}
				return
			}
			runtime.UnlockOSThread()
			ch <- result{c, derr}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// nsID identifies a namespace (the inode of its /proc/<pid>/ns/<kind>).
type nsID struct{ dev, ino uint64 }

func nsOf(path string) (nsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// processesIn lists the processes whose namespace of kind ("mnt", "net")
// is id.
func processesIn(kind string, id nsID) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if got, err := nsOf(filepath.Join("/proc", e.Name(), "ns", kind)); err == nil && got == id {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cmdline is a process's command line, for messages.
func cmdline(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "?"
	}
	for i, b := range data {
		if b == 0 {
			data[i] = ' '
		}
	}
	return string(data)
}
