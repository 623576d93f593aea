#!/usr/bin/env bash
# The Weft demo, for now: a three-site lab whose third site sits behind NAT,
# built from network namespaces on this machine. It shows the lab, a
# cross-site ping and the NAT at work, and leaves the lab up to explore.
# `make demo` builds bin/meshctl first; run it as root.
set -euo pipefail
cd "$(dirname "$0")/.."

MESHCTL=${MESHCTL:-bin/meshctl}
LAB=${LAB:-demo}

if [ "$(id -u)" != 0 ]; then
	echo "the demo builds network namespaces and needs root: sudo make demo" >&2
	exit 1
fi
if [ ! -x "$MESHCTL" ]; then
	echo "$MESHCTL is missing: run make build (or make demo)" >&2
	exit 1
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

if "$MESHCTL" lab status "$LAB" >/dev/null 2>&1; then
	step "a lab named $LAB is already up: replacing it"
	run "$MESHCTL" lab down "$LAB"
fi

step "bring up lab $LAB: 3 sites x 2 nodes, site3 behind NAT, one workload per node"
run "$MESHCTL" lab up --name "$LAB" --sites 3 --nodes-per-site 2 --nat-site --workloads-per-node 1 >/dev/null

step "what was built"
run "$MESHCTL" lab status "$LAB"

step "site1-n1 pings site2-n1 on another site (routed through the internet namespace)"
run "$MESHCTL" lab exec --lab "$LAB" site1-n1 -- ping -c 2 198.18.2.10

step "site3-n1, behind NAT, reaches out to site1-n1"
run "$MESHCTL" lab exec --lab "$LAB" site3-n1 -- ping -c 2 198.18.1.10

step "site1-n1 cannot reach site3-n1 unsolicited: nothing routes into a NAT'd LAN"
if run "$MESHCTL" lab exec --lab "$LAB" site1-n1 -- ping -c 1 -W 2 198.18.3.10; then
	echo "unexpected: the NAT'd node answered" >&2
	exit 1
fi
echo "(as expected: unreachable)"

cat <<EOT

The lab stays up. Things to try:
  $MESHCTL lab exec site3-n1 -- ip route              # default route via the site router
  $MESHCTL lab exec site3-router -- nft list ruleset  # the masquerade of the NAT site
  $MESHCTL lab exec site1-n1 -- ip link               # eth0 (underlay) and wl0 (workload veth)
  $MESHCTL lab status -o json
  $MESHCTL lab down $LAB                              # remove it (or: lab down --all)
See docs/lab.md.
EOT
