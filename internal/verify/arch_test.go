package verify

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// argAfter returns the argument after the first flag, "" without one.
func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// TestQemuArgsByArchitecture: the machine, CPU, firmware and devices the
// boot test gives QEMU follow the image's architecture and boot mode.
func TestQemuArgsByArchitecture(t *testing.T) {
	fw := t.TempDir()
	for _, n := range []string{"OVMF_CODE.fd", "OVMF_VARS.fd", "AAVMF_CODE.fd", "AAVMF_VARS.fd"} {
		if err := os.WriteFile(filepath.Join(fw, n), []byte(n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	origO, origA := findOVMF, findAAVMF
	t.Cleanup(func() { findOVMF, findAAVMF = origO, origA })
	findOVMF = func() (string, string) { return filepath.Join(fw, "OVMF_CODE.fd"), filepath.Join(fw, "OVMF_VARS.fd") }
	findAAVMF = func() (string, string) { return filepath.Join(fw, "AAVMF_CODE.fd"), filepath.Join(fw, "AAVMF_VARS.fd") }

	for _, tc := range []struct {
		name     string
		arch     imagev1.Architecture
		mode     imagev1.BootMode
		accel    string
		qemu     string
		machine  string
		cpu      string
		firmware string // the pflash code image; "" for none
		debugcon bool
	}{
		{"amd64 hybrid boots BIOS", imagev1.ArchitectureAMD64, imagev1.BootModeHybrid, AccelTCG, "qemu-system-x86_64", "q35,accel=tcg", "max", "", true},
		{"amd64 uefi", imagev1.ArchitectureAMD64, imagev1.BootModeUEFI, AccelTCG, "qemu-system-x86_64", "q35,accel=tcg", "max", "OVMF_CODE.fd", true},
		{"amd64 kvm", imagev1.ArchitectureAMD64, imagev1.BootModeBIOS, AccelKVM, "qemu-system-x86_64", "q35,accel=kvm", "host", "", true},
		{"arm64 hybrid is uefi", imagev1.ArchitectureARM64, imagev1.BootModeHybrid, AccelTCG, "qemu-system-aarch64", "virt,accel=tcg", "cortex-a57", "AAVMF_CODE.fd", false},
		{"arm64 uefi", imagev1.ArchitectureARM64, imagev1.BootModeUEFI, AccelTCG, "qemu-system-aarch64", "virt,accel=tcg", "cortex-a57", "AAVMF_CODE.fd", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &imagev1.ImageContent{Base: imagev1.BaseSpec{Architecture: tc.arch}}
			c.Default()
			c.Disk.BootMode = tc.mode
			dir := t.TempDir()
			b := &bootRun{content: c, dir: dir, accel: tc.accel, hostname: "h", console: filepath.Join(dir, "console.log"), firmware: filepath.Join(dir, "firmware.log")}
			if got := b.arch().QEMUSystem; got != tc.qemu {
				t.Errorf("QEMU %s, want %s", got, tc.qemu)
			}
			args, err := b.qemuArgs()
			if err != nil {
				t.Fatal(err)
			}
			if got := argAfter(args, "-machine"); got != tc.machine {
				t.Errorf("-machine %s, want %s", got, tc.machine)
			}
			if got := argAfter(args, "-cpu"); got != tc.cpu {
				t.Errorf("-cpu %s, want %s", got, tc.cpu)
			}
			drives := pflashDrives(args)
			switch {
			case tc.firmware == "" && len(drives) != 0:
				t.Errorf("pflash drives %q, want none", drives)
			case tc.firmware != "":
				vars := strings.Replace(tc.firmware, "CODE", "VARS", 1)
				want := []string{"if=pflash,format=raw,unit=0,readonly=on,file=" + filepath.Join(fw, tc.firmware), "if=pflash,format=raw,unit=1,file=" + filepath.Join(dir, vars)}
				if !slices.Equal(drives, want) {
					t.Errorf("pflash drives %q, want %q", drives, want)
				}
				if data, err := os.ReadFile(filepath.Join(dir, vars)); err != nil || string(data) != vars {
					t.Errorf("vars copy %q, %v", data, err)
				}
			}
			if got := slices.Contains(args, "isa-debugcon,iobase=0x402,chardev=fw"); got != tc.debugcon {
				t.Errorf("ISA debug console %v, want %v", got, tc.debugcon)
			}
			if got := argAfter(args, "-serial"); got != "file:"+b.console {
				t.Errorf("-serial %s", got)
			}
		})
	}
}

func TestPEMachine(t *testing.T) {
	pe := func(machine uint16) []byte {
		b := make([]byte, 0x100)
		copy(b, "MZ")
		b[0x3c] = 0x80
		copy(b[0x80:], "PE\x00\x00")
		b[0x84], b[0x85] = byte(machine), byte(machine>>8)
		return b
	}
	for _, m := range []uint16{0x8664, 0xaa64} {
		if got, err := peMachine(pe(m)); err != nil || got != m {
			t.Errorf("machine %#x: got %#x, %v", m, got, err)
		}
	}
	if _, err := peMachine([]byte("ELF")); err == nil {
		t.Error("a non-PE file passed")
	}
	bad := pe(0xaa64)
	copy(bad[0x80:], "XX")
	if _, err := peMachine(bad); err == nil || !strings.Contains(err.Error(), "no PE signature") {
		t.Errorf("no PE signature: %v", err)
	}
}

// TestPlanOfflineByArchitecture: arm64 has no BIOS boot, so its hybrid
// image is checked for UEFI alone, and for the GRUB modules it carries.
func TestPlanOfflineByArchitecture(t *testing.T) {
	for _, tc := range []struct {
		arch       imagev1.Architecture
		bios, grub bool
	}{
		{imagev1.ArchitectureAMD64, true, false},
		{imagev1.ArchitectureARM64, false, true},
	} {
		c := &imagev1.ImageContent{Base: imagev1.BaseSpec{Architecture: tc.arch}}
		c.Default()
		var names []string
		for _, p := range planOffline(&offlineImage{content: c}) {
			names = append(names, p.name)
		}
		if got := slices.Contains(names, CheckBootloaderBIOS); got != tc.bios {
			t.Errorf("%s: %s planned = %v, want %v", tc.arch, CheckBootloaderBIOS, got, tc.bios)
		}
		if !slices.Contains(names, CheckBootloaderUEFI) {
			t.Errorf("%s: no %s", tc.arch, CheckBootloaderUEFI)
		}
		if got := slices.Contains(names, PackageCheckName("grub-efi-arm64-bin")); got != tc.grub {
			t.Errorf("%s: grub-efi-arm64-bin checked = %v, want %v", tc.arch, got, tc.grub)
		}
		if !slices.Contains(names, PackageCheckName("linux-image-cloud-"+string(tc.arch))) {
			t.Errorf("%s: the kernel package is not checked: %q", tc.arch, names)
		}
	}
}
