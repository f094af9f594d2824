package attest

import (
	"bytes"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/package-url/packageurl-go"
	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdx/v2/common"
	spdx "github.com/spdx/tools-golang/spdx/v2/v2_3"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

// KubernetesNamespace is the purl namespace of the Kubernetes packages.
const KubernetesNamespace = "kubernetes"

const noAssertion = "NOASSERTION"

var spdxIDUnsafe = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

// SBOM returns the SPDX 2.3 JSON document of the image m describes, made
// at created. tool names the creator ("nodeforge-VERSION").
func SBOM(m *manifest.Manifest, tool string, created time.Time) ([]byte, error) {
	if m.Image.SHA256 == "" || m.Name == "" {
		return nil, fmt.Errorf("sbom: the manifest names no image or no sha256")
	}
	root := &spdx.Package{
		PackageName:             m.Name,
		PackageSPDXIdentifier:   "Image",
		PackageVersion:          imagev1.DigestHex(m.SpecDigest),
		PackageFileName:         m.Image.File,
		PackageDownloadLocation: noAssertion,
		PackageChecksums:        []common.Checksum{{Algorithm: common.SHA256, Value: m.Image.SHA256}},
		PackageLicenseConcluded: noAssertion,
		PackageLicenseDeclared:  noAssertion,
		PackageCopyrightText:    noAssertion,
		PrimaryPackagePurpose:   "OPERATING-SYSTEM",
		PackageComment: fmt.Sprintf("%s %s node image (%s), built by %s from spec digest %s",
			m.Base.Distribution, m.Base.Release, m.Base.Architecture, tool, m.SpecDigest),
	}
	if !m.CreatedAt.IsZero() {
		root.BuiltDate = m.CreatedAt.UTC().Format(time.RFC3339)
	}
	doc := &spdx.Document{
		SPDXVersion:    spdx.Version,
		DataLicense:    spdx.DataLicense,
		SPDXIdentifier: "DOCUMENT",
		DocumentName:   m.Name,
		// Unique per image: its sha256 differs from every other build's.
		DocumentNamespace: fmt.Sprintf("https://nodeforge.dev/spdx/%s/%s/%s", url.PathEscape(m.Name), imagev1.DigestHex(m.SpecDigest), m.Image.SHA256),
		CreationInfo: &spdx.CreationInfo{
			Creators: []common.Creator{{CreatorType: "Tool", Creator: tool}},
			Created:  created.UTC().Format(time.RFC3339),
		},
		Packages: []*spdx.Package{root},
		Relationships: []*spdx.Relationship{{
			RefA: common.MakeDocElementID("", "DOCUMENT"), RefB: common.MakeDocElementID("", "Image"), Relationship: common.TypeRelationshipDescribe,
		}},
	}
	ids := map[common.ElementID]bool{"Image": true}
	add := func(p *spdx.Package, kind string) {
		id := common.ElementID("Package-" + kind + "-" + strings.Trim(spdxIDUnsafe.ReplaceAllString(p.PackageName, "-"), "-"))
		for n := 2; ids[id]; n++ {
			id = common.ElementID(fmt.Sprintf("Package-%s-%s-%d", kind, strings.Trim(spdxIDUnsafe.ReplaceAllString(p.PackageName, "-"), "-"), n))
		}
		ids[id] = true
		p.PackageSPDXIdentifier = id
		p.PackageDownloadLocation = noAssertion
		p.PackageLicenseConcluded = noAssertion
		p.PackageLicenseDeclared = noAssertion
		p.PackageCopyrightText = noAssertion
		doc.Packages = append(doc.Packages, p)
		doc.Relationships = append(doc.Relationships, &spdx.Relationship{
			RefA: common.MakeDocElementID("", "Image"), RefB: common.MakeDocElementID("", string(id)), Relationship: common.TypeRelationshipContains,
		})
	}

	kube := kubernetesPackages(m.Content.Kubernetes)
	for _, p := range m.Packages {
		ns := "debian"
		if kube[p.Name] {
			ns = KubernetesNamespace
		}
		q := packageurl.QualifiersFromMap(map[string]string{"arch": p.Architecture, "distro": m.Base.Release})
		pkg := &spdx.Package{PackageName: p.Name, PackageVersion: p.Version, PrimaryPackagePurpose: "OPERATING-SYSTEM"}
		if ns == "debian" {
			pkg.PackageSupplier = &common.Supplier{Supplier: "Debian", SupplierType: "Organization"}
		} else {
			pkg.PrimaryPackagePurpose = "APPLICATION"
		}
		pkg.PackageExternalReferences = []*spdx.PackageExternalReference{purlRef(packageurl.NewPackageURL(packageurl.TypeDebian, ns, p.Name, p.Version, q, ""))}
		if ns == KubernetesNamespace && goBinaries[p.Name] && m.Content.Kubernetes != nil {
			pkg.PackageExternalReferences = append(pkg.PackageExternalReferences, purlRef(
				packageurl.NewPackageURL(packageurl.TypeGolang, "k8s.io", "kubernetes", goVersion(m.Content.Kubernetes.Version, p.Version), nil, "")))
		}
		add(pkg, "deb")
	}
	for _, img := range m.Images {
		ref, err := imagePURL(img)
		if err != nil {
			return nil, fmt.Errorf("sbom: image %s: %w", img.Name, err)
		}
		add(&spdx.Package{
			PackageName: img.Name, PackageVersion: img.Digest, PrimaryPackagePurpose: "CONTAINER",
			PackageExternalReferences: []*spdx.PackageExternalReference{purlRef(ref)},
		}, "oci")
	}
	var b bytes.Buffer
	if err := spdxjson.Write(doc, &b, spdxjson.Indent("  ")); err != nil {
		return nil, fmt.Errorf("sbom: %w", err)
	}
	return b.Bytes(), nil
}

func purlRef(p *packageurl.PackageURL) *spdx.PackageExternalReference {
	return &spdx.PackageExternalReference{Category: common.CategoryPackageManager, RefType: common.TypePackageManagerPURL, Locator: p.ToString()}
}

// goBinaries are the Kubernetes packages that carry Go binaries built from
// k8s.io/kubernetes.
var goBinaries = map[string]bool{"kubeadm": true, "kubelet": true, "kubectl": true}

// kubernetesPackages names the packages installed from the Kubernetes
// repository: the spec's components and what they depend on there.
func kubernetesPackages(k *imagev1.KubernetesSpec) map[string]bool {
	out := map[string]bool{}
	if k == nil {
		return out
	}
	for _, n := range []string{"kubeadm", "kubelet", "kubectl", "cri-tools", "kubernetes-cni"} {
		out[n] = true
	}
	for _, c := range k.Components {
		out[string(c)] = true
	}
	return out
}

// goVersion is the Go module version of the Kubernetes binaries: the
// spec's version (v1.37.2) when it is exact, else the package's upstream
// version (1.37.2 of 1.37.2-1.1).
func goVersion(spec, deb string) string {
	if strings.Count(strings.TrimPrefix(spec, "v"), ".") == 2 && !strings.ContainsAny(spec, "*x<>=~^ ") {
		return "v" + strings.TrimPrefix(spec, "v")
	}
	upstream, _, _ := strings.Cut(deb, "-")
	if _, after, ok := strings.Cut(upstream, ":"); ok {
		upstream = after
	}
	return "v" + upstream
}

// imagePURL is the purl of a preloaded image: pkg:oci/NAME@DIGEST with the
// repository and tag it was pulled as.
func imagePURL(img manifest.ContainerImage) (*packageurl.PackageURL, error) {
	if img.Digest == "" {
		return nil, fmt.Errorf("no digest")
	}
	repo, tag := img.Name, ""
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	name := repo[strings.LastIndex(repo, "/")+1:]
	q := map[string]string{"repository_url": repo}
	if tag != "" {
		q["tag"] = tag
	}
	return packageurl.NewPackageURL(packageurl.TypeOCI, "", strings.ToLower(name), img.Digest, packageurl.QualifiersFromMap(q), ""), nil
}
