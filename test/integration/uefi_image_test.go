package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
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

	dir := t.TempDir()
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := builder.Build(ctx, builder.Options{
		Name: "uefi-only", WorkDir: filepath.Join(dir, "work"), OutDir: filepath.Join(dir, "out"),
		CacheDir: filepath.Join(buildCacheRoot(), "apt-archives"),
		Reporter: &builder.PlainReporter{W: &log},
	}, c)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}

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
	raw := filepath.Join(dir, "uefi.raw")
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
}
