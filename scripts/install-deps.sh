#!/usr/bin/env bash
# Installs what Weft's tests, benchmarks and demo need on a Debian machine:
# iproute2 and nftables for the lab, clang-14 for the eBPF programs,
# wireguard-tools/tcpdump/iperf3 for tunnel tests, and an etcd server for
# the suite that runs against a separate etcd process; containerd, runc, the
# CNI plugins, busybox-static and iptables for the Kubernetes nodes of the
# Kubernetes tiers; python3 (Debian's) to run the cloud-init schema checker
# that make terraform-tools unpacks. Idempotent.
set -euo pipefail

pkgs=(iproute2 nftables iputils-ping netcat-openbsd tcpdump iperf3 wireguard-tools
      clang-14 llvm-14 libbpf-dev etcd-server procps psmisc
      containerd runc containernetworking-plugins busybox-static iptables util-linux
      python3)

missing=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The etcd-server package starts a system etcd on loopback; the tests start
# their own on free ports, so keep the packaged one from running where
# systemd is in charge. (Nothing to do on machines without systemd.)
# Likewise containerd: every Kubernetes test node runs its own.
for svc in etcd containerd; do
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
		systemctl disable --now "$svc" >/dev/null 2>&1 || true
	fi
done
go mod download
echo "dependencies ready"
