#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, without Docker:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
# built from the pinned Go modules (hack/tools.sh cluster), containerd, runc
# and the CNI plugins from Debian packages unpacked into a private cache.
#
#   hack/local-cluster.sh up             start it (or reuse a healthy one); prints the kubeconfig path
#   hack/local-cluster.sh down           stop it and remove everything it made
#   hack/local-cluster.sh env            print "export KUBECONFIG=..." (and node facts)
#   hack/local-cluster.sh status         show each component; exit 1 unless all is well
#   hack/local-cluster.sh import TAR...  import OCI/Docker image tarballs into the node's containerd
#   hack/local-cluster.sh leftovers      after down: list anything of a cluster still on the machine; exit 1 if any
#
# Typical use:  eval "$(hack/local-cluster.sh up >/dev/null && hack/local-cluster.sh env)"
#
# All state lives in ${NODEFORGE_CLUSTER_DIR:-/tmp/nodeforge-cluster}; every
# component listens on 127.0.0.1 only. The node address lives on the
# cluster's own bridge, where Pods get their addresses; they have no route
# beyond it. Must run as root. stdout carries only results; progress goes to stderr. See
# docs/local-cluster.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmpl=$here/local-cluster
cache_root=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}
state=${NODEFORGE_CLUSTER_DIR:-/tmp/nodeforge-cluster}

# Pinned Debian packages (changing one changes the runtime cache key).
# containerd 1.7 comes from trixie; runc and the CNI plugins from bookworm
# (trixie's runc needs a newer libc than bookworm's).
CONTAINERD_SUITE=trixie
CONTAINERD_VERSION=1.7.24~ds1-6+deb13u1
RUNC_SUITE=bookworm
RUNC_VERSION=1.1.5+ds1-1+deb12u1
CNI_SUITE=bookworm
CNI_VERSION=1.1.1+ds1-3+b5

# The node is named localhost: the API server reaches the kubelet by the
# node's Hostname address, which is the node name, so that the kubelet can
# serve on 127.0.0.1 only (it refuses a loopback node IP, which is what the
# API server would otherwise dial).
NODE_NAME=localhost
POD_SUBNET=${NODEFORGE_POD_SUBNET:-10.223.0.0/24}
SERVICE_SUBNET=${NODEFORGE_SERVICE_SUBNET:-10.223.1.0/24}
BRIDGE=${NODEFORGE_BRIDGE:-nodeforge0}
NODE_IP=${POD_SUBNET%.*}.1
READY_TIMEOUT=${NODEFORGE_READY_TIMEOUT:-300}

marker=$state/.nodeforge-cluster
# What existed before the last `up` (global paths, cgroups), kept outside the
# state dir so that `leftovers` can still tell after `down`.
baseline=$cache_root/local-cluster.baseline
pki=$state/pki
pids=$state/pids
logs=$state/logs
CONTAINERD_SOCK=$state/run/containerd.sock

# Paths outside the state dir that these components create regardless of
# configuration. `up` records which already existed; `down` removes only the
# ones it created.
global_paths=(
	/run/containerd /var/lib/cni /var/log/pods /var/log/containers
	/var/lib/kubelet /run/netns /var/run/netns /etc/cni /opt/cni
	/run/kubernetes /var/run/kubernetes /usr/libexec/kubernetes
)
# Kernel settings the kubelet changes (protectKernelDefaults: false); `down`
# restores the values `up` found.
tunables=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
	kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# Top-level cgroups the kubelet and containerd create in each hierarchy.
cgroup_names=(kubepods k8s.io)
components=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet)

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (containerd, kubelet, mounts, cgroups)"; }

# ---------------------------------------------------------------------------
# Binaries

k8s_bin() { "$here/tools.sh" cluster; }

runtime_dir() {
	echo "$cache_root/cluster-runtime-containerd-${CONTAINERD_VERSION}-runc-${RUNC_VERSION}-cni-${CNI_VERSION}"
}

