#!/usr/bin/env bash
# Builds the Kubernetes components the Kubernetes test tiers run
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl,
# etcd 3.5) from Go modules into bin/kube (or $1), once: a second run with
# the binaries present and of the pinned version only checks them.
# About 10 min of a cold 2-core machine; run it before the project's own
# compile, not beside it (two 2 GB builds at once only slow each other).
set -euo pipefail
cd "$(dirname "$0")/kubebins"
out=${1:-../../bin/kube}
mkdir -p "$out"
out=$(cd "$out" && pwd)
KUBE_VERSION=v1.33.13
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd)
have=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || have=0; done
if [ "$have" = 1 ] && [ "$(cat "$out/.version" 2>/dev/null)" = "$KUBE_VERSION" ]; then
	echo "kubernetes $KUBE_VERSION binaries present in $out"
	exit 0
fi
echo "building kubernetes $KUBE_VERSION (apiserver, controller-manager, scheduler, kubelet, kubectl, etcd) into $out; ~10 min cold"
LD="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=33 -X k8s.io/component-base/version.gitTreeState=clean"
start=$(date +%s)
go build -trimpath -ldflags "$LD" -o "$out/" k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
# go names the etcd server binary after its package path ("server")
[ -x "$out/server" ] && mv "$out/server" "$out/etcd"
[ -x "$out/v3" ] && mv "$out/v3" "$out/etcd"
echo "$KUBE_VERSION" > "$out/.version"
echo "kubernetes binaries built in $(( $(date +%s) - start ))s"
