// Package k8s is the agent's Kubernetes source: what the API server says
// about this node and its pods, through client-go informers. It watches
// the pods scheduled on this node, every namespace (their labels are part
// of a pod's identity), this node's Node object (its podCIDR becomes the
// node's CIDR in the mesh), NetworkPolicies and WeftPolicies. It only
// reads: the agent's RBAC role is get/list/watch.
//
// The source turns objects into what the agent needs (pod label sets,
// named ports, policies) and tells the agent when they change; the agent
// wires those to its endpoint manager and policy compiler.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftmesh/weft/identity"
)

// WeftPolicyResource is the WeftPolicy CRD (deploy/crds).
var WeftPolicyResource = schema.GroupVersionResource{Group: "weft.dev", Version: "v1", Resource: "weftpolicies"}

// Config says which API server and node.
type Config struct {
	// Kubeconfig is a kubeconfig file; empty: in-cluster credentials.
	Kubeconfig string
	// APIServer overrides the in-cluster API server address.
	APIServer string
	// NodeName is this node's Kubernetes Node name.
	NodeName string
	Log      *slog.Logger
	// SyncTimeout bounds the first listing (default 60 s).
	SyncTimeout time.Duration
}

// Pod is a pod on this node as the mesh sees it.
type Pod struct {
	Namespace, Name, UID string
	// Labels are the pod's labels, its namespace and its namespace's
	// labels, all with the k8s source (identity/k8s.go).
	Labels identity.Labels
	// Ports are the pod's named container ports.
	Ports       []NamedPort
	HostNetwork bool
}

// Key is namespace/name.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// NamedPort is a named container port.
type NamedPort struct {
	Name     string
	Protocol string // TCP, UDP or SCTP
	Port     uint16
}

// Handlers are called from the informers' goroutines; they must not block
// for long.
type Handlers struct {
	// PodChanged: a pod's labels (or its namespace's) or ports changed.
	PodChanged func(Pod)
	// PodDeleted: a pod left this node (deleted or rescheduled).
	PodDeleted func(namespace, name, uid string)
	// PoliciesChanged: some NetworkPolicy or WeftPolicy changed; the
	// handler reads the full sets with NetworkPolicies and WeftPolicies.
	PoliciesChanged func()
}

// Source is the running set of informers.
type Source struct {
	cfg     Config
	client  kubernetes.Interface
	dyn     dynamic.Interface
	log     *slog.Logger
	hasCRD  bool
	factory informers.SharedInformerFactory
	nodeInf cache.SharedIndexInformer
	podInf  cache.SharedIndexInformer
	nsInf   cache.SharedIndexInformer
	npInf   cache.SharedIndexInformer
	wpInf   cache.SharedIndexInformer

	mu sync.Mutex
	h  Handlers
}

// serviceAccountDir holds a pod's service account credentials.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// RESTConfig loads the kubeconfig, or the in-cluster configuration; with
// apiServer, the pod's service account at that address.
func RESTConfig(kubeconfig, apiServer string) (*rest.Config, error) {
	if kubeconfig == "" && apiServer != "" {
		u, err := url.Parse(apiServer)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("--kube-api-server %q: want https://HOST:PORT", apiServer)
		}
		tok := filepath.Join(serviceAccountDir, "token")
		if _, err := os.Stat(tok); err != nil {
			return nil, fmt.Errorf("--kube-api-server needs the pod's service account token (%w): run the agent as the weft DaemonSet, or give --kubeconfig", err)
		}
		return &rest.Config{Host: apiServer, BearerTokenFile: tok,
			TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(serviceAccountDir, "ca.crt")}}, nil
	}
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --kubeconfig and not in a pod (%w): run the agent as the weft DaemonSet, or give --kubeconfig", err)
	}
	return c, nil
}

