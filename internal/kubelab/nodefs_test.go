package kubelab

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanOverlays(t *testing.T) {
	dirs := func(existing ...string) func(string) bool {
		return func(p string) bool {
			for _, e := range existing {
				if p == e {
					return true
				}
			}
			return false
		}
	}
	targets := []string{"/var/lib/kubelet", "/var/lib/containerd", "/run/containerd", "/etc/cni/net.d", "/opt/cni/bin", "/run/netns", "/var/log"}
	cases := []struct {
		what     string
		existing []string
		want     string
	}{
		{"a bare machine", []string{"/", "/var", "/var/lib", "/run", "/run/netns", "/etc", "/opt", "/var/log"}, "/etc /opt /run /var/lib"},
		{"everything there", append([]string{"/"}, targets...), ""},
		{"/etc/cni exists", []string{"/", "/var", "/var/lib", "/var/lib/kubelet", "/var/lib/containerd", "/run", "/run/containerd", "/run/netns", "/etc", "/etc/cni", "/opt", "/opt/cni", "/opt/cni/bin", "/var/log"}, "/etc/cni"},
		// /var/lib missing: /var covers both /var/lib/... and nothing else
		// is overlaid below it.
		{"no /var/lib", []string{"/", "/var", "/var/log", "/run", "/run/containerd", "/run/netns", "/etc", "/etc/cni", "/etc/cni/net.d", "/opt", "/opt/cni", "/opt/cni/bin"}, "/var"},
	}
	for _, c := range cases {
		got, err := planOverlays(targets, dirs(c.existing...))
		if err != nil {
			t.Errorf("%s: %v", c.what, err)
			continue
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%s: overlays %v, want %q", c.what, got, c.want)
		}
	}
	if _, err := planOverlays([]string{"/opt/cni/bin"}, dirs("/")); err == nil || !strings.Contains(err.Error(), "overlay /") {
		t.Errorf("a machine without /opt: err = %v, want a refusal to overlay /", err)
	}
}

func TestCheckNodeDir(t *testing.T) {
	for _, bad := range []string{"/var/lib/kubelet/x", "/run/netns/n1", "/var/log/nodes/n1", "/proc/x", "/var/lib/n1", "/run/n1"} {
		if err := checkNodeDir(bad, []string{"/var/lib", "/run"}); err == nil {
			t.Errorf("node dir %s passed, but the node mounts over it", bad)
		}
	}
	for _, good := range []string{"/tmp/TestX/001/n1", "/var/tmp/n1", "/running/n1"} {
		if err := checkNodeDir(good, []string{"/var/lib", "/run"}); err != nil {
			t.Errorf("node dir %s: %v", good, err)
		}
	}
}

func TestInitScript(t *testing.T) {
	s := initScript("/tmp/it's/n1", []string{"/opt", "/var/lib"})
	lines := strings.Split(strings.TrimSpace(s), "\n")
	idx := func(sub string) int {
		for i, l := range lines {
			if strings.Contains(l, sub) {
				return i
			}
		}
		t.Fatalf("init script has no line with %q:\n%s", sub, s)
		return -1
	}
	// Order matters: cgroups saved before sysfs is replaced, overlays
	// before the binds into them, shared propagation after every mount,
	// ready last.
	order := []string{
		"mount --rbind /sys/fs/cgroup",
		"mount -t sysfs sysfs /sys",
		"mount --move",
		"mount -t bpf bpf /sys/fs/bpf",
		"lowerdir=/opt,upperdir=/tmp/it'\\''s/n1/overlay/0/upper,workdir=/tmp/it'\\''s/n1/overlay/0/work' '/opt'",
		"lowerdir=/var/lib,",
		"mount --bind '/tmp/it'\\''s/n1/kubelet' '/var/lib/kubelet'",
		"mount --bind '/tmp/it'\\''s/n1/netns' '/run/netns'",
		"'/proc/sys/vm/overcommit_memory'",
		"mount --make-rshared /",
		"init.ready",
		"exec sleep infinity",
	}
	prev := -1
	for _, o := range order {
		i := idx(o)
		if i <= prev {
			t.Errorf("%q comes at line %d, before what must precede it (line %d):\n%s", o, i, prev, s)
		}
		prev = i
	}
	if lines[1] == "" || !strings.Contains(s, "set -eu") {
		t.Error("the init script must stop at the first failed mount (set -eu)")
	}
	for _, sh := range sysctlShadows {
		idx("'/proc/sys/" + sh.path + "'")
	}
}

