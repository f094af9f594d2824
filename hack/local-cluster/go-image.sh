#!/usr/bin/env bash
# Packs one static Go program into a single-layer OCI image tarball, without
# a container engine or a registry, for clusters that import images from
# files (hack/local-cluster.sh import, kind load image-archive).
#
#   hack/local-cluster/go-image.sh PKG REPO
#
# PKG is a main package of this module (e.g. ./hack/tools/pause); the image
# holds only /NAME (NAME = last element of PKG) as its entrypoint, platform
# linux/amd64. REPO is the image repository (e.g. nodeforge.local/pause); the
# tag is derived from the binary's content, so a changed program gets a new
# tag and an unchanged one costs only a cached `go build`.
#
# stdout: one line "REF TARBALL". Tarballs are cached under
# ${NODEFORGE_CACHE:-~/.cache/nodeforge}/images. Needs crane (hack/tools.sh
# crane); the image is assembled in crane's in-memory registry on a free
# 127.0.0.1 port that lives only for this command.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache_root=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}

log() { printf '[go-image] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

pkg=${1:?usage: $0 PKG REPO}
repo=${2:?usage: $0 PKG REPO}
name=$(basename "$pkg")

work=$(mktemp -d /tmp/nodeforge-go-image.XXXXXX)
registry_pid=
cleanup() {
	if [ -n "$registry_pid" ]; then
		kill "$registry_pid" 2>/dev/null || true
		wait "$registry_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/rootfs"
(cd "$root" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags "-s -w" -o "$work/rootfs/$name" "$pkg")
chmod 0755 "$work/rootfs/$name"
tag=$(sha256sum "$work/rootfs/$name" | cut -c1-16)
ref=$repo:$tag
out=$cache_root/images/$name-$tag.tar
if [ -s "$out" ]; then
	echo "$ref $out"
	exit 0
fi

crane=$("$root/hack/tools.sh" crane)/crane
tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$work/rootfs" -cf "$work/layer.tar" .

# crane mutate (which sets the platform: without it `ctr import` filters the
# image out) reads from a registry only, so assemble the image in crane's
# in-memory one, on loopback.
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
port=
for _ in $(seq 1 20); do
	port=$((20000 + RANDOM % 40000))
	[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] || continue
	"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
	registry_pid=$!
	for _ in $(seq 1 50); do
		curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null && break 2
		kill -0 "$registry_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill "$registry_pid" 2>/dev/null || true
	wait "$registry_pid" 2>/dev/null || true
	registry_pid=
done
[ -n "$registry_pid" ] || die "crane registry did not start: $(tail -n 3 "$work/registry.log")"

tmp_ref=127.0.0.1:$port/$name:$tag
"$crane" append --oci-empty-base -f "$work/layer.tar" -t "$tmp_ref" >/dev/null 2>"$work/crane.log" ||
	die "crane append: $(cat "$work/crane.log")"
mkdir -p "$(dirname "$out")"
"$crane" mutate "$tmp_ref" --set-platform linux/amd64 --entrypoint "/$name" -t "$ref" -o "$out.tmp" 2>"$work/crane.log" ||
	die "crane mutate: $(cat "$work/crane.log")"
mv "$out.tmp" "$out"
log "built $ref into $out"
echo "$ref $out"
