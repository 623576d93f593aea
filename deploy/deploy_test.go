// Package deploy holds the Kubernetes packaging of Weft: the Helm chart
// (helm/weft), the plain manifests rendered from it (kubernetes/) and the
// node cleanup program. Its tests lint and render the chart with the real
// helm CLI (bin/helm, from scripts/build-helm.sh) and check what a cluster
// would be given.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	chartDir     = "helm/weft"
	manifest     = "kubernetes/weft.yaml"
	uninstallYML = "kubernetes/weft-uninstall.yaml"
	regenerate   = "run deploy/kubernetes/render.sh (scripts/build-helm.sh first, for bin/helm) and commit the result"
)

// helmBin is bin/helm. Without it the tests fail, not skip, unless -short:
// a CI that never built helm must not pass them silently.
func helmBin(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../bin/helm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		if testing.Short() {
			t.Skip("bin/helm is missing (run scripts/build-helm.sh); skipped in -short")
		}
		t.Fatalf("bin/helm is missing: run scripts/build-helm.sh (%v)", err)
	}
	return p
}

// helm runs bin/helm with its own empty config, cache and data dirs.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// objects is a rendering, decoded strictly into the API types: a field
// the API does not have fails the test.
type objects struct {
	namespaces          []corev1.Namespace
	serviceAccounts     []corev1.ServiceAccount
	secrets             []corev1.Secret
	clusterRoles        []rbacv1.ClusterRole
	clusterRoleBindings []rbacv1.ClusterRoleBinding
	daemonSets          []appsv1.DaemonSet
	// crds are the names of the CustomResourceDefinitions (their types
	// are not in Weft's dependencies; deploy/crds has its own tests).
	crds []string
}

func (o objects) daemonSet(t *testing.T, name string) appsv1.DaemonSet {
	t.Helper()
	for _, ds := range o.daemonSets {
		if ds.Name == name {
			return ds
		}
	}
	t.Fatalf("no DaemonSet %s in the rendering", name)
	return appsv1.DaemonSet{}
}

func (o objects) kinds() []string {
	var k []string
	add := func(kind string, n int) {
		for range n {
			k = append(k, kind)
		}
	}
	add("ClusterRole", len(o.clusterRoles))
	add("CustomResourceDefinition", len(o.crds))
	add("ClusterRoleBinding", len(o.clusterRoleBindings))
	add("DaemonSet", len(o.daemonSets))
	add("Namespace", len(o.namespaces))
	add("Secret", len(o.secrets))
	add("ServiceAccount", len(o.serviceAccounts))
	return k
}

func decode(t *testing.T, text string) objects {
	t.Helper()
	var o objects
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(text)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("splitting the rendering: %v", err)
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("document %q: %v", doc, err)
		}
		if meta.Kind == "" {
			continue // comments only
		}
		var target any
		switch meta.APIVersion + " " + meta.Kind {
		case "apiextensions.k8s.io/v1 CustomResourceDefinition":
			var crd struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &crd); err != nil {
				t.Fatalf("CustomResourceDefinition: %v", err)
			}
			o.crds = append(o.crds, crd.Metadata.Name)
			continue
		case "v1 Namespace":
			o.namespaces = append(o.namespaces, corev1.Namespace{})
			target = &o.namespaces[len(o.namespaces)-1]
		case "v1 ServiceAccount":
			o.serviceAccounts = append(o.serviceAccounts, corev1.ServiceAccount{})
			target = &o.serviceAccounts[len(o.serviceAccounts)-1]
		case "v1 Secret":
			o.secrets = append(o.secrets, corev1.Secret{})
			target = &o.secrets[len(o.secrets)-1]
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			o.clusterRoles = append(o.clusterRoles, rbacv1.ClusterRole{})
			target = &o.clusterRoles[len(o.clusterRoles)-1]
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			o.clusterRoleBindings = append(o.clusterRoleBindings, rbacv1.ClusterRoleBinding{})
			target = &o.clusterRoleBindings[len(o.clusterRoleBindings)-1]
		case "apps/v1 DaemonSet":
			o.daemonSets = append(o.daemonSets, appsv1.DaemonSet{})
			target = &o.daemonSets[len(o.daemonSets)-1]
		default:
			t.Fatalf("unexpected object %s %s in the rendering", meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, target); err != nil {
			t.Fatalf("%s does not decode as the API type: %v\n%s", meta.Kind, err, doc)
		}
	}
	return o
}

