#!/usr/bin/env bash
# make image: build the cloud-base sample node image locally, offline
# variant, into out/ (out/cloud-base.qcow2 and its manifest out/cloud-base.json).
#
# On a fresh Debian machine of this kind (root, Go on PATH) it
#   1. installs the host tools the builder needs with apt-get, if missing;
#   2. builds bin/nodeforge;
#   3. builds and serves the offline Kubernetes apt repository on 127.0.0.1
#      (hack/k8s-apt-repo.sh; reuses a server that is already running);
#   4. starts a local registry on 127.0.0.1 serving the control-plane
#      images built from the pinned modules (hack/registry.sh; reuses a
#      running one);
#   5. writes out/cloud-base-offline.yaml: the sample with
#      kubernetes.aptRepository pointed at that repository and its key,
#      and kubernetes.images.mirror at that registry;
#   6. runs `nodeforge build --no-publish` (the image stays in out/; the
#      sample's S3 destination is an example), then stops the servers it
#      started.
#
# Environment:
#   OUT                   output directory (default: out)
#   NODEFORGE_CACHE       cache root (default ${XDG_CACHE_HOME:-~/.cache}/nodeforge);
#                         downloaded .debs are kept in $NODEFORGE_CACHE/apt-archives
#   NODEFORGE_APT_CACHE   package cache for the build (default $NODEFORGE_CACHE/apt-archives)
#   NODEFORGE_BUILD_FLAGS extra flags for `nodeforge build` (e.g. --no-verify --progress plain)
#   NODEFORGE_SAMPLE      NodeImage file to build (default: the cloud-base sample)
#   NODEFORGE_APT_STATE   state dir of the repository server (hack/k8s-apt-repo.sh;
#                         default /tmp/nodeforge-apt)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
out=${OUT:-out}
sample=${NODEFORGE_SAMPLE:-config/samples/image_v1alpha1_nodeimage_cloudbase.yaml}
export NODEFORGE_CACHE=${NODEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeforge}

log() { printf '[image] %s\n' "$*" >&2; }
die() {
	printf '[image] error: %s\n' "$*" >&2
	exit 1
}

# ------------------------------------------------------------ host tools

# Debian packages providing the builder's tools (and the verifier's QEMU).
host_packages=(
	mmdebstrap e2fsprogs fdisk dosfstools mtools
	grub-pc-bin grub-efi-amd64-bin qemu-utils
	qemu-system-x86 ovmf cloud-image-utils
	apt-utils gpg gpgv curl ca-certificates containerd
)

install_host_tools() {
	local missing=() p
	for p in "${host_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		return
	fi
	log "installing host packages: ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# --------------------------------------------------- offline sample YAML

# offline_sample SAMPLE URL KEYFILE MIRROR: the sample with
# kubernetes.aptRepository.url set to URL, its signingKey replaced by the
# armored key in KEYFILE, and kubernetes.images.mirror set to MIRROR.
offline_sample() {
	awk -v URL="$2" -v KEY="$3" -v MIRROR="$4" '
	function indent(s) { match(s, /^ */); return RLENGTH }
	{
		if (inimg && $0 !~ /^ *$/ && indent($0) <= imgind) inimg = 0
		if (inimg && $0 ~ /^ *mirror: /) next
		if ($0 ~ /^    images: *$/) {
			inimg = 1; imgind = indent($0); print
			print sprintf("%" (imgind + 2) "s", "") "mirror: " MIRROR
			next
		}
		if ($0 ~ /^ *aptRepository: *$/) { inrepo = 1; repoind = indent($0); print; next }
		if (inrepo && $0 !~ /^ *$/ && indent($0) <= repoind) { inrepo = 0; insig = 0 }
		if (inrepo && !insig && $0 ~ /^ *url: /) { sub(/url: .*/, "url: " URL); done_url = 1; print; next }
		if (inrepo && $0 ~ /^ *signingKey: *$/) { insig = 1; sigind = indent($0); print; next }
		if (insig && $0 !~ /^ *$/ && indent($0) <= sigind) { insig = 0 }
		if (insig && $0 ~ /^ *(url|armored|configMapKeyRef): /) {
			pad = sprintf("%" indent($0) "s", "")
			print pad "armored: |"
			while ((getline line < KEY) > 0) print pad "  " line
			close(KEY)
			done_key = 1; skipind = indent($0); skipping = 1; next
		}
		if (skipping && $0 !~ /^ *$/ && indent($0) > skipind) next
		skipping = 0
		print
	}
	END { if (!done_url || !done_key) exit 3 }' "$1"
}

# ------------------------------------------------------------------ main

[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap builds the root filesystem in root mode"
command -v go >/dev/null 2>&1 || die "Go is required (to build nodeforge and the offline Kubernetes packages)"
[ -f "$sample" ] || die "no NodeImage sample at $sample"
install_host_tools

mkdir -p "$out" bin
log "building bin/nodeforge"
CGO_ENABLED=0 go build -trimpath -o bin/nodeforge ./cmd/nodeforge

log "offline Kubernetes apt repository (cold: 1.5-6 minutes to build kubeadm/kubelet/kubectl)"
"$here/k8s-apt-repo.sh" build >/dev/null
started_server=false
if repo_env=$("$here/k8s-apt-repo.sh" env 2>/dev/null); then
	log "reusing the running repository server"
else
	repo_env=$("$here/k8s-apt-repo.sh" serve)
	started_server=true
fi
stop_server() {
	if $started_server; then "$here/k8s-apt-repo.sh" stop || true; fi
}
trap stop_server EXIT
eval "$repo_env"
: "${NODEFORGE_K8S_APT_URL:?k8s-apt-repo.sh printed no NODEFORGE_K8S_APT_URL}"
: "${NODEFORGE_K8S_APT_KEY:?k8s-apt-repo.sh printed no NODEFORGE_K8S_APT_KEY}"

offline=$out/cloud-base-offline.yaml
log "local registry with the control-plane images (hack/registry.sh)"
started_registry=false
if registry_env=$("$here/registry.sh" env 2>/dev/null); then
	log "reusing the running registry"
else
	registry_env=$("$here/registry.sh" up)
	started_registry=true
fi
stop_servers() {
	stop_server
	if $started_registry; then "$here/registry.sh" down || true; fi
}
trap stop_servers EXIT
eval "$registry_env"
: "${NODEFORGE_REGISTRY:?registry.sh printed no NODEFORGE_REGISTRY}"

offline_sample "$sample" "$NODEFORGE_K8S_APT_URL" "$NODEFORGE_K8S_APT_KEY" "$NODEFORGE_REGISTRY" >"$offline.tmp" ||
	die "could not point $sample at the offline repository (no kubernetes.aptRepository url/signingKey?)"
mv "$offline.tmp" "$offline"
log "wrote $offline (kubernetes.aptRepository: $NODEFORGE_K8S_APT_URL, kubernetes.images.mirror: $NODEFORGE_REGISTRY)"

# shellcheck disable=SC2086 # NODEFORGE_BUILD_FLAGS is a list of flags
bin/nodeforge build -f "$offline" -o "$out" --no-publish --cache-dir "${NODEFORGE_APT_CACHE:-$NODEFORGE_CACHE/apt-archives}" ${NODEFORGE_BUILD_FLAGS:-}

name=$(awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit}' "$offline")
echo
echo "image:    $out/$name.qcow2"
echo "manifest: $out/$name.json"
