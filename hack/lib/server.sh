# shellcheck shell=bash
# Sourced by the hack/ scripts that run a local server on 127.0.0.1
# (hack/s3.sh, hack/registry.sh): how they pick a port, tell their own
# process from another one with a reused pid, and stop it. The sourcing
# script defines log and die.

# pid_running PIDFILE MATCH: true when PIDFILE names a live process whose
# command line contains MATCH.
pid_running() {
	[ -f "$1" ] || return 1
	local pid
	pid=$(cat "$1")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[ -r "/proc/$pid/cmdline" ] || return 1
	# grep reads to the end (no -q): with pipefail an early exit could fail tr.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- "$2" >/dev/null
}

# free_port: a TCP port no socket uses at 127.0.0.1 right now, below the
# kernel's ephemeral range (ip_local_port_range), where an outgoing
# connection could take it before the server binds it.
free_port() {
	local port lo
	read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
	[ "$lo" -gt 12000 ] || lo=61000
	for _ in $(seq 1 100); do
		port=$((10000 + RANDOM % (lo - 10000)))
		if [ -z "$(ss -Htan "sport = :$port" 2>/dev/null)" ]; then
			echo "$port"
			return
		fi
	done
	die "no free port found"
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
	local pid=$1
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid ignored SIGTERM; sending SIGKILL"
		kill -9 "$pid" 2>/dev/null || true
	fi
	log "stopped pid $pid"
}