# derive_sources SUITE: the host's Debian apt sources (for its own codename,
# -updates and -security) rewritten for SUITE, as one-line entries. No mirror
# is named here: whatever the host uses is used.
derive_sources() {
	local to=$1 from f
	# shellcheck source=/dev/null
	from=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[ -n "$from" ] || die "cannot tell the host's Debian codename from /etc/os-release"
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		awk -v from="$from" -v to="$to" '
			/^[[:space:]]*deb[[:space:]]/ {
				i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i+1) ~ "^" from "(-updates|-security)?$") { sub("^" from, to, $(i+1)); print }
			}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v from="$from" -v to="$to" '
			function flush(   n, s, i, m, u, j, tok) {
				if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
					n = split(suites, s, " ")
					for (i = 1; i <= n; i++) if (s[i] ~ "^" from "(-updates|-security)?$") {
						tok = s[i]; sub("^" from, to, tok)
						m = split(uris, u, " ")
						for (j = 1; j <= m; j++)
							printf "deb %s%s %s %s\n", (signed ~ /^\// ? "[signed-by=" signed "] " : ""), u[j], tok, comps
					}
				}
				types = uris = suites = comps = signed = ""
			}
			/^[[:space:]]*#/ { next }
			/^[[:space:]]*$/ { flush(); next }
			{ key = tolower($1); $1 = ""; sub(/^ +/, "") }
			key == "types:" { types = $0 }
			key == "uris:" { uris = $0 }
			key == "suites:" { suites = $0 }
			key == "components:" { comps = $0 }
			key == "signed-by:" { signed = $0 }
			END { flush() }' "$f"
	done
}

# apt_private DIR apt-get|apt-cache ARGS...: apt with its own sources, lists
# and cache in DIR, ignoring the host's apt configuration and state.
apt_private() {
	local d=$1 tool=$2
	shift 2
	"$tool" -q -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null \
		-o Dir::State="$d/state" -o Dir::State::status="$d/state/status" -o Dir::Cache="$d/cache" \
		-o APT::Sandbox::User=root -o Debug::NoLocking=1 "$@"
}

# fetch_debs SUITE DEST PKG=VER...: download pinned packages of SUITE into DEST.
fetch_debs() {
	local suite=$1 dest=$2 d
	shift 2
	d=$cache_root/apt-private/$suite
	mkdir -p "$d/state/lists/partial" "$d/cache/archives/partial"
	: >"$d/state/status"
	derive_sources "$suite" >"$d/sources.list"
	[ -s "$d/sources.list" ] || die "found no Debian apt sources on this host to derive $suite's from"
	log "apt: updating private $suite lists"
	apt_private "$d" apt-get -qq update >&2
	log "apt: downloading $* from $suite"
	(cd "$dest" && apt_private "$d" apt-get -qq download "$@" >&2) ||
		die "cannot download $* from $suite (a pinned version may have left the archive: update the pins in $0)"
}

