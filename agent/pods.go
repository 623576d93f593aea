package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/k8s"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
	"github.com/weftmesh/weft/policy"
)

// Pods are workloads of the netns source that weft-cni brings: the
// runtime made the namespace; the agent gives it an address of the node's
// podCIDR, a veth (or, chained, takes the one another plugin made), the
// identity of the pod's labels, its policy and its record, and only then
// answers the plugin: a pod never runs unprotected.

// podLookup is the Kubernetes source as the pod attachments use it.
type podLookup interface {
	Pod(ctx context.Context, namespace, name string) (k8s.Pod, error)
	HasPod(namespace, name, uid string) bool
}

// podEndpointName is the endpoint name of a pod: name.namespace, as a
// valid mesh name (long ones keep a hash).
func podEndpointName(namespace, pod string) string {
	n := strings.ToLower(pod + "." + namespace)
	if names.Valid(n) {
		return n
	}
	h := sha256.Sum256([]byte(namespace + "/" + pod))
	short := strings.Trim(n[:min(len(n), 46)], ".-")
	return fmt.Sprintf("%s-%x", short, h[:8])
}

func validateCNIRequest(req api.CNIRequest, add bool) error {
	if req.ContainerID == "" || len(req.ContainerID) > 256 || strings.ContainsAny(req.ContainerID, "/\x00 ") {
		return api.Errorf(api.CodeInvalid, "containerID %q: the runtime must pass CNI_CONTAINERID (no '/', spaces, at most 256 bytes)", req.ContainerID)
	}
	if add || req.Netns != "" {
		if !filepath.IsAbs(req.Netns) || filepath.Clean(req.Netns) != req.Netns {
			return api.Errorf(api.CodeInvalid, "netns %q: want the absolute, clean path of the pod's network namespace (CNI_NETNS)", req.Netns)
		}
	}
	if req.IfName == "" || len(req.IfName) > 15 || strings.ContainsAny(req.IfName, "/ \x00") {
		return api.Errorf(api.CodeInvalid, "ifName %q: want an interface name of 1-15 bytes (CNI_IFNAME, e.g. eth0)", req.IfName)
	}
	if add {
		if req.PodNamespace == "" || req.PodName == "" {
			return api.Errorf(api.CodeInvalid, "the pod's namespace and name are missing: the runtime must pass K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS")
		}
		if req.Chained != nil {
			if !req.Chained.IP.Is4() {
				return api.Errorf(api.CodeInvalid, "chained: the previous plugin gave no IPv4 address (%v)", req.Chained.IP)
			}
			if req.Chained.HostIface == "" || len(req.Chained.HostIface) > 15 || strings.ContainsAny(req.Chained.HostIface, "/ \x00") {
				return api.Errorf(api.CodeInvalid, "chained: host interface %q is not an interface name", req.Chained.HostIface)
			}
		}
	}
	return nil
}

// podByContainer finds the attachment of a sandbox; caller holds no lock.
func (m *netnsSource) podByContainer(id string) *workload {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.wl {
		if w.ContainerID == id {
			return w
		}
	}
	return nil
}

