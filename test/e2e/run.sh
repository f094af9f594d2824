#!/usr/bin/env bash
# Runs the e2e suite (test/e2e, build tag e2e) the way `make test-e2e` and CI
# do: brings up the local cluster (hack/local-cluster.sh), runs the suite
# against it, and tears the cluster down again even when the suite fails or
# is interrupted.
#
#   test/e2e/run.sh [go test flags...]     e.g. -ginkgo.focus=kvm -ginkgo.v
#
# NODEFORGE_E2E_CLUSTER=existing runs against the cluster $KUBECONFIG names
# instead (kind, a real cluster) and neither starts nor stops anything; set
# NODEFORGE_E2E_IMAGE_LOADER for it (e.g. "kind load image-archive").
# NODEFORGE_E2E_KEEP_CLUSTER=1 leaves the local cluster running afterwards.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

log() { printf '[e2e] %s\n' "$*" >&2; }

case ${NODEFORGE_E2E_CLUSTER:-local} in
local)
	if [ -z "${NODEFORGE_E2E_KEEP_CLUSTER:-}" ]; then
		trap 'hack/local-cluster.sh down' EXIT
	fi
	t0=$SECONDS
	hack/local-cluster.sh up >/dev/null
	log "local cluster up in $((SECONDS - t0))s"
	eval "$(hack/local-cluster.sh env)"
	;;
existing)
	[ -n "${KUBECONFIG:-}" ] || { log "NODEFORGE_E2E_CLUSTER=existing needs KUBECONFIG"; exit 2; }
	;;
*)
	log "NODEFORGE_E2E_CLUSTER must be local or existing"
	exit 2
	;;
esac

t0=$SECONDS
status=0
go test -tags e2e -count=1 -timeout "${E2E_TIMEOUT:-60m}" ./test/e2e/... "$@" || status=$?
log "suite finished in $((SECONDS - t0))s (exit $status)"
exit "$status"