# ensure_runtime: containerd, ctr, the runc shim, runc and the CNI plugins,
# unpacked once into a version-keyed cache dir; prints the dir.
ensure_runtime() {
	local dir stamp
	dir=$(runtime_dir)
	stamp="containerd=$CONTAINERD_VERSION runc=$RUNC_VERSION cni=$CNI_VERSION"
	if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
		echo "$dir"
		return
	fi
	log "fetching containerd, runc and CNI plugins from Debian (once)"
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp/debs"
	# One private apt per suite, each updated once.
	local -A by_suite=()
	by_suite[$CONTAINERD_SUITE]+=" containerd=$CONTAINERD_VERSION"
	by_suite[$RUNC_SUITE]+=" runc=$RUNC_VERSION"
	by_suite[$CNI_SUITE]+=" containernetworking-plugins=$CNI_VERSION"
	local suite
	for suite in "${!by_suite[@]}"; do
		# shellcheck disable=SC2086 # word splitting of the package list is wanted
		fetch_debs "$suite" "$dir.tmp/debs" ${by_suite[$suite]}
	done
	local deb
	for deb in "$dir.tmp"/debs/*.deb; do dpkg -x "$deb" "$dir.tmp/root"; done
	mkdir -p "$dir.tmp/bin"
	local b
	for b in containerd containerd-shim-runc-v2 ctr runc; do
		[ -x "$dir.tmp/root/usr/bin/$b" ] || [ -x "$dir.tmp/root/usr/sbin/$b" ] || die "$b missing from the packages"
		ln -s "../root/usr/$( [ -x "$dir.tmp/root/usr/bin/$b" ] && echo bin || echo sbin)/$b" "$dir.tmp/bin/$b"
	done
	for b in bridge host-local loopback; do
		[ -x "$dir.tmp/root/usr/lib/cni/$b" ] || die "CNI plugin $b missing from containernetworking-plugins"
	done
	ln -s root/usr/lib/cni "$dir.tmp/cni"
	rm -rf "$dir.tmp/debs"
	printf '%s' "$stamp" >"$dir.tmp/.stamp"
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
	log "runtime cached in $dir"
	echo "$dir"
}

# ---------------------------------------------------------------------------
# Processes

pidfile() { echo "$pids/$1.pid"; }

# alive NAME: true when NAME's pid file names a live process of this cluster
# (its command line mentions the state dir).
alive() {
	local f pid
	f=$(pidfile "$1")
	[ -f "$f" ] || return 1
	pid=$(cat "$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF -- "$state/"
}

# start NAME CMD...: run CMD in its own session, log to logs/NAME.log.
start() {
	local name=$1
	shift
	setsid "$@" </dev/null >>"$logs/$name.log" 2>&1 9>&- &
	echo $! >"$(pidfile "$name")"
	log "started $name (pid $!)"
}

# stop_pids PID...: SIGTERM to all, wait up to $grace seconds (default 15),
# then SIGKILL the rest.
stop_pids() {
	local pid left
	[ $# -gt 0 ] || return 0
	kill "$@" 2>/dev/null || true
	for _ in $(seq 1 $((${grace:-15} * 10))); do
		left=()
		for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
		[ ${#left[@]} -gt 0 ] || return 0
		sleep 0.1
	done
	[ -n "${grace:-}" ] || log "pids ${left[*]} ignored SIGTERM; sending SIGKILL"
	kill -9 "${left[@]}" 2>/dev/null || true
	for _ in $(seq 1 50); do
		left=()
		for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
		[ ${#left[@]} -gt 0 ] || return 0
		sleep 0.1
	done
}

# stop NAME...: stop these components together (by their pid files).
stop() {
	local name list=() names=()
	for name in "$@"; do
		if alive "$name"; then
			list+=("$(cat "$(pidfile "$name")")")
			names+=("$name")
		fi
	done
	stop_pids "${list[@]}"
	[ ${#names[@]} -eq 0 ] || log "stopped ${names[*]}"
	for name in "$@"; do rm -f "$(pidfile "$name")"; done
}

# wait_for WHAT LOGNAME CMD...: retry CMD until it succeeds or the timeout.
wait_for() {
	local what=$1 name=$2 deadline=$((SECONDS + READY_TIMEOUT))
	shift 2
	until "$@" >/dev/null 2>&1; do
		if [ -n "$name" ] && ! alive "$name"; then
			tail -n 30 "$logs/$name.log" >&2 || true
			die "$name exited while waiting for $what"
		fi
		if [ $SECONDS -ge $deadline ]; then
			[ -z "$name" ] || tail -n 30 "$logs/$name.log" >&2 || true
			die "timed out after ${READY_TIMEOUT}s waiting for $what"
		fi
		sleep 1
	done
}

# free_port: a TCP port no socket uses, below the kernel's ephemeral range
# (ip_local_port_range): a port inside it can be taken as the local port of
# any outgoing connection between this choice and the server's bind (a
# kubelet once failed to bind its healthz port so).
free_port() {
	local port lo
	read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
	[ "$lo" -gt 12000 ] || lo=61000
	for _ in $(seq 1 200); do
		port=$((10000 + RANDOM % (lo - 10000)))
		if [ -z "$(ss -Htan "sport = :$port" 2>/dev/null)" ] && ! grep -qx "$port" "$state/ports.used" 2>/dev/null; then
			echo "$port" >>"$state/ports.used"
			echo "$port"
			return
		fi
	done
	die "no free port found"
}

# ---------------------------------------------------------------------------
# Configuration

render() {
	local in=$1 out=$2
	sed -e "s|@STATE@|$state|g" \
		-e "s|@CONTAINERD_SOCK@|$CONTAINERD_SOCK|g" \
		-e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
		-e "s|@RUNC@|$RUNC|g" \
		-e "s|@CNI_BIN@|$CNI_BIN|g" \
		-e "s|@BRIDGE@|$BRIDGE|g" \
		-e "s|@POD_SUBNET@|$POD_SUBNET|g" \
		-e "s|@NODE_IP@|$NODE_IP|g" \
		-e "s|@KUBELET_PORT@|$KUBELET_PORT|g" \
		-e "s|@KUBELET_HEALTHZ_PORT@|$KUBELET_HEALTHZ_PORT|g" \
		"$in" >"$out"
}

# cert NAME SUBJECT [SANS]: an EC key and a CA-signed certificate in pki/.
cert() {
	local name=$1 subj=$2 sans=${3:-} ext=$pki/$1.ext
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
	openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		if [ -n "$sans" ]; then
			echo "extendedKeyUsage=serverAuth,clientAuth"
			echo "subjectAltName=$sans"
		else
			echo "extendedKeyUsage=clientAuth"
		fi
	} >"$ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
		-days 365 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr" "$ext"
}

make_pki() {
	mkdir -p "$pki"
	chmod 700 "$pki"
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=nodeforge-local-ca" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$pki/ca.crt" 2>/dev/null
	local svc_ip=${SERVICE_SUBNET%.*}.1
	cert apiserver "/CN=kube-apiserver" \
		"IP:127.0.0.1,DNS:localhost,IP:$svc_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
	cert admin "/O=system:masters/CN=nodeforge-admin"
	cert controller-manager "/CN=system:kube-controller-manager"
	cert scheduler "/CN=system:kube-scheduler"
	cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
	cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" "DNS:$NODE_NAME,IP:127.0.0.1"
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
	openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

# kubeconfig USER CERTNAME OUT
kubeconfig() {
	local user=$1 c=$2 out=$3
	sed -e "s|@APISERVER_PORT@|$APISERVER_PORT|g" -e "s|@USER@|$user|g" \
		-e "s|@CA_DATA@|$(base64 -w0 "$pki/ca.crt")|g" \
		-e "s|@CERT_DATA@|$(base64 -w0 "$pki/$c.crt")|g" \
		-e "s|@KEY_DATA@|$(base64 -w0 "$pki/$c.key")|g" \
		"$tmpl/kubeconfig.yaml" >"$out"
	chmod 600 "$out"
}

# shellcheck source=/dev/null
load_ports() { [ -f "$state/ports.env" ] && . "$state/ports.env"; }

# ---------------------------------------------------------------------------
# Commands

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$state/kubeconfig" "$@"; }
ctr_() { "$RUNTIME/bin/ctr" --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

apiserver_ready() { kubectl_ get --raw /readyz >/dev/null 2>&1; }
node_ready() {
	[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

healthy() {
	[ -f "$marker" ] || return 1
	local c
	for c in "${components[@]}"; do alive "$c" || return 1; done
	load_ports && apiserver_ready && node_ready
}

print_env() {
	echo "export KUBECONFIG=$state/kubeconfig"
	echo "export NODEFORGE_NODE_NAME=$NODE_NAME"
	echo "export NODEFORGE_NODE_IP=$NODE_IP"
	if load_ports; then echo "export NODEFORGE_APISERVER=https://127.0.0.1:$APISERVER_PORT"; fi
	echo "export NODEFORGE_CONTAINERD_ADDRESS=$CONTAINERD_SOCK"
}

# import_images TAR...: into containerd's k8s.io namespace, unpacked for the
# CRI's snapshotter.
import_images() {
	local t
	for t in "$@"; do
		[ -f "$t" ] || die "no such image tarball: $t"
		ctr_ images import --platform linux/amd64 --snapshotter overlayfs "$t" >&2 ||
			die "ctr import $t failed"
	done
}

up() {
	need_root
	K8S_BIN=$(k8s_bin)
	RUNTIME=$(ensure_runtime)
	if healthy; then
		log "already running and Ready"
		echo "$state/kubeconfig"
		return
	fi
	if [ -e "$state" ]; then
		log "found a stopped or unhealthy cluster in $state: tearing it down first"
		down
	fi

	local t0=$SECONDS pause_ref pause_tar
	read -r pause_ref pause_tar < <("$here/build-pause-image.sh")
	[ -f "$pause_tar" ] || die "pause image build failed"
	PAUSE_IMAGE=$pause_ref
	RUNC=$RUNTIME/bin/runc
	CNI_BIN=$RUNTIME/cni

	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		die "interface $BRIDGE exists but $state does not: another cluster, or a leftover (delete it with: ip link del $BRIDGE)"
	fi
	if ip -o -4 addr show | awk '{print $4}' | grep "^${POD_SUBNET%.*}\." >/dev/null; then
		die "the host already has an address in $POD_SUBNET: set NODEFORGE_POD_SUBNET"
	fi

	mkdir -p "$state"
	chmod 700 "$state"
	: >"$marker"
	# From here on a failure tears everything down again (unless asked not to).
	up_done=
	trap 'up_exit $?' EXIT
	mkdir -p "$pids" "$logs" "$state/run" "$state/etcd" "$state/kubelet" "$state/pod-logs" \
		"$state/cni/net.d" "$state/cni/networks" "$state/containerd/certs.d/_default" "$state/runc"
	: >"$state/ports.used"

	# What exists before we start, so that `down` removes only what we made.
	local p
	for p in "${global_paths[@]}"; do [ ! -e "$p" ] || echo "$p"; done >"$state/preexisting-paths"
	for p in /sys/fs/cgroup/*/; do
		for c in "${cgroup_names[@]}"; do [ ! -d "$p$c" ] || echo "$p$c"; done
	done >"$state/preexisting-cgroups"
	for p in "${tunables[@]}"; do echo "$p $(cat "/proc/sys/$p")"; done >"$state/sysctl.saved"
	mkdir -p "$cache_root"
	cat "$state/preexisting-paths" "$state/preexisting-cgroups" >"$baseline"

	local ETCD_PORT ETCD_PEER_PORT KCM_PORT SCHED_PORT
	ETCD_PORT=$(free_port)
	ETCD_PEER_PORT=$(free_port)
	APISERVER_PORT=$(free_port)
	KCM_PORT=$(free_port)
	SCHED_PORT=$(free_port)
	KUBELET_PORT=$(free_port)
	KUBELET_HEALTHZ_PORT=$(free_port)
	cat >"$state/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
APISERVER_PORT=$APISERVER_PORT
KUBELET_PORT=$KUBELET_PORT
KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
EOF

	make_pki
	kubeconfig nodeforge-admin admin "$state/kubeconfig"
	kubeconfig system:kube-controller-manager controller-manager "$state/controller-manager.kubeconfig"
	kubeconfig system:kube-scheduler scheduler "$state/scheduler.kubeconfig"
	kubeconfig "system:node:$NODE_NAME" kubelet "$state/kubelet.kubeconfig"

	# The node address lives on the cluster's own bridge, created up front
	# because the kubelet checks that its node IP is a local address.
	ip link add "$BRIDGE" type bridge
	ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
	ip link set "$BRIDGE" up

	start etcd "$K8S_BIN/etcd" --name "$NODE_NAME" --data-dir "$state/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync
	wait_for "etcd" etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

	start kube-apiserver "$K8S_BIN/kube-apiserver" \
		--bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
		--advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
		--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
		--cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
		--client-ca-file="$pki/ca.crt" \
		--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=Hostname \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
		--service-cluster-ip-range="$SERVICE_SUBNET" \
		--allow-privileged=true --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--profiling=false
	wait_for "kube-apiserver /readyz" kube-apiserver apiserver_ready

	start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
		--kubeconfig="$state/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$pki/controller-manager-serving" \
		--leader-elect=false --use-service-account-credentials=true \
		--flex-volume-plugin-dir="$state/controller-manager/volume-plugins" \
		--service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
		--cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
		--profiling=false
	start kube-scheduler "$K8S_BIN/kube-scheduler" \
		--kubeconfig="$state/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$pki/scheduler-serving" \
		--leader-elect=false --profiling=false

	render "$tmpl/containerd.toml" "$state/containerd/config.toml"
	cp "$tmpl/hosts.toml" "$state/containerd/certs.d/_default/hosts.toml"
	render "$tmpl/cni.conflist" "$state/cni/net.d/10-nodeforge.conflist"
	PATH=$RUNTIME/bin:$PATH start containerd "$RUNTIME/bin/containerd" --config "$state/containerd/config.toml"
	wait_for "containerd" containerd ctr_ version
	import_images "$pause_tar"

	render "$tmpl/kubelet.yaml" "$state/kubelet/config.yaml"
	PATH=$RUNTIME/bin:$PATH start kubelet "$K8S_BIN/kubelet" \
		--config="$state/kubelet/config.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
		--root-dir="$state/kubelet" --cert-dir="$state/kubelet/pki" \
		--hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
	wait_for "kubelet /healthz" kubelet curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
	wait_for "node $NODE_NAME Ready" kubelet node_ready
	# The default ServiceAccount is what pods run as: wait for it too.
	wait_for "default ServiceAccount" kube-controller-manager kubectl_ -n default get serviceaccount default

	up_done=1
	log "cluster up in $((SECONDS - t0))s; node $NODE_NAME Ready at $NODE_IP"
	echo "$state/kubeconfig"
}

