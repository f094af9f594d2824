package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"encoding/base64"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	. "github.com/onsi/gomega"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdxlib"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

const minimalSample = "../../config/samples/image_v1alpha1_nodeimage_minimal.yaml"

// requireBuildHost skips a test that builds a real image where it cannot
// run (with -short, without root or the builder's tools), and fails it
// instead when NODEFORGE_REQUIRE_INTEGRATION=1, as make test sets.
func requireBuildHost(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a real image; skipped with -short")
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"mmdebstrap", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "grub-mkimage", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ") + " (hack/deps.sh installs the tools)"
	if os.Getenv(miniotest.RequireIntegrationEnv) == "1" {
		t.Fatal(msg + "; " + miniotest.RequireIntegrationEnv + "=1 requires it")
	}
	t.Skip(msg)
}

// TestBuildPublishesToS3 runs `nodeforge build --to s3://…` on the minimal
// sample against a real MinIO, with endpoint and credentials from the AWS_*
// environment as a workstation has them. The image, its .sha256 and its
// manifest land under PREFIX/NAME/DIGEST/1/ and match the local build, the
// latest pointer names that revision, and a second build of the same spec
// finds the artifact and builds nothing. --rebuild publishes revision 2 of
// the same spec beside revision 1, which stays as it was; a spec with one
// more package is revision 3, whose manifest records the packages added
// since revision 2. Verification is skipped (--no-verify): the
// integration tests boot images.
func TestBuildPublishesToS3(t *testing.T) {
	requireBuildHost(t)
	g := NewWithT(t)
	ctx := context.Background()
	srv := miniotest.Start(t, miniotest.Config{})
	useServer(t, srv)

	signingKey := ""
	build := func(out string, rebuild bool, file ...string) (stdout, stderr string, err error) {
		sample := minimalSample
		if len(file) > 0 {
			sample = file[0]
		}
		o := &buildOptions{file: sample, outDir: out, workDir: t.TempDir(), cacheDir: defaultCacheDir(), rebuild: rebuild, signingKey: signingKey,
			noVerify: true, progress: "plain", to: "s3://images/nodes", createBucket: true, presignExpiry: time.Hour}
		var so, se bytes.Buffer
		err = runBuild(ctx, o, &so, &se)
		return so.String(), se.String(), err
	}

	out := t.TempDir()
	stdout, stderr, err := build(out, false)
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(stdout + stderr).NotTo(ContainSubstring(srv.SecretKey))
	m, err := manifest.Read(filepath.Join(out, "minimal.json"))
	g.Expect(err).NotTo(HaveOccurred())
	digest := strings.TrimPrefix(m.SpecDigest, "sha256:")
	imageKey := "nodes/minimal/" + digest + "/1/minimal.qcow2"
	g.Expect(stdout).To(ContainSubstring("artifact:  " + srv.Endpoint() + "/images/" + imageKey + " (revision 1)\n"))
	g.Expect(stdout).To(MatchRegexp(`presigned: \S+X-Amz-Signature=`))

	pub, _, err := (&buildOptions{to: "s3://images/nodes"}).publisher(nil, "default")
	g.Expect(err).NotTo(HaveOccurred())
	art, err := pub.Lookup(ctx, "minimal", m.SpecDigest)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(art.ImageKey).To(Equal(imageKey))
	g.Expect(art.SHA256).To(Equal(m.Image.SHA256))
	g.Expect(art.Size).To(Equal(m.Image.Size))

	// The object's bytes are the local image's.
	local, err := os.Stat(filepath.Join(out, "minimal.qcow2"))
	g.Expect(err).NotTo(HaveOccurred())
	info, err := pub.Store.Stat(ctx, imageKey)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.Size).To(Equal(local.Size()))
	g.Expect(info.SHA256).To(Equal(m.Image.SHA256))
	g.Expect(getObject(t, pub.Store, art.ChecksumKey)).To(Equal(storage.SHA256SumLine(m.Image.SHA256, "minimal.qcow2")))
	published, err := manifest.Decode(strings.NewReader(getObject(t, pub.Store, art.ManifestKey)))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(published.SpecDigest).To(Equal(m.SpecDigest))
	g.Expect(published.Image.SHA256).To(Equal(m.Image.SHA256))
	g.Expect(published.Previous).To(BeNil(), "nothing was published before the first image")
	latest, err := pub.Latest(ctx, "minimal")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(latest.Key).To(Equal(imageKey))

	// The SBOM and the provenance: written next to the local image and
	// published next to the manifest, the same bytes, describing it.
	g.Expect(art.CompanionKeys).To(HaveLen(2))
	for _, name := range []string{"minimal.spdx.json", "minimal.provenance.json"} {
		local, err := os.ReadFile(filepath.Join(out, name))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(art.CompanionKeys).To(HaveKeyWithValue(name, "nodes/minimal/"+digest+"/1/"+name))
		g.Expect(getObject(t, pub.Store, art.CompanionKeys[name])).To(Equal(string(local)))
	}
	doc, err := spdxjson.Read(strings.NewReader(getObject(t, pub.Store, art.CompanionKeys["minimal.spdx.json"])))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(spdxlib.ValidateDocument(doc)).To(Succeed())
	g.Expect(doc.Packages).To(HaveLen(1+len(m.Packages)), "the image and each of its packages")
	g.Expect(doc.Packages[0].PackageChecksums[0].Value).To(Equal(m.Image.SHA256))
	var st intoto.Statement
	g.Expect(protojson.Unmarshal([]byte(getObject(t, pub.Store, art.CompanionKeys["minimal.provenance.json"])), &st)).To(Succeed())
	g.Expect(st.Validate()).To(Succeed())
	g.Expect(st.GetSubject()[0].GetDigest()).To(HaveKeyWithValue("sha256", m.Image.SHA256))

	// The same spec again: found by its digest, nothing built.
	again := t.TempDir()
	stdout, stderr, err = build(again, false)
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(stderr).To(ContainSubstring("nothing to build"))
	g.Expect(stdout).To(ContainSubstring("artifact:  " + art.URL))
	g.Expect(filepath.Join(again, "minimal.qcow2")).NotTo(BeAnExistingFile())

	// --rebuild: the same spec as revision 2; revision 1 is not written.
	// Signed this time with a key made as cosign makes one: each
	// signature verifies with sigstore's verifier against its file.
	password := "a cosign password"
	priv, pubPEM, err := cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), cryptoutils.StaticPasswordFunc([]byte(password)))
	g.Expect(err).NotTo(HaveOccurred())
	signingKey = filepath.Join(t.TempDir(), "cosign.key")
	g.Expect(os.WriteFile(signingKey, priv, 0o600)).To(Succeed())
	t.Setenv("COSIGN_PASSWORD", password)
	first := map[string]storage.ObjectInfo{}
	for _, key := range []string{art.ImageKey, art.ChecksumKey, art.ManifestKey} {
		first[key], err = pub.Store.Stat(ctx, key)
		g.Expect(err).NotTo(HaveOccurred())
	}
	rebuilt := t.TempDir()
	stdout, stderr, err = build(rebuilt, true)
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(stderr).To(ContainSubstring("rebuilding as a new revision"))
	g.Expect(stdout).To(ContainSubstring("/images/nodes/minimal/" + digest + "/2/minimal.qcow2 (revision 2)\n"))
	g.Expect(stdout).To(MatchRegexp(`since %s \(revision 1\): no package changed`, digest[:12]))
	for key, info := range first {
		now, err := pub.Store.Stat(ctx, key)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(now).To(Equal(info), "revision 1's %s is untouched", key)
	}
	art2, err := pub.Lookup(ctx, "minimal", m.SpecDigest)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(art2.Revision).To(Equal(2))
	latest, err = pub.Latest(ctx, "minimal")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(latest.Revision).To(Equal(2))
	key, err := cryptoutils.UnmarshalPEMToPublicKey(pubPEM)
	g.Expect(err).NotTo(HaveOccurred())
	verifier, err := signature.LoadVerifier(key, crypto.SHA256)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(art2.CompanionKeys).To(HaveLen(5), "SBOM, provenance and the signatures of those and of the image: %v", art2.CompanionKeys)
	for _, file := range []string{"minimal.qcow2", "minimal.spdx.json", "minimal.provenance.json"} {
		sig, err := base64.StdEncoding.DecodeString(getObject(t, pub.Store, art2.CompanionKeys[file+".sig"]))
		g.Expect(err).NotTo(HaveOccurred(), file)
		f, err := os.Open(filepath.Join(rebuilt, file))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(verifier.VerifySignature(bytes.NewReader(sig), f)).To(Succeed(), file)
		f.Close()
	}
	signingKey = ""

	// One more package: a new digest, whose manifest records the image
	// published before it and the packages added since, with versions.
	more := filepath.Join(t.TempDir(), "minimal-jq.yaml")
	g.Expect(os.WriteFile(more, []byte("apiVersion: image.nodeforge.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: minimal\nspec:\n  packages: [jq]\n"), 0o644)).To(Succeed())
	third := t.TempDir()
	stdout, stderr, err = build(third, false, more)
	g.Expect(err).NotTo(HaveOccurred(), stderr)
	g.Expect(stdout).To(ContainSubstring("(revision 3)\n"))
	g.Expect(stdout).To(MatchRegexp(`since %s \(revision 2\): added (\S+ \S+, )*jq `, digest[:12]))
	m3, err := manifest.Read(filepath.Join(third, "minimal.json"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m3.SpecDigest).NotTo(Equal(m.SpecDigest))
	g.Expect(m3.Previous).NotTo(BeNil())
	g.Expect(m3.Previous.SpecDigest).To(Equal(m.SpecDigest))
	g.Expect(m3.Previous.Revision).To(Equal(2))
	g.Expect(m3.Previous.SHA256).To(Equal(art2.SHA256))
	g.Expect(m3.Previous.Changes.Added).To(ContainElement(And(HaveField("Name", "jq"), HaveField("To", Not(BeEmpty())))))
	g.Expect(m3.Previous.Changes.Removed).To(BeEmpty())
	g.Expect(m3.Previous.Changes).To(Equal(manifest.DiffPackages(m.Packages, m3.Packages)))
	latest, err = pub.Latest(ctx, "minimal")
	g.Expect(err).NotTo(HaveOccurred())
	published, err = manifest.Decode(strings.NewReader(getObject(t, pub.Store, latest.ManifestKey)))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(published.Previous).To(Equal(m3.Previous), "the published manifest is the local one")
}

// getObject reads a small object whole.
func getObject(t *testing.T, st storage.Store, key string) string {
	t.Helper()
	rc, _, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return string(b)
}

// TestBuildWithAMissingBucketFailsBeforeBuilding: --to a bucket that does
// not exist, without --create-bucket, fails at once, says what to do, and
// builds nothing.
func TestBuildWithAMissingBucketFailsBeforeBuilding(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	useServer(t, srv)
	out, work := t.TempDir(), t.TempDir()
	o := &buildOptions{file: minimalSample, outDir: out, workDir: work, cacheDir: t.TempDir(),
		noVerify: true, progress: "plain", to: "s3://absent/nodes", presignExpiry: time.Hour}
	var stdout, stderr bytes.Buffer
	err := runBuild(context.Background(), o, &stdout, &stderr)
	g.Expect(err).To(MatchError(And(ContainSubstring("absent"), ContainSubstring("bucket does not exist"),
		ContainSubstring("--create-bucket"))))
	g.Expect(os.ReadDir(out)).To(BeEmpty(), "nothing was built")
	g.Expect(os.ReadDir(work)).To(BeEmpty(), "nothing was built")
}
