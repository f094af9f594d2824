package integration

import (
	"bytes"
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/verify"
)

// TestBuildAndVerifyUEFIOnlyImage builds an image with disk.bootMode uefi
// (the API's defaults otherwise, no Kubernetes packages) and verifies it
// offline and by booting it under OVMF: the disk has an ESP and no BIOS boot
// partition, no BIOS boot code is checked, and the guest comes up with
// cloud-init. Cost: a build of about 40 s with a warm package cache and a
// TCG boot of about a minute.
func TestBuildAndVerifyUEFIOnlyImage(t *testing.T) {
	t.Parallel()      // see fixture_test.go
	builtCloudBase(t) // the same prerequisites (root, tools), and a warm package cache
	verifyNeedTools(t, "cloud-localds")
	if _, err := os.Stat("/usr/share/OVMF/OVMF_CODE_4M.fd"); err != nil {
		if _, err := os.Stat("/usr/share/OVMF/OVMF_CODE.fd"); err != nil {
			buildUnavailable(t, "OVMF is not installed (package ovmf)")
		}
	}
	var c imagev1.ImageContent
	c.Disk.BootMode = imagev1.BootModeUEFI
	c.Default()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res := buildUEFIOnly(ctx, t, c)

	r, err := verify.Verify(ctx, res.ImagePath, c, verify.Options{Boot: true, BootTimeout: verifyBootTimeout, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	verifyLogReport(t, r)
	if failed := r.RequiredFailures(); len(failed) > 0 {
		t.Fatalf("required checks failed on a UEFI-only image: %v\nconsole:\n%s", failed, r.ConsoleTail)
	}
	for _, name := range []string{verify.CheckBootSSH, verify.CheckBootCloudInit, "filesystem-esp", "bootloader-uefi", "partition-table"} {
		if c := verifyFind(t, r, name); !c.Passed {
			t.Errorf("%s = %+v, want passed", name, c)
		}
	}
	for _, ch := range r.Checks {
		if ch.Name == "bootloader-bios" {
			t.Errorf("a UEFI-only image was checked for BIOS boot code: %+v", ch)
		}
	}
	raw := filepath.Join(t.TempDir(), "uefi.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", res.ImagePath, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	out, err := exec.Command("sfdisk", "--json", raw).Output()
	if err != nil {
		t.Fatalf("sfdisk --json: %v", err)
	}
	if !bytes.Contains(bytes.ToUpper(out), []byte(verify.GUIDESP)) || bytes.Contains(bytes.ToUpper(out), []byte(verify.GUIDBIOSBoot)) {
		t.Errorf("want an ESP and no BIOS boot partition:\n%s", out)
	}

	t.Run("a package added rebuilds on the cached base layer", func(t *testing.T) {
		rebuildOnCachedBase(ctx, t, c, res, r)
	})
}

// buildUEFIOnly builds c as "uefi-only" into a temp dir (out/ and work/)
// with the shared package cache.
func buildUEFIOnly(ctx context.Context, t *testing.T, c imagev1.ImageContent) *builder.Result {
	t.Helper()
	dir := t.TempDir()
	var log bytes.Buffer
	res, err := builder.Build(ctx, builder.Options{
		Name: "uefi-only", WorkDir: filepath.Join(dir, "work"), OutDir: filepath.Join(dir, "out"),
		CacheDir: filepath.Join(buildCacheRoot(), "apt-archives"),
		Reporter: &builder.PlainReporter{W: &log},
	}, c)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}
	return res
}

// rebuildOnCachedBase builds content c again with one package added (the
// incremental rebuild of issue 15): the base layer c's build used (made or
// reused) is reused, the new image holds exactly the old one's packages
// plus the new one and its dependencies, and the offline checks come out
// the same (with the new package's check added).
func rebuildOnCachedBase(ctx context.Context, t *testing.T, c imagev1.ImageContent, first *builder.Result, firstReport *verify.Report) {
	if first.Manifest.Base.Layer == "" {
		t.Fatal("the first build used no base layer")
	}
	c.Packages = append(c.Packages, "jq")
	res := buildUEFIOnly(ctx, t, c)
	t.Logf("rebuild steps: %+v", res.Manifest.Steps)
	if b := res.Manifest.Base; b.Layer != first.Manifest.Base.Layer || !b.LayerReused {
		t.Errorf("base layer %q reused %v; want %s reused", b.Layer, b.LayerReused, first.Manifest.Base.Layer)
	}
	d := manifest.DiffPackages(first.Manifest.Packages, res.Manifest.Packages)
	var added []string
	for _, p := range d.Added {
		added = append(added, p.Name)
	}
	if len(d.Upgraded)+len(d.Downgraded)+len(d.Removed) > 0 || !slices.Contains(added, "jq") {
		t.Errorf("packages changed by more than jq and its dependencies: %+v", d)
	}
	r, err := verify.Verify(ctx, res.ImagePath, c, verify.Options{WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	offline := func(r *verify.Report) map[string]bool {
		out := map[string]bool{}
		for _, ch := range r.Checks {
			if ch.Category != verify.Boot {
				out[ch.Name] = ch.Passed
			}
		}
		return out
	}
	// The same results, and one check more: the added package's.
	a, b := offline(firstReport), offline(r)
	if passed, ok := b["package-jq"]; !ok || !passed {
		t.Errorf("package-jq = %v (checked: %v); want a passed check for the added package", passed, ok)
	}
	delete(b, "package-jq")
	if !maps.Equal(a, b) {
		t.Errorf("offline checks differ:\nfirst build %v\nrebuild     %v", a, b)
	}
}
