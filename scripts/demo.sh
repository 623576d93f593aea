#!/usr/bin/env bash
# The Weft demo: a lab of network namespaces on this machine — three sites,
# the third behind NAT — becomes a mesh. A seed node runs `meshctl up`, three
# VMs `meshctl join` (one behind NAT), workloads web and db sit on different
# sites, a policy lets web reach db on 5432 only, and a capture shows the
# underlay carries only WireGuard. The lab stays up to explore; `meshctl lab
# down demo` (or `make clean`) removes it with the agents' state and pins.
# `make demo` installs the dependencies and builds bin/ first; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$PWD/bin}
MESHCTL=$BIN/meshctl
LAB=${LAB:-demo}               # LAB=name runs a second demo beside another one
STATE=/run/weft-$LAB           # per-node state dirs, sockets and configs
PINS=/sys/fs/bpf/weft-$LAB     # bpffs pins of the demo's agents
# The labs this checkout brought up: `make clean` removes those, no other.
RECORD=$PWD/bin/labs-made
# WireGuard device names are machine-wide (userspace UAPI sockets): one
# prefix per demo lab, at most 15 characters with the node name.
if [ "$LAB" = demo ]; then WGP=wf; else WGP=w${LAB:0:5}; fi

if [ "$(id -u)" != 0 ]; then
	echo "the demo builds network namespaces and needs root: sudo make demo" >&2
	exit 1
fi
# meshctl lab runs weft-lab, which make build puts next to meshctl.
for b in meshctl weft-agent weft-lab; do
	[ -x "$BIN/$b" ] || { echo "$BIN/$b is missing: run make build (or make demo)" >&2; exit 1; }
done

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# run prints the command it runs; node_ctl NODE ARGS shows as the meshctl
# command a user types on that node.
run() {
	if [ "$1" = node_ctl ]; then
		printf '$ meshctl %s    # on %s\n' "${*:3}" "$2" >&2
	else
		printf '$ %s\n' "$*" >&2
	fi
	"$@"
}
# node_ctl NODE ARGS...: meshctl against NODE's agent. The local API is a
# unix socket, reachable from outside the node's network namespace.
node_ctl() { local n=$1; shift; "$MESHCTL" "$@" --socket "$STATE/$n/agent.sock"; }
agent_flags() { echo -- --wg-interface "$WGP-$1" --bpf-pin-path "$PINS" --wg-keepalive 10s; }
proc_flags() {
	echo --state-dir "$STATE/$1" --socket "$STATE/$1/agent.sock" \
		--config-file "$STATE/$1/agent.yaml" --agent-binary "$BIN/weft-agent"
}

# A lab of this name is replaced only if this checkout made it (its id is
# in $RECORD): anyone else's is left alone, and the demo stops.
if existing=$("$MESHCTL" lab status "$LAB" -o json 2>/dev/null); then
	id=$(grep -o '"id": *"[0-9a-f]*"' <<<"$existing" | head -1 | grep -o '[0-9a-f]\{16\}' || true)
	if [ -n "$id" ] && [ -f "$RECORD" ] && grep -qx "$LAB $id" "$RECORD"; then
		step "the demo lab $LAB this checkout made earlier is up: replacing it"
		run "$MESHCTL" lab down "$LAB"
		sed -i "/^$LAB $id\$/d" "$RECORD"
	else
		by=$(grep -o '"createdBy": *"[^"]*"' <<<"$existing" | head -1 | cut -d'"' -f4)
		echo "a lab named $LAB is up that this checkout did not make (created by ${by:-someone}); it may be in use." >&2
		echo "Remove it with '$MESHCTL lab down $LAB' if it is yours, or run the demo beside it: LAB=demo2 $0" >&2
		exit 1
	fi
fi
rm -rf "$STATE" "$PINS"
mkdir -p "$STATE"

step "bring up the lab: site1 (seed, vm1+web), site2 (vm2+db), site3 behind NAT (vm3+cache)"
# --owns: 'meshctl lab down' removes the agents' state and pins with the lab.
run "$MESHCTL" lab up -f scripts/demo-topology.yaml --name "$LAB" \
	--owns "$STATE" --owns "$PINS" --record "$RECORD" >/dev/null
run "$MESHCTL" lab status "$LAB"

step "seed: meshctl up — embedded etcd (TLS), mesh CA, join service, the node itself"
# shellcheck disable=SC2046
out=$(run "$MESHCTL" lab exec --lab "$LAB" seed -- "$MESHCTL" up --name seed \
	--advertise-address 198.18.1.10 --token-max-uses 10 $(proc_flags seed) $(agent_flags seed))
echo "$out"
TOKEN=$(grep -o 'weft1\.[A-Za-z0-9_-]*' <<<"$out" | head -1)
[ -n "$TOKEN" ] || { echo "meshctl up printed no token" >&2; exit 1; }

