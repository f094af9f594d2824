#!/usr/bin/env bash
# An offline, signed Kubernetes apt repository for tests, the demo and
# air-gapped users (see docs/offline-kubernetes-packages.md).
#
#   hack/k8s-apt-repo.sh build            build kubeadm/kubelet/kubectl/cri-tools .debs and a signed flat repo; prints its dir
#   hack/k8s-apt-repo.sh path             prints the repo dir if it is built (exit 1 if not)
#   hack/k8s-apt-repo.sh serve [--port N] serves the repo on 127.0.0.1 in the background; prints export lines
#   hack/k8s-apt-repo.sh env              prints the export lines of the running server (exit 1 if none)
#   hack/k8s-apt-repo.sh stop             stops the server (by its PID) and removes the state dir
#   hack/k8s-apt-repo.sh index [--gnupg D] [--uid U] [--label L] DIR
#                                         indexes and signs the .debs in DIR/amd64 as a flat repo in DIR
#                                         (a throwaway key in D, made if missing; default: the repo's key)
#
# The repo lives in $NODEFORGE_CACHE/k8s-apt-repo-v1.37.2 (NODEFORGE_CACHE defaults
# to ${XDG_CACHE_HOME:-~/.cache}/nodeforge) and is rebuilt only when the version
# or this script changes. The server's state (pid, port, log) lives in
# $NODEFORGE_APT_STATE (default /tmp/nodeforge-apt; its own variable, not
# hack/s3.sh's NODEFORGE_STATE). serve and stop remove that dir only when it
# carries this script's marker file (or is empty). Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache_root=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}
state_dir=${NODEFORGE_APT_STATE:-/tmp/nodeforge-apt}
state_marker=$state_dir/.nodeforge-apt

