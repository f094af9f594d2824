#!/usr/bin/env bash
# Benchmarks `nodeforge build` of the full cloud-base image (offline
# Kubernetes repository included) through hack/image.sh, and prints a
# Markdown report: wall time, per-step times, download size, image size,
# installed size and the largest packages.
#
#   hack/bench-build.sh          warm package cache (fills it first if empty):
#                                a full build (the base layer made anew, in
#                                a private copy of the cache without base
#                                layers), then the same with one package
#                                added (the base layer reused: issue 15's
#                                incremental rebuild)
#   hack/bench-build.sh --cold   also a cold build, with an empty private
#                                package cache (downloads ~220 MiB of .debs)
#
# Results go to stdout; build output to $BENCH_DIR (default out/bench).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
bench=${BENCH_DIR:-out/bench}
export NODEFORGE_CACHE=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}
cold=false
[ "${1:-}" = --cold ] && cold=true

log() { printf '[bench] %s\n' "$*" >&2; }

# run_build NAME CACHE [SAMPLE]: one build; leaves $bench/NAME/{build.log,cloud-base.json}.
run_build() {
	local name=$1 cache=$2 sample=${3:-} dir=$bench/$1 t0 t1
	rm -rf "$dir"
	mkdir -p "$dir"
	log "$name build (cache $cache)"
	t0=$(date +%s.%N)
	OUT=$dir NODEFORGE_APT_CACHE=$cache NODEFORGE_BUILD_FLAGS="--no-verify --progress plain" \
		env ${sample:+NODEFORGE_SAMPLE="$sample"} "$here/image.sh" >"$dir/build.log" 2>&1 || {
		tail -n 40 "$dir/build.log" >&2
		exit 1
	}
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' >"$dir/script-seconds"
}

# report NAME: a Markdown section from the manifest and the build log.
report() {
	local dir=$bench/$1
	python3 - "$dir" <<'PY'
import json, re, sys
d = sys.argv[1]
m = json.load(open(d + "/cloud-base.json"))
log = open(d + "/build.log").read()
built = re.search(r"^built \S+ in (\S+)", log, re.M)
dl = re.search(r"rootfs +\d+ packages, (\d+) downloaded \(([\d.]+) MiB\)", log)
steps = m["steps"]
total = sum(s["durationSeconds"] for s in steps)
print(f"- build wall time (nodeforge build): **{built.group(1) if built else '?'}**; sum of steps {total:.1f} s")
print(f"- packages downloaded: {dl.group(1)} .debs, {dl.group(2)} MiB" if dl else "- packages downloaded: ?")
print(f"- image: {m['image']['size']/2**20:.1f} MiB {m['image']['format']} ({m['image']['compression']}), virtual {m['image']['virtualSize']/2**30:.0f} GiB")
print(f"- installed size (root tree): {m['installedSizeBytes']/2**20:.0f} MiB, {len(m['packages'])} packages, kernel {m['base']['kernelVersion']}")
print()
print("| step | seconds |")
print("|---|---:|")
for s in steps:
    print(f"| {s['name']} | {s['durationSeconds']:.1f} |")
print()
big = sorted(m["packages"], key=lambda p: -p.get("installedSizeKiB", 0))[:10]
print("Largest packages (installed): " + ", ".join(f"{p['name']} {p['installedSizeKiB']/1024:.0f} MiB" for p in big))
PY
}

warm_cache=$NODEFORGE_CACHE/apt-archives
if [ -z "$(ls -A "$warm_cache/archives" 2>/dev/null)" ]; then
	log "the package cache is empty: filling it with a first build"
	run_build fill "$warm_cache"
fi
# A private copy of the warm cache (hard links) without base layers: the
# full build makes its base layer there, the incremental one reuses it.
full_cache=$(mktemp -d "${TMPDIR:-/tmp}/nodeforge-bench-full.XXXXXX")
trap 'rm -rf "$full_cache"' EXIT
cp -al "$warm_cache/archives" "$warm_cache/lists" "$full_cache/"
run_build warm "$full_cache"
# The sample with one package more (jq, after "packages:").
plus=$bench/cloud-base-plus-jq.yaml
sed '/^  packages:$/a\    - jq' config/samples/image_v1alpha1_nodeimage_cloudbase.yaml >"$plus"
grep -q '^    - jq$' "$plus" || {
	log "could not add jq to the sample"
	exit 1
}
run_build incremental "$full_cache" "$plus"

echo "### Warm package cache"
echo
echo "Command: \`hack/bench-build.sh\` (\`nodeforge build -f out/cloud-base-offline.yaml --cache-dir CACHE --no-verify\`, CACHE a copy of \$NODEFORGE_CACHE/apt-archives without base layers), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
echo
report warm
echo
echo "### Incremental rebuild (one package added, the base layer reused)"
echo
echo "Command: the same, on the same cache, with \`jq\` added to \`spec.packages\`."
echo
report incremental
python3 - "$bench" <<'PY'
import json, sys
b = sys.argv[1]
w = json.load(open(b + "/warm/cloud-base.json"))
i = json.load(open(b + "/incremental/cloud-base.json"))
ws = float(open(b + "/warm/script-seconds").read())
iS = float(open(b + "/incremental/script-seconds").read())
wt = sum(s["durationSeconds"] for s in w["steps"])
it = sum(s["durationSeconds"] for s in i["steps"])
wr = {s["name"]: s["durationSeconds"] for s in w["steps"]}["rootfs"]
ir = {s["name"]: s["durationSeconds"] for s in i["steps"]}["rootfs"]
print()
print(f"Base layer: {'reused' if i['base'].get('layerReused') else 'NOT reused'} ({i['base'].get('layer', '')[:12]}; the full build's {w['base'].get('layer', '')[:12]}, reused {w['base'].get('layerReused', False)}).")
print(f"Incremental rebuild vs full warm build: steps {it:.1f} s vs {wt:.1f} s (**{100*it/wt:.0f} %**, goal <= 25 %); rootfs {ir:.1f} s vs {wr:.1f} s; hack/image.sh wall time {iS:.0f} s vs {ws:.0f} s.")
PY

if $cold; then
	cold_cache=$(mktemp -d "${TMPDIR:-/tmp}/nodeforge-bench-cache.XXXXXX")
	trap 'rm -rf "$cold_cache" "$full_cache"' EXIT
	run_build cold "$cold_cache"
	echo
	echo "### Cold package cache"
	echo
	echo "Command: \`hack/bench-build.sh --cold\` (empty private --cache-dir)."
	echo
	report cold
	python3 - "$bench" <<'PY'
import json, sys
b = sys.argv[1]
w = {s["name"]: s["durationSeconds"] for s in json.load(open(b + "/warm/cloud-base.json"))["steps"]}
c = {s["name"]: s["durationSeconds"] for s in json.load(open(b + "/cold/cloud-base.json"))["steps"]}
dl = (c["rootfs"] - w["rootfs"]) + (c["resolve"] - w["resolve"])
print()
print(f"Download share of the cold build: about {dl:.0f} s (cold minus warm time of resolve and rootfs); the rest {sum(c.values()) - dl:.0f} s.")
PY
fi
