#!/usr/bin/env bash
# The commands the lab example's provisioners run (terraform_data +
# local-exec): one subcommand per step, its inputs in the environment, so
# the HCL says what runs and this file how. Every command runs as root on
# this machine; what runs inside a lab node goes through `meshctl lab exec`
# (terraform itself stays in the root network namespace).
#
# Common environment: BIN (the directory with meshctl, weft-agent and
# weft-lab), LAB (the lab's name), STATE (the agents' state root,
# /run/weft-LAB), PINS (their bpffs pin root, /sys/fs/bpf/weft-LAB).
set -euo pipefail

: "${BIN:?BIN is not set}" "${LAB:?LAB is not set}" "${STATE:?STATE is not set}" "${PINS:?PINS is not set}"
MESHCTL=$BIN/meshctl

say() { printf 'lab %s: %s\n' "$LAB" "$*" >&2; }
die() { printf 'lab %s: %s\n' "$LAB" "$*" >&2; exit 1; }

# lab_is_up: the lab exists (its state file is there). Destroy steps use it
# to tell "the lab is gone already, nothing to undo" from a real failure.
lab_is_up() { "$MESHCTL" lab status "$LAB" >/dev/null 2>&1; }
in_node() { local n=$1; shift; "$MESHCTL" lab exec --lab "$LAB" "$n" -- "$@"; }
# The flags that keep each agent's files apart: per-node state directory,
# socket and configuration under STATE, the binaries of BIN.
proc_flags() {
	echo --state-dir "$STATE/$1" --socket "$STATE/$1/agent.sock" \
		--config-file "$STATE/$1/agent.yaml" --agent-binary "$BIN/weft-agent"
}
# WireGuard device names are machine-wide (the userspace UAPI socket
# directory is shared by every namespace): WG_IFACE is unique per lab node.
agent_flags() {
	echo -- --wg-interface "${WG_IFACE:?WG_IFACE is not set}" --bpf-pin-path "$PINS" --wg-keepalive 10s
}

cmd=${1:-}
case $cmd in
lab-up) # TOPOLOGY: the lab's spec as JSON
	: "${TOPOLOGY:?TOPOLOGY is not set}"
	for b in meshctl weft-agent weft-lab; do
		[ -x "$BIN/$b" ] || die "$BIN/$b is missing: set bin_dir to a directory with meshctl, weft-agent and weft-lab (make build puts them in bin/)"
	done
	[ "$(id -u)" = 0 ] || die "the lab builds network namespaces and needs root: run terraform as root"
	lab_is_up && die "a lab named $LAB is up already; it may be someone else's: choose another lab_name, or remove it with '$MESHCTL lab down $LAB' if it is yours"
	made_state=
	[ -e "$STATE" ] || made_state=1
	mkdir -p "$STATE"
	chmod 700 "$STATE"
	printf '%s\n' "$TOPOLOGY" >"$STATE/topology.json"
	# --owns: 'meshctl lab down' removes the agents' state and pins with
	# the lab, also when terraform never runs the destroy.
	if ! "$MESHCTL" lab up -f "$STATE/topology.json" --name "$LAB" --owns "$STATE" --owns "$PINS" >/dev/null; then
		[ -z "$made_state" ] || rm -rf "$STATE"
		die "meshctl lab up failed (above); nothing of the lab is left"
	fi
	say "up: $("$MESHCTL" lab status "$LAB" -o json | grep -c '"netns"') namespaces"
	;;
lab-down)
	if lab_is_up; then
		"$MESHCTL" lab down "$LAB"
	fi
	# lab down removes the owned paths; these are only there if the lab
	# went some other way (a reboot keeps neither).
	rm -rf "$STATE" "$PINS"
	;;
seed-up) # SEED, SEED_ADDR, WG_IFACE
	# The token 'up' prints is not used (joins get their own): its output
	# stays in the seed's directory, out of terraform's log.
	mkdir -p "$STATE/$SEED"
	# shellcheck disable=SC2046
	if ! in_node "$SEED" "$MESHCTL" up --name "$SEED" --advertise-address "$SEED_ADDR" \
		--token-ttl 1m $(proc_flags "$SEED") $(agent_flags) >"$STATE/$SEED/up.log" 2>&1; then
		cat "$STATE/$SEED/up.log" >&2
		die "meshctl up on $SEED failed (above)"
	fi
	rm -f "$STATE/admin.json"
	# The credential the weft provider reads (lazily, at its first call).
	in_node "$SEED" "$MESHCTL" admin credential create "terraform-$LAB" --out "$STATE/admin.json" \
		--ttl 24h --socket "$STATE/$SEED/agent.sock" >&2
	say "seed $SEED up at $SEED_ADDR"
	;;
seed-down) # SEED
	if lab_is_up && [ -e "$STATE/$SEED/agent.yaml" ]; then
		in_node "$SEED" "$MESHCTL" leave --force --socket "$STATE/$SEED/agent.sock" \
			--config-file "$STATE/$SEED/agent.yaml" --agent-binary "$BIN/weft-agent" >&2
	fi
	rm -rf "${STATE:?}/${SEED:?}" "$STATE/admin.json"
	;;
join) # NODE, WG_IFACE, WEFT_TOKEN (the weft_token's token)
	: "${NODE:?NODE is not set}"
	: "${WEFT_TOKEN:?WEFT_TOKEN is not set (the token of the node from weft_token)}"
	mkdir -p "$STATE/$NODE"
	# The token goes in the environment (meshctl join reads WEFT_TOKEN),
	# never on a command line other users can read.
	# terraform hides the output of a provisioner given a sensitive value
	# (the token): meshctl's (which never holds the token) is kept in
	# STATE/logs, which goes with the lab.
	mkdir -p "$STATE/logs"
	log=$STATE/logs/join-$NODE.log
	# shellcheck disable=SC2046
	if ! in_node "$NODE" "$MESHCTL" join --name "$NODE" --wait 60s $(proc_flags "$NODE") $(agent_flags) >"$log" 2>&1; then
		cat "$log" >&2
		die "meshctl join of $NODE failed: see $log"
	fi
	cat "$log" >&2
	;;
leave) # NODE
	: "${NODE:?NODE is not set}"
	if lab_is_up && [ -e "$STATE/$NODE/agent.yaml" ]; then
		in_node "$NODE" "$MESHCTL" leave --socket "$STATE/$NODE/agent.sock" \
			--config-file "$STATE/$NODE/agent.yaml" --agent-binary "$BIN/weft-agent" >&2
	fi
	rm -rf "${STATE:?}/${NODE:?}"
	;;
endpoint-add) # NODE, NETNS, LABELS (k=v,...)
	: "${NODE:?}" "${NETNS:?}" "${LABELS:?}"
	"$MESHCTL" endpoint add --netns "$NETNS" --labels "$LABELS" --socket "$STATE/$NODE/agent.sock" >&2
	;;
endpoint-remove) # NODE, NETNS
	: "${NODE:?}" "${NETNS:?}"
	# With its node's agent gone (the lab or the node went first) the
	# endpoint went with it.
	if lab_is_up && [ -S "$STATE/$NODE/agent.sock" ]; then
		"$MESHCTL" endpoint remove "$NETNS" --socket "$STATE/$NODE/agent.sock" >&2
	fi
	;;
*)
	die "unknown command '${cmd}': use lab-up, lab-down, seed-up, seed-down, join, leave, endpoint-add or endpoint-remove"
	;;
esac
