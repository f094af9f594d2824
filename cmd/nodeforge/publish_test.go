package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// writeImage writes a fake image and a manifest describing it (with the
// given sha256, or the real one when empty).
func writeImage(t *testing.T, dir, sum string) (image, man string) {
	t.Helper()
	data := bytes.Repeat([]byte("nodeforge"), 1<<17)
	image = filepath.Join(dir, "demo.qcow2")
	if err := os.WriteFile(image, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if sum == "" {
		h := sha256.Sum256(data)
		sum = hex.EncodeToString(h[:])
	}
	m := &manifest.Manifest{
		SchemaVersion: manifest.SchemaVersion, Name: "demo",
		SpecDigest: "sha256:" + strings.Repeat("cd", 32),
		Image:      manifest.Image{File: "demo.qcow2", Format: "qcow2", SHA256: sum, Size: int64(len(data))},
	}
	man = filepath.Join(dir, "demo.json")
	if err := m.Write(man); err != nil {
		t.Fatal(err)
	}
	return image, man
}

func useServer(t *testing.T, srv *miniotest.Server) {
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

func TestPublishToRealS3(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	useServer(t, srv)
	image, _ := writeImage(t, t.TempDir(), "")

	var out, log bytes.Buffer
	err := runPublish(context.Background(), image, publishOptions{to: "s3://images/team", createBucket: true, presignExpiry: time.Hour}, &out, &log)
	g.Expect(err).NotTo(HaveOccurred(), log.String())
	g.Expect(out.String()).To(MatchRegexp(`artifact:  \S+/images/team/demo/` + strings.Repeat("cd", 32) + `/1/demo.qcow2\nrevision:  1\n`))
	g.Expect(log.String()).To(ContainSubstring("100%"))
	g.Expect(log.String() + out.String()).NotTo(ContainSubstring(srv.SecretKey))

	// The presigned URL serves the exact bytes.
	url := regexp.MustCompile(`presigned: (\S+)`).FindStringSubmatch(out.String())
	g.Expect(url).To(HaveLen(2))
	resp, err := http.Get(url[1])
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want, _ := os.ReadFile(image)
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	g.Expect(body).To(Equal(want))
}

func TestPublishRefusesAnImageThatDoesNotMatchItsManifest(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	useServer(t, srv)
	image, _ := writeImage(t, t.TempDir(), strings.Repeat("00", 32))

	var out, log bytes.Buffer
	err := runPublish(context.Background(), image, publishOptions{to: "s3://images", createBucket: true, presignExpiry: time.Hour}, &out, &log)
	g.Expect(err).To(MatchError(ContainSubstring("does not match the sha256 in its manifest")))
	g.Expect(out.String()).To(BeEmpty())
}

func TestPublishInputErrors(t *testing.T) {
	g := NewWithT(t)
	image, _ := writeImage(t, t.TempDir(), "")
	err := runPublish(context.Background(), image, publishOptions{to: "http://bucket", presignExpiry: time.Hour}, io.Discard, io.Discard)
	g.Expect(err).To(MatchError(ContainSubstring("--to http://bucket")))
	err = runPublish(context.Background(), image, publishOptions{to: "s3://b", presignExpiry: 30 * 24 * time.Hour}, io.Discard, io.Discard)
	g.Expect(err).To(MatchError(ContainSubstring("--presign-expiry")))
	err = runPublish(context.Background(), image, publishOptions{to: "s3://bucket", manifestPath: "/nonexistent.json", presignExpiry: time.Hour}, io.Discard, io.Discard)
	g.Expect(err).To(MatchError(ContainSubstring("reading the build manifest")))
}

// recordPrevious against a real MinIO: nothing published, then a
// published image whose manifest the next one's diff is taken against,
// then a damaged latest pointer, which is reported and not fatal.
func TestRecordPrevious(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	srv := miniotest.Start(t, miniotest.Config{})
	useServer(t, srv)
	pub, _, err := (&buildOptions{to: "s3://images/team", createBucket: true}).publisher(nil, "default")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pub.EnsureDestination(ctx)).To(Succeed())

	dir := t.TempDir()
	image, manPath := writeImage(t, dir, "")
	newResult := func(pkgs ...manifest.Package) *builder.Result {
		m, err := manifest.Read(manPath)
		g.Expect(err).NotTo(HaveOccurred())
		m.Packages, m.Previous = pkgs, nil
		g.Expect(m.Write(manPath)).To(Succeed())
		return &builder.Result{Manifest: m, ImagePath: image, ManifestPath: manPath}
	}
	var stderr bytes.Buffer
	p := &pipeline{Name: "demo", Publisher: pub, Stderr: &stderr}

	first := newResult(manifest.Package{Name: "libc6", Version: "2.41-12", Architecture: "amd64"})
	p.recordPrevious(ctx, first.Manifest)
	g.Expect(first.Manifest.Previous).To(BeNil(), "nothing published yet")
	m, raw, err := readManifest(manPath)
	g.Expect(err).NotTo(HaveOccurred())
	_, _, err = publishImage(ctx, pub, image, m, raw, nil, time.Hour, io.Discard)
	g.Expect(err).NotTo(HaveOccurred())

	second := newResult(manifest.Package{Name: "libc6", Version: "2.41-12+deb13u1", Architecture: "amd64"},
		manifest.Package{Name: "jq", Version: "1.7.1-6", Architecture: "amd64"})
	p.recordPrevious(ctx, second.Manifest)
	prev := second.Manifest.Previous
	g.Expect(prev).NotTo(BeNil())
	g.Expect(prev.SpecDigest).To(Equal(m.SpecDigest))
	g.Expect(prev.SHA256).To(Equal(m.Image.SHA256))
	g.Expect(prev.Changes.Upgraded).To(Equal([]manifest.PackageChange{{Name: "libc6", Architecture: "amd64", From: "2.41-12", To: "2.41-12+deb13u1"}}))
	g.Expect(prev.Changes.Added).To(Equal([]manifest.PackageChange{{Name: "jq", Architecture: "amd64", To: "1.7.1-6"}}))
	g.Expect(stderr.String()).To(BeEmpty())

	// A damaged latest pointer: reported, not fatal, nothing recorded.
	_, err = pub.Store.PutBytes(ctx, pub.LatestKey("demo"), []byte("not json"), storage.PutOptions{ContentType: "application/json"})
	g.Expect(err).NotTo(HaveOccurred())
	third := newResult()
	p.recordPrevious(ctx, third.Manifest)
	g.Expect(third.Manifest.Previous).To(BeNil())
	g.Expect(stderr.String()).To(ContainSubstring("warning: the previously published image of demo cannot be read"))
}
