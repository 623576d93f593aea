package kubelab

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/ociimage"
	"github.com/weftmesh/weft/internal/testutil"
)

// Address plan of the tests: pods and Services in the mesh range.
var (
	testClusterCIDR = netip.MustParsePrefix("100.96.0.0/16")
	testServiceCIDR = netip.MustParsePrefix("100.127.200.0/24")
)

// globalState is what a node must not change on the machine.
func globalState(t *testing.T) map[string]string {
	t.Helper()
	st := map[string]string{}
	for _, s := range sysctlShadows {
		b, err := os.ReadFile("/proc/sys/" + s.path)
		if err != nil {
			t.Fatal(err)
		}
		st["sysctl "+s.path] = strings.TrimSpace(string(b))
	}
	for _, b := range nodeBinds {
		_, err := os.Stat(b.target)
		st["exists "+b.target] = fmt.Sprint(err == nil)
	}
	_, err := os.Stat("/opt/containerd")
	st["exists /opt/containerd"] = fmt.Sprint(err == nil)
	return st
}

// cluster is a lab with a control plane on cp and bridge nodes n1, n2.
type cluster struct {
	lab   *lab.Lab
	cp    *ControlPlane
	nodes []*Node
	dir   string
}

// startCluster brings up a lab with cp and the nodes, a control plane on
// cp and the nodes (Name and CNI from the given specs; the rest is filled
// in), each with the busybox image.
func startCluster(t *testing.T, nodes ...NodeSpec) *cluster {
	t.Helper()
	testutil.Slow(t)
	testutil.Privileged(t)
	if _, err := BinDir(binEtcd, binAPIServer, binController, binScheduler, binKubelet, binKubectl); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	if removed, err := Cleanup(log); err != nil {
		t.Fatalf("removing leftovers of crashed runs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("removed leftover cgroups: %v", removed)
	}
	c := &cluster{dir: t.TempDir()} // made before the lab: removed after it
	spec := &lab.Spec{Sites: []lab.SiteSpec{{Name: "site", Nodes: []lab.NodeSpec{{Name: "cp"}}}}}
	for _, n := range nodes {
		spec.Sites[0].Nodes = append(spec.Sites[0].Nodes, lab.NodeSpec{Name: n.Name})
	}
	begin := time.Now()
	c.lab = labtest.New(t, spec)
	ctx := t.Context()

	cpNode := c.lab.Node("cp")
	cp, err := StartControlPlane(ctx, ControlPlaneSpec{
		Netns: cpNode.Netns, IP: cpNode.Underlay, Dir: filepath.Join(c.dir, "cp"),
		ClusterCIDR: testClusterCIDR, ServiceCIDR: testServiceCIDR, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.cp = cp
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control plane logs:\n%s", cp.LogTails(30))
		}
		if err := cp.Close(); err != nil {
			t.Errorf("closing the control plane: %v", err)
		}
	})

	bb, err := ociimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	bbTar := filepath.Join(c.dir, "busybox.tar")
	if err := ociimage.WriteFile(bbTar, bb); err != nil {
		t.Fatal(err)
	}
	c.nodes = make([]*Node, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, ns := range nodes {
		ln := c.lab.Node(ns.Name)
		ns.Netns, ns.IP, ns.Dir = ln.Netns, ln.Underlay, filepath.Join(c.dir, ns.Name)
		ns.Images, ns.Log = []string{bbTar}, log
		wg.Go(func() { c.nodes[i], errs[i] = cp.StartNode(ctx, ns) })
	}
	wg.Wait()
	for i, n := range c.nodes {
		if n == nil {
			continue
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("logs of node %s:\n%s", n.Name(), n.LogTails(30))
			}
			if err := n.Close(); err != nil {
				t.Errorf("closing node %s: %v", nodes[i].Name, err)
			}
		})
	}
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("lab, control plane and %d nodes up in %v", len(nodes), time.Since(begin).Round(time.Millisecond))
	return c
}

func busyboxPod(name, node string, cmd ...string) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: ociimage.BusyboxName, ImagePullPolicy: corev1.PullNever,
				Command: cmd,
			}},
		},
	}
}

// waitRunning waits until the pod runs and has an IP.
func waitRunning(t *testing.T, client kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	testutil.Eventually(t, 60*time.Second, "pod "+ns+"/"+name+" Running", func() error {
		p, err := client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod = p
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			var why []string
			for _, cs := range p.Status.ContainerStatuses {
				if cs.State.Waiting != nil {
					why = append(why, cs.State.Waiting.Reason+": "+cs.State.Waiting.Message)
				}
			}
			for _, c := range p.Status.Conditions {
				if c.Status != corev1.ConditionTrue && c.Message != "" {
					why = append(why, string(c.Type)+": "+c.Message)
				}
			}
			return fmt.Errorf("phase %s %v", p.Status.Phase, why)
		}
		return nil
	})
	return pod
}

