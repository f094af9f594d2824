#!/usr/bin/env bash
# Assembles the builder image (builder-image/Containerfile) as an OCI image
# tarball without a container engine: a trixie root filesystem made by
# mmdebstrap with the builder's tool packages, plus a layer with the static
# nodeforge binary, stacked and configured by crane (hack/tools.sh crane)
# through a throwaway registry on 127.0.0.1, then saved to out/builder-image.tar.
#
#   hack/build-builder-image.sh [OUT.tar]      (default: out/builder-image.tar)
#
# Load it with `podman load -i out/builder-image.tar` or
# `ctr -n k8s.io images import out/builder-image.tar`. Needs root (mmdebstrap
# root mode) and the Debian mirror; downloaded .debs are reused from
# $NODEFORGE_CACHE/apt-archives/archives when present, and the root
# filesystem layer from $NODEFORGE_CACHE/builder-rootfs (see below).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:-$root/out/builder-image.tar}
cache=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}
TAG=${IMG:-nodeforge-builder:dev}

# Keep in sync with builder-image/Containerfile.
BUILDER_PACKAGES=ansible,containerd,mmdebstrap,e2fsprogs,fdisk,dosfstools,mtools,grub-pc-bin,grub-efi-amd64-bin,qemu-utils,qemu-system-x86,ovmf,cloud-image-utils,ca-certificates,gpg,gpgv,util-linux,mount
# arm64 images: the build under qemu-user-static, the boot test under
# qemu-system-aarch64 with AAVMF. About 680 MB installed (every QEMU user
# emulator, AAVMF's flash images); BUILDER_ARM64=0 leaves them out of an
# image that builds amd64 only (the e2e's).
if [ "${BUILDER_ARM64:-1}" = 1 ]; then
	BUILDER_PACKAGES=$BUILDER_PACKAGES,qemu-user-static,arch-test,qemu-system-arm,qemu-efi-aarch64
fi

log() { printf '[builder-image] %s\n' "$*" >&2; }
die() {
	printf '[builder-image] error: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap --mode=root)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is required (apt-get install mmdebstrap)"

work=$(mktemp -d "${TMPDIR:-/tmp}/nodeforge-builder-image.XXXXXX")
registry_pid=
cleanup() {
	if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

crane="$("$here/tools.sh" crane)/crane"
[ -x "$crane" ] || die "crane not found after hack/tools.sh crane"

log "building the static nodeforge binary"
mkdir -p "$work/bin/usr/local/bin"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/bin/usr/local/bin/nodeforge" ./cmd/nodeforge)
tar -C "$work/bin" --owner=0 --group=0 --numeric-owner -cf "$work/nodeforge.tar" usr

archives=$cache/apt-archives/archives
mkdir -p "$archives"
mmdebstrap_args=(
	--mode=root --variant=apt --format=tar
	--aptopt='APT::Install-Recommends "false"'
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
	--include="$BUILDER_PACKAGES"
	--skip=essential/unlink
	--setup-hook="d=\"\$1/var/cache/apt/archives\"; mkdir -p \"\$d/partial\"; set -- '$archives'/*.deb; [ -e \"\$1\" ] || exit 0; cp -l -t \"\$d\" \"\$@\" 2>/dev/null || cp -t \"\$d\" \"\$@\""
	--customize-hook="for f in \"\$1\"/var/cache/apt/archives/*.deb; do n=\${f##*/}; [ -e \"$archives/\$n\" ] || { cp \"\$f\" \"$archives/.\$n.tmp\" && mv \"$archives/.\$n.tmp\" \"$archives/\$n\"; }; done"
	--customize-hook='rm -f "$1"/etc/machine-id "$1"/etc/hostname "$1"/etc/resolv.conf; : > "$1"/etc/machine-id'
	trixie
)
# The root filesystem layer depends on the package list and these options,
# not on nodeforge's code: it is cached, keyed by them and the ISO week, so
# a code change rebuilds only the binary layer (seconds instead of minutes)
# and Debian's updates still reach the image within a week.
# NODEFORGE_BUILDER_ROOTFS_FRESH=1 rebuilds it now.
rootfs_cache=$cache/builder-rootfs
rootfs_key=$({ printf '%s\n' "${mmdebstrap_args[@]}"; date -u +%G-W%V; } | sha256sum | cut -c1-16)
rootfs_tar=$rootfs_cache/rootfs-$rootfs_key.tar
if [ -s "$rootfs_tar" ] && [ -z "${NODEFORGE_BUILDER_ROOTFS_FRESH:-}" ]; then
	log "reusing the trixie root filesystem $rootfs_tar"
else
	log "building the trixie root filesystem (mmdebstrap)"
	mmdebstrap "${mmdebstrap_args[@]}" "$work/rootfs.tar"
	mkdir -p "$rootfs_cache"
	# Only the newest is kept; a concurrent build's copy is replaced whole.
	find "$rootfs_cache" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$rootfs_key.tar" -delete
	cp "$work/rootfs.tar" "$rootfs_tar.$$.tmp"
	mv "$rootfs_tar.$$.tmp" "$rootfs_tar"
fi

log "assembling the image with crane"
port_file=$work/registry.port
# An in-memory registry on 127.0.0.1 only, for crane mutate; stopped by PID.
"$crane" registry serve --address 127.0.0.1:0 >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 50); do
	port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log" | head -1)
	[ -n "$port" ] && break
	sleep 0.1
done
[ -n "${port:-}" ] || die "crane registry did not start: $(cat "$work/registry.log")"
ref=127.0.0.1:$port/nodeforge-builder:build
"$crane" append --insecure --oci-empty-base -f "$rootfs_tar" -f "$work/nodeforge.tar" -t "$ref" >/dev/null
mkdir -p "$(dirname "$out")"
"$crane" mutate --insecure "$ref" --set-platform linux/amd64 \
	--entrypoint /usr/local/bin/nodeforge --cmd build,--help \
	--label org.opencontainers.image.title=nodeforge-builder \
	-t "$TAG" -o "$out.tmp" >/dev/null
mv "$out.tmp" "$out"
log "wrote $out ($(du -h "$out" | cut -f1)), tag $TAG"
