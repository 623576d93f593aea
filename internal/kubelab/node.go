package kubelab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/ociimage"
)

// CNIMode is how a node's pod network is set up.
type CNIMode string

const (
	// CNIBridge is the baseline: containerd writes a bridge + host-local
	// config from a template once kubelet hands it the node's podCIDR.
	// Pods on one node reach each other; across nodes they need a route
	// per podCIDR (the gap the Weft CNI fills).
	CNIBridge CNIMode = "bridge"
	// CNINone leaves /etc/cni/net.d empty: the node stays NotReady until
	// a CNI (say, a DaemonSet) installs a config.
	CNINone CNIMode = "none"
)

// CNISpec is a node's pod network.
type CNISpec struct {
	Mode CNIMode // "" is CNIBridge
	// Plugins are plugin binaries copied into the node's /opt/cni/bin,
	// next to a copy of the machine's containernetworking-plugins.
	Plugins []string
}

// NodeSpec describes one kubelet node.
type NodeSpec struct {
	// Name is the Node's name (--hostname-override): a DNS label.
	Name string
	// Netns is the node's (existing) network namespace, by name; one
	// node per namespace.
	Netns string
	// IP is the node's address in Netns (--node-ip, kubelet's listen
	// address); the control plane must reach it.
	IP netip.Addr
	// Dir holds the node's state (kubelet, containerd, CNI, logs). It is
	// created (it must not exist or be empty) and removed by Close.
	Dir string
	CNI CNISpec
	// Images are OCI layout tars (ociimage.Write) imported into the
	// node's containerd before kubelet starts; the pause image
	// (ociimage.PauseName) is always imported. Pods use them with
	// imagePullPolicy: Never.
	Images []string
	// Log receives progress lines (nil: none).
	Log *slog.Logger
}

// Node is a running kubelet node: a private mount namespace (held open by
// the node's init process) in the node's network namespace, with its own
// containerd and kubelet.
type Node struct {
	spec NodeSpec
	cp   *ControlPlane
	log  *slog.Logger

	cgroups *cgroupSet
	init    *component
	mntNS   nsID
	netNS   nsID

	containerd, kubelet *component

	closeOnce sync.Once
	closeErr  error
}

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Start-up bounds of a node (it is Ready in 1-2 s when the machine is
// idle).
const (
	initTimeout       = 15 * time.Second
	containerdTimeout = 30 * time.Second
	kubeletTimeout    = 60 * time.Second
	importTimeout     = 60 * time.Second
	kubeletHealthz    = "http://127.0.0.1:10248/healthz"
)

// requiredTools are the programs a node runs, with the Debian packages
// that have them.
var requiredTools = []struct{ name, pkg string }{
	{"containerd", "containerd"}, {"ctr", "containerd"}, {"runc", "runc"},
	{"nsenter", "util-linux"}, {"unshare", "util-linux"}, {"mount", "mount"},
	{"iptables", "iptables"}, {"sleep", "coreutils"},
}

// cniPluginDir is where Debian's containernetworking-plugins installs.
var cniPluginDir = "/usr/lib/cni"

func (s *NodeSpec) validate() error {
	switch {
	case !nodeNameRE.MatchString(s.Name):
		return fmt.Errorf("kubelab: NodeSpec.Name %q: use a DNS label (lower-case letters, digits, dashes; at most 63)", s.Name)
	case s.Netns == "":
		return fmt.Errorf("kubelab: node %s: NodeSpec.Netns is empty: name the node's network namespace", s.Name)
	case !s.IP.IsValid() || !s.IP.Is4():
		return fmt.Errorf("kubelab: node %s: NodeSpec.IP %v: give the node's IPv4 address in %s", s.Name, s.IP, s.Netns)
	case strings.ContainsAny(s.Dir, ",: \t\n"):
		return fmt.Errorf("kubelab: node %s: NodeSpec.Dir %q: no commas, colons or spaces (it is part of overlay mount options)", s.Name, s.Dir)
	}
	switch s.CNI.Mode {
	case "":
		s.CNI.Mode = CNIBridge
	case CNIBridge, CNINone:
	default:
		return fmt.Errorf("kubelab: node %s: CNI mode %q: use %q or %q", s.Name, s.CNI.Mode, CNIBridge, CNINone)
	}
	for _, p := range s.CNI.Plugins {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("kubelab: node %s: CNI plugin %s is not a file: %v", s.Name, p, err)
		}
	}
	for _, img := range s.Images {
		if _, err := os.Stat(img); err != nil {
			return fmt.Errorf("kubelab: node %s: image %w", s.Name, err)
		}
	}
	return checkDir("NodeSpec.Dir", s.Dir)
}

