package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/kubelab"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/ociimage"
	"github.com/weftmesh/weft/internal/testutil"
)

// Tier B: a Kubernetes control plane and two real kubelet nodes where Weft
// (the DaemonSet from the Helm chart, the agent image built from this
// tree) is the only CNI, plus a VM that `meshctl join`ed the same mesh.

const (
	kubeClusterCIDR = "100.96.0.0/16"
	kubeServiceCIDR = "100.127.200.0/24"
)

// kubeCluster is the Kubernetes side of a mesh.
type kubeCluster struct {
	t     testing.TB
	m     *Mesh
	cp    *kubelab.ControlPlane
	nodes map[string]*kubelab.Node
	ctx   context.Context
	// dir holds each node's state (kubelab.NodeSpec.Dir); bbTar and
	// weftImage are the images nodes import.
	dir              string
	bbTar, weftImage string
	log              *slog.Logger
	noWeft           map[string]bool
}

// agentSocket is the path, on the machine, of a node's agent socket
// (/run/weft/agent.sock inside the node is bound from its state dir).
func (k *kubeCluster) agentSocket(node string) string {
	return filepath.Join(k.dir, node, "run-weft", "agent.sock")
}

// addNode starts one more kubelet node on a lab node.
func (k *kubeCluster) addNode(name string, cni kubelab.CNIMode) {
	t := k.t
	t.Helper()
	ln := k.m.Lab.Node(name)
	n, err := k.cp.StartNode(k.ctx, kubelab.NodeSpec{Name: name, Netns: ln.Netns, IP: ln.Underlay, Dir: filepath.Join(k.dir, name),
		CNI: kubelab.CNISpec{Mode: cni}, Images: []string{k.bbTar, k.weftImage}, Log: k.log})
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	k.nodes[name] = n
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node %s logs:\n%s", name, n.LogTails(30))
		}
		if err := n.Close(); err != nil {
			t.Errorf("stopping node %s: %v", name, err)
		}
	})
}

// repoFile is a path inside the repository (the e2e tests run in e2e/).
func repoFile(t testing.TB, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// needFile fails the test with what to run when a build artefact is missing.
func needFile(t testing.TB, path, how string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is missing: %s (make test does it)", path, how)
	}
}

// startKube brings up the control plane in netns cp and kubelet nodes in
// the given lab nodes, with no CNI; the Weft chart installs one.
func startKube(t *testing.T, m *Mesh, cniMode kubelab.CNIMode, nodes ...string) *kubeCluster {
	t.Helper()
	if _, err := kubelab.BinDir("kube-apiserver", "kubelet", "kubectl", "etcd"); err != nil {
		t.Fatal(err)
	}
	weftImage := repoFile(t, "bin/weft-image.tar")
	needFile(t, weftImage, "run scripts/build-image.sh")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))

	bb, err := ociimage.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	bbTar := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(bbTar)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociimage.Write(f, bb); err != nil {
		t.Fatal(err)
	}
	f.Close()

	cpNode := m.Lab.Node("cp")
	dir := t.TempDir()
	cp, err := kubelab.StartControlPlane(ctx, kubelab.ControlPlaneSpec{
		Netns: cpNode.Netns, IP: cpNode.Underlay, Dir: filepath.Join(dir, "cp"),
		ClusterCIDR: netip.MustParsePrefix(kubeClusterCIDR), NodeCIDRMaskSize: 24,
		ServiceCIDR: netip.MustParsePrefix(kubeServiceCIDR), Log: log,
	})
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control plane logs:\n%s", cp.LogTails(30))
		}
		if err := cp.Close(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	k := &kubeCluster{t: t, m: m, cp: cp, nodes: map[string]*kubelab.Node{}, ctx: ctx, dir: dir, bbTar: bbTar, weftImage: weftImage, log: log}
	for _, name := range nodes {
		k.addNode(name, cniMode)
	}
	k.kubectl("apply", "-f", repoFile(t, "deploy/crds/weftpolicies.weft.dev.yaml"))
	// Registered last, so it runs first: what a user would look at.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, c := range []string{"agent", "cleanup"} {
			out, _ := cp.Kubectl(context.Background(), "-n", "weft-system", "logs", "-l", "app.kubernetes.io/component="+c, "--tail", "60", "--prefix", "--all-containers")
			t.Logf("%s logs:\n%s", c, out)
		}
		out, _ := cp.Kubectl(context.Background(), "-n", "weft-system", "get", "pods", "-o", "wide")
		t.Logf("weft-system pods:\n%s", out)
		for name := range k.weftNodes() {
			for _, argv := range [][]string{{"ip", "-br", "addr"}, {"ip", "route"}} {
				out, _ := m.Lab.Exec(context.Background(), m.Lab.Node(name).Netns, argv...)
				t.Logf("%s: %s:\n%s", name, strings.Join(argv, " "), out)
			}
		}
	})
	return k
}

