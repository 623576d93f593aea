package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftmesh/weft/internal/kubelab"
)

// cluster is a real kube-apiserver (no controllers, no nodes) that the
// chart is installed into with helm and the manifests applied with kubectl.
type cluster struct {
	kubeconfig string
	kubectlBin string
	client     kubernetes.Interface
}

func startCluster(t *testing.T) *cluster {
	helmBin(t) // fail early, before the API server starts, without it
	a := kubelab.StartAPIServer(t)
	bin, err := kubelab.BinDir("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{kubeconfig: a.Kubeconfig(), kubectlBin: filepath.Join(bin, "kubectl"), client: a.Clientset()}
}

func (c *cluster) run(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HOME="+home,
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs helm or kubectl and fails the test when it fails.
func (c *cluster) must(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := c.run(t, bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) helm(t *testing.T, args ...string) string {
	t.Helper()
	return c.must(t, helmBin(t), args...)
}

func (c *cluster) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return c.must(t, c.kubectlBin, args...)
}

// exists reports whether GET path (an API path) finds the object.
func (c *cluster) exists(t *testing.T, path string) bool {
	t.Helper()
	err := c.client.Discovery().RESTClient().Get().AbsPath(path).Do(t.Context()).Error()
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return true
}

const (
	nsPath        = "/api/v1/namespaces/weft-system"
	agentDSPath   = "/apis/apps/v1/namespaces/weft-system/daemonsets/weft-agent"
	cleanupDSPath = "/apis/apps/v1/namespaces/weft-system/daemonsets/weft-cleanup"
	crdPath       = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/weftpolicies.weft.dev"
	rolePath      = "/apis/rbac.authorization.k8s.io/v1/clusterroles/weft-agent"
)

// checkAgentAccess asks the API server what the agent's service account
// may do: read what it watches, write nothing.
func (c *cluster) checkAgentAccess(t *testing.T) {
	t.Helper()
	can := func(verb, group, resource string) bool {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:weft-system:weft-agent",
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:weft-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource},
		}}
		res, err := c.client.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("access review %s %s/%s: %v", verb, group, resource, err)
		}
		return res.Status.Allowed
	}
	watched := [][2]string{{"", "pods"}, {"", "namespaces"}, {"", "nodes"}, {"networking.k8s.io", "networkpolicies"}, {"weft.dev", "weftpolicies"}}
	for _, gr := range watched {
		for _, v := range []string{"get", "list", "watch"} {
			if !can(v, gr[0], gr[1]) {
				t.Errorf("the agent may not %s %s/%s", v, gr[0], gr[1])
			}
		}
		for _, v := range []string{"create", "update", "patch", "delete", "deletecollection"} {
			if can(v, gr[0], gr[1]) {
				t.Errorf("the agent may %s %s/%s", v, gr[0], gr[1])
			}
		}
	}
	for _, gr := range [][2]string{{"", "secrets"}, {"", "configmaps"}, {"", "services"}, {"apps", "daemonsets"}, {"", "pods/exec"}} {
		if can("get", gr[0], gr[1]) {
			t.Errorf("the agent may get %s/%s", gr[0], gr[1])
		}
	}
}