// StartNode starts a kubelet node in spec.Netns and returns once kubelet
// is healthy and its Node is registered, and, with the bridge CNI, Ready
// with a podCIDR. The node's init enters the namespace with `nsenter
// --net`, makes a private mount namespace (`unshare --mount --propagation
// private`) and sets it up (see the package doc); containerd and kubelet
// run inside both namespaces. On error everything started is undone.
func (cp *ControlPlane) StartNode(ctx context.Context, spec NodeSpec) (*Node, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if _, err := BinDir(binKubelet); err != nil {
		return nil, err
	}
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t.name); err != nil {
			return nil, fmt.Errorf("kubelab: a node needs %s (Debian package %s; scripts/install-deps.sh installs it): %w", t.name, t.pkg, err)
		}
	}
	nsPath, err := netnsPath(spec.Netns)
	if err != nil {
		return nil, err
	}
	log := spec.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{spec: spec, cp: cp, log: log.With("kubelab", "node", "node", spec.Name)}
	if n.netNS, err = nsOf(nsPath); err != nil {
		return nil, err
	}
	if err := cp.addNode(n); err != nil {
		return nil, err
	}
	begin := time.Now()
	if err := n.start(ctx); err != nil {
		if cerr := n.teardown(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("and undoing the start: %w", cerr))
		} else {
			_ = os.RemoveAll(spec.Dir)
		}
		cp.removeNode(n)
		return nil, fmt.Errorf("kubelab: starting node %s in %s: %w", spec.Name, spec.Netns, err)
	}
	n.log.Info("node started", "took", time.Since(begin).Round(time.Millisecond), "ip", spec.IP, "cni", spec.CNI.Mode)
	return n, nil
}

func (n *Node) path(parts ...string) string {
	return filepath.Join(append([]string{n.spec.Dir}, parts...)...)
}

