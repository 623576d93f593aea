#!/usr/bin/env bash
# make bench-datapath: the cost of Weft's eBPF datapath. Needs root.
#  1. loading: time and verifier work per program (BenchmarkLoad), and a
#     whole Open of the datapath (BenchmarkOpen);
#  2. per-packet cost of the policy program through BPF_PROG_RUN with 10,
#     1,000 and 10,000 policy entries and 100,000 ipcache entries;
#  3. new TCP connections/s between two namespaced workloads: no filtering,
#     Weft with 10/1,000/10,000 entries, nftables with as many rules;
#  4. TCP throughput (iperf3) with and without the programs.
# Every part runs ROUNDS times (default 7) and reports medians and the range
# over the rounds; parts 3 and 4 interleave the setups within each round and
# pair each filtered measurement with an unfiltered one. Everything runs on
# the CPUs in CPUS (a taskset list, default every online CPU), which the
# script prints. Extra arguments go to the connection-rate/throughput
# program (-duration, -sizes, -workers, -throughput).
#   ROUNDS=7 CPUS=0-1 ./bench/datapath/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-7}
CPUS=${CPUS:-$(cat /sys/devices/system/cpu/online)}
if [ "$(id -u)" != 0 ]; then
	echo "bench-datapath needs root (eBPF, namespaces, nftables): sudo make bench-datapath" >&2
	exit 1
fi
for c in iperf3 nft ip taskset; do
	command -v "$c" >/dev/null || { echo "bench-datapath needs $c (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$GO" test -c -o "$tmp/bpf.test" ./bpf/
"$GO" build -o "$tmp/datapath" ./bench/datapath
pinned() { taskset -c "$CPUS" "$@"; }
# gobench OUT ARGS...: the bpf package's benchmarks; on failure, their output.
gobench() {
	local out=$1
	shift
	if ! (cd bpf && pinned "$tmp/bpf.test" -test.run '^$' -test.count "$ROUNDS" "$@") >"$out" 2>&1; then
		cat "$out" >&2
		exit 1
	fi
}
echo "CPUs: $CPUS; rounds: $ROUNDS; load average: $(cut -d' ' -f1-3 /proc/loadavg); kernel $(uname -r)"

echo
echo "### Loading (ns/op: one program's load, maps made beforehand; Open: maps and all four programs)"
echo
gobench "$tmp/load.txt" -test.bench '^(BenchmarkLoad|BenchmarkOpen)$' -test.benchtime 20x
"$tmp/datapath" -summarize ns/op,verified-insns,insns,states <"$tmp/load.txt"

echo
echo "### Per-packet cost (BPF_PROG_RUN, ns/pkt)"
echo
gobench "$tmp/progrun.txt" -test.bench '^BenchmarkProgRun$' -test.benchtime 2000000x
"$tmp/datapath" -summarize ns/pkt <"$tmp/progrun.txt"

pinned "$tmp/datapath" -rounds "$ROUNDS" "$@"