// render is `helm template` of the chart with --set values.
func render(t *testing.T, sets ...string) objects {
	t.Helper()
	args := []string{"template", "weft", chartDir}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return decode(t, out)
}

func TestLint(t *testing.T) {
	for name, sets := range map[string][]string{
		"default values": nil,
		"chained mode":   {"cni.mode=chained", "cni.chainInto=10-flannel.conflist"},
		"token value":    {"token.existingSecret=", "token.value=weft1.eyJzIjoiMTk4LjE4LjEuMTA6NTE4MzQifQ"},
		"cleanup":        {"cleanup.enabled=true"},
	} {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			for _, s := range sets {
				args = append(args, "--set", s)
			}
			if out, err := helm(t, args...); err != nil {
				t.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// Bad values are refused by helm lint and by helm template (what install
// renders) with the schema's words, never echoing a token.
func TestBadValuesRefused(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"cni.mode=overlay", "at '/cni/mode': value must be one of 'primary', 'chained'"},
		{"cni.chainInto=10-flannel.conflist", "missing property 'mode: chained, since chainInto is set"},
		{"cni.binDir=/", "at '/cni/binDir': value must be 'an absolute, clean directory on the node"},
		{"cni.confDir=/etc/cni/../net.d", "at '/cni/confDir': value must be 'an absolute, clean directory"},
		{"image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of 'Never', 'IfNotPresent', 'Always'"},
		{"agent.socket=/run/agent.sock", "at '/agent/socket': value must be 'an absolute, clean path in a directory of its own"},
		{"agent.logLevel=loud", "at '/agent/logLevel': value must be one of 'debug', 'info', 'warn', 'error'"},
		{"agent.extraArgs[0]=--socket=/tmp/x", "at '/agent/extraArgs/0': value must be 'a flag the chart does not set itself"},
		{"agent.kubeAPIServer=http://198.18.0.10:6443", "at '/agent/kubeAPIServer': value must be 'an https URL of the API server"},
		{"agent.extraArgs[0]=--kube-api-server", "at '/agent/extraArgs/0': value must be 'a flag the chart does not set itself"},
		{"cni.mod=primary", "at '/cni': additional properties 'mod' not allowed"},
		{"namespace=Weft_System", "at '/namespace': value must be 'a namespace name"},
		{"token.value=weft1.eyJzIjoiMTk4In0", "at '/token': missing property 'only one of existingSecret and value: both are set"},
		{"token.existingSecret=", "at '/token': missing property 'existingSecret or value: neither is set"},
		{"token.existingSecret=,token.value=hunter2-not-a-token", "at '/token/value': value must be 'a join token"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			for _, cmd := range [][]string{{"lint", chartDir}, {"template", "weft", chartDir}} {
				out, err := helm(t, append(cmd, "--set", tc.set)...)
				if err == nil {
					t.Errorf("helm %s --set %s passed, want it refused\n%s", cmd[0], tc.set, out)
					continue
				}
				if !strings.Contains(out, tc.want) {
					t.Errorf("helm %s --set %s says\n%s\nwant it to say %q", cmd[0], tc.set, out, tc.want)
				}
				if strings.Contains(out, "hunter2") {
					t.Errorf("helm %s prints the token value:\n%s", cmd[0], out)
				}
			}
		})
	}
	// What the schema cannot state, the template refuses when it renders.
	out, err := helm(t, "template", "weft", chartDir, "--set", "agent.stateDir=/run/weft/state")
	if err == nil || !strings.Contains(out, "agent.socket's directory /run/weft and agent.stateDir /run/weft/state overlap") {
		t.Errorf("a state dir under the socket's directory: %v\n%s", err, out)
	}
}

