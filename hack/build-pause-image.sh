#!/usr/bin/env bash
# Builds the local cluster's pause (sandbox) image from hack/tools/pause into
# an OCI image tarball, without a container engine or a registry.
#
#   hack/build-pause-image.sh      prints "REF TARBALL"
#
# hack/local-cluster.sh up imports it into containerd and uses REF as the
# CRI sandbox_image. The tag follows the binary's content; the tarball is
# cached under ${NODEFORGE_CACHE:-~/.cache/nodeforge}/images.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/local-cluster/go-image.sh" ./hack/tools/pause nodeforge.local/pause
