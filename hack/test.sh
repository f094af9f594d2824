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

if [ -x hack/s3.sh ]; then
	step "MinIO server"
	NODEFORGE_MINIO=$(hack/tools.sh minio)
	export NODEFORGE_MINIO
fi
echo "tools ready after $((SECONDS - t0))s" >&2

step "go vet"
go vet ./...

export NODEFORGE_REQUIRE_ENVTEST=1 NODEFORGE_REQUIRE_INTEGRATION=1
# Only test/integration needs the registry and the control-plane images'
# binaries (hack/registry.sh); cold they take about 12 minutes to build.
# So that package waits for them in the background while every other
# package is tested; warm both start at once, as one go test would.
# Its output is prefixed with [integration].
integration=./test/integration/...
mapfile -t others < <(go list ./... | grep -v '/test/integration$')
rc_file=$(mktemp)
# Job control puts the background job in a process group of its own, so
# that an early exit stops all of it (go test and its test binary too).
set -m
(
	set +e
	for set in crane registry control-plane; do
		hack/tools.sh "$set" >/dev/null || {
			echo 1 >"$rc_file"
			exit
		}
	done
	echo "registry and control-plane tools ready after $((SECONDS - t0))s"
	go test "$integration" -count=1 -timeout 50m "$@"
	echo $? >"$rc_file"
) 2>&1 | sed -u 's/^/[integration] /' >&2 &
integration_pgid=$(jobs -p %%)
set +m
trap 'kill -- -"$integration_pgid" 2>/dev/null || true; rm -f "$rc_file"' EXIT

step "go test (every package but test/integration; test/integration beside it)"
others_rc=0
go test "${others[@]}" -count=1 -timeout 50m "$@" || others_rc=$?
echo "the other packages finished after $((SECONDS - t0))s; waiting for test/integration" >&2
wait || true
integration_rc=$(cat "$rc_file")
echo "make test finished after $((SECONDS - t0))s" >&2
if [ "$others_rc" != 0 ] || [ "${integration_rc:-1}" != 0 ]; then
	echo "make test failed (other packages: exit $others_rc, test/integration: exit ${integration_rc:-none})" >&2
	exit 1
fi
