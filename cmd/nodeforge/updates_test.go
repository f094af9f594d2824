package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

func TestFetchManifest(t *testing.T) {
	g := NewWithT(t)
	m := &manifest.Manifest{SchemaVersion: manifest.SchemaVersion, Name: "cloud-base", Packages: []manifest.Package{{Name: "htop", Version: "3.4.1-5", Architecture: "amd64"}}}
	path := filepath.Join(t.TempDir(), "cloud-base.json")
	g.Expect(m.Write(path)).To(Succeed())
	raw, err := os.ReadFile(path)
	g.Expect(err).NotTo(HaveOccurred())

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/bucket/cloud-base/manifest.json" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(raw)
	}))
	defer srv.Close()

	for _, src := range []string{path, srv.URL + "/bucket/cloud-base/manifest.json?X-Amz-Signature=s3cr3t"} {
		got, err := fetchManifest(context.Background(), src)
		g.Expect(err).NotTo(HaveOccurred(), src)
		g.Expect(got.Packages).To(Equal(m.Packages), src)
	}
	// A failed fetch names the object, never the presigned query.
	_, err = fetchManifest(context.Background(), srv.URL+"/bucket/other/manifest.json?X-Amz-Signature=s3cr3t")
	g.Expect(err).To(MatchError(ContainSubstring("/bucket/other/manifest.json: 404")))
	g.Expect(err.Error()).NotTo(ContainSubstring("s3cr3t"))
	_, err = fetchManifest(context.Background(), "http://127.0.0.1:1/m.json?X-Amz-Signature=s3cr3t")
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).NotTo(ContainSubstring("s3cr3t"))
	_, err = fetchManifest(context.Background(), filepath.Join(t.TempDir(), "missing.json"))
	g.Expect(err).To(HaveOccurred())
}

func TestWriteUpdatesText(t *testing.T) {
	g := NewWithT(t)
	var b bytes.Buffer
	writeUpdatesText(&b, &builder.Updates{Checked: 240})
	g.Expect(b.String()).To(Equal("all 240 packages are current\n"))

	b.Reset()
	writeUpdatesText(&b, &builder.Updates{Checked: 240,
		Upgrades:    []manifest.PackageChange{{Name: "libc6", Architecture: "amd64", From: "2.41-12", To: "2.41-12+deb13u1"}},
		Unavailable: []manifest.PackageChange{{Name: "libgone", Architecture: "all", From: "1.0"}}})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	g.Expect(lines).To(HaveLen(4))
	g.Expect(lines[0]).To(Equal("1 of 240 packages have newer versions: libc6 2.41-12 → 2.41-12+deb13u1; 1 no longer offered by any repository"))
	g.Expect(strings.Fields(lines[2])).To(Equal([]string{"libc6", "amd64", "2.41-12", "2.41-12+deb13u1"}))
	g.Expect(strings.Fields(lines[3])).To(Equal([]string{"libgone", "all", "1.0", "(not", "offered)"}))
}

func TestUpdatesRejectsBadOutput(t *testing.T) {
	g := NewWithT(t)
	err := runUpdates(context.Background(), &updatesOptions{output: "yaml"}, &bytes.Buffer{})
	g.Expect(err).To(MatchError(ContainSubstring(`--output: "yaml" is not text or json`)))
}