// The agent reads the cluster and writes nothing to it.
func TestRBACIsReadOnly(t *testing.T) {
	o := render(t)
	if len(o.clusterRoles) != 1 || o.clusterRoles[0].Name != "weft-agent" {
		t.Fatalf("cluster roles %v, want weft-agent alone", o.clusterRoles)
	}
	var got []string
	for _, r := range o.clusterRoles[0].Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v names resources or URLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, g+"/"+res+":"+v)
				}
			}
		}
	}
	var want []string
	for _, gr := range []string{"/pods", "/namespaces", "/nodes", "networking.k8s.io/networkpolicies", "weft.dev/weftpolicies"} {
		for _, v := range []string{"get", "list", "watch"} {
			want = append(want, gr+":"+v)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("the agent's permissions are\n  %s\nwant exactly\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if len(o.clusterRoleBindings) != 1 {
		t.Fatalf("%d cluster role bindings, want 1", len(o.clusterRoleBindings))
	}
	b := o.clusterRoleBindings[0]
	wantSubject := rbacv1.Subject{Kind: "ServiceAccount", Name: "weft-agent", Namespace: "weft-system"}
	if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != "weft-agent" || len(b.Subjects) != 1 || b.Subjects[0] != wantSubject {
		t.Errorf("binding %+v %+v, want ClusterRole weft-agent to %+v", b.RoleRef, b.Subjects, wantSubject)
	}
	if len(o.serviceAccounts) != 1 || o.serviceAccounts[0].Name != "weft-agent" || o.serviceAccounts[0].Namespace != "weft-system" {
		t.Errorf("service accounts %v, want weft-system/weft-agent", o.serviceAccounts)
	}
	ds := o.daemonSet(t, "weft-agent")
	if ds.Spec.Template.Spec.ServiceAccountName != "weft-agent" {
		t.Errorf("the agent runs as service account %q, want weft-agent", ds.Spec.Template.Spec.ServiceAccountName)
	}
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

func volume(t *testing.T, ps corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range ps.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %s", name)
	return corev1.Volume{}
}

// mount finds the mount of a volume at path.
func mount(c corev1.Container, path string) (corev1.VolumeMount, bool) {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

// hostPathAt is the host path mounted at path in c.
func hostPathAt(t *testing.T, ps corev1.PodSpec, c corev1.Container, path string) (corev1.VolumeMount, corev1.HostPathVolumeSource) {
	t.Helper()
	m, ok := mount(c, path)
	if !ok {
		t.Fatalf("container %s mounts nothing at %s", c.Name, path)
	}
	v := volume(t, ps, m.Name)
	if v.HostPath == nil {
		t.Fatalf("volume %s at %s is not a hostPath", m.Name, path)
	}
	return m, *v.HostPath
}

func TestAgentDaemonSet(t *testing.T) {
	o := render(t)
	if got, want := o.kinds(), []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "ServiceAccount"}; !slices.Equal(got, want) {
		t.Errorf("default values render %v, want %v", got, want)
	}
	if len(o.namespaces) == 1 && o.namespaces[0].Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %s does not admit privileged pods: %v", o.namespaces[0].Name, o.namespaces[0].Labels)
	}
	ds := o.daemonSet(t, "weft-agent")
	if ds.Namespace != "weft-system" {
		t.Errorf("DaemonSet in %q, want weft-system", ds.Namespace)
	}
	ps := ds.Spec.Template.Spec
	if !ps.HostNetwork || ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet || ps.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v, dnsPolicy %s, priorityClass %s; want true, ClusterFirstWithHostNet, system-node-critical", ps.HostNetwork, ps.DNSPolicy, ps.PriorityClassName)
	}
	// In the host's PID namespace the userspace WireGuard helper, which
	// the agent moves out of the pod's cgroups, outlives a pod restart.
	if !ps.HostPID {
		t.Error("hostPID is off: stopping the pod would take the userspace WireGuard helper with it")
	}
	if g := ps.TerminationGracePeriodSeconds; g == nil || *g > 15 {
		t.Errorf("terminationGracePeriodSeconds %v, want about 10", g)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("update strategy %+v, want RollingUpdate with maxUnavailable 1", us)
	}
	if len(ps.Tolerations) != 1 || ps.Tolerations[0].Operator != corev1.TolerationOpExists || ps.Tolerations[0].Key != "" || ps.Tolerations[0].Effect != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", ps.Tolerations)
	}
	if sel := ds.Spec.Selector.MatchLabels; len(sel) == 0 || !subset(sel, ds.Spec.Template.Labels) {
		t.Errorf("selector %v does not select the pod template's labels %v", sel, ds.Spec.Template.Labels)
	}

	agent := container(t, ps.Containers, "agent")
	if agent.Image != "registry.local/weft:dev" || agent.ImagePullPolicy != corev1.PullNever {
		t.Errorf("image %s (%s), want registry.local/weft:dev (Never)", agent.Image, agent.ImagePullPolicy)
	}
	wantCmd := []string{"/usr/bin/meshctl", "join", "--token-file", "/etc/weft/token/token", "--name", "$(NODE_NAME)",
		"--foreground", "--wait", "0", "--state-dir", "/var/lib/weft", "--config-file", "/var/lib/weft/agent.yaml",
		"--socket", "/run/weft/agent.sock", "--", "--kubernetes", "--log-level", "info"}
	if !slices.Equal(agent.Command, wantCmd) {
		t.Errorf("agent command\n  %q\nwant\n  %q", agent.Command, wantCmd)
	}
	// The kubelet expands $(NODE_NAME) only from the container's env.
	var nodeName *corev1.EnvVar
	for i, e := range agent.Env {
		if e.Name == "NODE_NAME" {
			nodeName = &agent.Env[i]
		}
	}
	if nodeName == nil || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil || nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env NODE_NAME %+v, want it from the field spec.nodeName", nodeName)
	}
	if sc := agent.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the agent container is not privileged")
	}
	if rp := agent.ReadinessProbe; rp == nil || rp.Exec == nil ||
		!slices.Equal(rp.Exec.Command, []string{"/usr/bin/meshctl", "--socket", "/run/weft/agent.sock", "status"}) ||
		rp.PeriodSeconds < 5 || rp.TimeoutSeconds < 2 {
		t.Errorf("readiness probe %+v, want meshctl --socket /run/weft/agent.sock status every 5 s or more, with a timeout of 2 s or more", rp)
	}
	if agent.LivenessProbe != nil {
		t.Error("a liveness probe would restart the agent when a peer is unreachable")
	}

	initC := container(t, ps.InitContainers, "install-cni")
	wantInit := []string{"/usr/bin/weft-cni", "install", "--bin-dir", "/host/opt/cni/bin", "--conf-dir", "/host/etc/cni/net.d",
		"--mode", "primary", "--agent-socket", "/run/weft/agent.sock"}
	if !slices.Equal(initC.Command, wantInit) {
		t.Errorf("install-cni command\n  %q\nwant\n  %q", initC.Command, wantInit)
	}
	if initC.Image != agent.Image {
		t.Errorf("install-cni image %s, agent image %s: the plugin must match the agent", initC.Image, agent.Image)
	}

	for _, tc := range []struct {
		c           corev1.Container
		at, host    string
		propagation corev1.MountPropagationMode
	}{
		{agent, "/var/lib/weft", "/var/lib/weft", ""},
		// weft-cni, run by the container runtime on the host, dials
		// the socket at the host's path.
		{agent, "/run/weft", "/run/weft", ""},
		{agent, "/sys/fs/bpf", "/sys/fs/bpf", corev1.MountPropagationBidirectional},
		// Pod namespaces made after the agent started must be visible.
		{agent, "/var/run/netns", "/var/run/netns", corev1.MountPropagationHostToContainer},
		{agent, "/var/run/wireguard", "/var/run/wireguard", ""},
		{initC, "/host/opt/cni/bin", "/opt/cni/bin", ""},
		{initC, "/host/etc/cni/net.d", "/etc/cni/net.d", ""},
	} {
		m, hp := hostPathAt(t, ps, tc.c, tc.at)
		if hp.Path != tc.host || hp.Type == nil || *hp.Type != corev1.HostPathDirectoryOrCreate {
			t.Errorf("%s at %s: host path %s (%v), want %s (DirectoryOrCreate)", tc.c.Name, tc.at, hp.Path, hp.Type, tc.host)
		}
		var got corev1.MountPropagationMode
		if m.MountPropagation != nil {
			got = *m.MountPropagation
		}
		if got != tc.propagation {
			t.Errorf("%s at %s: mount propagation %q, want %q", tc.c.Name, tc.at, got, tc.propagation)
		}
		if m.ReadOnly {
			t.Errorf("%s at %s is read-only", tc.c.Name, tc.at)
		}
	}

	if _, hp := hostPathAt(t, ps, agent, "/host/sys/fs/cgroup"); hp.Path != "/sys/fs/cgroup" {
		t.Errorf("the agent mounts %s at /host/sys/fs/cgroup, want the node's /sys/fs/cgroup", hp.Path)
	}

	tm, ok := mount(agent, "/etc/weft/token")
	if !ok || !tm.ReadOnly {
		t.Fatalf("token mount %+v, want /etc/weft/token read-only", tm)
	}
	tv := volume(t, ps, tm.Name)
	if tv.Secret == nil || tv.Secret.SecretName != "weft-token" || tv.Secret.DefaultMode == nil || *tv.Secret.DefaultMode != 0o400 {
		t.Fatalf("token volume %+v, want Secret weft-token with defaultMode 0400", tv.VolumeSource)
	}
	if len(tv.Secret.Items) != 1 || tv.Secret.Items[0].Key != "token" || tv.Secret.Items[0].Path != "token" {
		t.Errorf("token volume items %+v, want the key token as /etc/weft/token/token (what --token-file reads)", tv.Secret.Items)
	}
	checkMountsResolve(t, ps)
}

