#!/usr/bin/env bash
# Tunnel throughput benchmark: iperf3 TCP between two network namespaces
# over (a) the plain underlay veth, (b) a Weft tunnel, (c) stock
# wireguard-go and (d) Tailscale's wireguard-go fork, the last two
# configured with `wg` from wg-quick style files. Rounds are interleaved
# (each round in a rotated order) so machine load hits all four alike; medians and
# ratios are printed, the last two lines being the ratios to the two
# userspace WireGuard implementations.
#
# All three tunnels get the same MTU, the same iperf3 settings and the same
# CPUs (CPUS, a taskset list, default every online CPU), default Go runtime
# settings and each daemon its own session, as Weft's helper has (see
# wgnode); the script prints what each daemon got so that can be checked.
# One discarded warm-up pass precedes the rounds.
#
# PROFILE=DIR also records, after the rounds, where each tunnel's daemons
# spend CPU during one more transfer (perf, if installed: DIR/NAME.perf.txt)
# and a Go CPU profile of Weft's helper (DIR/weft.pprof, via WEFT_TUNNEL_PPROF).
#
# Needs root, iperf3, wg (wireguard-tools), ip, nsenter, taskset and Go.
# Creates its own namespaces and removes them, and everything it started, on exit.
#   ROUNDS=7 DURATION=5 ./bench/tunnel/run.sh
set -euo pipefail

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5}
CPUS=${CPUS:-$(cat /sys/devices/system/cpu/online)}
PROFILE=${PROFILE:-}
MTU=1420
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
	echo "bench-tunnel creates network namespaces and needs root: sudo make bench-tunnel" >&2
	exit 1
