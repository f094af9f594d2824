#!/usr/bin/env bash
# `make bench`: the speed and size goals, measured. Prints Markdown; the
# numbers recorded in docs/benchmarks.md come from this script.
#
#   1. image build: warm package cache, and cold with BENCH_COLD=1
#      (hack/bench-build.sh)
#   2. boot verification of the built image under the accelerator the KVM
#      probe picks (TCG where KVM cannot run guests), with the cluster
#      checks: QEMU start to node Ready after kubeadm init
#   3. the size the preloaded control-plane images add (the sample built
#      again without kubernetes.images, on the cached base layer)
#   4. the push of the built image as a KubeVirt containerDisk to a local
#      Distribution registry (destination.oci; BenchmarkPushContainerDisk)
#   5. the arm64 sample: build (emulated through qemu-user-static) and
#      verification with a boot under qemu-system-aarch64 (BENCH_ARM64=0
#      skips it)
#   6. upload of 1 GiB to a local MinIO (default and --no-compat) and to
#      versitygw, next to cp of the same file and to bare HTTP PUTs on
#      127.0.0.1 (BenchmarkUpload1GiB in internal/storage)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export NODEFORGE_CACHE=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}
bench=${BENCH_DIR:-out/bench}

hack/deps.sh
echo "# nodeforge benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "## Image build"
if [ "${BENCH_COLD:-0}" = 1 ]; then
	BENCH_DIR=$bench hack/bench-build.sh --cold
else
	BENCH_DIR=$bench hack/bench-build.sh
fi
echo

echo "## Boot verification"
go build -o "$bench/nodeforge" ./cmd/nodeforge
image=$bench/warm/cloud-base.qcow2
spec=$(ls "$bench"/warm/*.yaml 2>/dev/null | head -n1 || true)
[ -n "$spec" ] || spec=out/cloud-base-offline.yaml
start=$(date +%s.%N)
"$bench/nodeforge" verify "$image" -f "$spec" --boot --json "$bench/verify.json" -q >/dev/null
end=$(date +%s.%N)
python3 - "$bench/verify.json" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| accelerator | {r.get('accelerator')} |")
print(f"| QEMU start → SSH | {r.get('timeToSSHSeconds', 0):.0f} s |")
print(f"| QEMU start → cloud-init done | {r.get('timeToCloudInitSeconds', 0):.0f} s |")
if r.get('timeToNodeReadySeconds'):
    print(f"| QEMU start → node Ready after kubeadm init | {r['timeToNodeReadySeconds']:.0f} s |")
    print(f"| cluster checks (kubeadm init → test Pod Running) | {r.get('clusterSeconds', 0):.0f} s |")
    for c in r["checks"]:
        if c["category"] == "cluster":
            print(f"| &nbsp;&nbsp;{c['name']} | {c['durationSeconds']:.0f} s, {'passed' if c['passed'] else 'FAILED'} |")
print(f"| QEMU start → all boot checks done | {r.get('bootSeconds', 0):.0f} s |")
print(f"| whole verify (offline + boot) | {float(sys.argv[3]) - float(sys.argv[2]):.0f} s |")
s = r["summary"]
print(f"| checks | {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped |")
PY
echo

echo "## Preloaded control-plane images: added size"
# The same spec without kubernetes.images, built on the cached base layer
# (not verified): the difference is what the images add to the artifact.
noimg=$bench/no-images
mkdir -p "$noimg"
awk '/^    images: *$/ {skip = 1; next} skip && /^      / {next} {skip = 0; print}' \
	config/samples/image_v1alpha1_nodeimage_cloudbase.yaml >"$noimg/sample.yaml"
OUT=$noimg NODEFORGE_SAMPLE=$noimg/sample.yaml NODEFORGE_BUILD_FLAGS="--no-verify" hack/image.sh >"$noimg/build.log" 2>&1 || {
	tail -n 30 "$noimg/build.log" >&2
	exit 1
}
with=$(stat -c %s "$image")
without=$(stat -c %s "$noimg/cloud-base.qcow2")
echo "| image | qcow2 (zstd) |"
echo "|---|---|"
echo "| with the control-plane images | $((with / 1048576)) MiB |"
echo "| without (kubernetes.images removed) | $((without / 1048576)) MiB |"
echo "| added (goal ≤ 120 MiB) | $(((with - without) / 1048576)) MiB |"
echo

echo "## containerDisk push (the built image, to a Distribution registry on 127.0.0.1)"
hack/tools.sh registry >/dev/null
NODEFORGE_BENCH_DISK=$image NODEFORGE_REQUIRE_INTEGRATION=1 go test ./test/integration -run '^$' -bench PushContainerDisk -benchtime 3x -timeout 30m | grep -E '^Benchmark' || true
echo

echo "## arm64 image (minimal-arm64 sample, emulated on this host)"
# The arm64 sample built with the shared package cache (its base layer
# cached after the first run) and verified offline and by a boot under
# qemu-system-aarch64 (TCG on an amd64 host). BENCH_ARM64=0 skips it.
if [ "${BENCH_ARM64:-1}" = 1 ]; then
	hack/deps.sh arm64
	arm=$bench/arm64
	rm -rf "$arm"
	mkdir -p "$arm"
	arm_spec=config/samples/image_v1alpha1_nodeimage_minimal_arm64.yaml
	t0=$(date +%s.%N)
	"$bench/nodeforge" build -f "$arm_spec" -o "$arm" --no-publish --no-verify --progress plain \
		--cache-dir "$NODEFORGE_CACHE/apt-archives" >"$arm/build.log" 2>&1 || {
		tail -n 30 "$arm/build.log" >&2
		exit 1
	}
	t1=$(date +%s.%N)
	"$bench/nodeforge" verify "$arm/minimal-arm64.qcow2" -f "$arm_spec" --boot --json "$arm/verify.json" -q >/dev/null || true
	t2=$(date +%s.%N)
	python3 - "$arm/minimal-arm64.json" "$arm/verify.json" "$t0" "$t1" "$t2" "$arm/minimal-arm64.qcow2" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1]))
r = json.load(open(sys.argv[2]))
t0, t1, t2 = map(float, sys.argv[3:6])
base = m["base"]
layer = "reused" if base.get("layerReused") else ("built" if base.get("layer") else "none")
print("| measure | value |")
print("|---|---|")
print(f"| build (no verify), base layer {layer} | {t1 - t0:.0f} s |")
for s in m["steps"]:
    print(f"| &nbsp;&nbsp;{s['name']} | {s['durationSeconds']:.0f} s |")
print(f"| packages | {len(m['packages'])} |")
print(f"| qcow2 (zstd) | {os.path.getsize(sys.argv[6]) // 1048576} MiB |")
print(f"| verify (offline + boot), {r.get('accelerator')} | {t2 - t1:.0f} s |")
print(f"| QEMU start → SSH | {r.get('timeToSSHSeconds', 0):.0f} s |")
print(f"| QEMU start → cloud-init done | {r.get('timeToCloudInitSeconds', 0):.0f} s |")
s = r["summary"]
print(f"| checks | {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped |")
PY
else
	echo "skipped (BENCH_ARM64=0)"
fi
echo

echo "## Upload to S3 (1 GiB)"
NODEFORGE_MINIO=$(hack/tools.sh minio) NODEFORGE_VERSITYGW=$(hack/tools.sh versitygw) go test ./internal/storage -run '^$' -bench Upload1GiB -benchtime 3x -timeout 30m | grep -E 'Benchmark|MiB/s' || true
