package arch

import (
	"strings"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

func TestFor(t *testing.T) {
	for _, tc := range []struct {
		name        imagev1.Architecture
		want        imagev1.Architecture
		bios        bool
		efi, qemu   string
		pe          uint16
		console     string
		unsupported bool
	}{
		{name: "", want: imagev1.ArchitectureAMD64, bios: true, efi: "BOOTX64.EFI", qemu: "qemu-system-x86_64", pe: 0x8664, console: "ttyS0"},
		{name: "amd64", want: imagev1.ArchitectureAMD64, bios: true, efi: "BOOTX64.EFI", qemu: "qemu-system-x86_64", pe: 0x8664, console: "ttyS0"},
		{name: "arm64", want: imagev1.ArchitectureARM64, bios: false, efi: "BOOTAA64.EFI", qemu: "qemu-system-aarch64", pe: 0xaa64, console: "ttyAMA0"},
		{name: "riscv64", unsupported: true},
	} {
		a, err := For(tc.name)
		if tc.unsupported {
			if err == nil || !strings.Contains(err.Error(), "not supported") {
				t.Errorf("%q: err = %v, want not supported", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.name, err)
		}
		if a.Name != tc.want || a.HasBIOS() != tc.bios || a.EFIBootFile != tc.efi || a.QEMUSystem != tc.qemu || a.PEMachine != tc.pe || a.Console != tc.console {
			t.Errorf("%q: %+v", tc.name, a)
		}
		if b, ok := ByRootType(strings.ToLower(a.RootType)); !ok || b.Name != a.Name {
			t.Errorf("%q: ByRootType(%s) = %v, %v", tc.name, a.RootType, b.Name, ok)
		}
	}
	if _, ok := ByRootType("0FC63DAF-8483-4772-8E79-3D69D8477DE4"); ok {
		t.Error("a generic Linux filesystem type names an architecture")
	}
	if _, err := For(Host()); err != nil {
		t.Errorf("the host's architecture %s: %v", Host(), err)
	}
}