func TestParseMountinfo(t *testing.T) {
	mp, fstype, ok := parseMountinfo(`36 25 0:31 / /sys/fs/cgroup/cpu\040set rw,nosuid - cgroup cgroup rw,cpuset`)
	if !ok || mp != "/sys/fs/cgroup/cpu set" || fstype != "cgroup" {
		t.Errorf("got %q %q %v", mp, fstype, ok)
	}
	mp, fstype, ok = parseMountinfo(`37 25 0:32 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw`)
	if !ok || mp != "/sys/fs/cgroup/unified" || fstype != "cgroup2" {
		t.Errorf("got %q %q %v", mp, fstype, ok)
	}
	if _, _, ok := parseMountinfo("garbage"); ok {
		t.Error("a line without fields parsed")
	}
}

func TestSpecValidation(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	_ = os.MkdirAll(filepath.Join(full, "x"), 0o755)
	good := ControlPlaneSpec{
		Netns: "wl-x-cp", IP: netip.MustParseAddr("198.18.1.10"), Dir: filepath.Join(dir, "cp"),
		ClusterCIDR: testClusterCIDR, ServiceCIDR: testServiceCIDR,
	}
	if err := good.validate(); err != nil || good.NodeCIDRMaskSize != 24 {
		t.Fatalf("a good spec: %v (mask %d)", err, good.NodeCIDRMaskSize)
	}
	cpCases := []struct {
		what string
		edit func(*ControlPlaneSpec)
		want string
	}{
		{"no netns", func(s *ControlPlaneSpec) { s.Netns = "" }, "Netns is empty"},
		{"no IP", func(s *ControlPlaneSpec) { s.IP = netip.Addr{} }, "IPv4 address"},
		{"IPv6", func(s *ControlPlaneSpec) { s.IP = netip.MustParseAddr("fd00::1") }, "IPv4 address"},
		{"unmasked cluster CIDR", func(s *ControlPlaneSpec) { s.ClusterCIDR = netip.MustParsePrefix("100.96.0.1/16") }, "ClusterCIDR"},
		{"overlap", func(s *ControlPlaneSpec) { s.ServiceCIDR = netip.MustParsePrefix("100.96.200.0/24") }, "overlap"},
		{"mask too short", func(s *ControlPlaneSpec) { s.NodeCIDRMaskSize = 16 }, "NodeCIDRMaskSize"},
		{"too many node ranges", func(s *ControlPlaneSpec) {
			s.ClusterCIDR = netip.MustParsePrefix("100.64.0.0/11")
			s.NodeCIDRMaskSize = 28
		}, "65536"},
		{"relative dir", func(s *ControlPlaneSpec) { s.Dir = "cp" }, "clean absolute path"},
		{"non-empty dir", func(s *ControlPlaneSpec) { s.Dir = full }, "not empty"},
		{"IP in the pod range", func(s *ControlPlaneSpec) { s.IP = netip.MustParseAddr("100.96.0.10") }, "inside the cluster"},
	}
	for _, c := range cpCases {
		s := good
		s.NodeCIDRMaskSize = 0
		c.edit(&s)
		if err := s.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", c.what, err, c.want)
		}
	}

	node := NodeSpec{Name: "n1", Netns: "wl-x-n1", IP: netip.MustParseAddr("198.18.1.11"), Dir: filepath.Join(dir, "n1")}
	if err := node.validate(); err != nil || node.CNI.Mode != CNIBridge {
		t.Fatalf("a good node spec: %v (mode %q)", err, node.CNI.Mode)
	}
	nodeCases := []struct {
		what string
		edit func(*NodeSpec)
		want string
	}{
		{"upper-case name", func(s *NodeSpec) { s.Name = "N1" }, "DNS label"},
		{"no netns", func(s *NodeSpec) { s.Netns = "" }, "Netns is empty"},
		{"no IP", func(s *NodeSpec) { s.IP = netip.Addr{} }, "IPv4 address"},
		{"comma in dir", func(s *NodeSpec) { s.Dir = "/tmp/a,b" }, "no commas"},
		{"bad mode", func(s *NodeSpec) { s.CNI.Mode = "calico" }, "CNI mode"},
		{"missing plugin", func(s *NodeSpec) { s.CNI.Plugins = []string{"/nonexistent/weft-cni"} }, "not a file"},
		{"missing image", func(s *NodeSpec) { s.Images = []string{"/nonexistent/img.tar"} }, "image"},
	}
	for _, c := range nodeCases {
		s := node
		c.edit(&s)
		if err := s.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", c.what, err, c.want)
		}
	}
}
