#!/usr/bin/env bash
# Runs a local OCI registry (CNCF Distribution, built from its pinned Go
# module by hack/tools.sh) that mirrors registry.k8s.io's control-plane
# images, for tests and demos: a NodeImage's kubernetes.images.mirror points
# at it exactly as it would at a user's own mirror.
#
#   hack/registry.sh up      start it (or reuse the running one), push the images, print export lines
#   hack/registry.sh env     print the export lines of the running registry
#   hack/registry.sh down    stop it by PID and remove its state dir
#
# Typical use:  eval "$(hack/registry.sh up)"; ...; hack/registry.sh down
#
# The images are the ones `kubeadm config images list` names for the pinned
# Kubernetes version, under the same repository names and tags, built from
# the pinned modules (hack/tools.sh control-plane): kube-apiserver,
# kube-controller-manager, kube-scheduler and kube-proxy from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd, CoreDNS from
# github.com/coredns/coredns (a smaller plugin set: hack/tools/coredns),
# and pause from hack/tools/pause (nodeforge's own; the upstream pause is a
# C program). Each holds its static binary where upstream's does: in
# /usr/local/bin, CoreDNS and pause at / (their entrypoints); kube-proxy's also holds
# iptables and conntrack from Debian (mmdebstrap, cached for a week), as
# upstream's does.
#
# The registry listens on a free 127.0.0.1 port only and keeps its data in
# the state dir ($NODEFORGE_REGISTRY_STATE, default /tmp/nodeforge-registry).
# stdout carries only the export lines (NODEFORGE_REGISTRY=127.0.0.1:PORT);
# progress and errors go to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${NODEFORGE_REGISTRY_STATE:-/tmp/nodeforge-registry}
cache_root=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}
marker=$state/.nodeforge-registry
pidfile=$state/registry.pid
envfile=$state/env

K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$here/tools.sh")

