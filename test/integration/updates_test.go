package integration

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

// TestCheckUpdates checks the shared cloud-base image's full package list
// against its real repositories (the Debian mirror and an author
// repository on loopback), then publishes a newer version of a package the
// image holds in the author repository and checks again: that package,
// and only it, is added to the upgrades, with both versions.
func TestCheckUpdates(t *testing.T) {
	t.Parallel() // see fixture_test.go
	cb := builtCloudBase(t)
	root := repoRoot(t)
	repo := newAuthorRepo(t, root, offlineRepoDir(t, root))
	c := cb.Content.DeepCopy()
	c.Kubernetes.AptRepository.URL = repo.URL
	c.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: string(repo.Key)}
	installed := cb.Result.Manifest.Packages
	i := slices.IndexFunc(installed, func(p manifest.Package) bool { return p.Name == probePackage })
	if i < 0 || installed[i].Version != "1.0" {
		t.Fatalf("the image's manifest has no %s 1.0", probePackage)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := builder.Options{Name: "cloud-base", WorkDir: t.TempDir(), CacheDir: filepath.Join(buildCacheRoot(), "apt-archives")}
	start := time.Now()
	before, err := builder.CheckUpdates(ctx, opts, *c, installed)
	if err != nil {
		t.Fatalf("CheckUpdates: %v", err)
	}
	t.Logf("before: %s (%s)", before.Summary(), time.Since(start).Round(time.Millisecond))
	if before.Checked != len(installed) {
		t.Errorf("checked %d packages, the image has %d", before.Checked, len(installed))
	}
	if len(before.Unavailable) != 0 {
		t.Errorf("packages of a fresh image not offered by its repositories: %+v", before.Unavailable)
	}
	if slices.ContainsFunc(before.Upgrades, func(c manifest.PackageChange) bool { return c.Name == probePackage }) {
		t.Errorf("%s has an upgrade before one was published: %+v", probePackage, before.Upgrades)
	}
	// The Kubernetes packages are pinned to kubernetes.version: the author
	// repository holds no other, and they are current.
	for _, u := range before.Upgrades {
		if slices.Contains([]string{"kubeadm", "kubelet", "kubectl"}, u.Name) {
			t.Errorf("pinned package %s has an upgrade: %+v", u.Name, u)
		}
	}

	repo.Publish(t, probePackage, "1.1", probePostinst)
	after, err := builder.CheckUpdates(ctx, opts, *c, installed)
	if err != nil {
		t.Fatalf("CheckUpdates after publishing %s 1.1: %v", probePackage, err)
	}
	t.Logf("after: %s", after.Summary())
	want := append(slices.Clone(before.Upgrades), manifest.PackageChange{Name: probePackage, Architecture: "all", From: "1.0", To: "1.1"})
	slices.SortFunc(want, func(a, b manifest.PackageChange) int { return strings.Compare(a.Name, b.Name) })
	if !slices.Equal(after.Upgrades, want) {
		t.Errorf("upgrades after publishing = %+v, want %+v", after.Upgrades, want)
	}
	if after.Digest == "" || after.Digest == before.Digest {
		t.Errorf("digest %q after, %q before: want a new one", after.Digest, before.Digest)
	}
}