// checkMountsResolve: every mount names a volume, and every volume is
// mounted by some container.
func checkMountsResolve(t *testing.T, ps corev1.PodSpec) {
	t.Helper()
	used := map[string]bool{}
	for _, c := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
		for _, m := range c.VolumeMounts {
			volume(t, ps, m.Name)
			used[m.Name] = true
		}
	}
	for _, v := range ps.Volumes {
		if !used[v.Name] {
			t.Errorf("volume %s is mounted by no container", v.Name)
		}
	}
}

func subset(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestChainedMode(t *testing.T) {
	ps := render(t, "cni.mode=chained", "cni.chainInto=10-flannel.conflist").daemonSet(t, "weft-agent").Spec.Template.Spec
	got := container(t, ps.InitContainers, "install-cni").Command
	want := []string{"/usr/bin/weft-cni", "install", "--bin-dir", "/host/opt/cni/bin", "--conf-dir", "/host/etc/cni/net.d",
		"--mode", "chained", "--chain-into", "10-flannel.conflist", "--agent-socket", "/run/weft/agent.sock"}
	if !slices.Equal(got, want) {
		t.Errorf("chained install-cni command\n  %q\nwant\n  %q", got, want)
	}
	// Without chainInto weft-cni picks the conflist the runtime uses.
	got = container(t, render(t, "cni.mode=chained").daemonSet(t, "weft-agent").Spec.Template.Spec.InitContainers, "install-cni").Command
	if slices.Contains(got, "--chain-into") || !slices.Contains(got, "chained") {
		t.Errorf("chained without chainInto: %q", got)
	}
}

func TestValuesReachTheDaemonSet(t *testing.T) {
	o := render(t, "namespace=mesh", "image.repository=example.org/weft", "image.tag=v1.2.3", "image.pullPolicy=IfNotPresent",
		"agent.socket=/run/weft-x/api.sock", "agent.stateDir=/srv/weft", "agent.logLevel=debug", "agent.kubeAPIServer=https://198.18.0.10:6443",
		"agent.extraArgs[0]=--wg-port", "agent.extraArgs[1]=51900",
		"cni.binDir=/usr/libexec/cni", "cni.confDir=/etc/cni/conf.d", "token.key=join",
		"nodeSelector.pool=edge", "tolerations=null")
	ds := o.daemonSet(t, "weft-agent")
	ps := ds.Spec.Template.Spec
	agent := container(t, ps.Containers, "agent")
	if ds.Namespace != "mesh" || len(o.namespaces) != 1 || o.namespaces[0].Name != "mesh" || o.serviceAccounts[0].Namespace != "mesh" || o.clusterRoleBindings[0].Subjects[0].Namespace != "mesh" {
		t.Error("namespace=mesh does not reach every object")
	}
	if agent.Image != "example.org/weft:v1.2.3" || agent.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s)", agent.Image, agent.ImagePullPolicy)
	}
	wantTail := []string{"--state-dir", "/srv/weft", "--config-file", "/srv/weft/agent.yaml", "--socket", "/run/weft-x/api.sock",
		"--", "--kubernetes", "--log-level", "debug", "--kube-api-server", "https://198.18.0.10:6443", "--wg-port", "51900"}
	if !slices.Equal(agent.Command[len(agent.Command)-len(wantTail):], wantTail) || !slices.Contains(agent.Command, "/etc/weft/token/join") {
		t.Errorf("agent command %q", agent.Command)
	}
	if _, hp := hostPathAt(t, ps, agent, "/run/weft-x"); hp.Path != "/run/weft-x" {
		t.Errorf("socket dir host path %s", hp.Path)
	}
	if _, hp := hostPathAt(t, ps, agent, "/srv/weft"); hp.Path != "/srv/weft" {
		t.Errorf("state dir host path %s", hp.Path)
	}
	initC := container(t, ps.InitContainers, "install-cni")
	if _, hp := hostPathAt(t, ps, initC, "/host/opt/cni/bin"); hp.Path != "/usr/libexec/cni" {
		t.Errorf("CNI bin dir host path %s", hp.Path)
	}
	if _, hp := hostPathAt(t, ps, initC, "/host/etc/cni/net.d"); hp.Path != "/etc/cni/conf.d" {
		t.Errorf("CNI conf dir host path %s", hp.Path)
	}
	if !slices.Contains(initC.Command, "/run/weft-x/api.sock") {
		t.Errorf("install-cni does not give the plugin the socket: %q", initC.Command)
	}
	if ps.NodeSelector["pool"] != "edge" || len(ps.Tolerations) != 0 {
		t.Errorf("nodeSelector %v, tolerations %v", ps.NodeSelector, ps.Tolerations)
	}
}