log() { printf '[registry] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
# shellcheck source=hack/lib/server.sh
. "$here/lib/server.sh"

running() { pid_running "$pidfile" "$state/config.yml"; }

print_env() { cat "$envfile"; }

# kube_proxy_base: a tarball of iptables, conntrack and their libraries
# (Debian trixie, nothing else), for kube-proxy's image. Cached by its
# arguments and the ISO week.
kube_proxy_base() {
	local args=(
		--mode=root --variant=extract --format=tar
		--include=iptables,conntrack
		--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
		--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*'
		trixie
	)
	local key dir out
	key=$({ printf '%s\n' "${args[@]}"; date -u +%G-W%V; } | sha256sum | cut -c1-16)
	dir=$cache_root/images
	out=$dir/kube-proxy-base-$key.tar
	if [ ! -s "$out" ]; then
		command -v mmdebstrap >/dev/null || die "mmdebstrap is required (apt-get install mmdebstrap)"
		log "extracting iptables and conntrack from Debian for kube-proxy's image"
		mkdir -p "$dir"
		find "$dir" -maxdepth 1 -name 'kube-proxy-base-*.tar' -delete
		mmdebstrap "${args[@]}" "$out.tmp" >&2 2>"$state/mmdebstrap.log" || die "mmdebstrap: $(tail -n 5 "$state/mmdebstrap.log")"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# push_image REF ENTRYPOINT LAYER...: one image of the given tar layers,
# pushed to REF on the local registry.
push_image() {
	local ref=$1 entry=$2
	shift 2
	local args=()
	local f
	for f in "$@"; do args+=(-f "$f"); done
	"$crane" append --oci-empty-base "${args[@]}" -t "$ref" >/dev/null 2>"$state/crane.log" ||
		die "crane append $ref: $(cat "$state/crane.log")"
	"$crane" mutate "$ref" --set-platform linux/amd64 --entrypoint "$entry" \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		-t "$ref" >/dev/null 2>"$state/crane.log" || die "crane mutate $ref: $(cat "$state/crane.log")"
}

# binary_layer TAR PATH...: a layer holding the binaries of the
# control-plane set at each PATH (relative, such as usr/local/bin/etcd).
binary_layer() {
	local tar=$1 d
	shift
	d=$(mktemp -d "$state/layer.XXXXXX")
	for p in "$@"; do
		mkdir -p "$d/$(dirname "$p")"
		cp "$bins/$(basename "$p")" "$d/$p"
		chmod 0755 "$d/$p"
	done
	tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$d" -cf "$tar" .
	rm -rf "$d"
}

push_images() {
	local host=$1 kubeadm want img
	kubeadm=$("$here/tools.sh" kube-node)/kubeadm
	want=$("$kubeadm" config images list --kubernetes-version "$K8S_VERSION")
	bins=$("$here/tools.sh" control-plane)
	crane=$("$here/tools.sh" crane)/crane
	local l=$state/layers
	mkdir -p "$l"
	# The symlinks Debian's maintainer scripts would make (merged /usr,
	# iptables' alternatives: the nft backend, as kube-proxy's upstream
	# image selects on current kernels).
	local links
	links=$(mktemp -d "$state/links.XXXXXX")
	(
		cd "$links"
		for d in bin sbin lib lib64; do ln -s "usr/$d" "$d"; done
		mkdir -p usr/sbin
		for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
			ln -s xtables-nft-multi "usr/sbin/$t"
		done
	)
	tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$links" -cf "$l/links.tar" .
	rm -rf "$links"
	local base
	base=$(kube_proxy_base)
	for img in $want; do
		local repo=${img#registry.k8s.io/} name
		name=${repo%%:*}
		name=${name##*/}
		case $name in
		kube-apiserver | kube-controller-manager | kube-scheduler | etcd)
			binary_layer "$l/$name.tar" "usr/local/bin/$name"
			push_image "$host/$repo" "/usr/local/bin/$name" "$l/$name.tar"
			;;
		kube-proxy)
			binary_layer "$l/$name.tar" "usr/local/bin/$name"
			push_image "$host/$repo" "/usr/local/bin/$name" "$base" "$l/links.tar" "$l/$name.tar"
			;;
		coredns | pause)
			binary_layer "$l/$name.tar" "$name"
			push_image "$host/$repo" "/$name" "$l/$name.tar"
			;;
		*) die "kubeadm names an image this script cannot build: $img" ;;
		esac
		log "pushed $host/$repo"
	done
	rm -rf "$l"
	# The etcd and CoreDNS binaries must be the versions the tags say.
	local etcd_tag dns_tag
	etcd_tag=$(printf '%s\n' $want | sed -n 's|^registry.k8s.io/etcd:\([0-9.]*\).*|\1|p')
	dns_tag=$(printf '%s\n' $want | sed -n 's|^registry.k8s.io/coredns/coredns:v||p')
	# Capture first: with pipefail, grep -q closing the pipe early can make
	# the binary die of SIGPIPE and fail a check that matched.
	local etcd_v dns_v
	etcd_v=$("$bins/etcd" --version)
	dns_v=$("$bins/coredns" -version)
	grep -qx "etcd Version: $etcd_tag" <<<"$etcd_v" ||
		die "kubeadm names etcd $etcd_tag but hack/tools/etcd builds ${etcd_v%%$'\n'*}"
	grep -qx "CoreDNS-$dns_tag" <<<"$dns_v" ||
		die "kubeadm names CoreDNS $dns_tag but hack/tools/coredns builds ${dns_v%%$'\n'*}"
}

up() {
	if running; then
		log "already running (pid $(cat "$pidfile"))"
		print_env
		return
	fi
	local bin
	bin=$("$here/tools.sh" registry)/registry
	if [ -e "$state" ]; then
		[ -f "$marker" ] || die "$state exists and is not a nodeforge-registry state dir; refusing to touch it"
		rm -rf "$state"
	fi
	mkdir -p "$state/data"
	: >"$marker"
	export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
	local port pid
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		cat >"$state/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $state/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
		OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
			setsid "$bin" serve "$state/config.yml" </dev/null >"$state/registry.log" 2>&1 &
		pid=$!
		echo "$pid" >"$pidfile"
		for _ in $(seq 1 100); do
			if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
				printf 'export NODEFORGE_REGISTRY=127.0.0.1:%s\n' "$port" >"$envfile"
				log "registry pid $pid on 127.0.0.1:$port, data in $state/data"
				push_images "127.0.0.1:$port"
				print_env
				return
			fi
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		log "attempt $attempt on port $port failed: $(tail -n 3 "$state/registry.log" | tr '\n' ' ')"
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		rm -f "$pidfile"
	done
	die "the registry did not start; see $state/registry.log"
}

down() {
	if running; then
		stop_pid "$(cat "$pidfile")"
	fi
	if [ -e "$state" ]; then
		[ -f "$marker" ] || die "$state is not a nodeforge-registry state dir; refusing to remove it"
		rm -rf "$state"
	fi
}

case ${1:-} in
up) up ;;
env)
	running || die "not running (hack/registry.sh up)"
	print_env
	;;
down) down ;;
*)
	sed -n '2,28p' "$0" >&2
	exit 2
	;;
esac
