package builder

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nodeforge/nodeforge/internal/arch"
)

// GRUB is installed without grub-install (which needs the disk as a block
// device) and without grub-bios-setup (not installable here): grub-mkimage
// builds self-contained images with every module the boot needs and an
// embedded config that finds the root filesystem by UUID and loads
// /boot/grub/grub.cfg from it; for BIOS, core.img goes into the BIOS boot
// partition and boot.img, patched as grub-bios-setup would, into the MBR;
// for UEFI, the EFI image goes to the removable-media path of the ESP
// (\EFI\BOOT\BOOTX64.EFI, BOOTAA64.EFI on arm64), so no NVRAM entry is
// needed.
//
// GRUB's modules come from the build host (GrubDir) when it has the
// platform's, else from the image itself: an arm64 image installs
// grub-efi-arm64-bin (contents.Packages), which Debian builds for arm64
// only, so an amd64 builder cannot install it but can read it from the
// tree; the host's grub-mkimage packs any platform's modules.

// GrubDir is where GRUB's platform directories (i386-pc, x86_64-efi) are.
var GrubDir = "/usr/lib/grub"

// grubPlatformDir is the directory of platform's modules: the host's, else
// the tree's (inTree).
func (b *build) grubPlatformDir(platform string) (dir string, inTree bool, err error) {
	host := filepath.Join(GrubDir, platform)
	if _, err := os.Stat(host); err == nil {
		return host, false, nil
	}
	tree, err := inRoot(b.root, "/usr/lib/grub/"+platform, false)
	if err != nil {
		return "", false, err
	}
	if _, err := os.Stat(filepath.Join(tree, "kernel.img")); err != nil {
		return "", false, fmt.Errorf("GRUB's %s modules are neither in %s nor in the image (install the platform's GRUB package on the builder or in the image)", platform, host)
	}
	return tree, true, nil
}

var (
	grubModulesBIOS = []string{"biosdisk", "part_gpt", "part_msdos", "ext2", "normal", "configfile", "search", "search_fs_uuid", "linux", "echo", "serial", "terminal", "test", "boot", "minicmd", "ls"}
	grubModulesEFI  = []string{"part_gpt", "part_msdos", "ext2", "fat", "normal", "configfile", "search", "search_fs_uuid", "linux", "echo", "serial", "terminal", "test", "boot", "minicmd", "ls", "efi_gop", "all_video"}
)

// Offsets in GRUB's boot.img and diskboot.img (grub/i386/pc/boot.h).
const (
	grubBPBStart       = 0x3
	grubBPBEnd         = 0x5a
	grubKernelSector   = 0x5c
	grubBootDrive      = 0x64
	grubDriveCheck     = 0x66
	grubWindowsNTMagic = 0x1b8
	// The first blocklist entry is the last 12 bytes of diskboot's sector:
	// start (u64), len (u16), segment (u16), little endian.
	grubBlocklist = sector - 12
)

// grubConfig is /boot/grub/grub.cfg: boots the kernel via the links the
// kernel packages maintain, with the previous kernel as a fallback entry,
// on the serial console and the screen. no_timer_check skips the kernel's
// IO-APIC timer self-test, which a busy or overcommitted hypervisor (and
// QEMU's TCG on a loaded host) can fail with "IO-APIC + timer doesn't
// work!", a panic at boot; cloud images of other distributions set it for
// the same reason.
//
// On arm64 the serial console is the PL011 (ttyAMA0), which the UEFI
// firmware already mirrors GRUB's console to (GRUB's serial driver there
// knows no com0), and no_timer_check, an x86 option, is left out.
func grubConfig(a arch.Arch, rootUUID, kernel, initrd, extra string) string {
	cmdline := "root=UUID=" + rootUUID + " ro console=tty0 console=" + a.Console + ",115200n8"
	if a.HasBIOS() {
		cmdline += " no_timer_check"
	}
	if extra != "" {
		cmdline += " " + extra
	}
	var b strings.Builder
	b.WriteString(`# Written by nodeforge. The kernel packages keep /vmlinuz and /initrd.img
# pointing at the newest kernel, so upgrades need no change here.
set default=0
set timeout=1
`)
	if a.HasBIOS() {
		b.WriteString("serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n")
	}
	b.WriteString("search --no-floppy --fs-uuid --set=root " + rootUUID + "\n")
	fmt.Fprintf(&b, "menuentry 'Debian GNU/Linux' --id debian {\n\tlinux %s %s\n\tinitrd %s\n}\n", kernel, cmdline, initrd)
	if kernel == "/vmlinuz" {
		fmt.Fprintf(&b, "if [ -e /vmlinuz.old ]; then\n\tmenuentry 'Debian GNU/Linux (previous kernel)' --id debian-old {\n\t\tlinux /vmlinuz.old %s\n\t\tinitrd /initrd.img.old\n\t}\nfi\n", cmdline)
	}
	return b.String()
}

// grubEarlyConfig is embedded into the GRUB images.
func grubEarlyConfig(rootUUID string) string {
	return "search --no-floppy --fs-uuid --set=root " + rootUUID + "\n" +
		"set prefix=($root)/boot/grub\n" +
		"configfile ($root)/boot/grub/grub.cfg\n"
}