for spec in vm1:role=frontend vm2:role=database vm3:role=cache; do
	n=${spec%%:*}; labels=${spec#*:}
	step "$n: meshctl join (labels $labels)$([ "$n" = vm3 ] && echo ' — from behind NAT')"
	# shellcheck disable=SC2046
	run "$MESHCTL" lab exec --lab "$LAB" "$n" -- "$MESHCTL" join "$TOKEN" --name "$n" \
		--labels "$labels" $(proc_flags "$n") $(agent_flags "$n")
done

step "workloads: web on vm1 (site1), db on vm2 (site2), cache on vm3 (site3, NAT)"
# add NODE WORKLOAD LABELS: prints the workload's mesh address.
add() {
	local out
	out=$(run node_ctl "$1" endpoint add --netns "wl-$LAB-$2" --labels "$3")
	echo "$out" >&2
	grep -o '100\.[0-9.]*' <<<"$out" | head -1
}
WEB=$(add vm1 web app=web); DB=$(add vm2 db app=db); CACHE=$(add vm3 cache app=cache)
echo "web=$WEB db=$DB cache=$CACHE"

step "the mesh as seed sees it"
run node_ctl seed nodes
sleep 1
run node_ctl seed status

step "db listens on 5432 and 8080 (netcat in its namespace)"
for port in 5432 8080; do
	setsid "$MESHCTL" lab exec --lab "$LAB" db -- nc -lk "$DB" "$port" </dev/null >/dev/null 2>&1 &
done
sleep 0.5
try() { # try FROM PORT: one TCP connection from a workload to db
	if "$MESHCTL" lab exec --lab "$LAB" "$1" -- nc -z -w 2 "$DB" "$2"; then
		echo "  $1 -> db:$2  connected"
	else
		echo "  $1 -> db:$2  refused or dropped"
	fi
}
step "wait until the mesh is whole: every workload reaches every other"
# Joining returns once a node reached one peer; the other pairs (the NAT'd
# node's above all) follow within moments. The checks below need them all.
wait_mesh() {
	local t0 ms pairs=0 ok=0 from to ip deadline
	t0=${EPOCHREALTIME/./}
	deadline=$(( $(date +%s) + 30 ))
	for from in web db cache; do
		for to in web db cache; do
			[ "$from" = "$to" ] && continue
			pairs=$((pairs + 1))
			case $to in web) ip=$WEB;; db) ip=$DB;; cache) ip=$CACHE;; esac
			until "$MESHCTL" lab exec --lab "$LAB" "$from" -- ping -c 1 -W 1 "$ip" >/dev/null 2>&1; do
				if [ "$(date +%s)" -ge "$deadline" ]; then
					echo "  $from -> $to ($ip): not reached after 30s" >&2
					continue 2
				fi
			done
			ok=$((ok + 1))
			ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
			printf '  %s -> %s reached (%d.%03ds)\n' "$from" "$to" $((ms / 1000)) $((ms % 1000))
		done
	done
	echo "  $ok of $pairs workload pairs reach each other"
	[ "$ok" = "$pairs" ] || { echo "the mesh is not whole: see '$MESHCTL status' on each node" >&2; return 1; }
}
wait_mesh

step "before any policy everything is open"
try web 5432; try web 8080; try cache 5432

step "apply a policy: only web may reach db, and only on 5432/tcp"
cat >"$STATE/db-policy.yaml" <<'POL'
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]
POL
cat "$STATE/db-policy.yaml"
# Policies are the admin's: a joined VM's credentials may not change them
# (etcd runs with per-node roles), the first node applies it.
run node_ctl vm1 policy apply -f "$STATE/db-policy.yaml" || true
run node_ctl seed policy apply -f "$STATE/db-policy.yaml"
sleep 0.5
step "allowed and denied"
try web 5432; try web 8080; try cache 5432
run node_ctl vm1 policy trace --from app=cache --to app=db --port 5432/tcp || true

step "the underlay between sites carries only WireGuard (UDP 51833): a capture in the internet namespace"
"$MESHCTL" lab exec --lab "$LAB" internet -- timeout 4 tcpdump -nn -i any -c 8 -A udp or tcp 2>/dev/null \
	| grep -E 'IP |SECRET' || true &
capture=$!
sleep 1
"$MESHCTL" lab exec --lab "$LAB" web -- sh -c "echo SECRET-PAYLOAD | nc -w 1 $DB 5432" || true
wait "$capture" || true
echo "(the payload SECRET-PAYLOAD never appears on the underlay: only UDP between WireGuard ports)"

cat <<EOT

The mesh stays up. Things to try (the agents' sockets are under $STATE/<node>/):
  $MESHCTL status --socket $STATE/vm3/agent.sock        # the NAT'd node: peers and handshakes
  $MESHCTL endpoints --socket $STATE/seed/agent.sock    # every workload and its identity
  $MESHCTL policy trace --from app=web --to app=db --port 5432/tcp --socket $STATE/seed/agent.sock
  $MESHCTL lab exec --lab $LAB web -- ping -c 3 $DB
  $MESHCTL lab exec --lab $LAB vm2 -- wg show $WGP-vm2
  $MESHCTL token create --socket $STATE/seed/agent.sock  # a token for one more machine
Clean up: $MESHCTL lab down $LAB   (the lab, its agents, $STATE and $PINS; or: make clean)
EOT