K8S_VERSION=v1.37.2
# Debian revision in the same shape as the official repository's (1.37.2-1.1).
DEB_REVISION=1.1
DEB_VERSION=${K8S_VERSION#v}-${DEB_REVISION}
# cri-tools has its own version, following Kubernetes minors (hack/tools.sh).
CRI_TOOLS_VERSION=$(sed -n 's/^CRI_TOOLS_VERSION=//p' "$here/tools.sh")
CRI_DEB_VERSION=${CRI_TOOLS_VERSION#v}-${DEB_REVISION}
ARCH=amd64

repo_dir=$cache_root/k8s-apt-repo-${K8S_VERSION}
# The signing key survives rebuilds of the repo (kept outside the served dir:
# it holds the private key), so a key already handed out stays valid.
gnupg_dir=$cache_root/k8s-apt-repo-gnupg
KEY_UID="nodeforge offline Kubernetes repository (throwaway test key) <k8s-apt-repo@nodeforge.invalid>"

log() { printf '[k8s-apt-repo] %s\n' "$*" >&2; }
die() {
	printf '[k8s-apt-repo] error: %s\n' "$*" >&2
	exit 1
}
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || die "'$c' is required but not installed (${pkg_of[$c]:-see docs/offline-kubernetes-packages.md})"
	done
}
declare -A pkg_of=([dpkg-deb]="Debian package dpkg" [apt-ftparchive]="Debian package apt-utils" [gpg]="Debian package gpg" [gpgconf]="Debian package gpgconf" [go]="Go toolchain" [sha256sum]="coreutils" [curl]="Debian package curl")

script_hash() { sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; }
stamp_content() { printf 'k8s=%s deb=%s cri-tools=%s script=%s' "$K8S_VERSION" "$DEB_VERSION" "$CRI_DEB_VERSION" "$(script_hash)"; }
is_built() { [ -f "$repo_dir/.stamp" ] && [ "$(cat "$repo_dir/.stamp")" = "$(stamp_content)" ]; }

# ---------------------------------------------------------------- packaging

# gpgk runs gpg against the private key store only, never the user's keyring.
# fd 9 (the build lock) is closed so a lingering gpg-agent cannot hold it.
gpgk() { gpg --homedir "$gnupg_dir" --batch --no-tty --quiet "$@" 9>&-; }

ensure_key() {
	if [ -d "$gnupg_dir" ] && gpgk --list-secret-keys "$KEY_UID" >/dev/null 2>&1; then
		return
	fi
	log "generating a throwaway ed25519 signing key in $gnupg_dir"
	rm -rf "$gnupg_dir"
	mkdir -p "$gnupg_dir"
	chmod 700 "$gnupg_dir"
	# No passphrase, no expiry (a cached repo must not go stale on its own).
	gpgk --passphrase '' --quick-generate-key "$KEY_UID" ed25519 sign never
}

stop_agent() { gpgconf --homedir "$gnupg_dir" --kill gpg-agent >/dev/null 2>&1 || true; }

# write_control DIR PACKAGE SECTION DESCRIPTION [FIELD: VALUE]...
write_control() {
	local d=$1 pkg=$2 section=$3 desc=$4
	shift 4
	mkdir -p "$d/DEBIAN"
	{
		echo "Package: $pkg"
		echo "Version: ${CONTROL_VERSION:-$DEB_VERSION}"
		echo "Architecture: $ARCH"
		echo "Maintainer: nodeforge developers <dev@nodeforge.invalid>"
		echo "Installed-Size: $(du -sk --exclude=DEBIAN "$d" | cut -f1)"
		local f
		for f in "$@"; do echo "$f"; done
		echo "Section: $section"
		echo "Priority: optional"
		echo "Homepage: https://kubernetes.io"
		echo "Description: $desc"
		echo " Built by nodeforge (hack/k8s-apt-repo.sh) from the ${CONTROL_SOURCE:-k8s.io/kubernetes} Go module"
		echo " ${CONTROL_UPSTREAM:-$K8S_VERSION}, for offline and air-gapped use, with the package name and"
		echo " file layout of the official Kubernetes package repository."
	} >"$d/DEBIAN/control"
}

add_doc() {
	local d=$1 pkg=$2
	mkdir -p "$d/usr/share/doc/$pkg"
	cat >"$d/usr/share/doc/$pkg/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kubernetes
Source: https://github.com/kubernetes/kubernetes

Files: *
Copyright: The Kubernetes Authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.
EOF
}

# The systemd unit, as shipped in the official kubelet package: it runs the
# bare kubelet; kubeadm's drop-in (below) adds the flags.
kubelet_unit() {
	cat <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
}

# kubeadm's drop-in for the kubelet unit, as shipped in the official kubeadm
# package.
kubeadm_dropin() {
	cat <<'EOF'
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
}

# build_debs BINDIR CRICTLDIR OUTDIR WORKDIR: the four packages. No maintainer scripts: in
# particular nothing enables or starts kubelet.service (the image builder
# decides; kubeadm enables it on init/join).
build_debs() {
	local bin=$1 crictl=$2 out=$3 work=$4 p
	rm -rf "$work"

	# kubectl: the binary only.
	p=$work/kubectl
	install -D -m 0755 "$bin/kubectl" "$p/usr/bin/kubectl"
	add_doc "$p" kubectl
	write_control "$p" kubectl admin "Command-line utility for interacting with a Kubernetes cluster"

	# kubelet: binary, unit (not enabled), /etc/default/kubelet (conffile), and
	# the state dirs the official package creates. Upstream also depends on
	# kubernetes-cni, which Debian does not have: the CNI plugins come from the
	# image's own /opt/cni/bin instead. Extra Recommends are tools kubelet and
	# kube-proxy use; Recommends keep --no-install-recommends installs identical
	# to the official package's.
	p=$work/kubelet
	install -D -m 0755 "$bin/kubelet" "$p/usr/bin/kubelet"
	mkdir -p "$p/usr/lib/systemd/system" "$p/etc/default" "$p/var/lib/kubelet" "$p/etc/kubernetes/manifests"
	kubelet_unit >"$p/usr/lib/systemd/system/kubelet.service"
	chmod 0644 "$p/usr/lib/systemd/system/kubelet.service"
	echo 'KUBELET_EXTRA_ARGS=' >"$p/etc/default/kubelet"
	# dpkg drops empty directories; the official package keeps them this way.
	touch "$p/var/lib/kubelet/.kubelet-keep" "$p/etc/kubernetes/manifests/.kubelet-keep"
	add_doc "$p" kubelet
	write_control "$p" kubelet net "Node agent for Kubernetes clusters" \
		"Depends: mount, util-linux" \
		"Recommends: iptables (>= 1.8.4), iproute2, conntrack, ethtool"
	echo /etc/default/kubelet >"$p/DEBIAN/conffiles"

	# kubeadm: binary and the kubelet drop-in. The official package has no
	# Depends since 1.32 (cri-tools was dropped); we declare the same.
	p=$work/kubeadm
	install -D -m 0755 "$bin/kubeadm" "$p/usr/bin/kubeadm"
	mkdir -p "$p/usr/lib/systemd/system/kubelet.service.d"
	kubeadm_dropin >"$p/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
	chmod 0644 "$p/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
	add_doc "$p" kubeadm
	write_control "$p" kubeadm admin "Command-line utility for administering a Kubernetes cluster"

	# cri-tools: crictl, as in the official repository (its own version,
	# following Kubernetes minors). Its configuration (/etc/crictl.yaml) is
	# the image builder's: the official package ships none either.
	p=$work/cri-tools
	install -D -m 0755 "$crictl/crictl" "$p/usr/bin/crictl"
	add_doc "$p" cri-tools
	CONTROL_VERSION=$CRI_DEB_VERSION CONTROL_SOURCE=sigs.k8s.io/cri-tools CONTROL_UPSTREAM=$CRI_TOOLS_VERSION \
		write_control "$p" cri-tools admin "Command-line utility for interacting with a container runtime"

	# gzip, not xz: about 7x faster to build here and several times faster to
	# unpack in every image build, for about 50% more bytes on local disk.
	mkdir -p "$out"
	for p in kubectl kubelet kubeadm cri-tools; do
		local v=$DEB_VERSION
		[ "$p" != cri-tools ] || v=$CRI_DEB_VERSION
		find "$work/$p" -type d -exec chmod 0755 {} +
		dpkg-deb --root-owner-group -Zgzip -z6 --build "$work/$p" "$out/${p}_${v}_${ARCH}.deb" >/dev/null
	done
	rm -rf "$work"
}

# make_repo DIR: Packages, Release, signatures and keys for the debs in DIR/amd64.
make_repo() {
	local d=$1
	(
		cd "$d"
		apt-ftparchive packages "$ARCH" >Packages
		gzip -9n <Packages >Packages.gz
		apt-ftparchive \
			-o APT::FTPArchive::Release::Origin="nodeforge" \
			-o APT::FTPArchive::Release::Label="${REPO_LABEL:-nodeforge offline Kubernetes ${K8S_VERSION%.*}}" \
			-o APT::FTPArchive::Release::Architectures="$ARCH" \
			-o APT::FTPArchive::Release::Description="${REPO_DESCRIPTION:-kubeadm, kubelet, kubectl ${K8S_VERSION} and cri-tools ${CRI_TOOLS_VERSION} built by nodeforge}" \
			release . >Release.new
		mv Release.new Release
	)
	gpgk --yes --digest-algo SHA512 --local-user "$KEY_UID" --clearsign -o "$d/InRelease" "$d/Release"
	gpgk --yes --digest-algo SHA512 --local-user "$KEY_UID" --armor --detach-sign -o "$d/Release.gpg" "$d/Release"
	gpgk --yes --armor --export "$KEY_UID" >"$d/Release.key"
	gpgk --yes --export "$KEY_UID" >"$d/keyring.gpg"
	gpgk --with-colons --fingerprint "$KEY_UID" | awk -F: '$1=="fpr"{print $10; exit}' >"$d/Release.key.fingerprint"
	# Check our own output the way apt will: both signatures against the keyring.
	gpgv --keyring "$d/keyring.gpg" "$d/InRelease" 2>/dev/null || die "InRelease does not verify against keyring.gpg"
	gpgv --keyring "$d/keyring.gpg" "$d/Release.gpg" "$d/Release" 2>/dev/null || die "Release.gpg does not verify against keyring.gpg"
}

cmd_build() {
	mkdir -p "$cache_root"
	# One build at a time (parallel test runs share the cache).
	exec 9>"$cache_root/k8s-apt-repo.lock"
	if command -v flock >/dev/null 2>&1; then
		flock 9 || die "cannot lock $cache_root/k8s-apt-repo.lock"
	fi
	if is_built; then
		log "up to date: $repo_dir"
		echo "$repo_dir"
		return
	fi
	need dpkg-deb apt-ftparchive gpg gpgv gpgconf sha256sum gzip
	local t0 bin t1
	t0=$(date +%s)
	log "getting kubeadm, kubelet, kubectl ${K8S_VERSION} (hack/tools.sh kube-node; cold: 1.5-6 minutes)"
	bin=$("$here/tools.sh" kube-node) || die "hack/tools.sh kube-node failed"
	local b
	for b in kubeadm kubelet kubectl; do
		[ -x "$bin/$b" ] || die "$bin/$b is missing after hack/tools.sh kube-node"
	done
	local crictl
	crictl=$("$here/tools.sh" cri-tools) || die "hack/tools.sh cri-tools failed"
	[ -x "$crictl/crictl" ] || die "$crictl/crictl is missing after hack/tools.sh cri-tools"
	t1=$(date +%s)

	rm -rf "$repo_dir.tmp" "$repo_dir.work"
	mkdir -p "$repo_dir.tmp/$ARCH"
	trap 'rm -rf "$repo_dir.tmp" "$repo_dir.work"; stop_agent' EXIT
	log "packaging ${DEB_VERSION} (${ARCH})"
	build_debs "$bin" "$crictl" "$repo_dir.tmp/$ARCH" "$repo_dir.work"
	ensure_key
	log "signing the repository"
	make_repo "$repo_dir.tmp"
	stop_agent
	stamp_content >"$repo_dir.tmp/.stamp"
	rm -rf "$repo_dir"
	mv "$repo_dir.tmp" "$repo_dir"
	trap - EXIT
	log "binaries $((t1 - t0))s, packaging and signing $(($(date +%s) - t1))s; repo in $repo_dir"
	echo "$repo_dir"
}

cmd_path() {
	if is_built; then
		echo "$repo_dir"
	else
		echo "no built repository at $repo_dir (run: hack/k8s-apt-repo.sh build)" >&2
		exit 1
	fi
}

# cmd_index indexes and signs a directory of .debs the way build does its
# own, for repositories a test makes (the integration tests' stand-in for
# a NodeImage author's repository): the same files, checked the same way.
cmd_index() {
	local label="" dir=""
	while [ $# -gt 0 ]; do
		case $1 in
		--gnupg)
			gnupg_dir=${2:?--gnupg needs a directory}
			shift 2
			;;
		--uid)
			KEY_UID=${2:?--uid needs a user id}
			shift 2
			;;
		--label)
			label=${2:?--label needs a text}
			shift 2
			;;
		-*) die "index: unknown option '$1' (usage: index [--gnupg DIR] [--uid UID] [--label TEXT] DIR)" ;;
		*)
			[ -z "$dir" ] || die "index: one directory only"
			dir=$1
			shift
			;;
		esac
	done
	[ -n "$dir" ] || die "index: no directory (usage: index [--gnupg DIR] [--uid UID] [--label TEXT] DIR)"
	compgen -G "$dir/$ARCH/*.deb" >/dev/null || die "index: no .deb in $dir/$ARCH"
	need apt-ftparchive gpg gpgv gpgconf gzip
	trap stop_agent EXIT
	ensure_key
	REPO_LABEL=${label:-$(basename "$dir")} REPO_DESCRIPTION=${label:-packages indexed by nodeforge} make_repo "$dir"
	log "indexed and signed $dir"
}

