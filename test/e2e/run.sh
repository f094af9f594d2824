#!/usr/bin/env bash
# Runs the e2e suite (test/e2e, build tag e2e) the way `make test-e2e` and CI
# do. With the local cluster (the default) it
#   1. builds the builder image tarball (hack/build-builder-image.sh, in the
#      background while the rest comes up) and the manager binary;
#   2. brings up the local cluster (hack/local-cluster.sh) and imports the
#      builder image into it;
#   3. starts MinIO (hack/s3.sh), the offline Kubernetes apt repository
#      (hack/k8s-apt-repo.sh) and the registry with the control-plane images
#      (hack/registry.sh), each with a private state dir, on 127.0.0.1;
#   4. installs the CRDs and the RBAC (test/e2e/config: config/crd and
#      config/rbac in namespace nodeforge-system) and runs the real manager
#      on this host as its ServiceAccount nodeforge-manager (a token
#      kubeconfig), with --builder-host-network;
#   5. runs the suite (`go test -c -tags e2e ./test/e2e`) against all that;
# and on any exit (failure, Ctrl-C) stops the manager, MinIO, the apt
# repository and the registry by PID, brings the cluster down and removes its temp dir.
#
#   test/e2e/run.sh [test binary flags...]  e.g. -ginkgo.focus=kvm -ginkgo.v
#
# NODEFORGE_E2E_CLUSTER=existing runs against the cluster $KUBECONFIG names
# instead (kind, a real cluster) and neither starts nor stops anything; set
# NODEFORGE_E2E_IMAGE_LOADER for it (e.g. "kind load image-archive"). The
# NodeImage specs need the stack above and are skipped there.
# NODEFORGE_E2E_KEEP_CLUSTER=1 leaves the local cluster running afterwards
# (the manager, MinIO and the apt repository are stopped all the same).
# NODEFORGE_E2E_BUILDER_TAR=PATH uses that builder image tarball instead of
# building one.
# The NodeImage specs' cache volume starts from the host's package cache
# (the one make image fills: its .debs and base layers hard-linked, its
# package lists copied), as a cluster's long-lived cache volume would be
# warm; E2E_FRESH_CACHE=1 starts it empty, so that the first build
# downloads every package and runs mmdebstrap for its base layer in the
# builder Pod (about 2 minutes more).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

log() { printf '[e2e] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

mode=${NODEFORGE_E2E_CLUSTER:-local}
case $mode in
local | existing) ;;
*) die "NODEFORGE_E2E_CLUSTER must be local or existing" ;;
esac

if [ "$mode" = existing ]; then
	[ -n "${KUBECONFIG:-}" ] || die "NODEFORGE_E2E_CLUSTER=existing needs KUBECONFIG"
	t0=$SECONDS
	status=0
	go test -tags e2e -count=1 -timeout "${E2E_TIMEOUT:-90m}" ./test/e2e/... "$@" || status=$?
	log "suite finished in $((SECONDS - t0))s (exit $status)"
	exit "$status"
fi

[ "$(id -u)" = 0 ] || die "run as root: the local cluster and the builder image need it"

state=$(mktemp -d /tmp/nodeforge-e2e.XXXXXX)
chmod 700 "$state"
export NODEFORGE_E2E_STATE=$state
bimg_pid=
manager_pid=
s3_pid=
apt_pid=
registry_started=false
cluster_started=false

