package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/verify"
)

// arm64Sample is the NodeImage make image-arm64 builds.
const arm64Sample = "config/samples/image_v1alpha1_nodeimage_minimal_arm64.yaml"

// arm64BootTimeout bounds the TCG boot of the arm64 image: every
// instruction of firmware, kernel and userland is translated, so it is
// several times slower than an amd64 guest under TCG.
const arm64BootTimeout = 20 * time.Minute

// TestBuildAndVerifyARM64Image builds the minimal arm64 sample on this
// (amd64) host, its binaries run through qemu-user-static, and verifies it
// offline: UEFI only (no BIOS boot partition, no BIOS boot code), the arm64
// root partition type, EFI/BOOT/BOOTAA64.EFI an arm64 PE image, the arm64
// kernel and every package installed; then it boots it under
// qemu-system-aarch64 (virt, AAVMF, TCG) through SSH, cloud-init and the
// node checks (about 6 minutes here; NODEFORGE_ARM64_BOOT=0 skips the boot).
//
// The test runs only with NODEFORGE_ARM64=1 (make test-arm64), not in CI:
// cold, the emulated package installs take about 23 minutes on 2 cores,
// warm (the base layer cached) about 1 minute (docs/benchmarks.md).
func TestBuildAndVerifyARM64Image(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a real image (minutes); not with -short")
	}
	if os.Getenv("NODEFORGE_ARM64") != "1" {
		t.Skip("the arm64 build is opt-in: set NODEFORGE_ARM64=1 (make test-arm64)")
	}
	t.Parallel() // see fixture_test.go
	if os.Geteuid() != 0 {
		buildUnavailable(t, "building an image needs root (mmdebstrap --mode=root)")
	}
	for _, tool := range []string{"mmdebstrap", "arch-test", "sfdisk", "mkfs.ext4", "mkfs.fat", "mmd", "mcopy", "grub-mkimage", "qemu-img", "debugfs", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			buildUnavailable(t, "%s is not installed (hack/deps.sh installs the builder's tools)", tool)
		}
	}
	if arch.Host() == imagev1.ArchitectureAMD64 {
		if _, err := exec.LookPath("qemu-aarch64-static"); err != nil {
			buildUnavailable(t, "qemu-user-static is not installed: arm64 binaries cannot run on this amd64 host")
		}
	}
	boot := os.Getenv("NODEFORGE_ARM64_BOOT") != "0"
	if boot {
		verifyNeedTools(t, "qemu-system-aarch64", "cloud-localds")
		if _, err := os.Stat("/usr/share/AAVMF/AAVMF_CODE.fd"); err != nil {
			buildUnavailable(t, "AAVMF is not installed (package qemu-efi-aarch64)")
		}
	}

	root := repoRoot(t)
	img, get, err := resolve.LoadFile(filepath.Join(root, arm64Sample))
	if err != nil {
		t.Fatal(err)
	}
	c, err := resolve.Content(context.Background(), &img.Spec.ImageContent, get)
	if err != nil {
		t.Fatal(err)
	}
	c.Default()
	if c.Base.Architecture != imagev1.ArchitectureARM64 || c.Disk.BootMode != imagev1.BootModeHybrid {
		t.Fatalf("the sample is %s/%s; want arm64 with the default boot mode (hybrid, which is UEFI on arm64)", c.Base.Architecture, c.Disk.BootMode)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var log bytes.Buffer
	start := time.Now()
	res, err := builder.Build(ctx, builder.Options{
		Name: "minimal-arm64", WorkDir: filepath.Join(dir, "work"), OutDir: filepath.Join(dir, "out"),
		CacheDir: filepath.Join(buildCacheRoot(), "apt-archives"),
		Reporter: &builder.PlainReporter{W: &log},
	}, *c)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}
	t.Logf("arm64 build: %s; steps %+v", time.Since(start).Round(time.Second), res.Manifest.Steps)
	if !strings.HasSuffix(res.Manifest.Base.KernelVersion, "-arm64") {
		t.Errorf("kernel %q, want an arm64 kernel", res.Manifest.Base.KernelVersion)
	}
	for _, p := range res.Manifest.Packages {
		if p.Architecture != "arm64" && p.Architecture != "all" {
			t.Errorf("package %s is for %s", p.Name, p.Architecture)
		}
	}

	start = time.Now()
	r, err := verify.Verify(ctx, res.ImagePath, *c, verify.Options{Boot: boot, BootTimeout: arm64BootTimeout, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("arm64 verification (boot %v): %s, %s", boot, time.Since(start).Round(time.Second), r.AcceleratorNote)
	verifyLogReport(t, r)
	if failed := r.RequiredFailures(); len(failed) > 0 {
		t.Fatalf("required checks failed on the arm64 image: %v\nconsole:\n%s", failed, r.ConsoleTail)
	}
	want := []string{"partition-table", "filesystem-esp", "bootloader-uefi", "kernel-initrd-present", "packages-consistent", "package-linux-image-cloud-arm64", "package-grub-efi-arm64-bin"}
	if boot {
		want = append(want, verify.CheckBootSSH, verify.CheckBootCloudInit)
	}
	for _, name := range want {
		if ch := verifyFind(t, r, name); !ch.Passed {
			t.Errorf("%s = %+v, want passed", name, ch)
		}
	}
	if d := verifyFind(t, r, "bootloader-uefi").Message; !strings.Contains(d, "BOOTAA64.EFI") || !strings.Contains(d, "arm64 PE") {
		t.Errorf("bootloader-uefi: %q, want BOOTAA64.EFI, an arm64 PE image", d)
	}
	if d := verifyFind(t, r, "partition-table").Message; !strings.Contains(d, "root-arm64") || strings.Contains(d, "bios-boot") {
		t.Errorf("partition-table: %q, want an arm64 root and no BIOS boot partition", d)
	}
	for _, ch := range r.Checks {
		if ch.Name == verify.CheckBootloaderBIOS {
			t.Errorf("an arm64 image was checked for BIOS boot code: %+v", ch)
		}
	}
}