up_exit() {
	[ -z "$up_done" ] && [ "$1" -ne 0 ] || return 0
	trap - EXIT
	if [ -n "${NODEFORGE_CLUSTER_KEEP:-}" ]; then
		log "up failed; leaving $state as it is (NODEFORGE_CLUSTER_KEEP is set). Clean with: $0 down"
	else
		log "up failed; tearing down (set NODEFORGE_CLUSTER_KEEP=1 to keep the state for debugging)"
		down || true
	fi
	exit "$1"
}

# mounts_under PATH: mount points at or below PATH, deepest first.
mounts_under() {
	awk -v p="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print m }' /proc/self/mountinfo |
		awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

unmount_under() {
	local dir=$1 m
	for _ in 1 2 3 4 5; do
		[ -n "$(mounts_under "$dir")" ] || return 0
		while IFS= read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done < <(mounts_under "$dir")
	done
	[ -z "$(mounts_under "$dir")" ] || { log "still mounted under $dir:"; mounts_under "$dir" >&2; return 1; }
}

# pids_of_shims: containerd shims (and anything else) started against this
# cluster's containerd socket, found by the socket path in their arguments.
pids_of_shims() {
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $CONTAINERD_SOCK " && echo "${p#/proc/}"
	done
	return 0
}

# cgroup_dirs: this cluster's top-level cgroups in every hierarchy.
cgroup_dirs() {
	local h c
	for h in /sys/fs/cgroup/*/; do
		for c in "${cgroup_names[@]}"; do
			[ -d "$h$c" ] || continue
			grep -qxF "$h$c" "$state/preexisting-cgroups" 2>/dev/null && continue
			echo "$h$c"
		done
	done
}

kill_cgroup_procs() {
	local d pid
	for d in $(cgroup_dirs); do
		for pid in $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
			kill -9 "$pid" 2>/dev/null || true
		done
	done
}

down() {
	need_root
	if [ ! -e "$state" ]; then
		log "nothing to tear down ($state does not exist)"
		return 0
	fi
	[ -f "$marker" ] || die "$state exists and is not a local-cluster state dir; refusing to touch it"
	# Never build anything to tear down.
	K8S_BIN=$("$here/tools.sh" path cluster)
	RUNTIME=$(runtime_dir)
	local t0=$SECONDS

	# Let the kubelet stop the pods, so the CNI plugin releases their network.
	if alive kubelet && alive kube-apiserver && load_ports; then
		kubectl_ delete pods --all --all-namespaces --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
		for _ in $(seq 1 30); do
			[ -n "$(ctr_ tasks ls -q 2>/dev/null)" ] || break
			sleep 1
		done
	fi
	stop kubelet
	# Their state is deleted below: a graceful shutdown buys nothing.
	grace=1 stop kube-scheduler kube-controller-manager kube-apiserver etcd

	# Whatever is still running in containers: kill it, then containerd and
	# its shims (found by our socket path, never by name).
	if alive containerd && [ -x "$RUNTIME/bin/ctr" ]; then
		local id
		for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true; done
	fi
	stop containerd
	# shellcheck disable=SC2046 # one pid per word
	stop_pids $(pids_of_shims)
	kill_cgroup_procs

	unmount_under "$state" || true

	# Veths vanish with their pod's network namespace; delete any left.
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		local veth
		for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
			ip link del "$veth" 2>/dev/null || true
		done
		ip link del "$BRIDGE" || log "warning: could not delete bridge $BRIDGE"
	fi

	local d
	for d in $(cgroup_dirs); do
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[ ! -d "$d" ] || log "warning: could not remove cgroup $d"
	done

	if [ -f "$state/sysctl.saved" ]; then
		local key val
		while read -r key val; do
			[ "$(cat "/proc/sys/$key")" = "$val" ] || echo "$val" >"/proc/sys/$key" || log "warning: cannot restore $key"
		done <"$state/sysctl.saved"
	fi

	# Global paths: remove the ones we created; in the others only our files.
	if [ -f "$state/preexisting-paths" ]; then
		local p
		for p in "${global_paths[@]}"; do
			[ -e "$p" ] || continue
			if grep -qxF "$p" "$state/preexisting-paths"; then
				continue
			fi
			if [ -n "$(mounts_under "$p")" ]; then
				log "warning: $p has mounts; leaving it"
				continue
			fi
			rm -rf --one-file-system "$p"
		done
	fi
	if [ -d /var/log/containers ]; then
		find /var/log/containers -maxdepth 1 -type l -lname "$state/*" -delete 2>/dev/null || true
	fi
	if [ -d /var/lib/cni/results ]; then
		find /var/lib/cni/results -maxdepth 1 -name 'nodeforge-local-*' -delete 2>/dev/null || true
	fi

	if [ -n "$(mounts_under "$state")" ]; then
		die "mounts remain under $state; not removing it"
	fi
	rm -rf --one-file-system "$state"
	log "down in $((SECONDS - t0))s"
}

# leftovers: after `down`, everything of this script's cluster still on the
# machine, one line each; exit 1 when there is any. Processes are ours when
# their arguments name the state dir or our containerd socket, or they run a
# binary of our private runtime; container processes show up as the cgroups
# that hold them. Paths and cgroups that existed before the last `up` are
# not counted.
leftovers() {
	local found=() p exe args h c m
	RUNTIME=$(runtime_dir)
	[ ! -e "$state" ] || found+=("state dir $state")
	for p in /proc/[0-9]*; do
		[ "${p#/proc/}" != $$ ] || continue
		args=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
		exe=$(readlink "$p/exe" 2>/dev/null) || exe=
		case "$args" in
		*"$state/"* | *"$CONTAINERD_SOCK"*) ;;
		*) case "$exe" in "$RUNTIME"/*) ;; *) continue ;; esac ;;
		esac
		found+=("process ${p#/proc/}: ${args:0:200}")
	done
	while IFS= read -r m; do found+=("mount $m"); done < <(mounts_under "$state"; mounts_under /run/netns | grep '/cni-' || true)
	! ip link show "$BRIDGE" >/dev/null 2>&1 || found+=("interface $BRIDGE")
	# The CNI bridge plugin names its host-side veths veth + 8 hex digits.
	while IFS= read -r m; do found+=("interface $m"); done < <(ip -o link show type veth 2>/dev/null |
		awk -F': ' '{ sub(/@.*/, "", $2); if ($2 ~ /^veth[0-9a-f]{8}$/) print $2 }')
	# Without a baseline no `up` ran with this cache: nothing below is ours.
	if [ -f "$baseline" ]; then
		for h in /sys/fs/cgroup/*/; do
			for c in "${cgroup_names[@]}"; do
				[ -d "$h$c" ] && ! grep -qxF "$h$c" "$baseline" && found+=("cgroup $h$c")
			done
		done
		for p in "${global_paths[@]}"; do
			[ -e "$p" ] && ! grep -qxF "$p" "$baseline" && found+=("path $p")
		done
	fi
	[ ${#found[@]} -gt 0 ] || return 0
	printf '%s\n' "${found[@]}"
	return 1
}

status() {
	local ok=0 c
	if [ ! -f "$marker" ]; then
		echo "not running ($state does not exist)"
		return 1
	fi
	K8S_BIN=$("$here/tools.sh" path cluster)
	for c in "${components[@]}"; do
		if alive "$c"; then
			printf '%-24s running (pid %s)\n' "$c" "$(cat "$(pidfile "$c")")"
		else
			printf '%-24s NOT running\n' "$c"
			ok=1
		fi
	done
	if load_ports && node_ready; then
		printf '%-24s Ready (%s)\n' "node/$NODE_NAME" "$NODE_IP"
	else
		printf '%-24s NOT Ready\n' "node/$NODE_NAME"
		ok=1
	fi
	echo "kubeconfig: $state/kubeconfig"
	return $ok
}

# lock: one up, down or import at a time (all clusters share the bridge and
# subnet). The lock file lives in the cache, not in /tmp, so nothing is left
# behind; components are started without the lock's descriptor.
lock() {
	mkdir -p "$cache_root"
	exec 9>"$cache_root/local-cluster.lock"
	flock -w 900 9 || die "another hack/local-cluster.sh is still running after 15 minutes"
}

case ${1:-} in
up)
	lock
	up
	;;
down)
	lock
	down
	;;
env)
	[ -f "$marker" ] || die "not running (start it with: $0 up)"
	print_env
	;;
status) status ;;
leftovers) leftovers ;;
import)
	shift
	[ $# -gt 0 ] || die "usage: $0 import TARBALL..."
	need_root
	lock
	alive containerd || die "the cluster's containerd is not running (start it with: $0 up)"
	RUNTIME=$(runtime_dir)
	import_images "$@"
	;;
*)
	sed -n '2,22p' "$0" >&2
	exit 2
	;;
esac
