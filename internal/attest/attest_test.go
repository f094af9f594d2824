package attest

import (
	"bytes"
	"strings"
	"testing"
	"time"

	slsa "github.com/in-toto/attestation/go/predicates/provenance/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	. "github.com/onsi/gomega"
	"github.com/package-url/packageurl-go"
	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdx/v2/common"
	"github.com/spdx/tools-golang/spdxlib"
	"google.golang.org/protobuf/encoding/protojson"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

var imageSHA = strings.Repeat("ab", 32)

// testManifest is a manifest as the builder writes it; the builder strips
// credentials from the content's URLs, and the attestations strip them
// again from every URL they name (the mirror's here).
func testManifest() *manifest.Manifest {
	content := imagev1.ImageContent{Kubernetes: &imagev1.KubernetesSpec{Version: "v1.37.2",
		AptRepository: imagev1.AptRepository{URL: "http://127.0.0.1:8080/k8s/"}}}
	return &manifest.Manifest{
		SchemaVersion: manifest.SchemaVersion, Name: "cloud-base", SpecDigest: "sha256:" + strings.Repeat("3f", 32),
		BuilderVersion: "v0.9.0", CreatedAt: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC),
		Image: manifest.Image{File: "cloud-base.qcow2", Format: "qcow2", SHA256: imageSHA, Size: 1 << 28},
		Base:  manifest.Base{Distribution: "debian", Release: "trixie", Architecture: "amd64", Mirror: "http://reader:s3cret@mirror.invalid/debian", Suites: []string{"trixie", "trixie-updates"}},
		Packages: []manifest.Package{
			{Name: "libc6", Version: "2.41-12", Architecture: "amd64"},
			{Name: "libstdc++6", Version: "14.2.0-19", Architecture: "amd64"},
			{Name: "libstdc++6", Version: "14.2.0-19", Architecture: "i386"},
			{Name: "kubeadm", Version: "1.37.2-1.1", Architecture: "amd64"},
			{Name: "cri-tools", Version: "1.37.0-1.1", Architecture: "amd64"},
		},
		Images: []manifest.ContainerImage{{Name: "registry.k8s.io/kube-apiserver:v1.37.2", Source: "127.0.0.1:5000/kube-apiserver:v1.37.2",
			Digest: "sha256:" + strings.Repeat("cd", 32), ID: "sha256:" + strings.Repeat("ef", 32)}},
		Content: content,
	}
}

// The SBOM parses with the SPDX project's reader, passes its validation,
// describes the image alone, and gives every package a purl that parses.
func TestSBOMIsValidSPDXWithAPURLForEveryPackage(t *testing.T) {
	g := NewWithT(t)
	m := testManifest()
	b, err := SBOM(m, "nodeforge-v0.9.0", m.CreatedAt.Add(time.Minute))
	g.Expect(err).NotTo(HaveOccurred())
	doc, err := spdxjson.Read(bytes.NewReader(b))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(spdxlib.ValidateDocument(doc)).To(Succeed())
	g.Expect(doc.SPDXVersion).To(Equal("SPDX-2.3"))
	described, err := spdxlib.GetDescribedPackageIDs(doc)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(described).To(Equal([]common.ElementID{"Image"}))
	g.Expect(doc.Packages).To(HaveLen(1 + len(m.Packages) + len(m.Images)))
	g.Expect(doc.Packages[0].PackageChecksums).To(ContainElement(common.Checksum{Algorithm: common.SHA256, Value: imageSHA}))

	purls := map[string][]string{}
	ids := map[common.ElementID]bool{}
	for _, p := range doc.Packages[1:] {
		g.Expect(ids).NotTo(HaveKey(p.PackageSPDXIdentifier), "unique ids")
		ids[p.PackageSPDXIdentifier] = true
		g.Expect(p.PackageExternalReferences).NotTo(BeEmpty(), p.PackageName)
		for _, r := range p.PackageExternalReferences {
			g.Expect(r.RefType).To(Equal(common.TypePackageManagerPURL))
			_, err := packageurl.FromString(r.Locator)
			g.Expect(err).NotTo(HaveOccurred(), r.Locator)
			purls[p.PackageName] = append(purls[p.PackageName], r.Locator)
		}
	}
	g.Expect(purls["libc6"]).To(Equal([]string{"pkg:deb/debian/libc6@2.41-12?arch=amd64&distro=trixie"}))
	g.Expect(purls["libstdc++6"]).To(ConsistOf("pkg:deb/debian/libstdc%2B%2B6@14.2.0-19?arch=amd64&distro=trixie",
		"pkg:deb/debian/libstdc%2B%2B6@14.2.0-19?arch=i386&distro=trixie"))
	g.Expect(purls["kubeadm"]).To(Equal([]string{"pkg:deb/kubernetes/kubeadm@1.37.2-1.1?arch=amd64&distro=trixie", "pkg:golang/k8s.io/kubernetes@v1.37.2"}))
	g.Expect(purls["cri-tools"]).To(Equal([]string{"pkg:deb/kubernetes/cri-tools@1.37.0-1.1?arch=amd64&distro=trixie"}))
	g.Expect(purls["registry.k8s.io/kube-apiserver:v1.37.2"]).To(Equal([]string{
		"pkg:oci/kube-apiserver@sha256:" + strings.Repeat("cd", 32) + "?repository_url=registry.k8s.io%2Fkube-apiserver&tag=v1.37.2"}))
	g.Expect(string(b)).NotTo(ContainSubstring("s3cret"))

	g.Expect(doc.CreationInfo.Created).To(Equal("2026-12-07T10:01:00Z"))
	g.Expect(doc.Packages[0].BuiltDate).To(Equal("2026-12-07T10:00:00Z"))

	_, err = SBOM(&manifest.Manifest{Name: "x"}, "nodeforge", time.Now())
	g.Expect(err).To(MatchError(ContainSubstring("no image or no sha256")))
}