fi
for c in iperf3 wg wg-quick ip nsenter taskset setsid go; do
	command -v "$c" >/dev/null || { echo "bench-tunnel needs $c (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

id=$$
A=wbt-$id-a
B=wbt-$id-b
tmp=$(mktemp -d)
pids=()

cleanup() {
	set +e
	[ -n "${BENCH_DEBUG:-}" ] && tail -n 5 "$tmp"/*.log "$tmp"/w?/*.log
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	[ -x "$tmp/weftnode" ] && {
		nsenter --net=/var/run/netns/$A "$tmp/weftnode" down -name wb${id}wa -state "$tmp/wa" 2>/dev/null
		nsenter --net=/var/run/netns/$B "$tmp/weftnode" down -name wb${id}wb -state "$tmp/wb" 2>/dev/null
	}
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	ip netns del $A 2>/dev/null
	ip netns del $B 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

inA() { nsenter --net=/var/run/netns/$A taskset -c "$CPUS" "$@"; }
inB() { nsenter --net=/var/run/netns/$B taskset -c "$CPUS" "$@"; }

echo "building Weft's bench node, stock wireguard-go and the Tailscale fork..."
go build -o "$tmp/weftnode" ./bench/tunnel/weftnode
go build -o "$tmp/wireguard-go" golang.zx2c4.com/wireguard
(cd bench/tunnel/tsfork && go build -o "$tmp/tsfork-wg" .)

# Two nodes joined by a veth pair created inside the first namespace.
ip netns add $A
ip netns add $B
ip -n $A link set lo up
ip -n $B link set lo up
ip -n $A link add eth0 type veth peer name eth0 netns $B
ip -n $A addr add 198.18.0.1/24 dev eth0
ip -n $B addr add 198.18.0.2/24 dev eth0
ip -n $A link set eth0 up
ip -n $B link set eth0 up

# (b) Weft: first `up` creates the device and key, the second re-attaches and adds the peer.
[ -n "$PROFILE" ] && mkdir -p "$PROFILE" && export WEFT_TUNNEL_PPROF=$tmp/wa.pprof # inherited by A's helper only
ka=$(inA "$tmp/weftnode" up -name wb${id}wa -state "$tmp/wa" -addr 100.64.1.1/32 -mtu $MTU)
unset WEFT_TUNNEL_PPROF
kb=$(inB "$tmp/weftnode" up -name wb${id}wb -state "$tmp/wb" -addr 100.64.1.2/32 -mtu $MTU)
inA "$tmp/weftnode" up -name wb${id}wa -state "$tmp/wa" -addr 100.64.1.1/32 -mtu $MTU -peer "$kb" -endpoint 198.18.0.2:51833 -allowed 100.64.1.2/32 >/dev/null
inB "$tmp/weftnode" up -name wb${id}wb -state "$tmp/wb" -addr 100.64.1.2/32 -mtu $MTU -peer "$ka" -endpoint 198.18.0.1:51833 -allowed 100.64.1.1/32 >/dev/null

# (c) and (d): a userspace WireGuard daemon per node, configured by wg from a wg-quick file.
wgnode() { # ns-func bin ifname port addr peer-addr peer-endpoint-port peer-pub priv
	local ns=$1 bin=$2 ifn=$3 port=$4 addr=$5 paddr=$6 pport=$7 ppub=$8 priv=$9 peerip
	if [ "$ns" = inA ]; then peerip=198.18.0.2; else peerip=198.18.0.1; fi
	local nsname=$A
	[ "$ns" = inB ] && nsname=$B
	# Each daemon gets its own session, like Weft's helper: with the
	# kernel's scheduler autogroups (sched_autogroup_enabled) a session is
	# a CPU scheduling group, so a
	# daemon left in this script's session would share iperf3's group while
	# Weft's helper competes as a group of its own; that alone moved the
	# Weft/fork ratio by about 15 %.
	# nsenter, taskset and setsid exec in turn (setsid forks only for a
	# process group leader, which a background job of this script is not),
	# so $! is the daemon's own pid (kill it by pid on exit); checked below.
	WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error nsenter --net=/var/run/netns/$nsname taskset -c "$CPUS" setsid "$bin" $([ "$bin" = "$tmp/wireguard-go" ] && echo -f) "$ifn" >"$tmp/$ifn.log" 2>&1 &
	local pid=$!
	pids+=($pid)
	for _ in $(seq 100); do $ns wg show "$ifn" >/dev/null 2>&1 && break; sleep 0.05; done
	if [ "$(readlink /proc/$pid/exe)" != "$bin" ]; then
		echo "pid $pid is not $bin: the daemon for $ifn did not start in place" >&2
		exit 1
	fi
	cat >"$tmp/$ifn.conf" <<CONF
[Interface]
Address = $addr/32
MTU = $MTU
PrivateKey = $priv
ListenPort = $port

[Peer]
PublicKey = $ppub
Endpoint = $peerip:$pport
AllowedIPs = $paddr/32
CONF
	wg-quick strip "$tmp/$ifn.conf" >"$tmp/$ifn.setconf"
	$ns wg setconf "$ifn" "$tmp/$ifn.setconf"
	$ns ip addr add "$addr/32" dev "$ifn"
	$ns ip link set "$ifn" mtu $MTU up
	$ns ip route add "$paddr/32" dev "$ifn"
}
sa=$(wg genkey); sb=$(wg genkey); ta=$(wg genkey); tb=$(wg genkey)
wgnode inA "$tmp/wireguard-go" wb${id}sa 51834 100.64.2.1 100.64.2.2 51834 "$(echo "$sb" | wg pubkey)" "$sa"
wgnode inB "$tmp/wireguard-go" wb${id}sb 51834 100.64.2.2 100.64.2.1 51834 "$(echo "$sa" | wg pubkey)" "$sb"
wgnode inA "$tmp/tsfork-wg" wb${id}ta 51835 100.64.3.1 100.64.3.2 51835 "$(echo "$tb" | wg pubkey)" "$ta"
wgnode inB "$tmp/tsfork-wg" wb${id}tb 51835 100.64.3.2 100.64.3.1 51835 "$(echo "$ta" | wg pubkey)" "$tb"

nsenter --net=/var/run/netns/$B taskset -c "$CPUS" iperf3 -s -p 5201 >"$tmp/iperf3-server.log" 2>&1 &
pids+=($!)
sleep 0.5
for dst in 198.18.0.2 100.64.1.2 100.64.2.2 100.64.3.2; do
	inA ping -q -c 2 -w 5 $dst >/dev/null || { echo "no path to $dst before measuring" >&2; exit 1; }
done

measure() { # DST [SECONDS]: prints Mbit/s received
	inA iperf3 -c "$1" -p 5201 -t "${2:-$DURATION}" -O 1 -f m | awk '/receiver/ {print $(NF-2)}'
}
names=(underlay weft wireguard-go tailscale-fork)
dsts=(198.18.0.2 100.64.1.2 100.64.2.2 100.64.3.2)
declare -A res

# What each tunnel daemon runs with, to check the comparison is like for like.
daemons() { # name: pids of that contender's two daemons
	case $1 in
	weft) pgrep -f "^$tmp/weftnode __device-helper" ;;
	wireguard-go) pgrep -f "^$tmp/wireguard-go -f wb${id}s" ;;
	tailscale-fork) pgrep -f "^$tmp/tsfork-wg wb${id}t" ;;
	esac
}
for n in weft wireguard-go tailscale-fork; do
	for p in $(daemons $n); do
		env=$(tr '\0' '\n' </proc/$p/environ | { grep -E '^(GOGC|GOMAXPROCS|GOMEMLIMIT|GODEBUG)=' || true; } | tr '\n' ' ')
		sid=$(awk '{print $6}' /proc/$p/stat) # field 6 is the session: these binaries' names have no spaces
		echo "$n daemon $p: session $([ "$sid" = "$p" ] && echo own || echo "$sid") cpus $(awk '/Cpus_allowed_list/ {print $2}' /proc/$p/status) threads $(awk '/Threads/ {print $2}' /proc/$p/status) go-env [${env% }]"
	done
done
for l in wb${id}wa wb${id}sa wb${id}ta; do echo "A: $l $(inA ip -o link show $l | grep -o 'mtu [0-9]*')"; done
echo "iperf3: TCP, 1 stream, ${DURATION}s + 1s omitted, CPUs $CPUS"

for i in 0 1 2 3; do measure "${dsts[$i]}" 2 >/dev/null; done # warm-up, discarded
for r in $(seq "$ROUNDS"); do
	line="round $r:"
	for k in 0 1 2 3; do
		i=$(((r + k) % 4)) # rotate the order so no contender always follows the same one
		v=$(measure "${dsts[$i]}")
		res[$i]+="$v "
		line+=" ${names[$i]} $v"
	done
	echo "$line Mbit/s"
done
if [ -n "$PROFILE" ]; then
	for i in 1 2 3; do
		n=${names[$i]}
		if command -v perf >/dev/null; then
			pl=$(daemons $n | paste -sd,)
			perf record -q -g -o "$tmp/$n.perf" -p "$pl" -- sleep "$DURATION" >/dev/null 2>&1 &
			pp=$!
		fi
		cp=
		if [ $n = weft ]; then
			curl -s --unix-socket "$tmp/wa.pprof" "http://helper/debug/pprof/profile?seconds=$DURATION" >"$PROFILE/weft.pprof" &
			cp=$!
		fi
		v=$(measure "${dsts[$i]}")
		[ -z "$cp" ] || wait $cp
		if command -v perf >/dev/null; then
			wait $pp
			perf report -i "$tmp/$n.perf" --no-children --sort sym -q --stdio -g none 2>/dev/null | head -40 >"$PROFILE/$n.perf.txt" || true
		fi
		echo "profiled $n ($v Mbit/s under profiling): $PROFILE/$n.perf.txt"
	done
fi
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
ma=$(echo "${res[0]}" | median); mb=$(echo "${res[1]}" | median)
mc=$(echo "${res[2]}" | median); md=$(echo "${res[3]}" | median)
echo "median Mbit/s over $ROUNDS rounds of ${DURATION}s: underlay $ma, weft $mb, wireguard-go $mc, tailscale-fork $md"
awk -v b="$mb" -v a="$ma" 'BEGIN {printf "weft/underlay throughput ratio: %.2f\n", b/a}'
awk -v b="$mb" -v c="$mc" 'BEGIN {printf "weft/wireguard-go throughput ratio: %.2f\n", b/c}'
awk -v b="$mb" -v d="$md" 'BEGIN {printf "weft/tailscale-fork throughput ratio: %.2f\n", b/d}'
