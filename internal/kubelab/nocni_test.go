package kubelab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/ociimage"
	"github.com/weftmesh/weft/internal/testutil"
)

// TestNodeWithoutCNI is the path a CNI DaemonSet takes: a node with an
// empty /etc/cni/net.d and an extra plugin in /opt/cni/bin registers but
// stays NotReady; a hostNetwork DaemonSet that tolerates that writes a
// config through a hostPath; then the node turns Ready and a pod gets an
// address from the node's podCIDR. It also checks the identities
// UserKubeconfig and UserRESTConfig issue against RBAC.
func TestNodeWithoutCNI(t *testing.T) {
	if testing.Short() {
		t.Skip("a Kubernetes cluster is slow: skipped in -short mode")
	}
	testutil.Privileged(t)
	plugin := filepath.Join(t.TempDir(), "weft-test-cni")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\necho weft test plugin\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, NodeSpec{Name: "n1", CNI: CNISpec{Mode: CNINone, Plugins: []string{plugin}}})
	ctx := t.Context()
	client := c.cp.Clientset()
	n1 := c.nodes[0]

	node, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if NodeReady(node) {
		t.Errorf("node n1 is Ready without any CNI config")
	}
	if conf, err := n1.Exec(ctx, "ls", "-A", "/etc/cni/net.d"); err != nil || strings.TrimSpace(conf) != "" {
		t.Errorf("/etc/cni/net.d on the node = %q, %v: want it empty", conf, err)
	}
	if out, err := n1.Exec(ctx, "/opt/cni/bin/weft-test-cni"); err != nil || !strings.Contains(out, "weft test plugin") {
		t.Errorf("the extra plugin in the node's /opt/cni/bin: %q, %v", out, err)
	}
	if _, err := n1.Exec(ctx, "test", "-x", "/opt/cni/bin/host-local"); err != nil {
		t.Errorf("the machine's plugins are not in the node's /opt/cni/bin: %v", err)
	}
	var cidr netip.Prefix
	testutil.Eventually(t, 30*time.Second, "a podCIDR for n1", func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cidr, err = netip.ParsePrefix(node.Spec.PodCIDR)
		return err
	})

	// The installer: what a CNI DaemonSet does on a node that is not
	// Ready yet.
	conflist := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"installed","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]]}}]}`, cidr)
	labels := map[string]string{"app": "cni-installer"}
	zero := int64(0)
	_, err = client.AppsV1().DaemonSets("default").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "cni-installer"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork:                   true,
					TerminationGracePeriodSeconds: &zero,
					Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name: "install", Image: ociimage.BusyboxName, ImagePullPolicy: corev1.PullNever,
						Command:      []string{"/bin/sh", "-c", "echo \"$CONF\" > /host/net.d/10-installed.conflist && exec sleep 3600"},
						Env:          []corev1.EnvVar{{Name: "CONF", Value: conflist}},
						VolumeMounts: []corev1.VolumeMount{{Name: "netd", MountPath: "/host/net.d"}},
					}},
					Volumes: []corev1.Volume{{Name: "netd", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc/cni/net.d"}}}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	installed := time.Now()
	testutil.Eventually(t, 60*time.Second, "node n1 Ready once the DaemonSet installed a CNI config", func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !NodeReady(node) {
			return fmt.Errorf("%s", readyMessage(node))
		}
		return nil
	})
	t.Logf("node Ready %v after the installer DaemonSet was created", time.Since(installed).Round(time.Millisecond))
	if conf, err := n1.Exec(ctx, "cat", "/etc/cni/net.d/10-installed.conflist"); err != nil || !strings.Contains(conf, cidr.String()) {
		t.Errorf("the installed config on the node: %q, %v", conf, err)
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, busyboxPod("p", "n1", "/bin/sleep", "3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(t, client, "default", "p")
	if ip := netip.MustParseAddr(p.Status.PodIP); !cidr.Contains(ip) {
		t.Errorf("pod p got %s from the installed CNI, outside n1's podCIDR %v", ip, cidr)
	}

	checkUsers(t, c)
	checkFailedStart(t, c)
}

// checkFailedStart: a node that cannot start says why, with the end of
// the failing component's log, and leaves nothing behind.
func checkFailedStart(t *testing.T, c *cluster) {
	cpNetns := c.lab.Node("cp").Netns
	dir := filepath.Join(c.dir, "bad")
	_, err := c.cp.StartNode(t.Context(), NodeSpec{
		Name: "bad", Netns: cpNetns, IP: netip.MustParseAddr("198.18.1.99"), Dir: dir, CNI: CNISpec{Mode: CNINone},
	})
	if err == nil {
		t.Fatal("a node with an address its namespace does not have started")
	}
	t.Logf("a node that cannot start says:\n%v", err)
	for _, want := range []string{"node bad", "kubelet", "last lines of its log", "198.18.1.99"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not mention %q:\n%v", want, err)
		}
	}
	if _, serr := os.Stat(dir); !os.IsNotExist(serr) {
		t.Errorf("the failed node left %s (%v)", dir, serr)
	}
	mounts, _ := cgroupMounts()
	for _, m := range mounts {
		if _, serr := os.Stat(filepath.Join(m, cgroupName(cpNetns))); !os.IsNotExist(serr) {
			t.Errorf("the failed node left its cgroup in %s", m)
		}
	}
	cpNS, _ := nsOf(lab.NetnsPath(cpNetns))
	for _, pid := range processesIn("net", cpNS) {
		cmd := cmdline(pid)
		if f := strings.Fields(cmd); len(f) > 0 && (filepath.Base(f[0]) == "kubelet" || strings.HasPrefix(filepath.Base(f[0]), "containerd")) {
			t.Errorf("the failed node left %d (%s) in %s", pid, cmd, cpNetns)
		}
	}
}

// checkUsers: identities made by UserKubeconfig and UserRESTConfig have
// exactly the rights RBAC grants them.
func checkUsers(t *testing.T, c *cluster) {
	ctx := t.Context()
	admin := c.cp.Clientset()

	// alice, from a kubeconfig file, as any client would load it.
	path, err := c.cp.UserKubeconfig("alice")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != c.cp.Server() {
		t.Errorf("alice's kubeconfig points at %q, want %q", cfg.Host, c.cp.Server())
	}
	cfg.Dial = dialIn(lab.NetnsPath(c.lab.Node("cp").Netns))
	alice := kubernetes.NewForConfigOrDie(cfg)
	if _, err := alice.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice lists pods without any binding: err = %v, want Forbidden", err)
	}
	_, err = admin.RbacV1().RoleBindings("default").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "alice"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "alice may list pods in default once bound to view", func() error {
		_, err := alice.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		return err
	})
	if _, err := alice.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice lists pods in kube-system with a binding in default only: err = %v, want Forbidden", err)
	}

	// bob's rights come from his group.
	bobCfg, err := c.cp.UserRESTConfig("bob", "weft:agents")
	if err != nil {
		t.Fatal(err)
	}
	bob := kubernetes.NewForConfigOrDie(bobCfg)
	if _, err := bob.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("bob lists nodes before his group is bound: err = %v, want Forbidden", err)
	}
	_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "weft-agents-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-proxier"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "weft:agents"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "bob may list nodes once weft:agents is bound", func() error {
		_, err := bob.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		return err
	})
	if _, err := bob.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("bob lists secrets: err = %v, want Forbidden", err)
	}
	if _, err := c.cp.UserKubeconfig(" "); err == nil {
		t.Error("UserKubeconfig took an empty name")
	}
}
