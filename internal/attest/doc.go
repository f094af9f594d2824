// Package attest describes a built node image for those who consume it:
// an SPDX 2.3 software bill of materials (SBOM) and a SLSA v1 provenance
// statement, both made from the build manifest, and published next to the
// image.
//
// The SBOM lists the image as its one described package, containing every
// dpkg package installed in it (the whole closure, with a purl
// pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=RELEASE; the Kubernetes
// packages under the namespace "kubernetes", with a second purl
// pkg:golang/k8s.io/kubernetes@VERSION for the Go binaries they carry, which
// vulnerability scanners match against the Go advisory database) and every
// preloaded container image (pkg:oci/NAME@DIGEST?repository_url=...). It is
// written with, and tested against, the SPDX project's Go library
// (github.com/spdx/tools-golang).
//
// The provenance is an in-toto Statement v1 whose subject is the image
// file and its sha256, with the predicate https://slsa.dev/provenance/v1:
// the build type, the NodeImage's name, spec digest and content as external
// parameters, the package mirror, the Kubernetes repository and the
// container images as resolved dependencies, and the builder's version and
// the build's times as run details. It is built from, and validated by,
// the in-toto project's Go bindings (github.com/in-toto/attestation).
// Credentials in a repository URL (user:password@) never reach either.
package attest