func (b *build) grubImage(ctx context.Context, platform, out, rootUUID string, modules []string) error {
	early := filepath.Join(b.work, "grub-early.cfg")
	if err := os.WriteFile(early, []byte(grubEarlyConfig(rootUUID)), 0o644); err != nil {
		return err
	}
	dir, inTree, err := b.grubPlatformDir(platform)
	if err != nil {
		return err
	}
	args := append([]string{"grub-mkimage", "-O", platform, "-d", dir, "-o", out, "-c", early, "-p", "/boot/grub"}, modules...)
	if inTree {
		// The modules are the image's: a link among them must not make
		// grub-mkimage pack a builder file (a credential) into the
		// ESP, so it runs where the builder's secrets are hidden.
		return b.runner.Run(ctx, b.onTree(nil, []string{b.work}, args...))
	}
	return b.runner.Run(ctx, Command{Name: args[0], Args: args[1:]})
}

func (b *build) installGrubBIOS(ctx context.Context, a arch.Arch, l Layout, rootUUID string) error {
	coreFile := filepath.Join(b.work, "core.img")
	if err := b.grubImage(ctx, a.GrubBIOS, coreFile, rootUUID, grubModulesBIOS); err != nil {
		return err
	}
	core, err := os.ReadFile(coreFile)
	if err != nil {
		return err
	}
	dir, inTree, err := b.grubPlatformDir(a.GrubBIOS)
	if err != nil {
		return err
	}
	bootPath := filepath.Join(dir, "boot.img")
	if inTree {
		if bootPath, err = inRoot(b.root, "/usr/lib/grub/"+a.GrubBIOS+"/boot.img", false); err != nil {
			return err
		}
	}
	bootImg, err := os.ReadFile(bootPath)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(b.raw, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	mbr := make([]byte, sector)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return err
	}
	newMBR, newCore, err := patchGrubBIOS(bootImg, core, mbr, l.BIOS.Start/sector, l.BIOS.Size)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(newCore, l.BIOS.Start); err != nil {
		return err
	}
	if _, err := f.WriteAt(newMBR, 0); err != nil {
		return err
	}
	return f.Close()
}

// patchGrubBIOS does what grub-bios-setup does for a core.img embedded in a
// BIOS boot partition starting at coreSector: boot.img's code goes into the
// MBR (keeping its BPB area, disk signature and partition table), pointed
// at core.img's first sector; core.img's blocklist points at the rest of
// it, which is contiguous.
func patchGrubBIOS(bootImg, core, mbr []byte, coreSector, room int64) (newMBR, newCore []byte, err error) {
	if len(bootImg) != sector || len(mbr) != sector {
		return nil, nil, errors.New("boot.img and the MBR must be one sector each")
	}
	if len(core) < sector {
		return nil, nil, errors.New("core.img is too small")
	}
	if int64(len(core)) > room {
		return nil, nil, fmt.Errorf("core.img (%d bytes) does not fit the %d-byte BIOS boot partition", len(core), room)
	}
	newMBR = make([]byte, sector)
	copy(newMBR, bootImg[:grubWindowsNTMagic])
	copy(newMBR[grubBPBStart:grubBPBEnd], mbr[grubBPBStart:grubBPBEnd])
	copy(newMBR[grubWindowsNTMagic:], mbr[grubWindowsNTMagic:])
	binary.LittleEndian.PutUint64(newMBR[grubKernelSector:], uint64(coreSector))
	newMBR[grubBootDrive] = 0xff
	// Hard disk: replace the boot drive check's jump with NOPs.
	newMBR[grubDriveCheck], newMBR[grubDriveCheck+1] = 0x90, 0x90

	sectors := (len(core) + sector - 1) / sector
	newCore = make([]byte, sectors*sector)
	copy(newCore, core)
	binary.LittleEndian.PutUint64(newCore[grubBlocklist:], uint64(coreSector+1))
	binary.LittleEndian.PutUint16(newCore[grubBlocklist+8:], uint16(sectors-1))
	if seg := binary.LittleEndian.Uint16(newCore[grubBlocklist+10:]); seg != 0x820 {
		return nil, nil, fmt.Errorf("unexpected core.img blocklist segment %#x (not GRUB's diskboot.img?)", seg)
	}
	return newMBR, newCore, nil
}

func (b *build) installGrubEFI(ctx context.Context, a arch.Arch, l Layout, rootUUID, volID string) error {
	efi := filepath.Join(b.work, a.EFIBootFile)
	if err := b.grubImage(ctx, a.GrubEFI, efi, rootUUID, grubModulesEFI); err != nil {
		return err
	}
	mk := Command{Name: "mkfs.fat", Args: []string{
		"-F", "32", "-s", "1", "-n", "EFI", "-i", volID, "--offset", fmt.Sprint(l.ESP.Start / sector),
		b.raw, fmt.Sprint(l.ESP.Size / 1024),
	}}
	if err := b.runner.Run(ctx, mk); err != nil {
		return fmt.Errorf("making the EFI system partition: %w", err)
	}
	img := fmt.Sprintf("%s@@%d", b.raw, l.ESP.Start)
	env := []string{"MTOOLS_SKIP_CHECK=1"}
	if err := b.runner.Run(ctx, Command{Name: "mmd", Args: []string{"-i", img, "::/EFI", "::/EFI/BOOT"}, Env: env}); err != nil {
		return err
	}
	return b.runner.Run(ctx, Command{Name: "mcopy", Args: []string{"-i", img, efi, "::/EFI/BOOT/" + a.EFIBootFile}, Env: env})
}