# stop_pid PID NAME [MATCH]: SIGTERM, up to 15 s, then SIGKILL; only that
# process, and only while its command line contains MATCH (when given).
stop_pid() {
	local pid=$1 name=$2 match=${3:-}
	kill -0 "$pid" 2>/dev/null || return 0
	if [ -n "$match" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match"; then
		return 0
	fi
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 75); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
		kill -9 "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	log "stopped $name (pid $pid)"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	[ -n "$manager_pid" ] && stop_pid "$manager_pid" manager
	if [ "$rc" != 0 ] && [ -s "$state/manager.log" ]; then
		log "last lines of the manager's log:"
		tail -n 40 "$state/manager.log" >&2
	fi
	# The image build holds mounts while mmdebstrap runs: let it finish
	# (it cleans up after itself) rather than kill it half-way.
	if [ -n "$bimg_pid" ] && kill -0 "$bimg_pid" 2>/dev/null; then
		log "waiting for the builder image build (pid $bimg_pid) to finish"
		wait "$bimg_pid" 2>/dev/null
	fi
	if $cluster_started && [ -z "${NODEFORGE_E2E_KEEP_CLUSTER:-}" ]; then
		hack/local-cluster.sh down
	fi
	[ -d "$state/apt" ] && NODEFORGE_APT_STATE=$state/apt hack/k8s-apt-repo.sh stop
	[ -d "$state/s3" ] && NODEFORGE_STATE=$state/s3 hack/s3.sh down
	# Whatever the scripts did, the servers started here end here.
	[ -n "$apt_pid" ] && stop_pid "$apt_pid" "apt repository server" "$state/apt/"
	if $registry_started; then NODEFORGE_REGISTRY_STATE=$state/registry hack/registry.sh down || true; fi
	[ -n "$s3_pid" ] && stop_pid "$s3_pid" MinIO "$state/s3/"
	rm -rf "$state"
	# The machine must be as the run found it, or a second run may not be
	# like the first: a leftover fails the run, also after a passing suite.
	if $cluster_started && [ -z "${NODEFORGE_E2E_KEEP_CLUSTER:-}" ]; then
		local left
		left=$(hack/local-cluster.sh leftovers; own_leftovers)
		if [ -n "$left" ]; then
			log "error: left on the machine after the run:"
			sed 's/^/  /' <<<"$left" >&2
			[ "$rc" != 0 ] || rc=1
		else
			log "nothing of the run is left on the machine"
		fi
	fi
	exit "$rc"
}

# own_leftovers: processes whose arguments name this run's state dir (the
# manager, MinIO, the apt repository server), and the dir itself.
own_leftovers() {
	local p args
	[ ! -e "$state" ] || echo "state dir $state"
	for p in /proc/[0-9]*; do
		[ "${p#/proc/}" != $$ ] || continue
		args=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
		case "$args" in *"$state/"*) echo "process ${p#/proc/}: ${args:0:200}" ;; esac
	done
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t_all=$SECONDS

# 1. Builder image (background) and manager binary.
builder_tar=${NODEFORGE_E2E_BUILDER_TAR:-}
if [ -z "$builder_tar" ]; then
	builder_tar=$state/builder-image.tar
	BUILDER_ARM64=0 IMG=nodeforge.local/builder:dev hack/build-builder-image.sh "$builder_tar" >"$state/builder-image.log" 2>&1 &
	bimg_pid=$!
fi
t0=$SECONDS
CGO_ENABLED=0 go build -trimpath -o "$state/manager" ./cmd/manager
# A test binary rather than `go test`, so that its output streams.
go test -c -tags e2e -o "$state/e2e.test" ./test/e2e
log "manager and e2e test binary built in $((SECONDS - t0))s"

# 2. Cluster.
t0=$SECONDS
cluster_started=true
hack/local-cluster.sh up >/dev/null
log "local cluster up in $((SECONDS - t0))s"
eval "$(hack/local-cluster.sh env)"

