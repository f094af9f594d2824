#!/usr/bin/env bash
# `make bench`: the speed and size goals, measured. Prints Markdown; the
# numbers recorded in docs/benchmarks.md come from this script.
#
#   1. image build: warm package cache, and cold with BENCH_COLD=1
#      (hack/bench-build.sh)
#   2. boot verification of the built image under the accelerator the KVM
#      probe picks (TCG where KVM cannot run guests)
#   3. upload of 1 GiB to a local MinIO (default and --no-compat) and to
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
print(f"| QEMU start → all boot checks done | {r.get('bootSeconds', 0):.0f} s |")
print(f"| whole verify (offline + boot) | {float(sys.argv[3]) - float(sys.argv[2]):.0f} s |")
s = r["summary"]
print(f"| checks | {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped |")
PY
echo

echo "## Upload to S3 (1 GiB)"
NODEFORGE_MINIO=$(hack/tools.sh minio) NODEFORGE_VERSITYGW=$(hack/tools.sh versitygw) go test ./internal/storage -run '^$' -bench Upload1GiB -benchtime 3x -timeout 30m | grep -E 'Benchmark|MiB/s' || true
