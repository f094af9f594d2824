package builder

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
	"github.com/nodeforge/nodeforge/internal/debian"
)

// GPT partition type GUIDs (the root's of each architecture are in package
// arch).
const (
	TypeBIOSBoot   = "21686148-6449-6E6F-744E-656564454649"
	TypeESP        = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeRootX86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	TypeRootARM64  = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
)

const (
	sector   = 512
	mib      = 1 << 20
	biosSize = 1 * mib
	espSize  = 126 * mib
	// gptTail is the backup GPT at the end of the disk (33 sectors), rounded
	// up to 1 MiB so the root partition stays aligned.
	gptTail = 1 * mib
)

// Partition is one planned partition, in bytes.
type Partition struct {
	Name   string
	Type   string
	Start  int64
	Size   int64
	Number int
}

// Layout is the planned partition table.
type Layout struct {
	DiskSize int64
	BIOS     *Partition
	ESP      *Partition
	Root     Partition
}

// PlanLayout lays out a GPT disk for the boot mode: a 1 MiB BIOS boot
// partition (GRUB's core.img) for BIOS, a 126 MiB EFI system partition for
// UEFI, both for hybrid (the ESP alone on an architecture without BIOS
// boot), and the root partition, typed for the architecture, filling the
// rest.
func PlanLayout(size int64, mode imagev1.BootMode, a arch.Arch) (Layout, error) {
	l := Layout{DiskSize: size}
	off := int64(mib)
	n := 1
	if !a.HasBIOS() && mode == imagev1.BootModeBIOS {
		return l, inputErrorf("%s has no BIOS boot", a.Name)
	}
	if a.HasBIOS() && (mode == imagev1.BootModeBIOS || mode == imagev1.BootModeHybrid) {
		l.BIOS = &Partition{Name: "bios", Type: TypeBIOSBoot, Start: off, Size: biosSize, Number: n}
		off += biosSize
		n++
	}
	if mode == imagev1.BootModeUEFI || mode == imagev1.BootModeHybrid {
		l.ESP = &Partition{Name: "esp", Type: TypeESP, Start: off, Size: espSize, Number: n}
		off += espSize
		n++
	}
	rootSize := (size - gptTail - off) &^ (mib - 1)
	if rootSize < 256*mib {
		return l, inputErrorf("disk size %d MiB leaves no room for a root partition", size/mib)
	}
	l.Root = Partition{Name: "root", Type: a.RootType, Start: off, Size: rootSize, Number: n}
	return l, nil
}

// sfdiskScript renders the layout for sfdisk.
func (l Layout) sfdiskScript() string {
	var b strings.Builder
	b.WriteString("label: gpt\nunit: sectors\nfirst-lba: 2048\n")
	for _, p := range []*Partition{l.BIOS, l.ESP, &l.Root} {
		if p == nil {
			continue
		}
		fmt.Fprintf(&b, "start=%d, size=%d, type=%s, name=%q\n", p.Start/sector, p.Size/sector, p.Type, p.Name)
	}
	return b.String()
}

