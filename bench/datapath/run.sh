#!/usr/bin/env bash
# make bench-datapath: the cost of Weft's eBPF datapath. Needs root.
#  1. per-packet cost of the policy program through BPF_PROG_RUN with 10,
#     1,000 and 10,000 policy entries and 100,000 ipcache entries;
#  2. new TCP connections/s between two namespaced workloads: no filtering,
#     Weft with 10/1,000/10,000 entries, nftables with as many rules;
#  3. TCP throughput (iperf3) with and without the programs.
# Extra arguments go to the connection-rate/throughput program
# (-duration, -rounds, -sizes, -workers, -throughput).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
	echo "bench-datapath needs root (eBPF, namespaces, nftables): sudo make bench-datapath" >&2
	exit 1
fi
GO=${GO:-go}
echo "### Per-packet cost (BPF_PROG_RUN)"
"$GO" test -run '^$' -bench 'BenchmarkProgRun' -benchtime 2000000x -count 1 ./bpf/ | grep -E '^Benchmark|^ok'
"$GO" run ./bench/datapath "$@"
