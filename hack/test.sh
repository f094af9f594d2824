#!/usr/bin/env bash
# `make test`: every test of the project, against real parts.
#
# It installs what the tests need (Debian packages; pinned Go-built tools,
# cached under $NODEFORGE_CACHE keyed by version), then runs `go test ./...`
# with the envtest and integration suites required, so a missing
# prerequisite fails the run instead of skipping silently.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
t0=$SECONDS

step "Debian packages"
hack/deps.sh

step "kube-apiserver, etcd, kubectl for envtest"
KUBEBUILDER_ASSETS=$(hack/tools.sh envtest)
export KUBEBUILDER_ASSETS

if [ -x hack/k8s-apt-repo.sh ]; then
	step "offline Kubernetes apt repository (kubeadm, kubelet, kubectl)"
	hack/k8s-apt-repo.sh build >/dev/null
fi

step "the registry and the control-plane images' binaries (hack/registry.sh)"
for set in crane registry control-plane; do hack/tools.sh "$set" >/dev/null; done

if [ -x hack/s3.sh ]; then
	step "MinIO server"
	NODEFORGE_MINIO=$(hack/tools.sh minio)
	export NODEFORGE_MINIO
fi
echo "tools ready after $((SECONDS - t0))s" >&2

step "go vet"
go vet ./...

step "go test"
export NODEFORGE_REQUIRE_ENVTEST=1 NODEFORGE_REQUIRE_INTEGRATION=1
go test ./... -count=1 -timeout 50m "$@"
echo "make test finished after $((SECONDS - t0))s" >&2