func (n *Node) start(ctx context.Context) error {
	var targets []string
	for _, b := range nodeBinds {
		targets = append(targets, b.target)
	}
	overlays, err := planOverlays(targets, func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && st.IsDir()
	})
	if err != nil {
		return err
	}
	if err := checkNodeDir(n.spec.Dir, overlays); err != nil {
		return err
	}
	if err := n.writeFiles(overlays); err != nil {
		return err
	}
	if n.cgroups, err = createCgroups(cgroupName(n.spec.Netns)); err != nil {
		return err
	}

	// The init: the holder of the node's mount namespace.
	nsPath, _ := netnsPath(n.spec.Netns)
	n.init, err = startComponent("node init", n.path("init.log"),
		[]string{"nsenter", "--net=" + nsPath, "--", "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", n.path("init.sh")})
	if err != nil {
		return err
	}
	if err := n.init.waitReady(ctx, initTimeout, "the node's mounts (init.sh)", func(context.Context) error {
		_, err := os.Stat(n.path("init.ready"))
		return err
	}); err != nil {
		return err
	}
	if n.mntNS, err = nsOf(fmt.Sprintf("/proc/%d/ns/mnt", n.init.pid())); err != nil {
		return fmt.Errorf("reading the node's mount namespace: %w", err)
	}
	n.log.Info("node namespaces ready", "init pid", n.init.pid(), "overlays", overlays, "took", time.Since(n.init.started).Round(time.Millisecond))

	n.containerd, err = startComponent("containerd", n.path("containerd.log"), n.inside("containerd", "--config", n.path("containerd.toml")))
	if err != nil {
		return err
	}
	sock := n.path("run-containerd", "containerd.sock") // the same socket, seen from the machine
	if err := n.containerd.waitReady(ctx, containerdTimeout, "containerd's socket", func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		return err
	}
	n.log.Info("containerd ready", "pid", n.containerd.pid(), "took", time.Since(n.containerd.started).Round(time.Millisecond))

	importStart := time.Now()
	for _, img := range append([]string{n.path("pause.tar")}, n.spec.Images...) {
		if err := n.ImportImage(ctx, img); err != nil {
			return n.containerd.failed(err)
		}
	}
	n.log.Info("images imported", "count", 1+len(n.spec.Images), "took", time.Since(importStart).Round(time.Millisecond))

	n.kubelet, err = startComponent("kubelet", n.path("kubelet.log"), n.inside(filepath.Join(n.cp.bin, binKubelet),
		"--config="+n.path("kubelet.yaml"),
		"--kubeconfig="+n.path("kubelet.kubeconfig"),
		"--hostname-override="+n.spec.Name,
		"--node-ip="+n.spec.IP.String(),
	))
	if err != nil {
		return err
	}
	nsPlace, _ := inNetns(n.spec.Netns)
	health := nsPlace.httpClient(nil, nil)
	if err := n.kubelet.waitReady(ctx, kubeletTimeout, "kubelet "+kubeletHealthz, func(ctx context.Context) error {
		return getOK(ctx, health, kubeletHealthz, "ok")
	}); err != nil {
		return err
	}
	n.log.Info("kubelet healthy", "pid", n.kubelet.pid(), "took", time.Since(n.kubelet.started).Round(time.Millisecond))
	want := "its Node registered"
	if n.spec.CNI.Mode == CNIBridge {
		want = "its Node Ready with a podCIDR"
	}
	var last *corev1.Node
	if err := n.kubelet.waitReady(ctx, kubeletTimeout, want, func(ctx context.Context) error {
		node, err := n.cp.client.CoreV1().Nodes().Get(ctx, n.spec.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		last = node
		if n.spec.CNI.Mode != CNIBridge {
			return nil
		}
		if node.Spec.PodCIDR == "" {
			return errors.New("no podCIDR yet (kube-controller-manager allocates it)")
		}
		if !NodeReady(node) {
			return fmt.Errorf("not Ready: %s", readyMessage(node))
		}
		return nil
	}); err != nil {
		return err
	}
	n.log.Info("node registered", "ready", NodeReady(last), "podCIDR", last.Spec.PodCIDR, "after kubelet start", time.Since(n.kubelet.started).Round(time.Millisecond))
	return nil
}

// NodeReady reports whether node's Ready condition is True.
func NodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func readyMessage(node *corev1.Node) string {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return fmt.Sprintf("%s: %s", c.Reason, c.Message)
		}
	}
	return "no Ready condition yet"
}

// inside is argv run in the node's network and mount namespaces.
func (n *Node) inside(argv ...string) []string {
	return append([]string{"nsenter", "--target=" + strconv.Itoa(n.init.pid()), "--mount", "--net", "--"}, argv...)
}