// TestAgainstAPIServer installs, switches to cleanup, uninstalls and
// reinstalls the chart with helm, and applies the plain manifests with
// kubectl, against a real API server: its validation (strict fields, the
// CRD's schema), RBAC and Helm's ownership checks are the cluster's own.
func TestAgainstAPIServer(t *testing.T) {
	c := startCluster(t)

	t.Run("helm install", func(t *testing.T) {
		out := c.helm(t, "install", "weft", chartDir, "--set", "token.existingSecret=", "--set", "token.value=weft1.eyJzIjoiMTk4In0")
		t.Logf("helm install says:\n%s", out)
		for _, want := range []string{"kubectl -n weft-system rollout status daemonset/weft-agent", "/usr/bin/meshctl status",
			"--set cleanup.enabled=true", "rollout status daemonset/weft-cleanup", "helm uninstall weft -n default", "kubectl delete namespace weft-system", "delete the pods Weft connected"} {
			if !strings.Contains(out, want) {
				t.Errorf("the install notes do not say %q", want)
			}
		}
		for _, p := range []string{nsPath, agentDSPath, crdPath, rolePath, "/api/v1/namespaces/weft-system/secrets/weft-token", "/api/v1/namespaces/weft-system/serviceaccounts/weft-agent"} {
			if !c.exists(t, p) {
				t.Errorf("after helm install, %s is missing", p)
			}
		}
		c.checkAgentAccess(t)
	})

	t.Run("helm upgrade to cleanup", func(t *testing.T) {
		out := c.helm(t, "upgrade", "weft", chartDir, "--reuse-values", "--set", "cleanup.enabled=true")
		t.Logf("helm upgrade says:\n%s", out)
		if !strings.Contains(out, `each pod logs "weft removed"`) {
			t.Errorf("the cleanup notes do not say what to wait for:\n%s", out)
		}
		if c.exists(t, agentDSPath) || c.exists(t, rolePath) {
			t.Error("with cleanup.enabled the agent's DaemonSet or ClusterRole is still there")
		}
		if !c.exists(t, cleanupDSPath) {
			t.Error("with cleanup.enabled there is no weft-cleanup DaemonSet")
		}
		// The namespace the release made stays the release's.
		if m := c.helm(t, "get", "manifest", "weft"); !strings.Contains(m, "kind: Namespace") {
			t.Errorf("the upgraded release no longer holds its namespace:\n%s", m)
		}
	})

	t.Run("helm uninstall keeps the namespace and CRD", func(t *testing.T) {
		c.helm(t, "uninstall", "weft")
		if c.exists(t, cleanupDSPath) {
			t.Error("helm uninstall left the weft-cleanup DaemonSet")
		}
		if !c.exists(t, nsPath) || !c.exists(t, crdPath) {
			t.Error("helm uninstall removed the namespace or the WeftPolicy CRD")
		}
		// Installed again, the release takes the namespace it kept back.
		c.helm(t, "install", "weft", chartDir)
		if m := c.helm(t, "get", "manifest", "weft"); !strings.Contains(m, "kind: Namespace") {
			t.Errorf("a reinstall did not take back its kept namespace:\n%s", m)
		}
		c.helm(t, "uninstall", "weft")
	})

	t.Run("helm install into a namespace made by hand", func(t *testing.T) {
		c.kubectl(t, "create", "namespace", "byhand")
		c.kubectl(t, "-n", "byhand", "create", "secret", "generic", "weft-token", "--from-literal=token=weft1.eyJzIjoiMTk4In0")
		c.helm(t, "install", "weft", chartDir, "--set", "namespace=byhand")
		if m := c.helm(t, "get", "manifest", "weft"); strings.Contains(m, "kind: Namespace") {
			t.Errorf("the release took over a namespace it did not make (helm uninstall would delete it, and the Secret in it):\n%s", m)
		}
		if !c.exists(t, "/apis/apps/v1/namespaces/byhand/daemonsets/weft-agent") {
			t.Error("no agent DaemonSet in the namespace made by hand")
		}
		c.helm(t, "uninstall", "weft")
		if !c.exists(t, "/api/v1/namespaces/byhand/secrets/weft-token") {
			t.Error("helm uninstall removed the Secret made by hand")
		}
	})

	t.Run("kubectl apply the manifests", func(t *testing.T) {
		c.kubectl(t, "apply", "--validate=strict", "-f", manifest)
		for _, p := range []string{nsPath, agentDSPath, crdPath, rolePath, "/api/v1/namespaces/weft-system/secrets/weft-token"} {
			if !c.exists(t, p) {
				t.Errorf("after kubectl apply -f weft.yaml, %s is missing", p)
			}
		}
		c.checkAgentAccess(t)
		c.kubectl(t, "apply", "--validate=strict", "-f", uninstallYML)
		if !c.exists(t, cleanupDSPath) {
			t.Error("after kubectl apply -f weft-uninstall.yaml there is no weft-cleanup DaemonSet")
		}
		// The documented way to keep the WeftPolicies deletes every object
		// labelled as Weft's and only those. (Without --wait: nothing here
		// runs the namespace controller that finishes a namespace's
		// deletion, nor the garbage collector a foreground cascade waits for.)
		out := c.kubectl(t, "delete", "-f", manifest, "-l", "app.kubernetes.io/name=weft", "--wait=false")
		for _, want := range []string{`daemonset.apps "weft-agent" deleted`, `clusterrole.rbac.authorization.k8s.io "weft-agent" deleted`, `namespace "weft-system" deleted`} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl delete -f weft.yaml -l app.kubernetes.io/name=weft does not say %s:\n%s", want, out)
			}
		}
		if c.exists(t, agentDSPath) || c.exists(t, rolePath) {
			t.Error("the labelled delete left the agent's DaemonSet or ClusterRole")
		}
		if !c.exists(t, crdPath) || strings.Contains(out, "customresourcedefinition") {
			t.Errorf("the labelled delete of weft.yaml deleted the WeftPolicy CRD:\n%s", out)
		}
	})
}