# ---------------------------------------------------------------- serving

# remove_state removes the state dir, but only one this script made (its
# marker is there) or an empty one: never another tool's state.
remove_state() {
	[ -e "$state_dir" ] || return 0
	if [ ! -f "$state_marker" ] && [ -n "$(ls -A "$state_dir" 2>/dev/null)" ]; then
		die "$state_dir is not a k8s-apt-repo state dir (no $(basename "$state_marker")); refusing to remove it (check NODEFORGE_APT_STATE, or remove it by hand)"
	fi
	rm -rf "$state_dir"
}

server_pid() {
	local pid
	[ -f "$state_dir/pid" ] || return 1
	pid=$(cat "$state_dir/pid")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	# Only a process we started: its command line must be our fileserver.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "fileserver -dir" || return 1
	echo "$pid"
}

print_env() {
	local port
	port=$(cat "$state_dir/port")
	echo "export NODEFORGE_K8S_APT_URL=http://127.0.0.1:${port}/"
	echo "export NODEFORGE_K8S_APT_KEY=$(cat "$state_dir/dir")/Release.key"
}

# The file server binary, rebuilt only when its source changes.
fileserver_bin() {
	local src=$here/tools/fileserver h out
	h=$(cat "$src"/*.go | sha256sum | cut -c1-16)
	out=$cache_root/fileserver-$h/fileserver
	if [ ! -x "$out" ]; then
		need go
		log "building the file server ($src)"
		mkdir -p "$(dirname "$out")"
		(cd "$root" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" ./hack/tools/fileserver) || die "building hack/tools/fileserver failed"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

cmd_serve() {
	local port=0
	while [ $# -gt 0 ]; do
		case $1 in
		--port)
			port=${2:?--port needs a number}
			shift 2
			;;
		--port=*)
			port=${1#--port=}
			shift
			;;
		*) die "serve: unknown argument '$1' (usage: serve [--port N])" ;;
		esac
	done
	[[ $port =~ ^[0-9]+$ ]] && [ "$port" -le 65535 ] || die "serve: bad port '$port'"
	is_built || die "no built repository at $repo_dir (run: hack/k8s-apt-repo.sh build)"

	local pid
	if pid=$(server_pid); then
		if [ "$(cat "$state_dir/dir")" = "$repo_dir" ] && { [ "$port" = 0 ] || [ "$port" = "$(cat "$state_dir/port")" ]; }; then
			log "already serving $repo_dir (pid $pid)"
			print_env
			return
		fi
		die "a server is already running (pid $pid, port $(cat "$state_dir/port")); run: hack/k8s-apt-repo.sh stop"
	fi

	local bin
	bin=$(fileserver_bin)
	remove_state
	mkdir -p "$state_dir"
	: >"$state_marker"
	echo "$repo_dir" >"$state_dir/dir"
	# setsid + nohup: the server outlives this shell and its terminal.
	# The server writes its own pid file (the pid to stop), then its port
	# file once it listens.
	setsid nohup "$bin" -dir "$repo_dir" -addr "127.0.0.1:$port" -port-file "$state_dir/port" \
		-pid-file "$state_dir/pid" -log "$state_dir/requests.log" >"$state_dir/server.log" 2>&1 </dev/null &
	local launcher=$! i
	for i in $(seq 1 100); do
		[ -s "$state_dir/port" ] && break
		kill -0 "$launcher" 2>/dev/null || [ -s "$state_dir/pid" ] ||
			die "the file server exited: $(tail -n 5 "$state_dir/server.log")"
		sleep 0.1
	done
	pid=$(server_pid) || die "the file server is not running: $(tail -n 5 "$state_dir/server.log")"
	[ -s "$state_dir/port" ] || {
		kill "$pid" 2>/dev/null || true
		die "the file server did not start within 10s: $(tail -n 5 "$state_dir/server.log")"
	}
	if command -v curl >/dev/null 2>&1; then
		curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$(cat "$state_dir/port")/InRelease" ||
			die "the file server is up but does not serve InRelease"
	fi
	log "serving $repo_dir on http://127.0.0.1:$(cat "$state_dir/port")/ (pid $pid, log $state_dir/requests.log)"
	print_env
}

cmd_env() {
	server_pid >/dev/null || die "no server running (state dir $state_dir); run: hack/k8s-apt-repo.sh serve"
	print_env
}

cmd_stop() {
	local pid i
	if pid=$(server_pid); then
		kill "$pid"
		for i in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -9 "$pid" 2>/dev/null || true
		fi
		log "stopped the server (pid $pid)"
	else
		log "no server running"
	fi
	remove_state
}

case ${1:-} in
build) cmd_build ;;
path) cmd_path ;;
serve)
	shift
	cmd_serve "$@"
	;;
env) cmd_env ;;
stop) cmd_stop ;;
index)
	shift
	cmd_index "$@"
	;;
*)
	sed -n '2,17p' "$0" >&2
	exit 2
	;;
esac