// New connects to the API server (nothing is watched until Start).
func New(cfg Config) (*Source, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("kubernetes: the node name is required (the DaemonSet passes spec.nodeName)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 60 * time.Second
	}
	rc, err := RESTConfig(cfg.Kubeconfig, cfg.APIServer)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "weft-agent/" + cfg.NodeName
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return NewFromClients(cfg, cs, dyn), nil
}

// NewFromClients is New with clients made elsewhere (tests).
func NewFromClients(cfg Config, cs kubernetes.Interface, dyn dynamic.Interface) *Source {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 60 * time.Second
	}
	return &Source{cfg: cfg, client: cs, dyn: dyn, log: cfg.Log}
}

// SetHandlers sets the event handlers (before or after Start; events
// before it are not replayed: read Pods after setting them).
func (s *Source) SetHandlers(h Handlers) {
	s.mu.Lock()
	s.h = h
	s.mu.Unlock()
}

func (s *Source) handlers() Handlers {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.h
}

// Start starts the informers and waits for their first listing.
func (s *Source) Start(ctx context.Context) error {
	node := s.cfg.NodeName
	s.factory = informers.NewSharedInformerFactory(s.client, 0)
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(s.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
	}))
	podFactory := informers.NewSharedInformerFactoryWithOptions(s.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}))
	s.nodeInf = nodeFactory.Core().V1().Nodes().Informer()
	s.podInf = podFactory.Core().V1().Pods().Informer()
	s.nsInf = s.factory.Core().V1().Namespaces().Informer()
	s.npInf = s.factory.Networking().V1().NetworkPolicies().Informer()

	var err error
	if _, err = s.podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.podEvent(nil, o) },
		UpdateFunc: func(old, o any) { s.podEvent(old, o) },
		DeleteFunc: s.podDeleted,
	}); err != nil {
		return err
	}
	if _, err = s.nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: s.namespaceUpdated,
	}); err != nil {
		return err
	}
	policies := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.policiesChanged() },
		UpdateFunc: func(any, any) { s.policiesChanged() },
		DeleteFunc: func(any) { s.policiesChanged() },
	}
	if _, err = s.npInf.AddEventHandler(policies); err != nil {
		return err
	}
	synced := []cache.InformerSynced{s.nodeInf.HasSynced, s.podInf.HasSynced, s.nsInf.HasSynced, s.npInf.HasSynced}

	// WeftPolicies are watched only where the CRD is installed; without
	// it the agent still enforces NetworkPolicies (and says so).
	if s.dyn != nil && s.crdInstalled(ctx) {
		df := dynamicinformer.NewDynamicSharedInformerFactory(s.dyn, 0)
		s.wpInf = df.ForResource(WeftPolicyResource).Informer()
		if _, err = s.wpInf.AddEventHandler(policies); err != nil {
			return err
		}
		synced = append(synced, s.wpInf.HasSynced)
		df.Start(ctx.Done())
		s.hasCRD = true
	} else {
		s.log.Warn("the WeftPolicy CRD (weftpolicies.weft.dev) is not installed: only NetworkPolicies are enforced from Kubernetes (install deploy/crds)")
	}
	s.factory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, s.cfg.SyncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), synced...) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("the Kubernetes API server did not list nodes, pods, namespaces and policies within %s: is it reachable, and may the agent's service account list them (deploy/helm RBAC)?", s.cfg.SyncTimeout)
	}
	return nil
}

func (s *Source) crdInstalled(ctx context.Context) bool {
	_, err := s.client.Discovery().ServerResourcesForGroupVersion(WeftPolicyResource.GroupVersion().String())
	return err == nil
}

