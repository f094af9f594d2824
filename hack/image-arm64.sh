#!/usr/bin/env bash
# make image-arm64: build and verify the minimal arm64 sample
# (config/samples/image_v1alpha1_nodeimage_minimal_arm64.yaml) locally, into
# out/ (out/minimal-arm64.qcow2 and its manifest out/minimal-arm64.json).
#
# On an amd64 machine the build runs the image's arm64 binaries through
# qemu-user-static (binfmt_misc; nodeforge registers the handler when it is
# not, mounting binfmt_misc if needed), and the boot test runs
# qemu-system-aarch64 with AAVMF under TCG. No Kubernetes packages: the
# offline Kubernetes repository (hack/k8s-apt-repo.sh) builds amd64 .debs.
#
# Environment:
#   OUT                   output directory (default: out)
#   NODEFORGE_CACHE       cache root (default ${XDG_CACHE_HOME:-~/.cache}/nodeforge)
#   NODEFORGE_APT_CACHE   package cache for the build (default $NODEFORGE_CACHE/apt-archives)
#   NODEFORGE_BUILD_FLAGS extra flags for `nodeforge build` (e.g. --no-verify --progress plain)
#   NODEFORGE_SAMPLE      NodeImage file to build (default: the minimal arm64 sample)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
out=${OUT:-out}
sample=${NODEFORGE_SAMPLE:-config/samples/image_v1alpha1_nodeimage_minimal_arm64.yaml}
export NODEFORGE_CACHE=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}

log() { printf '[image-arm64] %s\n' "$*" >&2; }
die() {
	printf '[image-arm64] error: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap builds the root filesystem in root mode"
command -v go >/dev/null 2>&1 || die "Go is required (to build nodeforge)"
[ -f "$sample" ] || die "no NodeImage sample at $sample"

# The builder's tools (hack/deps.sh), with the arm64 ones among them:
# qemu-user-static and arch-test for the build, qemu-system-arm and
# qemu-efi-aarch64 (AAVMF) for the boot test.
"$here/deps.sh" arm64

mkdir -p "$out" bin
log "building bin/nodeforge"
CGO_ENABLED=0 go build -trimpath -o bin/nodeforge ./cmd/nodeforge

# shellcheck disable=SC2086 # NODEFORGE_BUILD_FLAGS is a list of flags
bin/nodeforge build -f "$sample" -o "$out" --no-publish --cache-dir "${NODEFORGE_APT_CACHE:-$NODEFORGE_CACHE/apt-archives}" ${NODEFORGE_BUILD_FLAGS:-}

name=$(awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit}' "$sample")
echo
echo "image:    $out/$name.qcow2"
echo "manifest: $out/$name.json"
