// Package aptrepotest serves a signed flat apt repository on 127.0.0.1 for
// tests: a repository a NodeImage author controls (spec.kubernetes.
// aptRepository), holding the offline Kubernetes packages
// (hack/k8s-apt-repo.sh build) and whatever packages a test publishes into
// it, indexed and signed with a throwaway key by hack/k8s-apt-repo.sh index
// as an author publishing an update would. The integration tests and the
// e2e suite share it.
package aptrepotest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
)

// Tools are the commands a Repo needs (Debian packages apt-utils, dpkg,
// gpg, gpgconf).
var Tools = []string{"apt-ftparchive", "dpkg-deb", "gpg", "gpgconf"}

// T is what a Repo needs of a test: *testing.T, or Ginkgo's GinkgoT().
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// Repo is a served repository. It stops, and its key's agent is killed,
// when the test that started it ends.
type Repo struct {
	// URL ends in "/"; it is the repository's flat base.
	URL string
	// Key is the armored public signing key.
	Key   []byte
	root  string // the checkout, for hack/k8s-apt-repo.sh
	dir   string // the served directory
	gnupg string // the signing key's home
}

// Start serves the .debs of offline/amd64 (the offline Kubernetes
// repository's directory) from a copy, indexed and signed, for as long as
// t runs. root is the repository checkout.
func Start(t T, root, offline string) *Repo {
	t.Helper()
	for _, tool := range Tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (hack/deps.sh installs it)", tool)
		}
	}
	dir := t.TempDir()
	r := &Repo{root: root, dir: filepath.Join(dir, "repo"), gnupg: filepath.Join(dir, "gnupg")}
	debs, err := filepath.Glob(filepath.Join(offline, "amd64", "*.deb"))
	if err != nil || len(debs) == 0 {
		t.Fatalf("no packages in the offline repository %s", offline)
	}
	if err := os.MkdirAll(filepath.Join(r.dir, "amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range debs {
		dst := filepath.Join(r.dir, "amd64", filepath.Base(d))
		if err := os.Link(d, dst); err != nil {
			b, rerr := os.ReadFile(d)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { _ = exec.Command("gpgconf", "--homedir", r.gnupg, "--kill", "gpg-agent").Run() })
	r.index(t)
	if r.Key, err = os.ReadFile(filepath.Join(r.dir, "Release.key")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(r.dir)))
	t.Cleanup(srv.Close)
	r.URL = srv.URL + "/"
	return r
}

// Publish adds package name in version (Architecture: all, with postinst as
// its maintainer script when not empty) and indexes and signs the
// repository again. Publishing a newer version of a package keeps the
// older one, as a real repository's pool does.
func (r *Repo) Publish(t T, name, version, postinst string) {
	t.Helper()
	pkg, err := os.MkdirTemp(filepath.Dir(r.dir), "pkg-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(pkg)
	files := map[string]string{"control": fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: all\n"+
		"Maintainer: nodeforge tests <tests@nodeforge.invalid>\nDescription: a package of a nodeforge test\n", name, version)}
	if postinst != "" {
		files["postinst"] = postinst
	}
	if err := os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755); err != nil {
		t.Fatal(err)
	}
	for file, body := range files {
		if err := os.WriteFile(filepath.Join(pkg, "DEBIAN", file), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(r.dir, "amd64", name+"_"+version+"_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	r.index(t)
}

// index indexes and signs the repository as hack/k8s-apt-repo.sh does its
// own, with this repository's throwaway key (made on the first call).
func (r *Repo) index(t T) {
	t.Helper()
	cmd := exec.Command(filepath.Join(r.root, "hack", "k8s-apt-repo.sh"), "index", "--gnupg", r.gnupg,
		"--uid", "nodeforge author repository (throwaway test key) <author@nodeforge.invalid>",
		"--label", "nodeforge author repository (test)", r.dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/k8s-apt-repo.sh index: %v\n%s", err, out)
	}
}