// writeFiles lays out Dir: the bind sources, certificates, configs, the
// sysctl shadows, the pause image and the init script.
func (n *Node) writeFiles(overlays []string) error {
	if err := os.MkdirAll(n.spec.Dir, 0o700); err != nil {
		return err
	}
	dirs := []string{"staging/cgroup", "sysctl", "pki"}
	for _, b := range nodeBinds {
		dirs = append(dirs, b.sub)
	}
	for i := range overlays {
		dirs = append(dirs, fmt.Sprintf("overlay/%d/upper", i), fmt.Sprintf("overlay/%d/work", i))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	for _, s := range sysctlShadows {
		if err := os.WriteFile(n.path("sysctl", strings.ReplaceAll(s.path, "/", ".")), []byte(s.value+"\n"), 0o644); err != nil {
			return err
		}
	}
	// /opt/cni/bin is a copy, not a link to the machine's plugins: a CNI
	// installer writes into it.
	plugins, err := os.ReadDir(cniPluginDir)
	if err != nil {
		return fmt.Errorf("the CNI plugins (Debian package containernetworking-plugins): %w", err)
	}
	for _, p := range plugins {
		if p.Type().IsRegular() {
			if err := copyFile(filepath.Join(cniPluginDir, p.Name()), n.path("cni-bin", p.Name()), 0o755); err != nil {
				return err
			}
		}
	}
	for _, p := range n.spec.CNI.Plugins {
		if err := copyFile(p, n.path("cni-bin", filepath.Base(p)), 0o755); err != nil {
			return err
		}
	}

	pki := n.cp.pki
	caFile := n.path("pki", "ca.crt")
	if err := os.WriteFile(caFile, pki.ca.certPEM, 0o644); err != nil {
		return err
	}
	cr, err := pki.client(n.cp.Server(), "system:node:"+n.spec.Name, "system:nodes")
	if err != nil {
		return err
	}
	if err := cr.writeKubeconfig(n.path("kubelet.kubeconfig"), "system:node:"+n.spec.Name); err != nil {
		return err
	}
	// A serving certificate from the cluster CA, so the apiserver verifies
	// the kubelet it talks to (--kubelet-certificate-authority).
	srvCert, srvKey, err := pki.ca.issueFiles(n.path("pki"), "kubelet-serving", certSpec{
		cn: "system:node:" + n.spec.Name, orgs: []string{"system:nodes"}, server: true,
		ips: []netip.Addr{n.spec.IP}, dns: []string{n.spec.Name},
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.path("resolv.conf"), nil, 0o644); err != nil {
		return err
	}
	kubelet, err := json.MarshalIndent(n.kubeletConfig(caFile, srvCert, srvKey), "", "  ")
	if err != nil {
		return err
	}
	// JSON is YAML: kubelet reads it as its config file.
	if err := os.WriteFile(n.path("kubelet.yaml"), kubelet, 0o644); err != nil {
		return err
	}
	if n.spec.CNI.Mode == CNIBridge {
		if err := os.WriteFile(n.path("cni-template.json"), []byte(bridgeTemplate), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(n.path("containerd.toml"), []byte(n.containerdConfig()), 0o644); err != nil {
		return err
	}
	pause, err := ociimage.Pause()
	if err != nil {
		return err
	}
	if err := ociimage.WriteFile(n.path("pause.tar"), pause); err != nil {
		return err
	}
	return os.WriteFile(n.path("init.sh"), []byte(initScript(n.spec.Dir, overlays)), 0o755)
}

// bridgeTemplate is containerd's CNI config template: a bridge with
// host-local addresses from the node's podCIDR. No masquerade: pod
// addresses stay visible, as across a mesh.
const bridgeTemplate = `{
  "cniVersion": "1.0.0",
  "name": "kubelab-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
`

func (n *Node) kubeletConfig(caFile, certFile, keyFile string) map[string]any {
	return map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            n.spec.IP.String(),
		"port":               10250,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        10248,
		"tlsCertFile":        certFile,
		"tlsPrivateKeyFile":  keyFile,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": caFile},
		},
		"authorization":            map[string]any{"mode": "Webhook"},
		"cgroupDriver":             "cgroupfs",
		"cgroupRoot":               "/" + n.cgroupsName(),
		"failSwapOn":               false,
		"failCgroupV1":             false, // the machines here have cgroup v1 hierarchies
		"containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
		"resolvConf":               n.path("resolv.conf"),
		"clusterDomain":            "cluster.local",
		// A shared test machine's disk is often fuller than kubelet's
		// defaults allow: evicting test pods would only confuse.
		"evictionHard": map[string]string{
			"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%", "imagefs.available": "1%",
		},
		// Imported images cannot be pulled again: never collect them.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"serializeImagePulls":         false,
	}
}

func (n *Node) cgroupsName() string { return cgroupName(n.spec.Netns) }

func (n *Node) containerdConfig() string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	template := ""
	if n.spec.CNI.Mode == CNIBridge {
		template = n.path("cni-template.json")
	}
	return fmt.Sprintf(`# kubelab node %[1]s: containerd 1.6 (config version 2).
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# opt would create /opt/containerd; the others are snapshotters nobody uses.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[2]s
  # Without CAP_SYS_RESOURCE (as here) runc cannot lower a sandbox's
  # oom_score_adj to -998 and every sandbox fails to start.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    conf_template = %[3]s
    max_conf_num = 1
`, n.spec.Name, q(ociimage.PauseName), q(template))
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// Name is the Node's name.
func (n *Node) Name() string { return n.spec.Name }

// IP is the node's address.
func (n *Node) IP() netip.Addr { return n.spec.IP }

// Netns is the node's network namespace.
func (n *Node) Netns() string { return n.spec.Netns }

// Pid is the PID of the node's init, the process holding the node's mount
// namespace: `nsenter --target=PID --mount --net` enters the node as
// kubelet sees it.
func (n *Node) Pid() int { return n.init.pid() }

// Exec runs argv inside the node's network and mount namespaces (it sees
// the node's /etc/cni/net.d, /opt/cni/bin, /run/containerd, /run/netns,
// ...) and returns its stdout; the error carries stderr.
func (n *Node) Exec(ctx context.Context, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("kubelab: Exec needs a command")
	}
	if n.init == nil || n.init.exited() {
		return "", fmt.Errorf("kubelab: node %s is not running", n.spec.Name)
	}
	out, err := run(ctx, "", n.inside(argv...)...)
	if err != nil {
		return out, fmt.Errorf("on node %s: %w", n.spec.Name, err)
	}
	return out, nil
}

// ImportImage imports an OCI layout tar (ociimage.Write) into the node's
// containerd, for kubelet (namespace k8s.io).
func (n *Node) ImportImage(ctx context.Context, tarPath string) error {
	ctx, cancel := context.WithTimeout(ctx, importTimeout)
	defer cancel()
	abs, err := filepath.Abs(tarPath)
	if err != nil {
		return err
	}
	if _, err := n.Exec(ctx, "ctr", "--address", "/run/containerd/containerd.sock", "--namespace", "k8s.io",
		"images", "import", "--snapshotter", "overlayfs", abs); err != nil {
		return fmt.Errorf("importing image %s: %w", tarPath, err)
	}
	return nil
}

// LogTails returns the last lines of the node's logs (init, containerd,
// kubelet), for the output of a failed test.
func (n *Node) LogTails(lines int) string {
	var b strings.Builder
	for _, c := range []*component{n.init, n.containerd, n.kubelet} {
		if c != nil {
			fmt.Fprintf(&b, "--- %s of node %s (%s) ---\n%s\n", c.name, n.spec.Name, c.logPath, c.tail(lines))
		}
	}
	return b.String()
}

// Close takes the node down: the container processes in the node's
// cgroups, kubelet, containerd, whatever it restarted meanwhile, what is
// left in the node's mount namespace (the shims), the init (and with it
// the mount namespace and every mount in it), then the node's cgroups.
// It removes Dir once all that is gone. What cannot be removed is
// reported, with the processes in the way.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.closeErr = n.teardown()
		if n.closeErr == nil {
			if err := os.RemoveAll(n.spec.Dir); err != nil {
				n.closeErr = fmt.Errorf("removing %s: %w", n.spec.Dir, err)
			}
		}
		n.cp.removeNode(n)
		if n.closeErr != nil {
			n.closeErr = fmt.Errorf("kubelab: closing node %s: %w", n.spec.Name, n.closeErr)
		} else {
			n.log.Info("node stopped")
		}
	})
	return n.closeErr
}

func (n *Node) teardown() error {
	var errs []error
	if n.cgroups != nil {
		n.cgroups.kill()
	}
	if err := n.kubelet.stop(stopGrace); err != nil {
		errs = append(errs, err)
	}
	if err := n.containerd.stop(stopGrace); err != nil {
		errs = append(errs, err)
	}
	if n.cgroups != nil {
		n.cgroups.kill() // anything kubelet restarted before it stopped
	}
	if n.init != nil && n.mntNS != (nsID{}) {
		if err := n.killMountNS(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := n.init.stop(stopGrace); err != nil {
		errs = append(errs, err)
	}
	if err := n.cgroups.remove(10 * time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killMountNS ends every process in the node's mount namespace but the
// init (containerd's shims), and waits until they are gone.
func (n *Node) killMountNS() error {
	initPid := n.init.pid()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []int
		for _, pid := range processesIn("mnt", n.mntNS) {
			if pid != initPid {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			sort.Ints(left)
			var who []string
			for _, pid := range left {
				who = append(who, fmt.Sprintf("%d (%s)", pid, cmdline(pid)))
			}
			return fmt.Errorf("processes in the node's mount namespace did not exit after SIGKILL: %s", strings.Join(who, ", "))
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
