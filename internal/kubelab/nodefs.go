package kubelab

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

// nodeBinds are the machine paths that are per node: each is bound, inside
// the node's private mount namespace, to a directory of the node. These
// are the paths kubelet, containerd (1.6 hardcodes its shim sockets under
// /run/containerd and pod netns files under /var/run/netns) and CNI
// plugins use whatever their configuration says.
var nodeBinds = []struct{ target, sub string }{
	{"/var/lib/kubelet", "kubelet"},
	{"/var/lib/containerd", "containerd"},
	{"/run/containerd", "run-containerd"},
	{"/etc/cni/net.d", "cni-net.d"},
	{"/opt/cni/bin", "cni-bin"},
	{"/var/lib/cni", "cni-state"},
	{"/run/netns", "netns"},
	{"/var/log", "log"}, // kubelet hardcodes /var/log/pods and /var/log/containers
	// A node agent's own paths (the Weft DaemonSet's hostPaths): its socket,
	// state and the userspace WireGuard UAPI sockets are per node.
	{"/run/weft", "run-weft"},
	{"/var/lib/weft", "weft-state"},
	{"/run/wireguard", "run-wireguard"},
}

// sysctlShadows are the global sysctls kubelet sets at start
// (setupKernelTunables in pkg/kubelet/cm/container_manager_linux.go),
// with the values it wants. Each is shadowed by a regular file holding
// that value inside the node's mount namespace: kubelet sees what it
// wants and writes nothing, and the machine's settings, shared with
// everybody, stay as they are.
var sysctlShadows = []struct{ path, value string }{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// planOverlays returns the directories to cover with a per-node overlay
// so that bind targets missing on the machine can be created without
// creating anything on the machine: for each missing target, its deepest
// existing ancestor (/var/lib for /var/lib/kubelet, /opt for
// /opt/cni/bin). An empty directory left on the machine would be shared
// by every node, and removing it would detach the mounts of a node
// running in another process.
func planOverlays(targets []string, isDir func(string) bool) ([]string, error) {
	var cand []string
	for _, t := range targets {
		if isDir(t) {
			continue
		}
		a := filepath.Dir(t)
		for !isDir(a) {
			a = filepath.Dir(a)
		}
		if a == "/" {
			return nil, fmt.Errorf("%s is missing and so is every parent below /: a node would have to overlay /", t)
		}
		cand = append(cand, a)
	}
	sort.Strings(cand)
	var out []string
	for _, c := range cand {
		covered := false
		for _, o := range out {
			if c == o || under(c, o) {
				covered = true
			}
		}
		if !covered {
			out = append(out, c)
		}
	}
	return out, nil
}

// under reports whether p is strictly below dir.
func under(p, dir string) bool {
	return strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// checkNodeDir refuses a node directory that the node's own mounts would
// hide or divert (it holds the sources of the binds).
func checkNodeDir(dir string, overlays []string) error {
	hidden := append([]string{"/proc", "/sys", "/dev"}, overlays...)
	for _, b := range nodeBinds {
		hidden = append(hidden, b.target)
	}
	for _, h := range hidden {
		if dir == h || under(dir, h) {
			return fmt.Errorf("kubelab: NodeSpec.Dir %s is under %s, which the node mounts over: use a directory elsewhere (e.g. t.TempDir())", dir, h)
		}
	}
	return nil
}

// shQuote quotes s for sh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// initScript is what the node's init runs in its fresh private mount
// namespace before it holds the namespace open (exec sleep): the node's
// own sysfs (so cadvisor lists only the node's interfaces) with the
// machine's cgroup mounts moved back on top, its own bpffs (pins per
// node), the overlays, the binds and the sysctl shadows; then every mount
// is made shared (so a pod with a HostToContainer hostPath of
// /var/run/netns sees pod namespaces made after it started) and it marks
// itself ready.
func initScript(dir string, overlays []string) string {
	q := shQuote
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("#!/bin/sh")
	w("# kubelab node init: runs in the node's private mount namespace.")
	w("set -eu")
	staging := filepath.Join(dir, "staging", "cgroup")
	w("mount --rbind /sys/fs/cgroup %s", q(staging))
	w("mount -t sysfs sysfs /sys")
	w("mount --move %s /sys/fs/cgroup", q(staging))
	w("mount -t bpf bpf /sys/fs/bpf")
	for i, o := range overlays {
		base := filepath.Join(dir, "overlay", fmt.Sprint(i))
		w("mount -t overlay overlay -o %s %s", q(fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", o, filepath.Join(base, "upper"), filepath.Join(base, "work"))), q(o))
	}
	for _, m := range nodeBinds {
		w("mkdir -p %s", q(m.target))
		w("mount --bind %s %s", q(filepath.Join(dir, m.sub)), q(m.target))
	}
	for _, s := range sysctlShadows {
		w("mount --bind %s %s", q(filepath.Join(dir, "sysctl", strings.ReplaceAll(s.path, "/", "."))), q("/proc/sys/"+s.path))
	}
	// Shared, as / is on a systemd machine, but in peer groups of the
	// node's own (unshare made every mount private first): nothing
	// propagates to the machine. containerd accepts a HostToContainer
	// mount only of a path whose mount (it does not resolve /var/run to
	// /run, so that is /) is shared or a slave; then new pod namespace
	// mounts under /run/netns reach such a container.
	w("mount --make-rshared /")
	w(": > %s", q(filepath.Join(dir, "init.ready")))
	w("exec sleep infinity")
	return b.String()
}