func TestTokenSecretOnlyWithValue(t *testing.T) {
	if o := render(t); len(o.secrets) != 0 {
		t.Errorf("default values create Secrets %v: the token Secret is the user's", o.secrets)
	}
	o := render(t, "token.existingSecret=mine")
	if len(o.secrets) != 0 {
		t.Errorf("token.existingSecret creates Secrets %v", o.secrets)
	}
	if n := volume(t, o.daemonSet(t, "weft-agent").Spec.Template.Spec, "token").Secret.SecretName; n != "mine" {
		t.Errorf("token.existingSecret=mine mounts Secret %s", n)
	}
	const tok = "weft1.eyJzIjoiMTk4LjE4LjEuMTA6NTE4MzQifQ"
	o = render(t, "token.existingSecret=", "token.value="+tok+"\n")
	if len(o.secrets) != 1 {
		t.Fatalf("token.value creates %d Secrets, want 1", len(o.secrets))
	}
	s := o.secrets[0]
	if s.Name != "weft-token" || s.Namespace != "weft-system" || string(s.Data["token"]) != tok {
		t.Errorf("Secret %s/%s data %q, want weft-system/weft-token with the token (trimmed) under token", s.Namespace, s.Name, s.Data)
	}
	if n := volume(t, o.daemonSet(t, "weft-agent").Spec.Template.Spec, "token").Secret.SecretName; n != s.Name {
		t.Errorf("the agent mounts Secret %s, the chart made %s", n, s.Name)
	}
}

