// Package kubelab runs real Kubernetes for tests: etcd and kube-apiserver on
// loopback (StartAPIServer, no root), or a whole control plane in a lab
// network namespace (StartControlPlane) with real kubelet nodes, each in
// its own lab namespace with a private mount namespace, its own containerd
// and its own cgroup root (ControlPlane.StartNode).
//
// Nothing it runs touches the machine outside what it made: a node gets
// its own sysfs and bpffs, its /var/lib/kubelet, /var/lib/containerd,
// /run/containerd, /etc/cni/net.d, /opt/cni/bin, /var/lib/cni, /run/netns
// and /var/log are directories of the node, the global sysctls kubelet
// would rewrite are shadowed by files, and directories missing on the
// machine are made in a per-node overlay instead of on the machine.
// Close undoes everything, in the order that lets each part go; Cleanup
// removes what a crashed test left (cgroups of nodes whose network
// namespace is gone).
//
// The Kubernetes binaries are the ones scripts/build-kube.sh builds into
// bin/kube, or those in $WEFT_KUBE_BIN.
package kubelab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// EnvBinDir names a directory with the Kubernetes binaries, instead of
// <repository>/bin/kube.
const EnvBinDir = "WEFT_KUBE_BIN"

// The binaries, by the name they have in the directory.
const (
	binEtcd       = "etcd"
	binAPIServer  = "kube-apiserver"
	binController = "kube-controller-manager"
	binScheduler  = "kube-scheduler"
	binKubelet    = "kubelet"
	binKubectl    = "kubectl"
)

// ErrNoBinaries is wrapped by the error of a missing Kubernetes binary.
var ErrNoBinaries = errors.New("kubelab: Kubernetes binaries missing")

// BinDir returns the directory of the Kubernetes binaries and checks that
// the named ones are there and executable: $WEFT_KUBE_BIN, else bin/kube in
// the repository around the working directory (found by walking up to
// go.mod, so it works from any package's test).
func BinDir(need ...string) (string, error) {
	dir := os.Getenv(EnvBinDir)
	from := "$" + EnvBinDir
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return "", fmt.Errorf("%w: %v; set %s to a directory holding them", ErrNoBinaries, err, EnvBinDir)
		}
		dir = filepath.Join(root, "bin", "kube")
		from = "the repository's bin/kube"
	}
	var missing []string
	for _, b := range need {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("%w: %v not in %s (%s): run scripts/build-kube.sh (about 10 minutes the first time), or set %s", ErrNoBinaries, missing, dir, from, EnvBinDir)
	}
	return dir, nil
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod in %s or above it", wd)
		}
	}
}
