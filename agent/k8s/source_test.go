package k8s_test

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/agent/k8s"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/kubelab"
	"log/slog"
)

// Tier A: the Kubernetes source against a real kube-apiserver and etcd.
func TestSourceAgainstAPIServer(t *testing.T) {
	api := kubelab.StartAPIServer(t)
	cs := api.Clientset()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	mustCreate := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{})
	mustCreate(err)
	_, err = cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{})
	mustCreate(err)
	_, err = cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}, metav1.CreateOptions{})
	mustCreate(err)
	pod := func(name, node string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: labels},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.local/busybox:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9090}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}}}
	}
	_, err = cs.CoreV1().Pods("shop").Create(ctx, pod("web", "n1", map[string]string{"app": "web", "app.kubernetes.io/part-of": "shop"}), metav1.CreateOptions{})
	mustCreate(err)
	_, err = cs.CoreV1().Pods("shop").Create(ctx, pod("other", "n2", map[string]string{"app": "db"}), metav1.CreateOptions{})
	mustCreate(err)

	src, err := k8s.New(k8s.Config{Kubeconfig: api.Kubeconfig(), NodeName: "n1", Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var changed []k8s.Pod
	var deleted []string
	policies := make(chan struct{}, 16)
	src.SetHandlers(k8s.Handlers{
		PodChanged: func(p k8s.Pod) { mu.Lock(); changed = append(changed, p); mu.Unlock() },
		PodDeleted: func(ns, name, _ string) { mu.Lock(); deleted = append(deleted, ns+"/"+name); mu.Unlock() },
		PoliciesChanged: func() {
			select {
			case policies <- struct{}{}:
			default:
			}
		},
	})
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := src.Start(sctx); err != nil {
		t.Fatal(err)
	}

	// Only this node's pods; labels with the k8s source, the namespace
	// and its labels.
	pods := src.Pods()
	if len(pods) != 1 || pods[0].Key() != "shop/web" {
		t.Fatalf("pods of n1 = %v, want only shop/web", pods)
	}
	want := identity.MustLabels("k8s:app=web", "k8s:app.kubernetes.io/part-of=shop", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.kubernetes.namespace.labels.team=a",
		// the API server labels every namespace with its name
		"k8s:io.kubernetes.namespace.labels.kubernetes.io/metadata.name=shop")
	if !pods[0].Labels.Equal(want) {
		t.Fatalf("labels = %v, want %v", pods[0].Labels, want)
	}
	if got := pods[0].Ports; len(got) != 2 || got[0] != (k8s.NamedPort{Name: "dns", Protocol: "UDP", Port: 53}) || got[1] != (k8s.NamedPort{Name: "http", Protocol: "TCP", Port: 8080}) {
		t.Fatalf("named ports = %v, want dns=53/UDP and http=8080/TCP (the unnamed one left out)", got)
	}
	if _, err := src.Pod(ctx, "shop", "other"); err == nil {
		t.Fatal("a pod of another node was returned")
	}

	// The podCIDR arrives once the controller manager (here: the test)
	// sets it.
	go func() {
		time.Sleep(300 * time.Millisecond)
		n, err := cs.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			return
		}
		n.Spec.PodCIDR, n.Spec.PodCIDRs = "100.96.1.0/24", []string{"100.96.1.0/24"}
		_, _ = cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	}()
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	cidr, err := src.PodCIDR(cctx)
	ccancel()
	if err != nil || cidr != netip.MustParsePrefix("100.96.1.0/24") {
		t.Fatalf("PodCIDR = %v, %v; want 100.96.1.0/24", cidr, err)
	}

	// Relabelling the pod, and its namespace, is seen.
	p, err := cs.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{})
	mustCreate(err)
	p.Labels["app"] = "web2"
	_, err = cs.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{})
	mustCreate(err)
	waitFor(t, "relabel event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(changed, func(p k8s.Pod) bool { return p.Labels.Has(identity.Label{Source: "k8s", Key: "app", Value: "web2"}) })
	})
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	mustCreate(err)
	ns.Labels["team"] = "b"
	_, err = cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	mustCreate(err)
	waitFor(t, "namespace relabel event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(changed, func(p k8s.Pod) bool {
			return p.Labels.Has(identity.Label{Source: "k8s", Key: identity.K8sNamespaceLabelPrefix + "team", Value: "b"})
		})
	})

	// NetworkPolicies as the API server validated and defaulted them.
	tcp := corev1.ProtocolTCP
	port := intstr.FromString("http")
	_, err = cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-ingress", Namespace: "shop"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web2"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}},
		},
	}, metav1.CreateOptions{})
	mustCreate(err)
	waitFor(t, "a NetworkPolicy", func() bool { return len(src.NetworkPolicies()) == 1 })
	if nps := src.NetworkPolicies(); len(nps[0].Spec.PolicyTypes) != 1 || nps[0].Spec.PolicyTypes[0] != networkingv1.PolicyTypeIngress {
		t.Fatalf("policyTypes = %v: the API server defaults them to [Ingress]", nps[0].Spec.PolicyTypes)
	}
	select {
	case <-policies:
	case <-time.After(10 * time.Second):
		t.Fatal("no PoliciesChanged for a new NetworkPolicy")
	}

	// Deleting the pod is seen.
	mustCreate(cs.CoreV1().Pods("shop").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	waitFor(t, "delete event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(deleted, "shop/web")
	})
	if src.HasPod("shop", "web", "") {
		t.Fatal("HasPod true after the delete")
	}
}

func TestPodLabelsLeaveOutWhatBreaksTheRules(t *testing.T) {
	got, skipped := k8s.PodLabels("ns", map[string]string{"app": "web", "bad key": "x", identity.K8sNamespaceKey: "kube-system", identity.K8sNamespaceLabelPrefix + "team": "ops"}, map[string]string{"kubernetes.io/metadata.name": "ns", "a-very-long-namespace-label-key-over-32": "y"})
	want := identity.MustLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=ns", "k8s:io.kubernetes.namespace.labels.kubernetes.io/metadata.name=ns")
	if !got.Equal(want) {
		t.Fatalf("labels = %v, want %v", got, want)
	}
	if len(skipped) != 4 {
		t.Fatalf("skipped %d labels, want 4 (the bad key, the pod's own namespace keys, the too-long prefixed key)", len(skipped))
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