// cleanup.enabled replaces the agent with the cleanup DaemonSet, on the
// same host paths.
func TestCleanupDaemonSet(t *testing.T) {
	o := render(t, "cleanup.enabled=true")
	if got, want := o.kinds(), []string{"DaemonSet", "Namespace"}; !slices.Equal(got, want) {
		t.Errorf("cleanup.enabled renders %v, want %v (the agent and its access gone)", got, want)
	}
	ds := o.daemonSet(t, "weft-cleanup")
	ps := ds.Spec.Template.Spec
	if !ps.HostNetwork || ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Errorf("hostNetwork %v, automountServiceAccountToken %v: want the host network and no API access", ps.HostNetwork, ps.AutomountServiceAccountToken)
	}
	if len(ps.Tolerations) != 1 || ps.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("tolerations %+v: the cleanup must reach every node the agent ran on", ps.Tolerations)
	}
	c := container(t, ps.Containers, "cleanup")
	want := []string{"/usr/bin/weft-cleanup", "--agent-socket", "/run/weft/agent.sock", "--agent-config", "/var/lib/weft/agent.yaml",
		"--cni-bin-dir", "/host/opt/cni/bin", "--cni-conf-dir", "/host/etc/cni/net.d", "--done-file", "/run/weft-cleanup/done"}
	if !slices.Equal(c.Command, want) {
		t.Errorf("cleanup command\n  %q\nwant\n  %q", c.Command, want)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the cleanup container is not privileged (it removes devices and eBPF programs)")
	}
	if rp := c.ReadinessProbe; rp == nil || rp.Exec == nil || !slices.Equal(rp.Exec.Command, []string{"/usr/bin/weft-cleanup", "--done-file", "/run/weft-cleanup/done", "--check"}) {
		t.Errorf("readiness probe %+v, want weft-cleanup --check of the done file", rp)
	}
	agentPS := render(t).daemonSet(t, "weft-agent").Spec.Template.Spec
	agent := container(t, agentPS.Containers, "agent")
	for _, at := range []string{"/var/lib/weft", "/run/weft", "/sys/fs/bpf", "/var/run/netns", "/var/run/wireguard"} {
		_, want := hostPathAt(t, agentPS, agent, at)
		if _, got := hostPathAt(t, ps, c, at); got.Path != want.Path {
			t.Errorf("at %s the cleanup mounts %s, the agent %s", at, got.Path, want.Path)
		}
	}
	initC := container(t, agentPS.InitContainers, "install-cni")
	for _, at := range []string{"/host/opt/cni/bin", "/host/etc/cni/net.d"} {
		_, want := hostPathAt(t, agentPS, initC, at)
		if _, got := hostPathAt(t, ps, c, at); got.Path != want.Path {
			t.Errorf("at %s the cleanup mounts %s, install-cni %s", at, got.Path, want.Path)
		}
	}
	checkMountsResolve(t, ps)
}

