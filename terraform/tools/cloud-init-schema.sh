#!/usr/bin/env bash
# Validates a cloud-config file against cloud-init's schema with the
# cloud-init that install.sh unpacked: rc 0 valid, 1 invalid, 2 not installed
# or bad usage.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 FILE" >&2; exit 2; }
[ -f "$1" ] || { echo "cloud-init-schema.sh: $1: no such file" >&2; exit 2; }
home=${WEFT_TERRAFORM_HOME:-$HOME/.cache/weft-terraform}
ci="$home/cloud-init"
if [ ! -f "$ci/.complete" ] || [ ! -x /usr/bin/python3 ]; then
	echo "cloud-init schema checker not found under $home: run make terraform-tools" >&2
	exit 2
fi
PYTHONPATH="$ci/usr/lib/python3/dist-packages" exec /usr/bin/python3 -m cloudinit.cmd.main schema --config-file "$1"
