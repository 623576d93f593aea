package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/internal/netnsdial"
)

// netnsDir is where `ip netns` keeps its bind mounts; the lab uses the same
// place so `ip netns`, `ip -n` and `nsenter --net` all see lab namespaces.
const netnsDir = "/var/run/netns"

// NetnsPath is the file that names a lab namespace, for `nsenter --net=`.
func NetnsPath(name string) string { return filepath.Join(netnsDir, name) }

// createNetns creates the namespaces with one `ip -batch` process: iproute2
// takes care of making the netns directory a shared mount, so namespaces are
// visible from every mount namespace, and one process keeps it fast.
func createNetns(names []string) error {
	if len(names) == 0 {
		return nil
	}
	var script bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&script, "netns add %s\n", n)
	}
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = &script
	cmd.SysProcAttr = diesWithUs()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("creating namespaces with ip netns add: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// deleteNetns removes a named namespace. The namespace itself (and every
// link in it) disappears once no process is left inside.
func deleteNetns(name string) error {
	err := netns.DeleteNamed(name)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
		// EINVAL: not a mount point (a half-created entry); remove the file.
		if rmErr := os.Remove(NetnsPath(name)); rmErr != nil && !os.IsNotExist(rmErr) {
			return fmt.Errorf("removing namespace %s: %w", name, rmErr)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing namespace %s: %w", name, err)
	}
	return nil
}

// diesWithUs makes a helper command die with the lab process, so that a
// killed `lab up` does not leave an ip or nft process creating namespaces
// after DownAll has cleaned up.
func diesWithUs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// listNetns returns the named namespaces that start with prefix.
func listNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(NetnsPath(name))
	return err == nil
}

// inNetns runs fn on an OS thread that has entered the named namespace.
// Sockets created by fn stay in that namespace after fn returns; /proc/sys/net
// opened by fn is the namespace's. The thread is switched back before it
// is released; if that fails the thread stays locked and Go discards it
// when the goroutine ends, so no other goroutine ever runs in the lab
// namespace by accident.
func inNetns(name string, fn func() error) error {
	return netnsdial.Run(NetnsPath(name), fn)
}

// sysctls writes net sysctls (paths relative to /proc/sys/net) inside a
// namespace.
func sysctls(ns string, kv ...string) error {
	return inNetns(ns, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			p := filepath.Join("/proc/sys/net", kv[i])
			if err := os.WriteFile(p, []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("setting net.%s in %s: %w", strings.ReplaceAll(kv[i], "/", "."), ns, err)
			}
		}
		return nil
	})
}