// installWeft renders the Helm chart with the token and applies it, then
// waits until every node's agent is in the mesh.
func (k *kubeCluster) installWeft(token string, values ...string) {
	k.t.Helper()
	k.kubectlIn(k.render(token, values...), "apply", "-f", "-")
	k.kubectl("-n", "weft-system", "rollout", "status", "daemonset/weft-agent", "--timeout", "180s")
	for name := range k.weftNodes() {
		testutil.Eventually(k.t, 90*time.Second, "node "+name+" in the mesh", func() error {
			out, err := k.m.Meshctl(k.m.Seed, "nodes", "-o", "json")
			if err != nil {
				return err
			}
			if !strings.Contains(out, `"name": "`+name+`"`) && !strings.Contains(out, `"name":"`+name+`"`) {
				return fmt.Errorf("seed does not list %s yet", name)
			}
			return nil
		})
	}
}

// render renders the Helm chart with the token, this tree's image and the
// test's agent flags.
func (k *kubeCluster) render(token string, values ...string) string {
	k.t.Helper()
	helm := repoFile(k.t, "bin/helm")
	needFile(k.t, helm, "run scripts/build-helm.sh")
	args := []string{"template", "weft", repoFile(k.t, "deploy/helm/weft"),
		"--set", "token.value=" + token, "--set", "token.existingSecret=", "--set", "image.tag=dev",
		"--set", "agent.kubeAPIServer=" + k.cp.Server(), "--set", "agent.logLevel=debug",
		"--set-json", `agent.extraArgs=["--wg-mode","userspace","--wg-keepalive","5s"]`}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(helm, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		k.t.Fatalf("helm template: %v\n%s", err, stderr.String())
	}
	return string(out)
}

// weftNodes are the nodes Weft runs on (all but those given the label
// weft=no before the install).
func (k *kubeCluster) weftNodes() map[string]*kubelab.Node {
	out := map[string]*kubelab.Node{}
	for name, n := range k.nodes {
		if k.noWeft[name] {
			continue
		}
		out[name] = n
	}
	return out
}

