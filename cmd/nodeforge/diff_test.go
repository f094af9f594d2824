package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/nodeforge/nodeforge/internal/manifest"
)

func writeManifest(t *testing.T, dir, file, digest, kernel string, pkgs ...manifest.Package) string {
	t.Helper()
	m := &manifest.Manifest{
		SchemaVersion: manifest.SchemaVersion, Name: "cloud-base", SpecDigest: digest,
		CreatedAt: time.Date(2026, 12, 7, 1, 2, 3, 0, time.UTC),
		Base:      manifest.Base{KernelVersion: kernel}, Packages: pkgs,
	}
	p := filepath.Join(dir, file)
	if err := m.Write(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func runDiff(args ...string) (string, error) {
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"diff"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

func TestDiffCommand(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	a := writeManifest(t, dir, "a.json", "sha256:aa", "6.12.57+deb13-cloud-amd64",
		manifest.Package{Name: "openssl", Version: "3.5.1-1", Architecture: "amd64"},
		manifest.Package{Name: "linux-image-6.12.57+deb13-cloud-amd64", Version: "6.12.57-1", Architecture: "amd64"},
		manifest.Package{Name: "vim", Version: "2:9.1.1230-2", Architecture: "amd64"})
	b := writeManifest(t, dir, "b.json", "sha256:bb", "6.12.58+deb13-cloud-amd64",
		manifest.Package{Name: "openssl", Version: "3.5.1-1+deb13u1", Architecture: "amd64"},
		manifest.Package{Name: "linux-image-6.12.58+deb13-cloud-amd64", Version: "6.12.58-1", Architecture: "amd64"},
		manifest.Package{Name: "vim", Version: "2:9.1.1230-2", Architecture: "amd64"})

	out, err := runDiff(a, b)
	g.Expect(err).NotTo(HaveOccurred())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	g.Expect(lines[0]).To(Equal("old: cloud-base, spec sha256:aa, built 2026-12-07T01:02:03Z"))
	g.Expect(lines[1]).To(HavePrefix("new: cloud-base, spec sha256:bb"))
	g.Expect(lines[2]).To(Equal("kernel: 6.12.57+deb13-cloud-amd64 -> 6.12.58+deb13-cloud-amd64"))
	g.Expect(lines[3]).To(MatchRegexp(`^CHANGE\s+PACKAGE\s+ARCH\s+FROM\s+TO$`))
	g.Expect(lines[4]).To(MatchRegexp(`^upgraded\s+openssl\s+amd64\s+3\.5\.1-1\s+3\.5\.1-1\+deb13u1$`))
	g.Expect(lines[5]).To(MatchRegexp(`^added\s+linux-image-6\.12\.58\+deb13-cloud-amd64\s+amd64\s+-\s+6\.12\.58-1$`))
	g.Expect(lines[6]).To(MatchRegexp(`^removed\s+linux-image-6\.12\.57\+deb13-cloud-amd64\s+amd64\s+6\.12\.57-1\s+-$`))
	g.Expect(lines[7]).To(Equal("packages: 1 upgraded, 0 downgraded, 1 added, 1 removed"))
	g.Expect(out).NotTo(ContainSubstring("vim"), "an unchanged package is not listed")

	out, err = runDiff("-o", "json", a, b)
	g.Expect(err).NotTo(HaveOccurred())
	var j struct {
		Old      struct{ SpecDigest, KernelVersion string }
		New      struct{ SpecDigest string }
		Upgraded []manifest.PackageChange
		Added    []manifest.PackageChange
		Removed  []manifest.PackageChange
	}
	g.Expect(json.Unmarshal([]byte(out), &j)).To(Succeed(), out)
	g.Expect(j.Old.SpecDigest).To(Equal("sha256:aa"))
	g.Expect(j.Old.KernelVersion).To(Equal("6.12.57+deb13-cloud-amd64"))
	g.Expect(j.New.SpecDigest).To(Equal("sha256:bb"))
	g.Expect(j.Upgraded).To(Equal([]manifest.PackageChange{{Name: "openssl", Architecture: "amd64", From: "3.5.1-1", To: "3.5.1-1+deb13u1"}}))
	g.Expect(j.Added).To(HaveLen(1))
	g.Expect(j.Removed).To(HaveLen(1))

	out, err = runDiff(a, a)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(HaveSuffix("packages: no changes\n"))
	g.Expect(out).NotTo(ContainSubstring("kernel:"))
}

func TestDiffCommandErrors(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	a := writeManifest(t, dir, "a.json", "sha256:aa", "")
	notManifest := filepath.Join(dir, "other.json")
	g.Expect(os.WriteFile(notManifest, []byte(`{"schemaVersion":"something/v9"}`), 0o644)).To(Succeed())

	_, err := runDiff(a)
	g.Expect(err).To(MatchError(ContainSubstring("accepts 2 arg(s)")))
	_, err = runDiff(a, filepath.Join(dir, "missing.json"))
	g.Expect(err).To(MatchError(ContainSubstring("missing.json")))
	_, err = runDiff(a, notManifest)
	g.Expect(err).To(MatchError(And(ContainSubstring("other.json"), ContainSubstring(`schemaVersion "something/v9"`))))
	_, err = runDiff("-o", "yaml", a, a)
	g.Expect(err).To(MatchError(ContainSubstring(`--output: "yaml" is not text or json`)))
}
