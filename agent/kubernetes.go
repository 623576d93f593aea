package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/weftmesh/weft/agent/k8s"
	"github.com/weftmesh/weft/policy"
	"github.com/weftmesh/weft/policy/netpol"
)

// The agent's Kubernetes mode (config.Kubernetes): the Kubernetes source
// starts before the CIDR is taken (the Node's podCIDR is the node's CIDR),
// pods come through weft-cni (pods.go), and NetworkPolicies and
// WeftPolicies join the policies from etcd (kubePoliciesChanged).

// startKubernetes connects to the API server and lists what the node
// needs.
func (a *Agent) startKubernetes(ctx context.Context) error {
	src, err := k8s.New(k8s.Config{Kubeconfig: a.cfg.Kubernetes.Kubeconfig, APIServer: a.cfg.Kubernetes.APIServer, NodeName: a.cfg.NodeName, Log: a.log.With("component", "kubernetes")})
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

// kubePoliciesChanged translates the NetworkPolicies and WeftPolicies
// the API server has and hands them to the policy compiler, which applies
// only what changed. A NetworkPolicy that cannot be translated fails
// closed (netpol.Isolation) and is logged and recorded as failed; a
// WeftPolicy that does not parse is skipped, as a stored one is.
func (a *Agent) kubePoliciesChanged() {
	if a.kube == nil || a.policy == nil {
		return
	}
	var ps []*policy.Policy
	failed := map[string]string{}
	for _, np := range a.kube.NetworkPolicies() {
		p, err := netpol.Translate(np)
		if err != nil {
			// Fail closed: the pods it selects are isolated in its
			// directions until the object is fixed.
			name := netpol.Name(np.Namespace, np.Name)
			iso, ierr := netpol.Isolation(np)
			if ierr == nil {
				ps = append(ps, iso)
			}
			a.log.Error("NetworkPolicy not translatable: the pods it selects are isolated until it is fixed", "networkpolicy", np.Namespace+"/"+np.Name, "err", err)
			failed[name] = err.Error() + " (its pods are isolated until it is fixed)"
			continue
		}
		ps = append(ps, p)
	}
	for _, wp := range a.kube.WeftPolicies() {
		p, err := netpol.FromWeftPolicy(wp.Name, wp.Spec)
		if err != nil {
			a.log.Error("WeftPolicy not enforced", "weftpolicy", wp.Name, "err", err)
			failed[netpol.WeftPolicyName(wp.Name)] = err.Error()
			continue
		}
		ps = append(ps, p)
	}
	a.policy.setImported("kubernetes", ps, failed)
}

// policyHas reports whether ip's endpoint policy is in the datapath.
func (a *Agent) policyHas(ip netip.Addr) bool {
	return a.policy != nil && a.policy.hasLocal(a.ctx, ip)
}

// kubernetes reports whether the agent runs in Kubernetes mode.
func (a *Agent) kubernetes() bool { return a.cfg.Kubernetes.Enabled }