// TestClusterBridge brings up a control plane and two kubelet nodes with
// the bridge CNI and checks what a user of the lab relies on: Nodes Ready
// with podCIDRs, pods Running from imported images, kubectl logs and exec,
// pod-to-pod traffic across nodes once the per-podCIDR routes exist (and
// not before), a hostNetwork DaemonSet pod that sees, through a
// HostToContainer hostPath of /var/run/netns, a pod namespace made after
// it started, and a Close that leaves nothing behind.
func TestClusterBridge(t *testing.T) {
	if testing.Short() {
		t.Skip("a Kubernetes cluster is slow: skipped in -short mode")
	}
	testutil.Privileged(t)
	before := globalState(t)
	begin := time.Now()
	c := startCluster(t, NodeSpec{Name: "n1"}, NodeSpec{Name: "n2"})
	ctx := t.Context()
	client := c.cp.Clientset()
	n1, n2 := c.nodes[0], c.nodes[1]

	// Nodes: Ready, each with its own podCIDR from the cluster range.
	cidrs := map[string]netip.Prefix{}
	for _, n := range c.nodes {
		node, err := client.CoreV1().Nodes().Get(ctx, n.Name(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !NodeReady(node) {
			t.Errorf("node %s is not Ready: %s", n.Name(), readyMessage(node))
		}
		cidr, err := netip.ParsePrefix(node.Spec.PodCIDR)
		if err != nil || cidr.Bits() != 24 || !testClusterCIDR.Overlaps(cidr) {
			t.Fatalf("node %s podCIDR %q: want a /24 of %v", n.Name(), node.Spec.PodCIDR, testClusterCIDR)
		}
		for other, oc := range cidrs {
			if oc.Overlaps(cidr) {
				t.Errorf("nodes %s and %s share podCIDR %v", other, n.Name(), cidr)
			}
		}
		cidrs[n.Name()] = cidr
		var internal string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = a.Address
			}
		}
		if internal != n.IP().String() {
			t.Errorf("node %s InternalIP %q, want %s", n.Name(), internal, n.IP())
		}
	}

	// The DaemonSet first, so the pods below are made after it started.
	htc := corev1.MountPropagationHostToContainer
	privileged := true
	one := int64(1)
	labels := map[string]string{"app": "netns-watch"}
	_, err := client.AppsV1().DaemonSets("default").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "netns-watch"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork:                   true,
					TerminationGracePeriodSeconds: &one,
					Containers: []corev1.Container{{
						Name: "watch", Image: ociimage.BusyboxName, ImagePullPolicy: corev1.PullNever,
						Command:         []string{"/bin/sleep", "3600"},
						SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
						VolumeMounts:    []corev1.VolumeMount{{Name: "netns", MountPath: "/var/run/netns", MountPropagation: &htc}},
					}},
					Volumes: []corev1.Volume{{Name: "netns", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/netns"}}}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dsStart := time.Now()
	dsPods := map[string]corev1.Pod{}
	testutil.Eventually(t, 60*time.Second, "the DaemonSet's pods Running on both nodes", func() error {
		list, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=netns-watch"})
		if err != nil {
			return err
		}
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				dsPods[p.Spec.NodeName] = p
			}
		}
		if len(dsPods) < 2 {
			return fmt.Errorf("running on %d of 2 nodes", len(dsPods))
		}
		return nil
	})
	t.Logf("DaemonSet Running on both nodes %v after create", time.Since(dsStart).Round(time.Millisecond))
	for node, p := range dsPods {
		if p.Status.PodIP != c.lab.Node(node).Underlay.String() {
			t.Errorf("hostNetwork pod on %s has IP %s, want the node's %s", node, p.Status.PodIP, c.lab.Node(node).Underlay)
		}
	}
	netnsBefore, err := n1.Exec(ctx, "ls", "/run/netns")
	if err != nil {
		t.Fatal(err)
	}

	podStart := time.Now()
	for _, p := range []*corev1.Pod{
		busyboxPod("a", "n1", "/bin/sh", "-c", "echo pod a started; exec sleep 3600"),
		busyboxPod("b", "n2", "/bin/sleep", "3600"),
	} {
		if _, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a := waitRunning(t, client, "default", "a")
	b := waitRunning(t, client, "default", "b")
	t.Logf("pods a (%s on %s) and b (%s on %s) Running %v after create", a.Status.PodIP, a.Spec.NodeName, b.Status.PodIP, b.Spec.NodeName, time.Since(podStart).Round(time.Millisecond))
	for _, p := range []*corev1.Pod{a, b} {
		ip := netip.MustParseAddr(p.Status.PodIP)
		if !cidrs[p.Spec.NodeName].Contains(ip) {
			t.Errorf("pod %s has IP %s, outside its node %s's podCIDR %v", p.Name, ip, p.Spec.NodeName, cidrs[p.Spec.NodeName])
		}
	}

	// kubectl logs and exec go apiserver -> kubelet -> containerd.
	if out, err := c.cp.Kubectl(ctx, "logs", "a"); err != nil || !strings.Contains(out, "pod a started") {
		t.Errorf("kubectl logs a = %q, %v", out, err)
	}
	if out, err := c.cp.Kubectl(ctx, "exec", "a", "--", "hostname"); err != nil || strings.TrimSpace(out) != "a" {
		t.Errorf("kubectl exec a -- hostname = %q, %v", out, err)
	}

	// Across nodes: nothing routes the other node's podCIDR yet.
	// One reply of three is success: the first may wait for ARP.
	ping := func(count string) error {
		_, err := c.cp.Kubectl(ctx, "exec", "a", "--", "ping", "-c", count, "-W", "2", b.Status.PodIP)
		return err
	}
	if err := ping("1"); err == nil {
		t.Errorf("pod a reached pod b (%s) before any route to %v existed", b.Status.PodIP, cidrs["n2"])
	}
	for _, r := range []struct{ on, cidr, via string }{
		{"n1", cidrs["n2"].String(), n2.IP().String()},
		{"n2", cidrs["n1"].String(), n1.IP().String()},
	} {
		if _, err := c.lab.Exec(ctx, r.on, "ip", "route", "add", r.cidr, "via", r.via); err != nil {
			t.Fatal(err)
		}
	}
	if err := ping("3"); err != nil {
		t.Errorf("pod a does not reach pod b with the podCIDR routes in place: %v", err)
	}

	// The DaemonSet pod on n1 started before pod a: its /var/run/netns
	// shows a's namespace all the same, as a live namespace.
	netnsAfter, err := n1.Exec(ctx, "ls", "/run/netns")
	if err != nil {
		t.Fatal(err)
	}
	var fresh []string
	for _, ns := range strings.Fields(netnsAfter) {
		if !slices.Contains(strings.Fields(netnsBefore), ns) {
			fresh = append(fresh, ns)
		}
	}
	if len(fresh) != 1 {
		t.Fatalf("node n1's /run/netns went from %q to %q: want exactly one new pod namespace (pod a's)", netnsBefore, netnsAfter)
	}
	ds := dsPods["n1"].Name
	seen, err := c.cp.Kubectl(ctx, "exec", ds, "--", "ls", "/var/run/netns")
	if err != nil || !slices.Contains(strings.Fields(seen), fresh[0]) {
		t.Errorf("the DaemonSet pod's /var/run/netns = %q, %v: want it to show %s, made after the pod started", seen, err, fresh[0])
	}
	addrs, err := c.cp.Kubectl(ctx, "exec", ds, "--", "nsenter", "--net=/var/run/netns/"+fresh[0], "ip", "-4", "-o", "addr", "show", "eth0")
	if err != nil || !strings.Contains(addrs, " "+a.Status.PodIP+"/") {
		t.Errorf("entering %s from the DaemonSet pod shows %q, %v: want pod a's address %s", fresh[0], addrs, err, a.Status.PodIP)
	}

	// Close: nothing of the nodes or the control plane is left.
	type nodeTrace struct {
		name    string
		netns   nsID
		mnt     nsID
		cgroups []string
		dir     string
	}
	var traces []nodeTrace
	for _, n := range c.nodes {
		traces = append(traces, nodeTrace{n.Name(), n.netNS, n.mntNS, n.cgroups.roots, n.spec.Dir})
	}
	cpNetns, _ := nsOf(lab.NetnsPath(c.lab.Node("cp").Netns))
	closeStart := time.Now()
	for _, n := range c.nodes {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	}
	if err := c.cp.Close(); err != nil {
		t.Error(err)
	}
	t.Logf("nodes and control plane closed in %v", time.Since(closeStart).Round(time.Millisecond))
	for _, tr := range traces {
		for _, kind := range []struct {
			name string
			id   nsID
		}{{"net", tr.netns}, {"mnt", tr.mnt}} {
			if left := processesIn(kind.name, kind.id); len(left) > 0 {
				t.Errorf("node %s: processes left in its %s namespace: %v", tr.name, kind.name, left)
			}
		}
		for _, cg := range tr.cgroups {
			if _, err := os.Stat(cg); !os.IsNotExist(err) {
				t.Errorf("node %s: cgroup %s left (%v)", tr.name, cg, err)
			}
		}
		if _, err := os.Stat(tr.dir); !os.IsNotExist(err) {
			t.Errorf("node %s: directory %s left (%v)", tr.name, tr.dir, err)
		}
	}
	if left := processesIn("net", cpNetns); len(left) > 0 {
		t.Errorf("processes left in the control plane's namespace: %v", left)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "cp")); !os.IsNotExist(err) {
		t.Errorf("control plane directory left (%v)", err)
	}
	after := globalState(t)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("the machine's %s changed from %s to %s", k, v, after[k])
		}
	}
	t.Logf("whole test %v", time.Since(begin).Round(time.Millisecond))
}