// addPod connects a pod sandbox (again: an ADD repeated for the same
// sandbox returns the attachment it made).
func (m *netnsSource) addPod(ctx context.Context, req api.CNIRequest, labels identity.Labels, uid string, ports []policy.NamedPort) (*workload, error) {
	if w := m.podByContainer(req.ContainerID); w != nil {
		return w, nil
	}
	name := podEndpointName(req.PodNamespace, req.PodName)
	m.mu.Lock()
	if old, ok := m.wl[name]; ok {
		// A new sandbox of the same pod: the old one is dead (the
		// runtime tears a sandbox down before it makes another).
		m.mu.Unlock()
		m.log.Info("pod has a new sandbox; removing the old attachment", "pod", old.Pod, "old", short(old.ContainerID), "new", short(req.ContainerID))
		if err := m.remove(ctx, name); err != nil && !errors.Is(err, api.ErrNotFound) {
			m.log.Warn("removing the old sandbox's attachment", "pod", old.Pod, "err", err)
		}
		m.mu.Lock()
	}
	if _, busy := m.adding[name]; busy {
		m.mu.Unlock()
		return nil, api.Errorf(api.CodeConflict, "pod %s/%s is being connected by another request; retry in a moment", req.PodNamespace, req.PodName)
	}
	var ip netip.Addr
	var err error
	cidr, _ := m.addr()
	if req.Chained != nil {
		ip = req.Chained.IP
		if !cidr.Contains(ip) {
			err = api.Errorf(api.CodeInvalid, "chained: pod address %s is outside this node's podCIDR %s: the previous plugin's IPAM must use the node's podCIDR (host-local with the podCIDR range)", ip, cidr)
		}
	} else {
		ip, err = m.freeIP()
	}
	if err == nil {
		m.adding[name] = ip
	}
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	defer func() {
		m.mu.Lock()
		delete(m.adding, name)
		m.mu.Unlock()
	}()
	w := &workload{
		Name: name, Netns: req.Netns, IP: ip, ID: endpointID(cidr, ip),
		HostIface: hostIfaceName("pod:" + req.ContainerID), Labels: labels.Strings(),
		IfName: req.IfName, ContainerID: req.ContainerID, Pod: req.PodNamespace + "/" + req.PodName, PodUID: uid, Ports: ports,
	}
	if req.Chained != nil {
		w.Chained, w.HostIface = true, req.Chained.HostIface
	}
	if err := m.setup(ctx, w); err != nil {
		_ = m.veths.Unplumb(w)
		return nil, err
	}
	return w, m.save()
}

// relabelPod gives a running pod the identity of its new labels. The
// endpoint keeps its address and datapath slot; its policy is rewritten in
// place, so allowed flows keep flowing.
func (m *netnsSource) relabelPod(ctx context.Context, key, uid string, labels identity.Labels, ports []policy.NamedPort) error {
	m.mu.Lock()
	var w *workload
	for _, x := range m.wl {
		if x.Pod == key && (uid == "" || x.PodUID == "" || x.PodUID == uid) {
			w = x
		}
	}
	m.mu.Unlock()
	if w == nil {
		return nil // not connected (yet): ADD takes the labels then
	}
	if have, err := identity.ParseLabels(w.Labels, identity.SourceK8s); err == nil && have.Equal(labels) && slices.Equal(w.Ports, ports) {
		return nil
	}
	old := w.Identity
	nw := *w
	nw.Labels, nw.Ports = labels.Strings(), ports
	if err := m.setup(ctx, &nw); err != nil {
		return err
	}
	if old != 0 && old != nw.Identity {
		_ = m.eps.alloc.Release(ctx, old)
	}
	m.log.Info("pod relabelled", "pod", key, "identity", nw.Identity, "was", old)
	return m.save()
}

// podPorts are a pod's named ports as the policy compiler takes them;
// those it would refuse are left out (and logged by the compiler).
func podPorts(pod k8s.Pod) []policy.NamedPort {
	var out []policy.NamedPort
	for _, p := range pod.Ports {
		np := policy.NamedPort{Name: p.Name, Protocol: policy.Protocol(p.Protocol), Port: p.Port}
		if np.Validate() == nil {
			out = append(out, np)
		}
	}
	return out
}

func short(id string) string { return id[:min(12, len(id))] }

// podAttachments runs the pod side of the agent: the CNI handler and the
// reaction to pod events.
type podAttachments struct {
	a    *Agent
	src  *netnsSource
	pods podLookup
}

// podLabels are a pod's identity labels: what Kubernetes says, plus the
// facts the mesh vouches for.
func (p *podAttachments) podLabels(pod k8s.Pod) (identity.Labels, error) {
	return pod.Labels.With(
		identity.Label{Source: identity.SourceMesh, Key: "cluster", Value: p.a.cfg.Cluster},
		identity.Label{Source: identity.SourceMesh, Key: "kind", Value: identity.KindPod},
	)
}