func (k *kubeCluster) kubectl(args ...string) string {
	k.t.Helper()
	out, err := k.cp.Kubectl(k.ctx, args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (k *kubeCluster) kubectlIn(stdin string, args ...string) string {
	k.t.Helper()
	out, err := k.cp.KubectlStdin(k.ctx, stdin, args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// apply applies YAML documents.
func (k *kubeCluster) apply(yaml string) { k.t.Helper(); k.kubectlIn(yaml, "apply", "-f", "-") }

// pod runs a busybox pod on a node serving its own name on port 80 (a
// container port named http) and returns its address once it runs.
func (k *kubeCluster) pod(ns, name, node string, labels map[string]string) string {
	k.t.Helper()
	var ls []string
	for key, v := range labels {
		ls = append(ls, fmt.Sprintf("%s: %q", key, v))
	}
	k.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %q, namespace: %q, labels: {%s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 0
  containers:
  - name: srv
    image: %s
    imagePullPolicy: Never
    command: ["nc", "-ll", "-p", "80", "-e", "echo", "%s"]
    ports: [{name: http, containerPort: 80}]
`, name, ns, strings.Join(ls, ", "), node, ociimage.BusyboxName, name))
	k.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=90s")
	ip := strings.TrimSpace(k.kubectl("-n", ns, "get", "pod", name, "-o", "jsonpath={.status.podIP}"))
	if !netip.MustParsePrefix(kubeClusterCIDR).Contains(netip.MustParseAddr(ip)) {
		k.t.Fatalf("pod %s/%s has address %s, outside the cluster CIDR %s", ns, name, ip, kubeClusterCIDR)
	}
	return ip
}

// podTalk connects from a pod to ip:port and returns what the server said
// (the pod servers say their name; the VM's echo says the line sent).
func (k *kubeCluster) podTalk(ns, pod, ip string, port int, line string) (string, error) {
	ctx, cancel := context.WithTimeout(k.ctx, 20*time.Second)
	defer cancel()
	out, err := k.cp.Kubectl(ctx, "-n", ns, "exec", pod, "--", "sh", "-c", fmt.Sprintf("echo %s | nc -w 2 %s %d", line, ip, port))
	return strings.TrimSpace(out), err
}

// vmTalk connects from the VM's own namespace to a pod server.
func (k *kubeCluster) vmTalk(vm, ip string) (string, error) {
	ctx, cancel := context.WithTimeout(k.ctx, 2*time.Second)
	defer cancel()
	c, err := k.m.Lab.Dial(ctx, k.m.Lab.Node(vm).Netns, "tcp", net.JoinHostPort(ip, "80"))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var buf [64]byte
	n, err := c.Read(buf[:])
	if n > 0 {
		return strings.TrimSpace(string(buf[:n])), nil
	}
	return "", err
}

// flow is one connection of a matrix and whether it must pass.
type flow struct {
	name  string
	try   func() (string, error)
	want  string // what the server answers when it passes
	allow bool
}

// check asserts a matrix: allowed flows answer, denied ones do not (each
// is retried while the expectation is not met, so policy changes in
// flight converge; a denied flow that once passes fails the test only if
// it keeps passing).
func (k *kubeCluster) check(flows []flow) {
	k.t.Helper()
	for _, f := range flows {
		testutil.Eventually(k.t, 30*time.Second, f.name, func() error {
			got, err := f.try()
			passed := err == nil && got == f.want
			switch {
			case f.allow && !passed:
				return fmt.Errorf("%s: want it to pass, got %q, %v", f.name, got, err)
			case !f.allow && passed:
				return fmt.Errorf("%s: want it denied, it passed", f.name)
			}
			return nil
		})
	}
}

func TestKubernetes(t *testing.T) { kubernetesSuite(t, "kube", kubelab.CNINone, "primary") }

// The same traffic and policy checks with Weft chained after the bridge
// plugin (policy and encryption only; the bridge gives the addresses).
func TestKubernetesChained(t *testing.T) {
	kubernetesSuite(t, "kubechain", kubelab.CNIBridge, "chained")
}

func kubernetesSuite(t *testing.T, labName string, cni kubelab.CNIMode, mode string) {
	chained := mode == "chained"
	m := NewMesh(t, &lab.Spec{Name: labName, Sites: []lab.SiteSpec{
		{Name: "vms", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "vm1"}}},
		{Name: "k8s", Nodes: []lab.NodeSpec{{Name: "cp"}, {Name: "k1"}, {Name: "k2"}}},
	}})
	m.Up("seed")
	m.Join("vm1", "app=vmdb")
	var vm1 struct {
		MeshIP string `json:"meshIP"`
	}
	m.JSON("vm1", &vm1, "status")
	var tok struct {
		JoinToken string `json:"joinToken"`
	}
	m.JSON("seed", &tok, "token", "create", "--pod-cidrs", kubeClusterCIDR, "--reusable", "--max-uses", "10", "--ttl", "1h")
	k := startKube(t, m, cni, "k1", "k2")
	k.installWeft(tok.JoinToken, "cni.mode="+mode)

	k.apply(`apiVersion: v1
kind: Namespace
metadata: {name: "x", labels: {ns: "x"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {ns: "y"}}
`)
	ips := map[string]string{
		"a": k.pod("x", "a", "k1", map[string]string{"app": "a"}),
		"b": k.pod("x", "b", "k2", map[string]string{"app": "b"}),
		"c": k.pod("y", "c", "k1", map[string]string{"app": "c"}),
	}
	ns := map[string]string{"a": "x", "b": "x", "c": "y"}
	pp := func(from, to string, allow bool) flow {
		return flow{name: from + " -> " + to, want: to, allow: allow,
			try: func() (string, error) { return k.podTalk(ns[from], from, ips[to], 80, "hi") }}
	}
	vmPod := func(to string, allow bool) flow {
		return flow{name: "vm1 -> " + to, want: to, allow: allow, try: func() (string, error) { return k.vmTalk("vm1", ips[to]) }}
	}
	// The VM serves an echo on its mesh address.
	l, err := m.Lab.Listen(m.Lab.Node("vm1").Netns, "tcp", net.JoinHostPort(vm1.MeshIP, "7000"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoTCP(t, l)
	podVM := func(from string, allow bool) flow {
		return flow{name: from + " -> vm1", want: "hello-" + from, allow: allow,
			try: func() (string, error) { return k.podTalk(ns[from], from, vm1.MeshIP, 7000, "hello-"+from) }}
	}

	t.Run("pods on both nodes and the VM reach each other, encrypted on the wire", func(t *testing.T) {
		k := *k
		k.t = t
		router := m.Lab.Router("k8s")
		capFile := filepath.Join(t.TempDir(), "k8s-lan.pcap")
		tcpdump, err := m.Lab.Start(router.Netns, "tcpdump-k8s", "tcpdump", "--immediate-mode", "-i", "any", "-U", "-s", "0", "-w", capFile)
		if err != nil {
			t.Fatal(err)
		}
		m.waitOutput(tcpdump, regexp.MustCompile(`listening on`), 30*time.Second, "tcpdump to attach")
		marker := "WEFTK8SMARKER7c1e"
		k.check([]flow{pp("a", "b", true), pp("b", "a", true), pp("c", "b", true), pp("b", "c", true),
			vmPod("a", true), vmPod("b", true), podVM("a", true), podVM("b", true),
			{name: "b -> vm1 (marker)", want: marker, allow: true, try: func() (string, error) { return k.podTalk("x", "b", vm1.MeshIP, 7000, marker) }},
			{name: "a -> b (marker)", want: "b", allow: true, try: func() (string, error) { return k.podTalk("x", "a", ips["b"], 80, marker) }},
		})
		time.Sleep(500 * time.Millisecond)
		_ = tcpdump.Stop()
		data, err := os.ReadFile(capFile)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(marker)) {
			t.Fatal("the underlay capture holds the plaintext marker: pod traffic is not encrypted")
		}
		out, _ := hostCmd("tcpdump", "-nn", "-r", capFile, "udp port 51833")
		if n := strings.Count(out, "\n"); n < 6 {
			t.Fatalf("expected WireGuard packets (UDP 51833) on the Kubernetes LAN, saw %d", n)
		}
		if chained {
			// The previous plugin made the pods' veths; Weft attached to them.
			for name, n := range k.nodes {
				out, err := n.Exec(context.Background(), "cat", "/etc/cni/net.d/10-containerd-net.conflist")
				if err != nil || !strings.Contains(out, `"bridge"`) || !strings.Contains(out, `"weft-cni"`) {
					t.Fatalf("node %s's conflist does not chain weft-cni after bridge: %v\n%s", name, err, out)
				}
			}
		}
		// A node's own mesh address is remote-node to the rest of the mesh.
		var eps []struct {
			Name     string `json:"name"`
			Node     string `json:"node"`
			Identity uint32 `json:"identity"`
		}
		m.JSON("seed", &eps, "endpoints")
		for name := range k.nodes {
			found := false
			for _, e := range eps {
				if e.Node == name && e.Name == name {
					found = true
					if e.Identity != 6 {
						t.Errorf("node %s's own address has identity %d on the seed, want 6 (remote-node)", name, e.Identity)
					}
				}
			}
			if !found {
				t.Errorf("the seed lists no endpoint for node %s's own address", name)
			}
		}
		// No manual routes: the nodes' routing tables hold the mesh's.
		for name := range k.nodes {
			out, err := m.Lab.Exec(context.Background(), m.Lab.Node(name).Netns, "ip", "route", "show", "dev", "weft0")
			if err != nil || !strings.Contains(string(out), "100.96.") {
				t.Fatalf("node %s has no routes to the other podCIDRs via weft0: %s %v", name, out, err)
			}
		}
	})

	t.Run("a node's credentials claim only its own podCIDR", func(t *testing.T) {
		if chained {
			t.Skip("the primary-mode suite checks the claims")
		}
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		server := net.JoinHostPort(m.Lab.Node("seed").Underlay.String(), "51834")
		claim := func(exec func(context.Context, ...string) (string, error), credDir, cidr string) (string, error) {
			return exec(context.Background(), "env", helperEnv+"=claim-cidr", self, server, credDir, cidr)
		}
		k1 := k.nodes["k1"]
		var own struct {
			CIDRs []string `json:"cidrs"`
		}
		out, err := k1.Exec(context.Background(), filepath.Join(binDir, "meshctl"), "--socket", "/run/weft/agent.sock", "status", "-o", "json")
		if err != nil || json.Unmarshal([]byte(out), &own) != nil || len(own.CIDRs) != 1 {
			t.Fatalf("k1's status: %v\n%s", err, out)
		}
		other := "100.96.1.0/24"
		if own.CIDRs[0] == other {
			other = "100.96.0.0/24"
		}
		vmExec := func(ctx context.Context, argv ...string) (string, error) {
			out, err := m.Lab.Exec(ctx, m.Lab.Node("vm1").Netns, argv...)
			return string(out), err
		}
		for _, tc := range []struct {
			name, cidr, say string
			exec            func(context.Context, ...string) (string, error)
			dir             string
			ok              bool
		}{
			{"k1 claims its own podCIDR again (a restart)", own.CIDRs[0], "claimed " + own.CIDRs[0], k1.Exec, "/var/lib/weft/credentials", true},
			{"k1 claims k2's podCIDR", other, "overlaps", k1.Exec, "/var/lib/weft/credentials", false},
			{"k1 claims a free range of the pod CIDRs, overlapping its own", "100.96.0.0/23", "overlaps", k1.Exec, "/var/lib/weft/credentials", false},
			{"k1 claims outside the pod CIDRs", "100.65.0.0/24", "may not claim", k1.Exec, "/var/lib/weft/credentials", false},
			{"a VM (token without --pod-cidrs) claims a pod range", "100.96.200.0/24", "admits no Kubernetes nodes", vmExec, filepath.Join(m.node("vm1").StateDir, "credentials"), false},
		} {
			out, err := claim(tc.exec, tc.dir, tc.cidr)
			if err != nil {
				out += err.Error() // the refusal, as the agent would log it
			}
			if (err == nil) != tc.ok || !strings.Contains(out, tc.say) {
				t.Errorf("%s: err %v, output %q; want ok=%v saying %q", tc.name, err, out, tc.ok, tc.say)
			}
		}
	})

	t.Run("restarting the agent pods loses no ping between pods", func(t *testing.T) {
		if chained {
			t.Skip("the primary-mode suite restarts the agents; the datapath is the same")
		}
		k := *k
		k.t = t
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(k.ctx, 60*time.Second)
			defer cancel()
			out, err := k.cp.Kubectl(ctx, "-n", "x", "exec", "a", "--", "ping", "-c", "75", "-i", "0.2", "-W", "1", ips["b"])
			done <- result{out, err}
		}()
		time.Sleep(2 * time.Second)
		for _, node := range []string{"k1", "k2"} {
			before := strings.TrimSpace(k.kubectl("-n", "weft-system", "get", "pods", "-l", "app.kubernetes.io/component=agent",
				"--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name}"))
			k.kubectl("-n", "weft-system", "delete", "pod", before, "--wait=true")
			k.kubectl("-n", "weft-system", "rollout", "status", "daemonset/weft-agent", "--timeout", "120s")
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("ping a -> b during the restarts: %v\n%s", r.err, r.out)
		}
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(r.out)
		if m == nil || m[1] != m[2] {
			t.Fatalf("pings were lost while the agent pods restarted:\n%s", r.out)
		}
		t.Logf("a -> b while both agent pods restarted: %s of %s pings answered", m[2], m[1])
		// The restarted agents restored the pods: connections still pass.
		k.check([]flow{pp("a", "b", true), vmPod("a", true)})
	})

	t.Run("NetworkPolicy: namespace isolation, namespaceSelector, named port, egress AND", func(t *testing.T) {
		k := *k
		k.t = t
		k.apply(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y-only, namespace: "x"}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-egress, namespace: "y"}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: "x"}}, podSelector: {matchLabels: {app: a}}}]
`)
		k.check([]flow{pp("c", "a", true), pp("c", "b", false), pp("a", "b", false), pp("b", "a", false),
			vmPod("a", false), vmPod("b", false), podVM("c", false), podVM("a", true),
			// The node reaches its own pods (the kubelet's probes), also
			// isolated ones; another node does not.
			{name: "k1 (a's node) -> a", want: "a", allow: true, try: func() (string, error) { return k.vmTalk("k1", ips["a"]) }},
			{name: "k2 (another node) -> a", want: "a", allow: false, try: func() (string, error) { return k.vmTalk("k2", ips["a"]) }},
		})
		// Kept in sync by watch: deleting the egress policy opens c again.
		k.kubectl("-n", "y", "delete", "networkpolicy", "c-egress")
		k.check([]flow{pp("c", "b", true), podVM("c", true), pp("a", "b", false)})
	})

	t.Run("one Weft policy language for pods and VMs", func(t *testing.T) {
		k := *k
		k.t = t
		// A WeftPolicy (CRD) selecting a pod, naming the VM as its peer.
		k.apply(`apiVersion: weft.dev/v1
kind: WeftPolicy
metadata: {name: vm-to-a}
spec:
  endpointSelector: {matchLabels: {"k8s:app": a}}
  ingress:
  - from: [{matchLabels: {"vm:app": vmdb}}]
    ports: [{port: 80, protocol: TCP}]
`)
		// A Weft policy in etcd selecting the VM, naming a pod as its peer.
		pol := writeFile(t, "vm.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: vm-from-a}
spec:
  endpointSelector: {matchLabels: {"vm:app": vmdb}}
  ingress:
  - from: [{matchLabels: {"k8s:app": a}}]
`)
		m.MustMeshctl("seed", "policy", "apply", "-f", pol, "--timeout", "60s")
		k.check([]flow{vmPod("a", true), vmPod("b", false), podVM("a", true), podVM("c", false)})
	})

	t.Run("relabel, delete and recreate pods", func(t *testing.T) {
		if chained {
			t.Skip("the primary-mode suite relabels and recreates pods; the agent's side is the same")
		}
		k := *k
		k.t = t
		// b becomes app=a: the WeftPolicy now lets the VM reach it, and the
		// VM's policy lets it reach the VM.
		k.kubectl("-n", "x", "label", "pod", "b", "app=a", "--overwrite")
		k.check([]flow{vmPod("b", true), podVM("b", true)})
		testutil.Eventually(t, 30*time.Second, "b's endpoint relabelled", func() error {
			out, err := m.Meshctl("seed", "endpoints", "-o", "json")
			if err != nil {
				return err
			}
			var eps []struct {
				IP     string   `json:"ip"`
				Labels []string `json:"labels"`
			}
			if err := json.Unmarshal([]byte(out), &eps); err != nil {
				return err
			}
			for _, e := range eps {
				if e.IP == ips["b"] {
					if slices.Contains(e.Labels, "k8s:app=a") && slices.Contains(e.Labels, "mesh:kind=pod") {
						return nil
					}
					return fmt.Errorf("b's endpoint labels %v", e.Labels)
				}
			}
			return fmt.Errorf("no endpoint %s", ips["b"])
		})
		// A label that changes a's identity but no verdict: a -> vm1
		// (allowed by vm-from-a) keeps flowing while a is relabelled.
		idOf := func(ip string) uint32 {
			var eps []struct {
				IP       string `json:"ip"`
				Identity uint32 `json:"identity"`
			}
			m.JSON("seed", &eps, "endpoints")
			for _, e := range eps {
				if e.IP == ip {
					return e.Identity
				}
			}
			return 0
		}
		before := idOf(ips["a"])
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(k.ctx, 40*time.Second)
			defer cancel()
			out, err := k.cp.Kubectl(ctx, "-n", "x", "exec", "a", "--", "ping", "-c", "40", "-i", "0.2", "-W", "1", vm1.MeshIP)
			done <- result{out, err}
		}()
		time.Sleep(2 * time.Second)
		k.kubectl("-n", "x", "label", "pod", "a", "tier=front")
		testutil.Eventually(t, 20*time.Second, "a's new identity", func() error {
			if id := idOf(ips["a"]); id == before || id == 0 {
				return fmt.Errorf("a's identity is still %d", id)
			}
			return nil
		})
		res := <-done
		pm := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(res.out)
		if res.err != nil || pm == nil || pm[1] != pm[2] {
			t.Fatalf("a -> vm1 lost pings while a was relabelled (identity %d -> %d): %v\n%s", before, idOf(ips["a"]), res.err, res.out)
		}
		// Deleted: its endpoint goes; recreated: it is back, maybe at
		// another address, with its policy.
		k.kubectl("-n", "x", "delete", "pod", "a", "--wait=true")
		testutil.Eventually(t, 30*time.Second, "a's endpoint removed", func() error {
			out, err := m.Meshctl("seed", "endpoints", "-o", "json")
			if err != nil {
				return err
			}
			if strings.Contains(out, `"`+ips["a"]+`"`) {
				return fmt.Errorf("endpoint %s still listed", ips["a"])
			}
			return nil
		})
		ips["a"] = k.pod("x", "a", "k1", map[string]string{"app": "a"})
		k.check([]flow{pp("c", "a", true), vmPod("a", true), pp("b", "a", false)})
	})

	t.Run("uninstall removes the CNI configuration and the datapath", func(t *testing.T) {
		if chained {
			t.Skip("the primary-mode suite uninstalls")
		}
		k := *k
		k.t = t
		// As `helm upgrade --set cleanup.enabled=true` does: the agent's
		// DaemonSet goes, the cleanup DaemonSet comes.
		k.kubectl("-n", "weft-system", "delete", "daemonset", "weft-agent", "--wait=true")
		k.kubectlIn(k.render(tok.JoinToken, "cleanup.enabled=true"), "apply", "-f", "-")
		k.kubectl("-n", "weft-system", "rollout", "status", "daemonset/weft-cleanup", "--timeout", "90s")
		for name, n := range k.nodes {
			if out, err := n.Exec(context.Background(), "ls", "/etc/cni/net.d", "/opt/cni/bin"); err != nil || strings.Contains(out, "weft") {
				t.Errorf("node %s keeps Weft's CNI files: %v\n%s", name, err, out)
			}
			if out, err := m.Lab.Exec(context.Background(), m.Lab.Node(name).Netns, "ip", "link", "show", "weft0"); err == nil {
				t.Errorf("node %s keeps weft0:\n%s", name, out)
			}
			// The pins' parent may stay (other agents could share it),
			// empty.
			if out, err := n.Exec(context.Background(), "find", "/sys/fs/bpf/weft", "-mindepth", "1"); err == nil && strings.TrimSpace(out) != "" {
				t.Errorf("node %s keeps pinned maps:\n%s", name, out)
			}
		}
	})
}
