package builder

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
)

// fakeBinfmt points the binfmt_misc code at a directory of the test's, on
// an amd64 host, and returns the directory. mount fails unless mountOK.
func fakeBinfmt(t *testing.T, mountOK bool) string {
	t.Helper()
	dir := t.TempDir()
	conf := t.TempDir()
	oldDir, oldConf, oldMount, oldHost := binfmtDir, binfmtConfDirs, mountBinfmt, hostArch
	t.Cleanup(func() { binfmtDir, binfmtConfDirs, mountBinfmt, hostArch = oldDir, oldConf, oldMount, oldHost })
	binfmtDir, binfmtConfDirs = dir, []string{conf}
	hostArch = func() imagev1.Architecture { return imagev1.ArchitectureAMD64 }
	mountBinfmt = func(d string) error {
		if !mountOK {
			return errors.New("operation not permitted")
		}
		return os.WriteFile(filepath.Join(d, "register"), nil, 0o200)
	}
	return dir
}

const aarch64Registration = `:qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:`

func TestEnsureBinfmt(t *testing.T) {
	handler := func(flags string) string {
		return "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: " + flags + "\noffset 0\n"
	}
	for _, tc := range []struct {
		name     string
		arch     string
		handler  string // the registered handler's status; "" when none
		mountOK  bool
		conf     string // the registration qemu-user-static ships; "" when none
		wantErr  string
		register string // what must have been written to register
	}{
		{name: "native", arch: "amd64"},
		{name: "registered with F", arch: "arm64", handler: handler("POF")},
		{name: "registered without F", arch: "arm64", handler: handler("P"), wantErr: "lacks the F (fix binary) flag"},
		{name: "disabled", arch: "arm64", handler: "disabled\nflags: F\n", wantErr: "is disabled"},
		{name: "registers qemu-user-static's", arch: "arm64", mountOK: true, conf: aarch64Registration + "OCF\n", register: aarch64Registration + "OCF"},
		{name: "registration without F", arch: "arm64", mountOK: true, conf: aarch64Registration + "OC\n", wantErr: "without the F flag"},
		{name: "no qemu-user-static", arch: "arm64", mountOK: true, wantErr: "needs qemu-user-static"},
		{name: "binfmt_misc not mountable", arch: "arm64", wantErr: "needs binfmt_misc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeBinfmt(t, tc.mountOK)
			if tc.handler != "" {
				if err := os.WriteFile(filepath.Join(dir, "qemu-aarch64"), []byte(tc.handler), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.conf != "" {
				if err := os.WriteFile(filepath.Join(binfmtConfDirs[0], "qemu-aarch64.conf"), []byte(tc.conf), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := ensureBinfmt(tc.arch)
			if tc.register != "" {
				got, _ := os.ReadFile(filepath.Join(dir, "register"))
				if string(got) != tc.register {
					t.Errorf("registered %q, want %q", got, tc.register)
				}
				// The fake binfmt_misc, unlike the kernel's, shows no
				// handler after the registration: that is reported.
				if err == nil || !strings.Contains(err.Error(), "does not show it") {
					t.Errorf("err = %v; want the missing handler reported", err)
				}
				return
			}
			if tc.wantErr == "" && err != nil {
				t.Fatalf("ensureBinfmt: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v; want %q", err, tc.wantErr)
			}
		})
	}
}

func TestArchitectureArgs(t *testing.T) {
	fakeBinfmt(t, false)
	if got := architectureArgs("amd64"); got != nil {
		t.Errorf("native: %q", got)
	}
	if got := architectureArgs(""); got != nil {
		t.Errorf("unset: %q", got)
	}
	got := architectureArgs("arm64")
	if !slices.Contains(got, "--architectures=arm64") || !slices.ContainsFunc(got, func(a string) bool { return strings.HasPrefix(a, "--setup-hook=mkdir -p") }) {
		t.Errorf("arm64: %q", got)
	}
}

func TestGrubConfigByArchitecture(t *testing.T) {
	amd64, _ := arch.For(imagev1.ArchitectureAMD64)
	arm64, _ := arch.For(imagev1.ArchitectureARM64)
	for _, tc := range []struct {
		arch    arch.Arch
		want    []string
		notWant []string
	}{
		{amd64, []string{"console=ttyS0,115200n8 no_timer_check", "serial --unit=0", "terminal_output console serial"}, []string{"ttyAMA0"}},
		{arm64, []string{"console=tty0 console=ttyAMA0,115200n8 quiet=no"}, []string{"serial", "no_timer_check", "ttyS0"}},
	} {
		cfg := grubConfig(tc.arch, "uuid", "/vmlinuz", "/initrd.img", "quiet=no")
		for _, w := range tc.want {
			if !strings.Contains(cfg, w) {
				t.Errorf("%s: grub.cfg lacks %q:\n%s", tc.arch.Name, w, cfg)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(cfg, w) {
				t.Errorf("%s: grub.cfg has %q:\n%s", tc.arch.Name, w, cfg)
			}
		}
	}
}

// TestBuildArm64WithFakeTools: on an amd64 builder, an arm64 image is
// bootstrapped for arm64 under emulation, gets a UEFI-only disk with the
// arm64 root type, and GRUB's arm64-efi image made from the tree's modules
// as EFI/BOOT/BOOTAA64.EFI.
func TestBuildArm64WithFakeTools(t *testing.T) {
	dir := fakeBinfmt(t, false)
	if err := os.WriteFile(filepath.Join(dir, "qemu-aarch64"), []byte("enabled\nflags: OCF\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newBuildEnv(t)
	e.opts.KeepWork = true
	c := kubeContent()
	c.Base.Architecture = imagev1.ArchitectureARM64
	if _, err := Build(context.Background(), e.opts, c); err != nil {
		t.Fatalf("Build: %v", err)
	}
	var mmdebstrap, mkimage, mcopy, sfdisk []Command
	for _, cmd := range e.run.cmds {
		switch cmd.Name {
		case "mmdebstrap":
			mmdebstrap = append(mmdebstrap, cmd)
		case "grub-mkimage":
			mkimage = append(mkimage, cmd)
		case "mcopy":
			mcopy = append(mcopy, cmd)
		case "sfdisk":
			sfdisk = append(sfdisk, cmd)
		}
	}
	if len(mmdebstrap) == 0 {
		t.Fatal("no mmdebstrap run")
	}
	for _, m := range mmdebstrap {
		if !slices.Contains(m.Args, "--architectures=arm64") {
			t.Errorf("mmdebstrap without --architectures=arm64: %s", m.Short())
		}
	}
	if len(mkimage) != 1 {
		t.Fatalf("grub-mkimage runs: %d, want 1 (UEFI only)", len(mkimage))
	}
	args := strings.Join(mkimage[0].Args, " ")
	if !strings.Contains(args, "-O arm64-efi") || !strings.Contains(args, "/usr/lib/grub/arm64-efi") || !strings.Contains(args, "BOOTAA64.EFI") {
		t.Errorf("grub-mkimage %s", args)
	}
	if len(mcopy) != 1 || mcopy[0].Args[len(mcopy[0].Args)-1] != "::/EFI/BOOT/BOOTAA64.EFI" {
		t.Errorf("mcopy runs %v", mcopy)
	}
	if len(sfdisk) != 1 {
		t.Fatalf("sfdisk runs: %d", len(sfdisk))
	}
	script, _ := io.ReadAll(sfdisk[0].Stdin)
	if !strings.Contains(string(script), "type="+TypeRootARM64) || strings.Contains(string(script), TypeBIOSBoot) {
		t.Errorf("partitions:\n%s", script)
	}
}

func TestArchTableMatchesBuilderTypes(t *testing.T) {
	for name, want := range map[imagev1.Architecture]string{imagev1.ArchitectureAMD64: TypeRootX86_64, imagev1.ArchitectureARM64: TypeRootARM64} {
		a, err := arch.For(name)
		if err != nil || a.RootType != want {
			t.Errorf("%s: root type %q (%v), want %q", name, a.RootType, err, want)
		}
	}
}

func TestImagesPlatform(t *testing.T) {
	for arch, want := range map[string]string{"": "linux/amd64", "amd64": "linux/amd64", "arm64": "linux/arm64"} {
		if got := (&ImagesParams{Architecture: arch}).platform().String(); got != want {
			t.Errorf("architecture %q: platform %s, want %s", arch, got, want)
		}
	}
}
