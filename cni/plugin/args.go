package plugin

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
)

// PodArgs is the pod a CNI call is for, from CNI_ARGS: the kubelet (through
// containerd or CRI-O) passes
// "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;K8S_POD_INFRA_CONTAINER_ID=id;K8S_POD_UID=uid".
type PodArgs struct {
	Namespace string
	Name      string
	UID       string
}

// k8sArgs is what types.LoadArgs fills: its field names are the keys.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the key's name
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // known, so it needs no IgnoreUnknown; unused
}

// maxArgs bounds CNI_ARGS; the kubelet's is a few hundred bytes.
const maxArgs = 8 << 10

var (
	// A namespace is a DNS-1123 label, a pod's name a DNS-1123 subdomain
	// (Kubernetes validates both; anything else did not come from it).
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// A pod's UID is a UUID, or a hash for a static pod.
	podUID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
)

// errNoPod is an ADD without the pod's namespace and name.
var errNoPod = errors.New("CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME: weft-cni connects Kubernetes pods, and the runtime must pass K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID (containerd and CRI-O do for the kubelet's pods)")

// ParseArgs decodes CNI_ARGS (K=V pairs separated by ';'). An unknown key
// is refused unless IgnoreUnknown=1 is among them, as the CNI spec says;
// a value that is not a valid pod namespace, name or UID is refused.
// A missing pod is not an error here (DEL may come without one): Require
// says whether ADD can proceed.
func ParseArgs(s string) (PodArgs, error) {
	if len(s) > maxArgs {
		return PodArgs{}, fmt.Errorf("CNI_ARGS is %d bytes, more than %d", len(s), maxArgs)
	}
	var a k8sArgs
	if err := types.LoadArgs(s, &a); err != nil {
		return PodArgs{}, fmt.Errorf("CNI_ARGS %q: %w", s, err)
	}
	p := PodArgs{Namespace: string(a.K8S_POD_NAMESPACE), Name: string(a.K8S_POD_NAME), UID: string(a.K8S_POD_UID)}
	if p.Namespace != "" && (len(p.Namespace) > 63 || !dnsLabel.MatchString(p.Namespace)) {
		return PodArgs{}, fmt.Errorf("CNI_ARGS K8S_POD_NAMESPACE %q is not a Kubernetes namespace name (a DNS-1123 label: at most 63 lower-case letters, digits and '-')", p.Namespace)
	}
	if p.Name != "" && (len(p.Name) > 253 || !dnsSubdomain.MatchString(p.Name)) {
		return PodArgs{}, fmt.Errorf("CNI_ARGS K8S_POD_NAME %q is not a Kubernetes pod name (a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.')", p.Name)
	}
	if p.UID != "" && !podUID.MatchString(p.UID) {
		return PodArgs{}, fmt.Errorf("CNI_ARGS K8S_POD_UID %q is not a pod UID (at most 128 letters, digits, '.', '_' and '-')", p.UID)
	}
	return p, nil
}

// Require returns errNoPod unless both the pod's namespace and name are
// set: ADD cannot connect a pod it cannot name.
func (p PodArgs) Require() error {
	if p.Namespace == "" || p.Name == "" {
		return errNoPod
	}
	return nil
}

// String is namespace/name, how kubectl names the pod.
func (p PodArgs) String() string {
	if p.Namespace == "" && p.Name == "" {
		return "(no pod in CNI_ARGS)"
	}
	return p.Namespace + "/" + p.Name
}

// maxNetnsPath is the longest CNI_NETNS accepted (PATH_MAX less the NUL).
const maxNetnsPath = 4095

// ValidateCall checks what the runtime passed in the environment: the
// container id and interface name with the rules libcni applies, and the
// namespace path, which must be absolute and clean when given (DEL may
// come without it once the namespace is gone).
func ValidateCall(containerID, ifName, netns string) error {
	if e := utils.ValidateContainerID(containerID); e != nil {
		return fmt.Errorf("CNI_CONTAINERID %q: %s (letters, digits, '_', '.', '-')", containerID, e.Msg)
	}
	if e := utils.ValidateInterfaceName(ifName); e != nil {
		return fmt.Errorf("CNI_IFNAME %q: %s (at most 15 bytes, no '/', ':' or space)", ifName, e.Msg)
	}
	if netns == "" {
		return nil
	}
	switch {
	case len(netns) > maxNetnsPath:
		return fmt.Errorf("CNI_NETNS is %d bytes long, more than %d", len(netns), maxNetnsPath)
	case strings.ContainsFunc(netns, isControl):
		return fmt.Errorf("CNI_NETNS %q holds a control character", netns)
	case !filepath.IsAbs(netns) || filepath.Clean(netns) != netns:
		return fmt.Errorf("CNI_NETNS %q is not an absolute, clean path (like /var/run/netns/cni-...)", netns)
	}
	return nil
}
