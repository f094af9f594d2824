#!/usr/bin/env bash
# Installs the Debian packages nodeforge's build, verification and tests use,
# when any is missing. Idempotent; needs root (or sudo) only when something
# is missing.
#
#   hack/deps.sh          what make test, make image and CI need
#   hack/deps.sh arm64    also what arm64 images need (make image-arm64,
#                         make test-arm64): about 680 MB installed, so CI,
#                         which does not build arm64 images, skips it
set -euo pipefail

packages=(
	# image build (internal/builder)
	mmdebstrap e2fsprogs dosfstools fdisk mtools grub-pc-bin grub-efi-amd64-bin zstd
	# preloading container images into the image (kubernetes.images)
	containerd
	# the Ansible provisioner (community.general.chroot connection)
	ansible
	# verification and boot tests (internal/verify)
	qemu-utils qemu-system-x86 ovmf cloud-image-utils openssh-client
	# the offline Kubernetes apt repository (hack/k8s-apt-repo.sh)
	dpkg-dev apt-utils gnupg
)
if [ "${1:-}" = arm64 ]; then
	# arm64 images: the build under emulation (binfmt_misc), the boot
	# under qemu-system-aarch64 with AAVMF.
	packages+=(qemu-user-static arch-test qemu-system-arm qemu-efi-aarch64)
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "[deps] installing: ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
