#!/usr/bin/env bash
# Builds the pinned Go tools nodeforge's tests and scripts use, from the Go
# module proxy only, and caches each set under a directory keyed by its
# version with a stamp file, so a second run costs nothing.
#
#   hack/tools.sh envtest      kube-apiserver, etcd, kubectl; prints the dir for KUBEBUILDER_ASSETS
#   hack/tools.sh kube-node    kubeadm, kubelet, kubectl (for the offline apt repo); prints the dir
#   hack/tools.sh cri-tools    crictl (for the offline apt repo); prints the dir
#   hack/tools.sh cluster      all of the above plus kube-controller-manager, kube-scheduler
#   hack/tools.sh minio        the MinIO server; prints the dir
#   hack/tools.sh versitygw    the versitygw S3 gateway (upload benchmark); prints the dir
#   hack/tools.sh crane        crane, for OCI image tarballs; prints the dir
#   hack/tools.sh registry     the distribution (CNCF Distribution) registry; prints the dir
#   hack/tools.sh control-plane  the binaries of the control-plane images kubeadm names
#                              (kube-apiserver, -controller-manager, -scheduler, kube-proxy,
#                              etcd and CoreDNS at kubeadm's versions, pause); prints the dir
#   hack/tools.sh lint         golangci-lint; prints the dir
#   hack/tools.sh path SET     prints the cache dir of SET without building
#
# The cache root is $NODEFORGE_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/nodeforge).
# Progress goes to stderr; stdout carries only the directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}

# Pinned versions. Changing one changes its cache key.
K8S_VERSION=v1.37.2
# etcd for envtest, the local cluster and the control-plane images alike:
# the version kubeadm ${K8S_VERSION} names (`kubeadm config images list`),
# pinned in hack/tools/etcd; hack/registry.sh checks it still matches.
ETCD_VERSION=v3.7.0
# cri-tools releases follow Kubernetes minors (v1.37.x for Kubernetes v1.37).
CRI_TOOLS_VERSION=v1.37.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
VERSITYGW_VERSION=v1.8.0
CRANE_VERSION=v0.22.1
DISTRIBUTION_VERSION=v3.1.2
# The CoreDNS version kubeadm ${K8S_VERSION} names, pinned in
# hack/tools/coredns; hack/registry.sh checks it still matches.
IMAGE_COREDNS_VERSION=v1.14.6
GOLANGCI_LINT_VERSION=v2.15.0

log() { printf '[tools] %s\n' "$*" >&2; }

# cached DIR STAMP-CONTENT: true when DIR holds a complete build for that content.
cached() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

# Build into a temp dir next to the target and rename it into place at the
# end, so an interrupted build never leaves a half-filled cache dir behind.
begin() { rm -rf "$1.tmp" && mkdir -p "$1.tmp"; }
commit() { printf '%s' "$2" >"$1.tmp/.stamp" && rm -rf "$1" && mv "$1.tmp" "$1"; }

k8s_ldflags() {
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	printf '%s' "-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"
}

# build_k8s DIR CMD... builds the named k8s.io/kubernetes/cmd/* into DIR.
build_k8s() {
	local dir=$1
	shift
	local pkgs=()
	for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	log "building $* ${K8S_VERSION} (cold: about 5 minutes for the first, 1-2 for each further one on 2 cores)"
	(cd "$here/tools/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$(k8s_ldflags)" -o "$dir/" "${pkgs[@]}")
}

build_etcd() {
	log "building etcd ${ETCD_VERSION}"
	(cd "$here/tools/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

set_dir() {
	case $1 in
	envtest) echo "$cache_root/envtest-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}" ;;
	kube-node) echo "$cache_root/kube-node-${K8S_VERSION}" ;;
	cri-tools) echo "$cache_root/cri-tools-${CRI_TOOLS_VERSION}" ;;
	cluster) echo "$cache_root/cluster-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}" ;;
	minio) echo "$cache_root/minio-${MINIO_VERSION}" ;;
	versitygw) echo "$cache_root/versitygw-${VERSITYGW_VERSION}" ;;
	crane) echo "$cache_root/crane-${CRANE_VERSION}" ;;
	registry) echo "$cache_root/registry-${DISTRIBUTION_VERSION}" ;;
	control-plane) echo "$cache_root/control-plane-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-coredns-${IMAGE_COREDNS_VERSION}" ;;
	lint) echo "$cache_root/golangci-lint-${GOLANGCI_LINT_VERSION}" ;;
	*)
		echo "unknown tool set: $1" >&2
		exit 2
		;;
	esac
}

# The cluster set is a superset of envtest and kube-node: reuse their binaries
# when present instead of building the same thing twice.
copy_from() {
	local from=$1 to=$2
	shift 2
	for b in "$@"; do
		if [ -x "$from/$b" ] && [ ! -e "$to/$b" ]; then cp "$from/$b" "$to/$b"; fi
	done
}

