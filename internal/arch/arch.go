// Package arch holds the facts that differ between the architectures
// nodeforge builds images for: GRUB's platforms, the UEFI fallback boot
// loader's name and PE machine type, the GPT root partition type, the
// serial console, the QEMU system emulator and the binfmt_misc handler a
// foreign-architecture build needs. The builder and the verifier read the
// same table, so what one writes the other checks.
package arch

import (
	"fmt"
	"runtime"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// Arch describes one image architecture.
type Arch struct {
	// Name is the Debian architecture name.
	Name imagev1.Architecture
	// GrubBIOS is GRUB's BIOS platform; empty when the architecture has
	// no BIOS boot (arm64 boots by UEFI only).
	GrubBIOS string
	// GrubEFI is GRUB's UEFI platform.
	GrubEFI string
	// GrubEFIPackage is the Debian package with GRUB's UEFI modules.
	GrubEFIPackage string
	// EFIBootFile is the removable-media boot loader's name under
	// \EFI\BOOT on the ESP (the UEFI specification's fallback path).
	EFIBootFile string
	// PEMachine is the PE/COFF machine type of that boot loader.
	PEMachine uint16
	// RootType is the GPT partition type GUID of a root partition
	// (Discoverable Partitions Specification).
	RootType string
	// RootTypeName is how the verifier names RootType.
	RootTypeName string
	// Console is the serial console device of the QEMU machine the image
	// is verified on (and of most clouds' VMs of the architecture).
	Console string
	// QEMUSystem is the QEMU system emulator.
	QEMUSystem string
	// Binfmt is the binfmt_misc handler that runs the architecture's
	// binaries on another host (qemu-user-static), named as
	// /proc/sys/fs/binfmt_misc/<Binfmt>.
	Binfmt string
}

// HasBIOS reports whether the architecture boots by legacy BIOS too.
func (a Arch) HasBIOS() bool { return a.GrubBIOS != "" }

var table = map[imagev1.Architecture]Arch{
	imagev1.ArchitectureAMD64: {
		Name:           imagev1.ArchitectureAMD64,
		GrubBIOS:       "i386-pc",
		GrubEFI:        "x86_64-efi",
		GrubEFIPackage: "grub-efi-amd64-bin",
		EFIBootFile:    "BOOTX64.EFI",
		PEMachine:      0x8664,
		RootType:       "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
		RootTypeName:   "root-x86-64",
		Console:        "ttyS0",
		QEMUSystem:     "qemu-system-x86_64",
		Binfmt:         "qemu-x86_64",
	},
	imagev1.ArchitectureARM64: {
		Name:           imagev1.ArchitectureARM64,
		GrubEFI:        "arm64-efi",
		GrubEFIPackage: "grub-efi-arm64-bin",
		EFIBootFile:    "BOOTAA64.EFI",
		PEMachine:      0xaa64,
		RootType:       "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
		RootTypeName:   "root-arm64",
		Console:        "ttyAMA0",
		QEMUSystem:     "qemu-system-aarch64",
		Binfmt:         "qemu-aarch64",
	},
}

// For returns the facts of architecture name ("" means amd64, the API's
// default).
func For(name imagev1.Architecture) (Arch, error) {
	if name == "" {
		name = imagev1.ArchitectureAMD64
	}
	a, ok := table[name]
	if !ok {
		return Arch{}, fmt.Errorf("architecture %q is not supported (amd64, arm64)", name)
	}
	return a, nil
}

// All returns every supported architecture.
func All() []Arch {
	return []Arch{table[imagev1.ArchitectureAMD64], table[imagev1.ArchitectureARM64]}
}

// Host is the Debian name of the architecture this program runs on.
func Host() imagev1.Architecture {
	return debianName(runtime.GOARCH)
}

func debianName(goarch string) imagev1.Architecture {
	// Go and Debian agree on the names of the architectures in the table.
	return imagev1.Architecture(goarch)
}

// ByRootType returns the architecture whose root partition type is guid
// (upper or lower case).
func ByRootType(guid string) (Arch, bool) {
	for _, a := range All() {
		if strings.EqualFold(a.RootType, guid) {
			return a, true
		}
	}
	return Arch{}, false
}