// PodCIDR waits until this node's Node object has a podCIDR (the
// controller manager allocates it shortly after the node registers).
func (s *Source) PodCIDR(ctx context.Context) (netip.Prefix, error) {
	warned := false
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	for {
		if n, ok := s.node(); ok {
			if p, err := nodePodCIDR(n); err != nil {
				return netip.Prefix{}, err
			} else if p.IsValid() {
				return p, nil
			}
		}
		if !warned && time.Since(start) > 10*time.Second {
			s.log.Warn("waiting for this node's podCIDR: does kube-controller-manager run with --allocate-node-cidrs?", "node", s.cfg.NodeName)
			warned = true
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, fmt.Errorf("node %s has no podCIDR (kube-controller-manager --allocate-node-cidrs gives one): %w", s.cfg.NodeName, ctx.Err())
		case <-t.C:
		}
	}
}

func (s *Source) node() (*corev1.Node, bool) {
	o, ok, err := s.nodeInf.GetStore().GetByKey(s.cfg.NodeName)
	if err != nil || !ok {
		return nil, false
	}
	n, ok := o.(*corev1.Node)
	return n, ok
}

// nodePodCIDR is the node's IPv4 podCIDR (IPv6 is not meshed yet).
func nodePodCIDR(n *corev1.Node) (netip.Prefix, error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("node %s: podCIDR %q does not parse: %w", n.Name, c, err)
		}
		if p.Addr().Is4() {
			return p.Masked(), nil
		}
	}
	return netip.Prefix{}, nil
}

// NodeAddresses are this node's InternalIP addresses.
func (s *Source) NodeAddresses() []netip.Addr {
	n, ok := s.node()
	if !ok {
		return nil
	}
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// Pod returns a pod of this node: from the cache, else from the API server
// (weft-cni may ask before the watch delivered a just-scheduled pod).
func (s *Source) Pod(ctx context.Context, namespace, name string) (Pod, error) {
	if o, ok, _ := s.podInf.GetStore().GetByKey(namespace + "/" + name); ok {
		if p, ok := o.(*corev1.Pod); ok {
			return s.pod(p), nil
		}
	}
	p, err := s.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Pod{}, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	if p.Spec.NodeName != s.cfg.NodeName {
		return Pod{}, fmt.Errorf("pod %s/%s is scheduled on node %q, not on this node %q", namespace, name, p.Spec.NodeName, s.cfg.NodeName)
	}
	return s.pod(p), nil
}

// Pods lists the pods of this node.
func (s *Source) Pods() []Pod {
	var out []Pod
	for _, o := range s.podInf.GetStore().List() {
		if p, ok := o.(*corev1.Pod); ok {
			out = append(out, s.pod(p))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// HasPod reports whether the pod (by uid when given) is on this node, as
// the watch last said.
func (s *Source) HasPod(namespace, name, uid string) bool {
	o, ok, _ := s.podInf.GetStore().GetByKey(namespace + "/" + name)
	if !ok {
		return false
	}
	p, ok := o.(*corev1.Pod)
	return ok && (uid == "" || string(p.UID) == uid)
}

func (s *Source) namespaceLabels(ns string) map[string]string {
	o, ok, _ := s.nsInf.GetStore().GetByKey(ns)
	if !ok {
		return nil
	}
	if n, ok := o.(*corev1.Namespace); ok {
		return n.Labels
	}
	return nil
}

func (s *Source) pod(p *corev1.Pod) Pod {
	labels, skipped := PodLabels(p.Namespace, p.Labels, s.namespaceLabels(p.Namespace))
	for _, sk := range skipped {
		s.log.Warn("pod label left out of its identity", "pod", p.Namespace+"/"+p.Name, "label", sk.label, "err", sk.err)
	}
	return Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Labels: labels, Ports: namedPorts(p), HostNetwork: p.Spec.HostNetwork}
}

type skippedLabel struct {
	label string
	err   error
}

// PodLabels is the pod's identity labels: its own labels, its namespace
// and its namespace's labels, all with the k8s source. A label that breaks
// the label rules is left out (and returned, to be logged).
func PodLabels(namespace string, pod, ns map[string]string) (identity.Labels, []skippedLabel) {
	var ls []identity.Label
	var skipped []skippedLabel
	add := func(key, value string) {
		l := identity.Label{Source: identity.SourceK8s, Key: key, Value: value}
		if err := l.Validate(); err != nil {
			skipped = append(skipped, skippedLabel{label: l.String(), err: err})
			return
		}
		ls = append(ls, l)
	}
	for k, v := range pod {
		// The namespace keys are the mesh's to set: a pod labelled with
		// them would claim another namespace's identity.
		if k == identity.K8sNamespaceKey || strings.HasPrefix(k, identity.K8sNamespaceLabelPrefix) {
			skipped = append(skipped, skippedLabel{label: k + "=" + v, err: fmt.Errorf("%q is a key Weft sets from the pod's namespace", k)})
			continue
		}
		add(k, v)
	}
	add(identity.K8sNamespaceKey, namespace)
	for k, v := range ns {
		add(identity.K8sNamespaceLabelPrefix+k, v)
	}
	out, err := identity.NewLabels(ls...)
	if err != nil {
		// Validated one by one above; only duplicates could get here.
		skipped = append(skipped, skippedLabel{label: "(all)", err: err})
		return nil, skipped
	}
	return out, skipped
}

func namedPorts(p *corev1.Pod) []NamedPort {
	var out []NamedPort
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
					continue
				}
				proto := string(cp.Protocol)
				if proto == "" {
					proto = "TCP"
				}
				out = append(out, NamedPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name+out[i].Protocol < out[j].Name+out[j].Protocol })
	return out
}

func (s *Source) podEvent(old, o any) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	if old != nil {
		if op, ok := old.(*corev1.Pod); ok && mapsEqual(op.Labels, p.Labels) && portsEqual(namedPorts(op), namedPorts(p)) {
			return
		}
	}
	if h := s.handlers(); h.PodChanged != nil {
		h.PodChanged(s.pod(p))
	}
}

