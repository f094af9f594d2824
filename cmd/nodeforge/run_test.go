package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
	"github.com/nodeforge/nodeforge/internal/verify"
)

// writeBuild writes a NodeImageBuild spec file as the manager mounts it.
func writeBuild(t *testing.T, dir string, mutate func(*imagev1.NodeImageBuild)) string {
	t.Helper()
	content := imagev1.ImageContent{Packages: []string{"jq"}}
	content.Default()
	digest, err := content.Digest()
	if err != nil {
		t.Fatal(err)
	}
	b := &imagev1.NodeImageBuild{
		TypeMeta:   metav1.TypeMeta{APIVersion: imagev1.GroupVersion.String(), Kind: imagev1.NodeImageBuildKind},
		ObjectMeta: metav1.ObjectMeta{Name: "demo-abc", Namespace: "default"},
		Spec: imagev1.NodeImageBuildSpec{NodeImageName: "demo", SpecDigest: digest,
			Reason: imagev1.BuildReasonFirstBuild, Image: content},
	}
	if mutate != nil {
		mutate(b)
	}
	raw, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readResult(t *testing.T, path string) buildresult.Result {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r buildresult.Result
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	return r
}

func TestRunReportsBadSpecsInTheResult(t *testing.T) {
	cases := map[string]struct {
		mutate func(*imagev1.NodeImageBuild)
		want   string
	}{
		"digest mismatch": {func(b *imagev1.NodeImageBuild) { b.Spec.SpecDigest = "sha256:" + strings.Repeat("0", 64) }, "does not match the content"},
		"unresolved reference": {func(b *imagev1.NodeImageBuild) {
			b.Spec.Image.Files = []imagev1.FileSpec{{Path: "/x", ConfigMapKeyRef: &corev1ConfigMapKeySelector}}
		}, "unresolved references"},
		"missing credentials": {func(b *imagev1.NodeImageBuild) {
			b.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: "http://127.0.0.1:1", Bucket: "images",
				Insecure: true, CredentialsSecretRef: corev1LocalRef}}
		}, "credentials Secret creds"},
		"registry credentials without the key": {func(b *imagev1.NodeImageBuild) {
			b.Spec.Builder.RegistryCredentials = &corev1.LocalObjectReference{Name: "pull"}
		}, "spec.builder.registryCredentials: Secret pull has no .dockerconfigjson key"},
		"signing without the key": {func(b *imagev1.NodeImageBuild) {
			b.Spec.Destination = &imagev1.DestinationSpec{Signing: &imagev1.SigningSpec{KeySecretRef: corev1.LocalObjectReference{Name: "cosign"}}}
		}, "spec.destination.signing.keySecretRef: Secret cosign: no cosign.key"},
		"unknown check name": {func(b *imagev1.NodeImageBuild) {
			b.Spec.Verification.Skip = []imagev1.CheckName{"boot-shh"}
		}, `unknown check name(s) in verification optional/skip (--optional/--skip): "boot-shh"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			dir := t.TempDir()
			o := &runOptions{spec: writeBuild(t, dir, tc.mutate), result: filepath.Join(dir, "result"), scratch: dir,
				credentialsDir: filepath.Join(dir, "no-credentials"), caDir: dir}
			var out bytes.Buffer
			err := runRun(context.Background(), o, &out, &out)
			g.Expect(err).To(MatchError(errRunFailed))
			r := readResult(t, o.result)
			g.Expect(r.Validate()).To(Succeed())
			g.Expect(r.Outcome).To(Equal(buildresult.OutcomeFailed))
			g.Expect(r.Message).To(ContainSubstring(tc.want))
			g.Expect(out.String()).To(ContainSubstring(`{"result":`))
		})
	}
}

// TestRegistryConfig: the mounted .dockerconfigjson becomes the Docker
// configuration DOCKER_CONFIG names, privately, until done; anything that
// is not a Docker configuration is refused without echoing it.
func TestRegistryConfig(t *testing.T) {
	g := NewWithT(t)
	t.Setenv("DOCKER_CONFIG", "/before")
	dir := t.TempDir()
	o := &runOptions{credentialsDir: dir}
	cfg := `{"auths":{"127.0.0.1:5000":{"auth":"cHVsbGVyOnMzY3JldA=="}}}`
	g.Expect(os.WriteFile(filepath.Join(dir, ".dockerconfigjson"), []byte(cfg), 0o400)).To(Succeed())
	done, err := o.registryConfig("pull")
	g.Expect(err).NotTo(HaveOccurred())
	cd := os.Getenv("DOCKER_CONFIG")
	g.Expect(cd).NotTo(Equal("/before"))
	got, err := os.ReadFile(filepath.Join(cd, "config.json"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(got)).To(Equal(cfg))
	fi, err := os.Stat(filepath.Join(cd, "config.json"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o600)))
	done()
	g.Expect(os.Getenv("DOCKER_CONFIG")).To(Equal("/before"))
	g.Expect(cd).NotTo(BeADirectory())

	g.Expect(os.WriteFile(filepath.Join(dir, ".dockerconfigjson"), []byte(`{"password":"hunter2"}`), 0o600)).To(Succeed())
	_, err = o.registryConfig("pull")
	g.Expect(err).To(MatchError(ContainSubstring("not a Docker configuration")))
	g.Expect(err.Error()).NotTo(ContainSubstring("hunter2"))
}

// TestRunReusesAPublishedArtifact publishes an artifact for a spec digest to
// a real MinIO, then runs a build of the same digest: it must succeed from
// the published artifact without building, with credentials read from a
// mounted-Secret-shaped directory.
func TestRunReusesAPublishedArtifact(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	dir := t.TempDir()
	spec := writeBuild(t, dir, func(b *imagev1.NodeImageBuild) {
		b.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: srv.Endpoint(), Bucket: "images",
			Prefix: "nodes", Insecure: true, CreateBucket: true, CredentialsSecretRef: corev1LocalRef}}
	})
	b, err := readBuild(spec)
	g.Expect(err).NotTo(HaveOccurred())

	creds := credentialsDir(t, dir, srv)
	// Published earlier, as an earlier build of the digest would have.
	published := publishEarlier(t, srv, b)

	o := &runOptions{spec: spec, result: filepath.Join(dir, "result"), scratch: filepath.Join(dir, "scratch"),
		credentialsDir: creds, caDir: dir}
	var out bytes.Buffer
	g.Expect(runRun(context.Background(), o, &out, &out)).To(Succeed(), out.String())
	r := readResult(t, o.result)
	g.Expect(r.Outcome).To(Equal(buildresult.OutcomeSucceeded))
	g.Expect(r.Artifact.URL).To(Equal(published.URL))
	g.Expect(r.Artifact.SHA256).To(Equal(published.SHA256))
	g.Expect(r.Artifact.ManifestURL).To(HaveSuffix("/manifest.json"))
	g.Expect(r.Artifact.PresignedURL).To(ContainSubstring("X-Amz-Signature="))
	g.Expect(out.String()).To(ContainSubstring("nothing to build"))
	g.Expect(filepath.Join(dir, "scratch", "work")).NotTo(BeADirectory(), "nothing was built")
	g.Expect(out.String()).NotTo(ContainSubstring(srv.SecretKey))
	g.Expect(r.Artifact.Revision).To(BeEquivalentTo(1))

	// A requested rebuild or one for Debian updates is built although
	// the digest is published (stopped here once it starts building).
	for _, reason := range []imagev1.BuildReason{imagev1.BuildReasonRebuildRequested, imagev1.BuildReasonBaseUpdated} {
		rebuild := writeBuild(t, t.TempDir(), func(b *imagev1.NodeImageBuild) {
			b.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: srv.Endpoint(), Bucket: "images",
				Prefix: "nodes", Insecure: true, CreateBucket: true, CredentialsSecretRef: corev1LocalRef}}
			b.Spec.Reason = reason
		})
		o := &runOptions{spec: rebuild, result: filepath.Join(t.TempDir(), "result"), scratch: t.TempDir(),
			credentialsDir: creds, caDir: dir}
		ctx, cancel := context.WithCancel(context.Background())
		w := &cancelOn{text: "rebuilding as a new revision", cancel: cancel}
		_ = runRun(ctx, o, w, w)
		cancel()
		g.Expect(w.seen).To(BeTrue(), "%s: %s", reason, w.buf.String())
		g.Expect(w.buf.String()).NotTo(ContainSubstring("nothing to build"), reason)
	}
}

// credentialsDir writes srv's keys as a mounted credentials Secret into
// dir/credentials and returns it.
func credentialsDir(t *testing.T, dir string, srv *miniotest.Server) string {
	t.Helper()
	creds := filepath.Join(dir, "credentials")
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"accessKeyID": srv.AccessKey, "secretAccessKey": srv.SecretKey} {
		if err := os.WriteFile(filepath.Join(creds, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return creds
}

// publishEarlier publishes a fake image of b's spec digest to b's S3
// destination on srv, as an earlier build would have, and returns it.
func publishEarlier(t *testing.T, srv *miniotest.Server, b *imagev1.NodeImageBuild) storage.Artifact {
	t.Helper()
	g := NewWithT(t)
	image, manPath := writeImage(t, t.TempDir(), "")
	m, err := manifest.Read(manPath)
	g.Expect(err).NotTo(HaveOccurred())
	m.Name, m.SpecDigest = "demo", b.Spec.SpecDigest
	g.Expect(m.Write(manPath)).To(Succeed())
	pub, _, err := storage.OpenDestination(*b.Spec.Destination.S3, b.Namespace, storage.NewCredentials(srv.AccessKey, srv.SecretKey, ""), nil)
	g.Expect(err).NotTo(HaveOccurred())
	m2, raw, err := readManifest(manPath)
	g.Expect(err).NotTo(HaveOccurred())
	published, _, err := publishImage(context.Background(), pub, image, m2, raw, nil, time.Hour, &bytes.Buffer{})
	g.Expect(err).NotTo(HaveOccurred())
	return published
}

// cancelOn collects what is written and cancels once text appears.
type cancelOn struct {
	buf    bytes.Buffer
	text   string
	cancel context.CancelFunc
	seen   bool
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.buf.Write(p)
	if !c.seen && strings.Contains(c.buf.String(), c.text) {
		c.seen = true
		c.cancel()
	}
	return len(p), nil
}

var (
	corev1LocalRef             = corev1.LocalObjectReference{Name: "creds"}
	corev1ConfigMapKeySelector = corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k"}
)

// The builder's result lists every check with its category; boot and
// cluster checks carry their durations, offline ones do not.
func TestResultOfListsChecksWithDurations(t *testing.T) {
	r := &verify.Report{Accelerator: "tcg"}
	r.Add(verify.Check{Name: "hygiene-logs", Category: verify.Offline, Passed: true, Required: true, DurationSeconds: 0.3})
	r.Add(verify.Check{Name: "boot-ssh", Category: verify.Boot, Passed: true, Required: true, DurationSeconds: 31.04})
	r.Add(verify.Check{Name: "cluster-node-ready", Category: imagev1.CheckCategoryCluster, Required: true, DurationSeconds: 61.25})
	res := resultOf(&pipelineResult{Report: r})
	v := res.Verification
	if v == nil || v.Passed != 2 || v.Failed != 1 || res.Accelerator != "tcg" {
		t.Fatalf("verification = %+v, accelerator %q", v, res.Accelerator)
	}
	want := []string{"O+hygiene-logs", "B+boot-ssh@31", "C-cluster-node-ready@61.3"}
	if strings.Join(v.Checks, " ") != strings.Join(want, " ") {
		t.Fatalf("checks = %q, want %q", v.Checks, want)
	}
	if strings.Join(v.FailedChecks, " ") != "cluster-node-ready" {
		t.Fatalf("failed checks = %q", v.FailedChecks)
	}
}

// The result counts the package changes the manifest records and names
// the first ones; without a previous image it has none.
func TestResultOfCountsPackageChanges(t *testing.T) {
	g := NewWithT(t)
	m := &manifest.Manifest{Image: manifest.Image{SHA256: "ab", Size: 1, Format: "qcow2"}}
	g.Expect(resultOf(&pipelineResult{Manifest: m}).Changes).To(BeNil())

	var added []manifest.PackageChange
	for i := range 60 {
		added = append(added, manifest.PackageChange{Name: fmt.Sprintf("package-with-a-long-name-%02d", i), Architecture: "amd64", To: "1.0-1"})
	}
	m.Previous = &manifest.Previous{SpecDigest: "sha256:" + strings.Repeat("1", 64), Changes: manifest.PackageDiff{
		Upgraded: []manifest.PackageChange{{Name: "libc6", Architecture: "amd64", From: "2.41-12", To: "2.41-12+deb13u1"}},
		Added:    added,
	}}
	c := resultOf(&pipelineResult{Manifest: m}).Changes
	g.Expect(c).NotTo(BeNil())
	g.Expect(c.Previous).To(Equal(m.Previous.SpecDigest))
	g.Expect([]int32{c.Upgraded, c.Downgraded, c.Added, c.Removed}).To(Equal([]int32{1, 0, 60, 0}))
	g.Expect(c.Summary).To(HavePrefix("upgraded libc6 2.41-12 → 2.41-12+deb13u1; added package-with-a-long-name-00 1.0-1, "))
	g.Expect(c.Summary).To(MatchRegexp(`; and \d+ more$`))
	g.Expect(len(c.Summary)).To(BeNumerically("<=", buildresult.ChangesSummaryLimit))
}

func TestCheckProgressLogsWhyACheckFailed(t *testing.T) {
	g := NewWithT(t)
	ok := verify.Check{Name: "cluster-node-ready", Category: verify.Cluster, Passed: true, Required: true, Message: "node Ready", DurationSeconds: 6.1}
	bad := verify.Check{Name: "cluster-coredns-running", Category: verify.Cluster, Required: true,
		Message: "CoreDNS is not Running and Ready after 5m:\n--- pods\ncoredns-1 Pending", DurationSeconds: 300}

	var stdout, stderr bytes.Buffer
	progress := checkProgress(true, false, &stdout, &stderr)
	progress(ok)
	progress(bad)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	g.Expect(lines).To(HaveLen(2), "one progress event per check on stdout")
	for _, l := range lines {
		var ev map[string]any
		g.Expect(json.Unmarshal([]byte(l), &ev)).To(Succeed(), "stdout holds only JSON events: %s", l)
	}
	g.Expect(lines[1]).To(ContainSubstring(`"FAIL cluster-coredns-running"`))
	g.Expect(stderr.String()).To(Equal("FAIL cluster-coredns-running:\n" +
		"  | CoreDNS is not Running and Ready after 5m:\n  | --- pods\n  | coredns-1 Pending\n"))

	stdout.Reset()
	stderr.Reset()
	progress = checkProgress(false, false, &stdout, &stderr)
	progress(ok)
	progress(bad)
	g.Expect(stdout.String()).To(BeEmpty())
	g.Expect(stderr.String()).To(Equal("  ok   cluster-node-ready\n  FAIL cluster-coredns-running\n" +
		"       | CoreDNS is not Running and Ready after 5m:\n       | --- pods\n       | coredns-1 Pending\n"))

	// nodeforge verify --quiet: the failed checks only, with why.
	stderr.Reset()
	progress = checkProgress(false, true, &stdout, &stderr)
	progress(ok)
	progress(bad)
	g.Expect(stderr.String()).To(Equal("  FAIL cluster-coredns-running\n" +
		"       | CoreDNS is not Running and Ready after 5m:\n       | --- pods\n       | coredns-1 Pending\n"))
}