func (b *build) disk(ctx context.Context, p *DiskParams) error {
	a, err := arch.For(imagev1.Architecture(p.Architecture))
	if err != nil {
		return inputErrorf("%v", err)
	}
	layout, err := PlanLayout(p.SizeBytes, p.BootMode, a)
	if err != nil {
		return err
	}
	rootUUID := newUUID()
	espID := newVolumeID()

	// Files that depend on the disk: fstab and GRUB's config.
	b.progress(0.02, "fstab and GRUB configuration")
	if err := b.writeTreeFile("/etc/fstab", []byte(fstab(rootUUID, layout.ESP != nil, espID)), 0o644); err != nil {
		return err
	}
	if layout.ESP != nil {
		if err := os.MkdirAll(filepath.Join(b.root, "boot/efi"), 0o755); err != nil {
			return err
		}
	}
	kernel, initrd, kver, err := b.findKernel()
	if err != nil {
		return err
	}
	b.kernelVersion = kver
	if err := b.writeTreeFile("/boot/grub/grub.cfg", []byte(grubConfig(a, rootUUID, kernel, initrd, p.KernelCmdline)), 0o644); err != nil {
		return err
	}

	// Fail fast, with numbers, when the content does not fit.
	b.progress(0.05, "measuring the tree")
	size, inodes, err := treeSize(b.root)
	if err != nil {
		return err
	}
	b.treeBytes = size
	// ext4 overhead: inode tables (256 B per 16 KiB), journal (up to 64 MiB
	// at these sizes), reserved blocks (5 %), directories; plus headroom.
	need := size + size/10 + 64*mib + inodes*256 + layout.Root.Size/20
	if need > layout.Root.Size {
		return inputErrorf("disk too small for the content: the root filesystem needs about %d MiB, disk.size %d MiB leaves %d MiB for it",
			need/mib, p.SizeBytes/mib, layout.Root.Size/mib)
	}

	b.progress(0.1, fmt.Sprintf("partitioning %d MiB (%s)", p.SizeBytes/mib, p.BootMode))
	_ = os.Remove(b.raw)
	f, err := os.Create(b.raw)
	if err != nil {
		return err
	}
	if err := f.Truncate(p.SizeBytes); err != nil {
		f.Close()
		return err
	}
	f.Close()
	sf := Command{Name: "sfdisk", Args: []string{"--quiet", "--no-reread", "--no-tell-kernel", b.raw}, Stdin: strings.NewReader(layout.sfdiskScript())}
	if err := b.runner.Run(ctx, sf); err != nil {
		return fmt.Errorf("partitioning: %w", err)
	}

	b.progress(0.15, fmt.Sprintf("mkfs.ext4 -d (%d MiB of files)", size/mib))
	mk := Command{Name: "mkfs.ext4", Args: []string{
		"-q", "-F", "-L", "root", "-U", rootUUID, "-d", b.root,
		"-E", fmt.Sprintf("offset=%d", layout.Root.Start),
		b.raw, fmt.Sprintf("%dk", layout.Root.Size/1024),
	}}
	if err := b.runner.Run(ctx, mk); err != nil {
		return fmt.Errorf("making the root filesystem: %w", err)
	}

	if layout.BIOS != nil {
		b.progress(0.8, "GRUB for BIOS")
		if err := b.installGrubBIOS(ctx, a, layout, rootUUID); err != nil {
			return fmt.Errorf("GRUB (BIOS): %w", err)
		}
	}
	if layout.ESP != nil {
		b.progress(0.9, "EFI system partition and GRUB for UEFI")
		if err := b.installGrubEFI(ctx, a, layout, rootUUID, espID); err != nil {
			return fmt.Errorf("GRUB (UEFI): %w", err)
		}
	}
	b.progress(1, fmt.Sprintf("root %s, %d MiB", rootUUID, layout.Root.Size/mib))
	return nil
}

// fstab mounts the root (and the ESP) by UUID. There is never a swap entry.
func fstab(rootUUID string, esp bool, espID string) string {
	s := "# Written by nodeforge. No swap: Kubernetes nodes run without it.\n" +
		"# <file system> <mount point> <type> <options> <dump> <pass>\n" +
		"UUID=" + rootUUID + " / ext4 rw,discard,errors=remount-ro 0 1\n"
	if esp {
		s += "UUID=" + espID[:4] + "-" + espID[4:] + " /boot/efi vfat umask=0077,nofail 0 2\n"
	}
	return s
}

// findKernel returns the paths GRUB boots (the /vmlinuz and /initrd.img
// links the kernel packages maintain, so kernel upgrades need no GRUB
// update) and the installed kernel version.
func (b *build) findKernel() (kernel, initrd, version string, err error) {
	matches, _ := filepath.Glob(filepath.Join(b.root, "boot/vmlinuz-*"))
	if len(matches) == 0 {
		return "", "", "", fmt.Errorf("no kernel in /boot: is %s installed?", b.content.Base.KernelPackage)
	}
	latest := matches[len(matches)-1]
	for _, m := range matches {
		if debian.Compare(strings.TrimPrefix(filepath.Base(m), "vmlinuz-"), strings.TrimPrefix(filepath.Base(latest), "vmlinuz-")) > 0 {
			latest = m
		}
	}
	version = strings.TrimPrefix(filepath.Base(latest), "vmlinuz-")
	if _, err := os.Stat(filepath.Join(b.root, "boot/initrd.img-"+version)); err != nil {
		return "", "", "", fmt.Errorf("no initramfs for kernel %s: %w", version, err)
	}
	kernel, initrd = "/boot/vmlinuz-"+version, "/boot/initrd.img-"+version
	if _, err := os.Stat(filepath.Join(b.root, "vmlinuz")); err == nil {
		if _, err := os.Stat(filepath.Join(b.root, "initrd.img")); err == nil {
			kernel, initrd = "/vmlinuz", "/initrd.img"
		}
	}
	return kernel, initrd, version, nil
}

func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// newVolumeID is a FAT volume ID, 8 upper-case hex digits.
func newVolumeID() string {
	var v [4]byte
	_, _ = rand.Read(v[:])
	return strings.ToUpper(fmt.Sprintf("%x", v[:]))
}