func (s *Source) podDeleted(o any) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	if h := s.handlers(); h.PodDeleted != nil {
		h.PodDeleted(p.Namespace, p.Name, string(p.UID))
	}
}

func (s *Source) namespaceUpdated(old, o any) {
	on, ok1 := old.(*corev1.Namespace)
	n, ok2 := o.(*corev1.Namespace)
	if !ok1 || !ok2 || mapsEqual(on.Labels, n.Labels) {
		return
	}
	h := s.handlers()
	if h.PodChanged == nil {
		return
	}
	for _, p := range s.Pods() {
		if p.Namespace == n.Name {
			h.PodChanged(p)
		}
	}
}

func (s *Source) policiesChanged() {
	if h := s.handlers(); h.PoliciesChanged != nil {
		h.PoliciesChanged()
	}
}

// NetworkPolicies lists every NetworkPolicy, sorted by namespace/name.
func (s *Source) NetworkPolicies() []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, o := range s.npInf.GetStore().List() {
		if np, ok := o.(*networkingv1.NetworkPolicy); ok {
			out = append(out, np)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}

// WeftPolicy is a WeftPolicy object: its name and its spec as JSON.
type WeftPolicy struct {
	Name string
	Spec []byte
}

// WeftPolicies lists the WeftPolicies (none without the CRD).
func (s *Source) WeftPolicies() []WeftPolicy {
	if s.wpInf == nil {
		return nil
	}
	var out []WeftPolicy
	for _, o := range s.wpInf.GetStore().List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		spec, _, _ := unstructured.NestedFieldNoCopy(u.Object, "spec")
		data, err := jsonMarshal(spec)
		if err != nil {
			s.log.Warn("skipping a WeftPolicy whose spec does not encode", "name", u.GetName(), "err", err)
			continue
		}
		out = append(out, WeftPolicy{Name: u.GetName(), Spec: data})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func portsEqual(a, b []NamedPort) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// String is for logs.
func (p Pod) String() string {
	return fmt.Sprintf("%s (%s)", p.Key(), strings.Join(p.Labels.Strings(), ","))
}
