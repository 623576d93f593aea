package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/kubelab"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/ociimage"
	"github.com/weftmesh/weft/policy/netpol"
)

// benchK8sEnv turns TestBenchKubernetes on (make bench-k8s); it is a
// measurement, not a check, and takes a few minutes.
const benchK8sEnv = "WEFT_BENCH_K8S"

// TestBenchKubernetes measures, in one run on one machine:
//   - pod created -> Ready on a Weft node (weft-cni returns only once the
//     pod's identity and policy are in the datapath, under a default-deny
//     NetworkPolicy), against the same on a node of the same cluster that
//     runs kubelet's own bridge plugin and no Weft (the baseline);
//   - a NetworkPolicy created -> compiled into the datapath of every Weft
//     node (as each agent's policy list says).
//
// WEFT_BENCH_K8S=N sets the number of samples of each (default 20).
func TestBenchKubernetes(t *testing.T) {
	if os.Getenv(benchK8sEnv) == "" {
		t.Skip("a benchmark: make bench-k8s runs it (" + benchK8sEnv + "=N)")
	}
	n, _ := strconv.Atoi(os.Getenv(benchK8sEnv))
	if n < 5 {
		n = 20
	}
	m := NewMesh(t, &lab.Spec{Name: "kubebench", Sites: []lab.SiteSpec{
		{Name: "vms", Nodes: []lab.NodeSpec{{Name: "seed"}}},
		{Name: "k8s", Nodes: []lab.NodeSpec{{Name: "cp"}, {Name: "k1"}, {Name: "k2"}, {Name: "k3"}}},
	}})
	m.Up("seed")
	var tok struct {
		JoinToken string `json:"joinToken"`
	}
	m.JSON("seed", &tok, "token", "create", "--pod-cidrs", kubeClusterCIDR, "--reusable", "--max-uses", "10", "--ttl", "1h")
	k := startKube(t, m, kubelab.CNINone, "k1", "k2")
	k.addNode("k3", kubelab.CNIBridge) // the baseline: bridge plugin, no Weft
	k.noWeft = map[string]bool{"k3": true}
	k.kubectl("label", "node", "k1", "k2", "weft=yes")
	k.installWeft(tok.JoinToken, "nodeSelector.weft=yes")
	k.apply(`apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: bench}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`)
	cs := k.cp.Clientset()
	ctx := k.ctx

	podReady := func(name, node string) time.Duration {
		t.Helper()
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench", Labels: map[string]string{"app": "bench"}},
			Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
				Name: "c", Image: ociimage.BusyboxName, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}}}}}
		start := time.Now()
		if _, err := cs.CoreV1().Pods("bench").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for {
			got, err := cs.CoreV1().Pods("bench").Get(ctx, name, metav1.GetOptions{})
			if err == nil && slices.ContainsFunc(got.Status.Conditions, func(c corev1.PodCondition) bool {
				return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
			}) {
				return time.Since(start)
			}
			if time.Since(start) > 2*time.Minute {
				t.Fatalf("pod %s on %s not Ready after 2 minutes", name, node)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var weft, bridge []time.Duration
	for i := range n {
		// Interleaved, so both see the same machine.
		weft = append(weft, podReady(fmt.Sprintf("w-%d", i), "k1"))
		bridge = append(bridge, podReady(fmt.Sprintf("b-%d", i), "k3"))
	}

	clients := map[string]*api.Client{}
	for name := range k.weftNodes() {
		clients[name] = api.NewClient(k.agentSocket(name))
	}
	enforcedEverywhere := func(name string, start time.Time) (last time.Duration) {
		pending := map[string]bool{}
		for node := range clients {
			pending[node] = true
		}
		for len(pending) > 0 {
			for node := range pending {
				ps, err := clients[node].Policies(ctx)
				if err == nil && slices.ContainsFunc(ps, func(p api.PolicyState) bool { return p.Name == name }) {
					delete(pending, node)
					last = time.Since(start)
				}
			}
			if time.Since(start) > time.Minute {
				t.Fatalf("NetworkPolicy %s not enforced on %v after a minute", name, pending)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return last
	}
	var propagation []time.Duration
	for i := range n {
		name := fmt.Sprintf("allow-%d", i)
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "bench"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"client": strconv.Itoa(i)}}}}}},
			}}
		start := time.Now()
		if _, err := cs.NetworkingV1().NetworkPolicies("bench").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		propagation = append(propagation, enforcedEverywhere(netpol.Name("bench", name), start))
	}

	pct := func(ds []time.Duration, p float64) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		i := int(p*float64(len(s))+0.5) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("\nKubernetes figures (%d samples each, one run)\n", n)
	fmt.Printf("%-46s %9s %9s %9s\n", "", "p50", "p99", "max")
	fmt.Printf("%-46s %9s %9s %9s\n", "pod create -> Ready, Weft (policy enforced)", ms(pct(weft, .5)), ms(pct(weft, .99)), ms(pct(weft, 1)))
	fmt.Printf("%-46s %9s %9s %9s\n", "pod create -> Ready, bridge plugin (baseline)", ms(pct(bridge, .5)), ms(pct(bridge, .99)), ms(pct(bridge, 1)))
	fmt.Printf("%-46s %9.2f %9.2f\n", "ratio Weft / baseline", float64(pct(weft, .5))/float64(pct(bridge, .5)), float64(pct(weft, .99))/float64(pct(bridge, .99)))
	fmt.Printf("%-46s %9s %9s %9s\n", "NetworkPolicy created -> enforced on all nodes", ms(pct(propagation, .5)), ms(pct(propagation, .99)), ms(pct(propagation, 1)))
}
