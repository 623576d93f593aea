#!/usr/bin/env bash
# Builds the Terraform toolchain the Terraform tests use, offline apart from
# the Go module proxy and the Debian mirror, into
# ${WEFT_TERRAFORM_HOME:-$HOME/.cache/weft-terraform}:
#
#   bin/terraform                     the CLI (go install, pinned in versions.env)
#   mirror/registry.terraform.io/...  null, local and cloudinit providers built
#                                     from source, as a filesystem mirror
#   terraformrc                       CLI config: the mirror only, no checkpoint
#   cloud-init/                       Debian's cloud-init, unpacked, for
#                                     cloud-init-schema.sh
#
# Idempotent: what is already there is kept. First run ~8 min on 2 cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

home=${WEFT_TERRAFORM_HOME:-$HOME/.cache/weft-terraform}
mkdir -p "$home/bin" "$home/mirror"
home=$(cd "$home" && pwd)
# A machine may export a config that does not exist; this script's checks
# must not read it.
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

# --- the CLI ---------------------------------------------------------------
tf="$home/bin/terraform"
# The version's first line, read whole: a pipe into `head -1` can kill
# terraform with SIGPIPE, which pipefail reports as a failure.
tf_version() { local v; v=$("$tf" version 2>/dev/null) || return 0; printf '%s' "${v%%$'\n'*}"; }
if [ -x "$tf" ] && [ "$(tf_version)" = "Terraform v$TERRAFORM_VERSION" ]; then
	echo "terraform v$TERRAFORM_VERSION: present"
else
	echo "building terraform v$TERRAFORM_VERSION (first time: ~6-8 min)…"
	# Outside any module, so the project's go.mod plays no part.
	(cd "$home" && GOBIN="$home/bin" go install "github.com/hashicorp/terraform@v$TERRAFORM_VERSION")
	[ "$(tf_version)" = "Terraform v$TERRAFORM_VERSION" ] \
		|| { echo "install.sh: $tf reports '$(tf_version)', not v$TERRAFORM_VERSION, after building it" >&2; exit 1; }
	echo "terraform v$TERRAFORM_VERSION: built"
fi

# --- providers -------------------------------------------------------------
build_provider() { # TYPE MODULE PSEUDO VERSION [optional]
	local type=$1 mod=$2 pseudo=$3 version=$4 optional=${5:-}
	local dir="$home/mirror/registry.terraform.io/hashicorp/$type/$version/linux_amd64"
	local out="$dir/terraform-provider-${type}_v$version"
	if [ -x "$out" ]; then
		echo "provider $type $version: present"
		return
	fi
	echo "provider $type $version: building from $mod@$pseudo…"
	local info src
	if ! info=$(cd "$home" && go mod download -json "$mod@$pseudo" 2>&1); then
		local why
		why=$(printf '%s\n' "$info" | sed -n 's/^\t"Error": "\(.*\)"$/\1/p' | sed 's/\\n.*//')
		if [ -n "$optional" ]; then
			echo "provider $type $version: NOT INSTALLED: the Go module proxy does not serve $mod@$pseudo (${why:-$info}); modules that need it fail at terraform init" >&2
			return
		fi
		echo "install.sh: go mod download $mod@$pseudo failed: ${why:-$info}" >&2
		exit 1
	fi
	src=$(printf '%s\n' "$info" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -n "$src" ] && [ -d "$src" ] || { echo "install.sh: go mod download $mod@$pseudo gave no directory" >&2; exit 1; }
	mkdir -p "$dir"
	# The module cache is read-only; -mod=mod lets go resolve without
	# writing go.mod. Build to a temporary name so an interrupted build
	# is not taken for a finished one next time.
	(cd "$src" && GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -o "$out.tmp" .)
	mv "$out.tmp" "$out"
	echo "provider $type $version: built"
}
build_provider null "$NULL_MODULE" "$NULL_PSEUDO" "$NULL_VERSION"
build_provider local "$LOCAL_MODULE" "$LOCAL_PSEUDO" "$LOCAL_VERSION"
# Optional: the proxy some machines use does not serve it (403). Modules
# render cloud-init with templatefile() and do not need it.
build_provider cloudinit "$CLOUDINIT_MODULE" "$CLOUDINIT_PSEUDO" "$CLOUDINIT_VERSION" optional

# --- CLI config --------------------------------------------------------------
# Providers come from the mirror only; `direct` excludes the registry so a
# missing provider fails at init instead of trying the network.
rc="$home/terraformrc"
cat >"$rc.tmp" <<RC
disable_checkpoint = true

provider_installation {
  filesystem_mirror {
    path    = "$home/mirror"
    include = ["registry.terraform.io/*/*"]
  }
  direct {
    exclude = ["registry.terraform.io/*/*"]
  }
}
RC
mv "$rc.tmp" "$rc"

# --- cloud-init schema checker ----------------------------------------------
ci="$home/cloud-init"
py=/usr/bin/python3
if [ ! -x "$py" ]; then
	echo "install.sh: $py not found: the cloud-init schema checker runs with Debian's python3; run scripts/install-deps.sh" >&2
	exit 1
fi
if [ -f "$ci/.complete" ] && PYTHONPATH="$ci/usr/lib/python3/dist-packages" "$py" -c 'import cloudinit.config.schema' 2>/dev/null; then
	echo "cloud-init $CLOUDINIT_DEB_VERSION schema checker: present"
else
	echo "cloud-init $CLOUDINIT_DEB_VERSION schema checker: unpacking Debian's packages…"
	dl=$(mktemp -d)
	chmod 755 "$dl" # apt downloads as _apt where it can
	trap 'rm -rf "$dl"' EXIT
	ver=$(apt-cache policy cloud-init | sed -n 's/^ *Candidate: //p')
	case "$ver" in
	"$CLOUDINIT_DEB_VERSION"-*) ;;
	*) echo "install.sh: apt offers cloud-init '$ver', want $CLOUDINIT_DEB_VERSION-* (Debian bookworm); run apt-get update" >&2; exit 1 ;;
	esac
	# cloud-init and every python3 library it needs, not the interpreter.
	mapfile -t debs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances cloud-init |
		grep -E '^python3-[a-z0-9.+-]+$' | grep -vx -e python3-minimal -e python3 | sort -u)
	# As root apt drops to _apt, which cannot write into a mktemp directory.
	sandbox=(); [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
	(cd "$dl" && apt-get download -qq "${sandbox[@]}" "cloud-init=$ver" "${debs[@]}")
	rm -rf "$ci"
	mkdir -p "$ci"
	for d in "$dl"/*.deb; do dpkg -x "$d" "$ci"; done
	PYTHONPATH="$ci/usr/lib/python3/dist-packages" "$py" -c 'import cloudinit.config.schema' \
		|| { echo "install.sh: the unpacked cloud-init does not import with $py" >&2; exit 1; }
	touch "$ci/.complete"
	echo "cloud-init $CLOUDINIT_DEB_VERSION schema checker: unpacked (${#debs[@]} python3 packages)"
fi

echo "terraform tools ready: WEFT_TERRAFORM_HOME=$home (bin/terraform, mirror/, terraformrc, cloud-init/)"