# 3. S3 and the apt repository, each with its own state dir.
t0=$SECONDS
s3_env=$(NODEFORGE_STATE=$state/s3 hack/s3.sh up)
s3_pid=$(cat "$state/s3/minio.pid")
eval "$s3_env"
hack/k8s-apt-repo.sh build >/dev/null
apt_env=$(NODEFORGE_APT_STATE=$state/apt hack/k8s-apt-repo.sh serve)
apt_pid=$(cat "$state/apt/pid")
eval "$apt_env"
registry_started=true
registry_env=$(NODEFORGE_REGISTRY_STATE=$state/registry hack/registry.sh up)
eval "$registry_env"
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION NODEFORGE_K8S_APT_URL NODEFORGE_K8S_APT_KEY NODEFORGE_REGISTRY
host_cache=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}/apt-archives
if [ -z "${E2E_FRESH_CACHE:-}" ] && [ -d "$host_cache/archives" ]; then
	export NODEFORGE_E2E_SEED_CACHE=$host_cache
fi
log "MinIO at $AWS_ENDPOINT_URL, apt repository at $NODEFORGE_K8S_APT_URL, registry at $NODEFORGE_REGISTRY ($((SECONDS - t0))s)"

# 4. CRDs and RBAC, then the manager as its ServiceAccount.
kubectl apply -k test/e2e/config >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
	crd/nodeimages.image.nodeforge.dev crd/nodeimagebuilds.image.nodeforge.dev >/dev/null
server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
	base64 -d >"$state/ca.crt"
token=$(kubectl -n nodeforge-system create token nodeforge-manager --duration=6h)
(
	umask 077
	export KUBECONFIG=$state/manager.kubeconfig
	kubectl config set-cluster e2e --server="$server" --certificate-authority="$state/ca.crt" --embed-certs >/dev/null
	kubectl config set-credentials nodeforge-manager --token="$token" >/dev/null
	kubectl config set-context e2e --cluster=e2e --user=nodeforge-manager >/dev/null
	kubectl config use-context e2e >/dev/null
)
unset token

if [ -n "$bimg_pid" ]; then
	t0=$SECONDS
	if ! wait "$bimg_pid"; then
		bimg_pid=
		tail -n 30 "$state/builder-image.log" >&2
		die "building the builder image failed (log above)"
	fi
	bimg_pid=
	log "builder image ready ($(sed -n 's/.*wrote .* (\(.*\)),.*/\1/p' "$state/builder-image.log"), waited $((SECONDS - t0))s)"
fi
t0=$SECONDS
hack/local-cluster.sh import "$builder_tar" >/dev/null
log "builder image imported in $((SECONDS - t0))s"
# A fully qualified name under a domain of our own, so containerd keeps it
# as is and never looks for it in a public registry.
export NODEFORGE_E2E_BUILDER_IMAGE=nodeforge.local/builder:dev

# A host without /dev/kvm (some machine kinds have none): builders get no
# KVM device and boot under TCG, and the suite skips its /dev/kvm spec.
kvm_flags=()
if [ ! -c /dev/kvm ]; then
	kvm_flags=(--mount-kvm=false)
	export NODEFORGE_E2E_NO_KVM=1
	log "this host has no /dev/kvm: builders get none (--mount-kvm=false) and boot under TCG"
fi
KUBECONFIG=$state/manager.kubeconfig setsid "$state/manager" \
	--builder-image="$NODEFORGE_E2E_BUILDER_IMAGE" \
	--builder-host-network \
	"${kvm_flags[@]}" \
	--kubevirt=false \
	--metrics-bind-address=0 \
	--health-probe-bind-address=0 \
	--zap-devel \
	</dev/null >"$state/manager.log" 2>&1 &
manager_pid=$!
export NODEFORGE_E2E_MANAGER_LOG=$state/manager.log
sleep 2
kill -0 "$manager_pid" 2>/dev/null || die "the manager exited: $(tail -n 20 "$state/manager.log")"
log "manager running (pid $manager_pid, log $state/manager.log); stack ready in $((SECONDS - t_all))s"

# 5. The suite.
t0=$SECONDS
status=0
(cd test/e2e && "$state/e2e.test" -test.timeout "${E2E_TIMEOUT:-90m}" "$@") || status=$?
log "suite finished in $((SECONDS - t0))s (exit $status); total $((SECONDS - t_all))s"
exit "$status"
