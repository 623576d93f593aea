#!/usr/bin/env bash
# Builds the Weft node image for Kubernetes, bin/weft-image.tar: an OCI image
# layout tar named registry.local/weft:$IMAGE_TAG (default dev, the chart's
# appVersion) holding static builds of weft-agent, meshctl, weft-cni and
# weft-cleanup in /usr/bin, and nothing else (no shell, no libc).
# Load it into each node's containerd with
#   ctr -n k8s.io images import bin/weft-image.tar
# The same source builds the same bytes: -trimpath, no VCS stamp, the
# Makefile's -ldflags (whose build date is the commit's), and an image writer
# with fixed timestamps.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${IMAGE_TAG:-dev}
if ! [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
	echo "IMAGE_TAG '$tag' is not an image tag: letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-'" >&2
	exit 1
fi
name=registry.local/weft:$tag
out=bin/weft-image.tar

# main package → the binary's name in /usr/bin
pkgs=(./agent/cmd/weft-agent ./meshctl ./cni/cmd/weft-cni ./deploy/kubernetes/cmd/weft-cleanup)
bins=(weft-agent meshctl weft-cni weft-cleanup)
for p in "${pkgs[@]}" ./internal/ociimage/cmd/oci-image; do
	if ! ls "$p"/*.go >/dev/null 2>&1; then
		echo "$p is missing from this checkout: the image needs it (weft-cni is the CNI plugin, oci-image writes the image); update the checkout" >&2
		exit 1
	fi
done

# The Makefile's own LDFLAGS (version, commit and the commit's date), read
# from it rather than copied, so the image's binaries say what `make build`'s do.
ldflags=$(make --no-print-directory -s -f Makefile -f <(printf 'print-image-ldflags:\n\t@echo $(LDFLAGS)\n') print-image-ldflags)
[ -n "$ldflags" ] || { echo "could not read LDFLAGS from the Makefile" >&2; exit 1; }

stage=bin/image
rm -rf "$stage"
mkdir -p "$stage"
echo "building ${bins[*]} (static) for $name"
for i in "${!pkgs[@]}"; do
	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$stage/${bins[$i]}" "${pkgs[$i]}"
done

files=()
for b in "${bins[@]}"; do files+=(--file "$stage/$b:/usr/bin/$b:0755"); done
go run -trimpath ./internal/ociimage/cmd/oci-image -o "$out.tmp" --name "$name" "${files[@]}"
mv "$out.tmp" "$out"
echo "wrote $out ($name, $(du -h "$out" | cut -f1), sha256 $(sha256sum "$out" | cut -c1-16)...)"