// The provenance is an in-toto Statement v1 of the image with a SLSA v1
// predicate, both valid by the in-toto project's bindings, naming the
// spec, the repositories (without their credentials) and the images.
func TestProvenanceIsAValidSLSAStatement(t *testing.T) {
	g := NewWithT(t)
	m := testManifest()
	start := time.Date(2026, 12, 7, 9, 58, 0, 0, time.UTC)
	b, err := Provenance(m, "v0.9.0", Run{InvocationID: "images/cloud-base-3f3f3f3f3f", StartedOn: start, FinishedOn: start.Add(2 * time.Minute)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).NotTo(ContainSubstring("s3cret"))
	g.Expect(string(b)).NotTo(ContainSubstring("reader"))

	var st intoto.Statement
	g.Expect(protojson.Unmarshal(b, &st)).To(Succeed())
	g.Expect(st.Validate()).To(Succeed())
	g.Expect(st.GetPredicateType()).To(Equal("https://slsa.dev/provenance/v1"))
	g.Expect(st.GetSubject()).To(HaveLen(1))
	g.Expect(st.GetSubject()[0].GetName()).To(Equal("cloud-base.qcow2"))
	g.Expect(st.GetSubject()[0].GetDigest()).To(Equal(map[string]string{"sha256": imageSHA}))

	raw, err := protojson.Marshal(st.GetPredicate())
	g.Expect(err).NotTo(HaveOccurred())
	var p slsa.Provenance
	g.Expect(protojson.Unmarshal(raw, &p)).To(Succeed())
	g.Expect(p.Validate()).To(Succeed())
	def := p.GetBuildDefinition()
	g.Expect(def.GetBuildType()).To(Equal(BuildType))
	g.Expect(def.GetExternalParameters().AsMap()).To(HaveKeyWithValue("specDigest", m.SpecDigest))
	g.Expect(def.GetExternalParameters().AsMap()).To(HaveKey("content"))
	var uris []string
	for _, d := range def.GetResolvedDependencies() {
		uris = append(uris, d.GetUri())
	}
	g.Expect(uris).To(ConsistOf("http://mirror.invalid/debian", "http://127.0.0.1:8080/k8s/", "oci://127.0.0.1:5000/kube-apiserver:v1.37.2"))
	g.Expect(p.GetRunDetails().GetBuilder().GetVersion()).To(HaveKeyWithValue("nodeforge", "v0.9.0"))
	g.Expect(p.GetRunDetails().GetMetadata().GetInvocationId()).To(Equal("images/cloud-base-3f3f3f3f3f"))
	g.Expect(p.GetRunDetails().GetMetadata().GetFinishedOn().AsTime()).To(Equal(start.Add(2 * time.Minute)))

	bad := testManifest()
	bad.Images[0].Digest = "md5:abc"
	_, err = Provenance(bad, "v0.9.0", Run{})
	g.Expect(err).To(MatchError(ContainSubstring(`digest "md5:abc" is not sha256`)))
}