ensure() {
	local set=$1 dir stamp
	dir=$(set_dir "$set")
	case $set in
	envtest) stamp="k8s=${K8S_VERSION} etcd=${ETCD_VERSION}" ;;
	kube-node) stamp="k8s=${K8S_VERSION}" ;;
	cri-tools) stamp="cri-tools=${CRI_TOOLS_VERSION}" ;;
	cluster) stamp="k8s=${K8S_VERSION} etcd=${ETCD_VERSION} full" ;;
	minio) stamp="minio=${MINIO_VERSION}" ;;
	versitygw) stamp="versitygw=${VERSITYGW_VERSION}" ;;
	crane) stamp="crane=${CRANE_VERSION}" ;;
	registry) stamp="distribution=${DISTRIBUTION_VERSION}" ;;
	control-plane) stamp="k8s=${K8S_VERSION} etcd=${ETCD_VERSION} coredns=${IMAGE_COREDNS_VERSION} pause=$(sha256sum "$here/tools/pause/main.go" | cut -c1-16)" ;;
	lint) stamp="golangci-lint=${GOLANGCI_LINT_VERSION}" ;;
	esac
	if cached "$dir" "$stamp"; then
		echo "$dir"
		return
	fi
	# One build of a set at a time: a second caller (make test while the CI
	# script builds the same set in the background) waits for the first and
	# then finds it cached, instead of building it again into the same
	# temp dir.
	mkdir -p "$cache_root"
	local lock
	exec {lock}>"$dir.lock"
	if ! flock -n "$lock"; then
		log "waiting for another build of $set"
		flock "$lock"
	fi
	if cached "$dir" "$stamp"; then
		echo "$dir"
		return
	fi
	begin "$dir"
	local t=$dir.tmp
	case $set in
	envtest)
		build_k8s "$t" kube-apiserver kubectl
		build_etcd "$t"
		;;
	kube-node)
		build_k8s "$t" kubeadm kubelet kubectl
		;;
	cluster)
		copy_from "$(set_dir envtest)" "$t" kube-apiserver kubectl etcd
		copy_from "$(set_dir kube-node)" "$t" kubeadm kubelet
		copy_from "$(set_dir control-plane)" "$t" kube-controller-manager kube-scheduler
		local need=()
		for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kubectl; do
			[ -e "$t/$c" ] || need+=("$c")
		done
		[ ${#need[@]} -eq 0 ] || build_k8s "$t" "${need[@]}"
		[ -e "$t/etcd" ] || build_etcd "$t"
		;;
	cri-tools)
		log "building crictl ${CRI_TOOLS_VERSION} (cold: about 3 minutes)"
		CGO_ENABLED=0 GOBIN="$t" go install -trimpath \
			-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION}" \
			"sigs.k8s.io/cri-tools/cmd/crictl@${CRI_TOOLS_VERSION}"
		;;
	minio)
		log "building MinIO ${MINIO_VERSION} (cold: 2-5 minutes)"
		CGO_ENABLED=0 GOBIN="$t" go install -trimpath -ldflags "-s -w" "github.com/minio/minio@${MINIO_VERSION}"
		;;
	versitygw)
		log "building versitygw ${VERSITYGW_VERSION} (cold: about 3 minutes)"
		CGO_ENABLED=0 GOBIN="$t" go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"
		;;
	crane)
		CGO_ENABLED=0 GOBIN="$t" go install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@${CRANE_VERSION}"
		;;
	registry)
		log "building the distribution registry ${DISTRIBUTION_VERSION} (cold: about 2 minutes)"
		CGO_ENABLED=0 GOBIN="$t" go install -trimpath -ldflags "-s -w" "github.com/distribution/distribution/v3/cmd/registry@${DISTRIBUTION_VERSION}"
		;;
	control-plane)
		copy_from "$(set_dir cluster)" "$t" kube-apiserver kube-controller-manager kube-scheduler
		copy_from "$(set_dir envtest)" "$t" kube-apiserver etcd
		local need=()
		for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
			[ -e "$t/$c" ] || need+=("$c")
		done
		build_k8s "$t" "${need[@]}"
		[ -e "$t/etcd" ] || build_etcd "$t"
		log "building CoreDNS ${IMAGE_COREDNS_VERSION} for its image"
		(cd "$here/tools/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$t/coredns" .)
		(cd "$here/.." && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$t/pause" ./hack/tools/pause)
		;;
	lint)
		CGO_ENABLED=0 GOBIN="$t" go install -trimpath "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@${GOLANGCI_LINT_VERSION}"
		;;
	esac
	commit "$dir" "$stamp"
	log "cached in $dir"
	echo "$dir"
}

case ${1:-} in
path) set_dir "${2:?usage: $0 path SET}" ;;
envtest | kube-node | cri-tools | cluster | minio | versitygw | crane | registry | control-plane | lint) ensure "$1" ;;
*)
	sed -n '2,21p' "$0" >&2
	exit 2
	;;
esac
