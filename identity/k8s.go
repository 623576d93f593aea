package identity

import "strings"

// Labels that describe a Kubernetes pod beyond its own labels. The agent's
// Kubernetes source sets them; the NetworkPolicy translation selects on
// them. All carry the `k8s` source, so a VM (whose labels are `vm:`) can
// never claim a namespace.
const (
	// K8sNamespaceKey holds the pod's namespace: k8s:io.kubernetes.pod.namespace=<ns>.
	K8sNamespaceKey = "io.kubernetes.pod.namespace"
	// K8sNamespaceLabelPrefix prefixes the labels of the pod's namespace:
	// namespace label team=a becomes k8s:io.kubernetes.namespace.labels.team=a,
	// and kubernetes.io/metadata.name=x becomes
	// k8s:io.kubernetes.namespace.labels.kubernetes.io/metadata.name=x.
	// A namespace label whose prefixed key breaks the label-key rules
	// (an unprefixed key longer than 32 characters) is left out.
	K8sNamespaceLabelPrefix = "io.kubernetes.namespace.labels."
	// KindPod is the mesh:kind of a Kubernetes pod (a joined VM is mesh:kind=vm).
	KindPod = "pod"
)

// IsK8sNamespaceLabel reports whether l is one of the namespace labels
// only a Kubernetes node's agent may set (from the pod's real namespace):
// a VM or a pod labelling itself with one would pass namespace selectors.
func IsK8sNamespaceLabel(l Label) bool {
	return l.Source == SourceK8s && (l.Key == K8sNamespaceKey || strings.HasPrefix(l.Key, K8sNamespaceLabelPrefix))
}
