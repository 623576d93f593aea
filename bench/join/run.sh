#!/usr/bin/env bash
# make bench-join: join-to-reachable and policy propagation in a lab of
# network namespaces with the real binaries (bin/, from make build). Needs
# root. Extra arguments go to the program (-joins, -changes, -v, -logs DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
	echo "bench-join needs root (network namespaces, eBPF, WireGuard): sudo make bench-join" >&2
	exit 1
fi
GO=${GO:-go}
if [ ! -x bin/meshctl ] || [ ! -x bin/weft-agent ]; then
	make --no-print-directory build
fi
"$GO" run ./bench/join -bin bin "$@"
