#!/usr/bin/env bash
# Runs a local S3 server (MinIO, built from its pinned Go module by
# hack/tools.sh) for tests and demos.
#
#   hack/s3.sh up      start it (or reuse the running one) and print export lines
#   hack/s3.sh env     print the export lines of the running server
#   hack/s3.sh down    stop it by PID and remove its state dir
#
# Typical use:  eval "$(hack/s3.sh up)"; ...; hack/s3.sh down
#
# The server listens on a free 127.0.0.1 port only, keeps its data in a temp
# dir under the state dir ($NODEFORGE_STATE, default /tmp/nodeforge-s3) and
# gets random credentials per run. stdout carries only the export lines;
# progress and errors go to stderr. Set NODEFORGE_MINIO to a minio binary to
# skip hack/tools.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${NODEFORGE_STATE:-/tmp/nodeforge-s3}
marker=$state/.nodeforge-s3
pidfile=$state/minio.pid
envfile=$state/env
region=us-east-1

log() { printf '[s3] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
# shellcheck source=hack/lib/server.sh
. "$here/lib/server.sh"

# running: true when the pid file names a live MinIO process we started.
running() { pid_running "$pidfile" "--address 127.0.0.1:"; }

minio_bin() {
	if [ -n "${NODEFORGE_MINIO:-}" ]; then
		[ -d "$NODEFORGE_MINIO" ] && echo "$NODEFORGE_MINIO/minio" || echo "$NODEFORGE_MINIO"
		return
	fi
	echo "$("$here/tools.sh" minio)/minio"
}

# rand_string N: N random alphanumeric characters.
rand_string() {
	local s=''
	while [ ${#s} -lt "$1" ]; do
		s+=$(head -c 256 /dev/urandom | tr -dc 'A-Za-z0-9')
	done
	printf '%s' "${s:0:$1}"
}

print_env() { cat "$envfile"; }

up() {
	if running; then
		log "already running (pid $(cat "$pidfile"))"
		print_env
		return
	fi
	local bin
	bin=$(minio_bin)
	[ -x "$bin" ] || die "no minio binary at $bin (build it with: hack/tools.sh minio)"

	# A stale state dir (server gone) is ours to clean.
	if [ -e "$state" ]; then
		[ -f "$marker" ] || die "$state exists and is not a nodeforge-s3 state dir; refusing to touch it"
		rm -rf "$state"
	fi
	mkdir -p "$state"
	chmod 700 "$state"
	: >"$marker"
	local data
	data=$(mktemp -d "$state/data.XXXXXX")

	local user pass port pid
	user=$(rand_string 20)
	pass=$(rand_string 40)
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		MINIO_ROOT_USER=$user MINIO_ROOT_PASSWORD=$pass MINIO_BROWSER=off MINIO_UPDATE=off \
			setsid "$bin" server --quiet --address "127.0.0.1:$port" "$data" \
			</dev/null >"$state/minio.log" 2>&1 &
		pid=$!
		echo "$pid" >"$pidfile"
		for _ in $(seq 1 150); do
			# Ready, and serving S3 requests: MinIO reports ready a moment
			# before its object layer answers anything but 503 (an
			# unsigned listing then gets 403).
			if curl -fsS -o /dev/null "http://127.0.0.1:$port/minio/health/ready" 2>/dev/null &&
				[ "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null)" != 503 ]; then
				umask 077
				cat >"$envfile" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$user
export AWS_SECRET_ACCESS_KEY=$pass
export AWS_REGION=$region
EOF
				log "MinIO pid $pid on 127.0.0.1:$port, data in $data"
				print_env
				return
			fi
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		log "attempt $attempt on port $port failed: $(tail -n 3 "$state/minio.log" | tr '\n' ' ')"
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		rm -f "$pidfile"
	done
	die "MinIO did not become ready; see $state/minio.log"
}

down() {
	if running; then
		stop_pid "$(cat "$pidfile")"
	fi
	if [ -e "$state" ]; then
		[ -f "$marker" ] || die "$state is not a nodeforge-s3 state dir; refusing to remove it"
		rm -rf "$state"
	fi
}

case ${1:-} in
up) up ;;
down) down ;;
env)
	running || die "not running (start it with: hack/s3.sh up)"
	print_env
	;;
*)
	sed -n '2,15p' "$0" >&2
	exit 2
	;;
esac