// The plain manifests are the chart's output: render.sh makes them, and
// they must be what it makes now.
func TestManifestsMatchChart(t *testing.T) {
	helmBin(t)
	dir := t.TempDir()
	cmd := exec.Command("kubernetes/render.sh", dir)
	cmd.Env = append(os.Environ(), "HELM="+helmBin(t), "HELM_CACHE_HOME="+dir, "HELM_CONFIG_HOME="+dir, "HELM_DATA_HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render.sh: %v\n%s", err, out)
	}
	for _, f := range []string{manifest, uninstallYML} {
		want, err := os.ReadFile(filepath.Join(dir, filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("%v: %s", err, regenerate)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/%s differs from the chart's rendering: %s\n%s", f, regenerate, firstDiff(string(got), string(want)))
		}
	}

	// weft.yaml: the default rendering plus the placeholder token Secret
	// that the DaemonSet mounts.
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	o := decode(t, string(data))
	if len(o.secrets) != 1 || o.secrets[0].Name != "weft-token" || o.secrets[0].Namespace != "weft-system" || o.secrets[0].StringData["token"] == "" {
		t.Fatalf("weft.yaml's Secrets %v, want the placeholder weft-system/weft-token", o.secrets)
	}
	if n := volume(t, o.daemonSet(t, "weft-agent").Spec.Template.Spec, "token").Secret.SecretName; n != "weft-token" {
		t.Errorf("weft.yaml's agent mounts Secret %s, the file has weft-token", n)
	}
	// The agent watches weftpolicies: without the CRD its informer fails.
	if !slices.Equal(o.crds, []string{"weftpolicies.weft.dev"}) {
		t.Errorf("weft.yaml's CRDs %v, want weftpolicies.weft.dev", o.crds)
	}
	for _, step := range []string{"meshctl token create --cluster CLUSTER --pod-cidrs CLUSTER-CIDR", "kubectl -n weft-system create secret generic weft-token --from-file=token="} {
		if !strings.Contains(string(data), step) {
			t.Errorf("weft.yaml's header does not show %q", step)
		}
	}
	u, err := os.ReadFile(uninstallYML)
	if err != nil {
		t.Fatal(err)
	}
	uo := decode(t, string(u))
	if len(uo.daemonSets) != 1 || uo.daemonSets[0].Name != "weft-cleanup" || len(uo.namespaces) != 1 {
		t.Errorf("weft-uninstall.yaml holds %v, want the namespace and the weft-cleanup DaemonSet", uo.kinds())
	}
	for _, step := range []string{"kubectl delete -f weft.yaml --cascade=foreground", "kubectl apply -f weft-uninstall.yaml", `"weft removed"`, "kubectl delete -f weft-uninstall.yaml"} {
		if !strings.Contains(string(u), step) {
			t.Errorf("weft-uninstall.yaml's steps do not show %q", step)
		}
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "first difference at line " + strconv.Itoa(i+1) + ":\n  file:     " + gl + "\n  rendered: " + wl
		}
	}
	return ""
}

