#!/usr/bin/env bash
# Builds the helm v3 CLI, the version scripts/helmbin/go.mod pins, from Go
# modules into bin/helm (or the file $1), once: a second run with the binary
# present and of the pinned version only checks it. deploy/'s tests lint and
# render the chart with it.
# Needs Go 1.26 or newer (helm v3.22's go.mod says go 1.26.0). About 6 min
# on a cold 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/helmbin"
out=${1:-../../bin/helm}
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
HELM_VERSION=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' go.mod)
[ -n "$HELM_VERSION" ] || { echo "scripts/helmbin/go.mod requires no helm.sh/helm/v3" >&2; exit 1; }

if [ -x "$out" ] && [ "$("$out" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
	echo "helm $HELM_VERSION present at $out"
	exit 0
fi

gov=$(go env GOVERSION)
case "$gov" in
go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
*) echo "helm $HELM_VERSION needs Go 1.26 or newer to build; this go is $gov" >&2; exit 1 ;;
esac

# The Kubernetes version helm assumes when there is no cluster (helm
# template, helm lint) is that of the client-go it is built with, as helm's
# own release build sets it; left unset it would be 1.20.
kube=$(awk '$1 == "k8s.io/client-go" { print $2 }' go.mod)
kmajor=$(echo "$kube" | sed -E 's/^v0\.([0-9]+)\..*/1/')
kminor=$(echo "$kube" | sed -E 's/^v0\.([0-9]+)\..*/\1/')
LD="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	LD="$LD -X $p.k8sVersionMajor=$kmajor -X $p.k8sVersionMinor=$kminor"
done

echo "building helm $HELM_VERSION into $out; ~6 min cold"
start=$(date +%s)
# go.sum is not committed: -mod=mod records the checksums of what it
# downloads (verified against the checksum database) in scripts/helmbin/go.sum.
CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$LD" -o "$out" helm.sh/helm/v3/cmd/helm
got=$("$out" version --template '{{.Version}}')
[ "$got" = "$HELM_VERSION" ] || { echo "built $out reports version $got, want $HELM_VERSION" >&2; exit 1; }
echo "helm $HELM_VERSION built in $(( $(date +%s) - start ))s"