// CNIAdd implements api.CNIHandler.
func (p *podAttachments) CNIAdd(ctx context.Context, req api.CNIRequest) (api.CNIResult, error) {
	if err := validateCNIRequest(req, true); err != nil {
		return api.CNIResult{}, err
	}
	start := time.Now()
	pod, err := p.pods.Pod(ctx, req.PodNamespace, req.PodName)
	if err != nil {
		return api.CNIResult{}, api.Errorf(api.CodeUnavailable, "looking up the pod in the Kubernetes API: %v", err)
	}
	if pod.UID != "" && req.PodUID != "" && pod.UID != req.PodUID {
		return api.CNIResult{}, api.Errorf(api.CodeConflict, "pod %s/%s has uid %s, the runtime says %s: it was recreated; the runtime retries with the new pod", req.PodNamespace, req.PodName, pod.UID, req.PodUID)
	}
	labels, err := p.podLabels(pod)
	if err != nil {
		return api.CNIResult{}, api.Errorf(api.CodeInvalid, "pod %s/%s labels: %v", req.PodNamespace, req.PodName, err)
	}
	w, err := p.src.addPod(ctx, req, labels, pod.UID, podPorts(pod))
	if err != nil {
		return api.CNIResult{}, err
	}
	res := api.CNIResult{IP: w.IP, HostIface: w.HostIface, Identity: uint32(w.Identity), Labels: w.Labels, MTU: p.src.mtu()}
	if !w.Chained {
		res.Gateway = netip.MustParseAddr(gatewayIP)
		res.PodMAC = podMAC(w)
	}
	p.a.log.Info("pod connected", "pod", pod.Key(), "ip", w.IP, "identity", w.Identity, "chained", w.Chained, "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// CNIDel implements api.CNIHandler.
func (p *podAttachments) CNIDel(ctx context.Context, req api.CNIRequest) error {
	if err := validateCNIRequest(req, false); err != nil {
		return err
	}
	w := p.src.podByContainer(req.ContainerID)
	if w == nil {
		return nil
	}
	err := p.src.remove(ctx, w.Name)
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	if err == nil {
		p.a.log.Info("pod disconnected", "pod", w.Pod, "ip", w.IP)
	}
	return err
}

// CNICheck implements api.CNIHandler.
func (p *podAttachments) CNICheck(ctx context.Context, req api.CNIRequest) error {
	if err := validateCNIRequest(req, false); err != nil {
		return err
	}
	w := p.src.podByContainer(req.ContainerID)
	if w == nil {
		return api.Errorf(api.CodeNotFound, "no attachment for sandbox %s: the pod was never connected, or was disconnected", short(req.ContainerID))
	}
	if _, err := netlink.LinkByName(w.HostIface); err != nil {
		return api.Errorf(api.CodeNotFound, "pod %s: its host interface %s is gone: %v", w.Pod, w.HostIface, err)
	}
	if !p.a.policyHas(w.IP) {
		return api.Errorf(api.CodeNotFound, "pod %s: its endpoint %s is not in the datapath", w.Pod, w.IP)
	}
	return nil
}

// podMAC is the MAC of the pod's interface, read from its namespace.
func podMAC(w *workload) string {
	mac, err := linkMACIn(w.Netns, w.ifName())
	if err != nil {
		return ""
	}
	return mac
}

// podChanged follows a pod's labels.
func (p *podAttachments) podChanged(pod k8s.Pod) {
	labels, err := p.podLabels(pod)
	if err != nil {
		p.a.log.Warn("pod labels", "pod", pod.Key(), "err", err)
		return
	}
	if err := p.src.relabelPod(p.a.ctx, pod.Key(), pod.UID, labels, podPorts(pod)); err != nil {
		p.a.log.Error("relabelling pod", "pod", pod.Key(), "err", err)
	}
}

// collect removes attachments of pods that are no longer on this node
// (a DEL the agent missed while it was down), after they were seen gone
// twice in a row, so a pod the watch has not delivered yet is not touched.
func (p *podAttachments) collect(ctx context.Context, every time.Duration) error {
	gone := map[string]bool{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, w := range p.src.list() {
			if w.Pod == "" {
				continue
			}
			ns, name, _ := strings.Cut(w.Pod, "/")
			if p.pods.HasPod(ns, name, w.PodUID) {
				delete(gone, w.ContainerID)
				continue
			}
			if !gone[w.ContainerID] {
				gone[w.ContainerID] = true
				continue
			}
			delete(gone, w.ContainerID)
			p.a.log.Info("pod is gone from this node; removing its attachment", "pod", w.Pod, "ip", w.IP)
			if err := p.src.remove(ctx, w.Name); err != nil && !errors.Is(err, api.ErrNotFound) {
				p.a.log.Warn("removing attachment of a gone pod", "pod", w.Pod, "err", err)
			}
		}
	}
}