// Every binary the chart runs is one scripts/build-image.sh puts in the
// image.
func TestChartRunsImageBinaries(t *testing.T) {
	script, err := os.ReadFile("../scripts/build-image.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^bins=\(([^)]*)\)`).FindSubmatch(script)
	if m == nil {
		t.Fatal("scripts/build-image.sh has no bins=(...) list")
	}
	inImage := strings.Fields(string(m[1]))
	for _, sets := range [][]string{nil, {"cleanup.enabled=true"}} {
		for _, ds := range render(t, sets...).daemonSets {
			ps := ds.Spec.Template.Spec
			for _, c := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
				cmds := [][]string{c.Command}
				if c.ReadinessProbe != nil && c.ReadinessProbe.Exec != nil {
					cmds = append(cmds, c.ReadinessProbe.Exec.Command)
				}
				for _, cmd := range cmds {
					bin, ok := strings.CutPrefix(cmd[0], "/usr/bin/")
					if !ok || !slices.Contains(inImage, bin) {
						t.Errorf("%s/%s runs %s, which the image (%v in /usr/bin) does not have", ds.Name, c.Name, cmd[0], inImage)
					}
				}
			}
		}
	}
}

// The chart ships the WeftPolicy CRD (the agent watches weftpolicies) as a
// copy of deploy/crds: the copies must be the same.
func TestCRDCopiesIdentical(t *testing.T) {
	list := func(dir string) []string {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
		return names
	}
	src, dst := list("crds"), list(filepath.Join(chartDir, "crds"))
	if !slices.Equal(src, dst) {
		t.Fatalf("deploy/crds has %v, deploy/helm/weft/crds %v: copy deploy/crds/* into deploy/helm/weft/crds/", src, dst)
	}
	for _, n := range src {
		a, err := os.ReadFile(filepath.Join("crds", n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(chartDir, "crds", n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("deploy/helm/weft/crds/%s differs from deploy/crds/%s: cp deploy/crds/%s deploy/helm/weft/crds/", n, n, n)
		}
	}
}
