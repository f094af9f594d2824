package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
	"github.com/nodeforge/nodeforge/internal/containerd"
	"github.com/nodeforge/nodeforge/internal/contents"
	"github.com/nodeforge/nodeforge/internal/debian"
)

// offlineImage holds what the offline checks read, loaded once.
type offlineImage struct {
	path    string
	content *imagev1.ImageContent
	workDir string

	info    *ImageInfo
	infoErr error
	disk    *Disk
	diskErr error
	root    *Partition
	rootSB  *Ext4Super
	rootErr error
	fs      *Ext4FS
	dpkg    map[string]debian.Package
	dpkgErr error
}

func boolOf(b *bool) bool { return b != nil && *b }

// arch is the image's architecture (amd64 when unknown).
func (o *offlineImage) arch() arch.Arch {
	a, err := arch.For(o.content.Base.Architecture)
	if err != nil {
		a, _ = arch.For(imagev1.ArchitectureAMD64)
	}
	return a
}

// biosBoot reports whether the image must boot by BIOS: boot mode bios or
// hybrid, on an architecture that has BIOS boot (hybrid is UEFI on arm64).
func (o *offlineImage) biosBoot() bool {
	m := o.content.Disk.BootMode
	return o.arch().HasBIOS() && (m == imagev1.BootModeBIOS || m == imagev1.BootModeHybrid)
}

// load runs qemu-img info, converts the image to raw and finds the root
// filesystem. Failures are kept and reported by the checks that need them.
func (o *offlineImage) load(ctx context.Context) {
	o.info, o.infoErr = QemuImgInfo(ctx, o.path)
	format := "qcow2"
	if o.info != nil {
		format = o.info.Format
	}
	o.disk, o.diskErr = OpenDisk(ctx, o.path, format, o.workDir)
	if o.diskErr != nil {
		o.rootErr = fmt.Errorf("no readable partition table: %w", o.diskErr)
		o.dpkgErr = o.rootErr
		return
	}
	o.root, o.rootSB, o.rootErr = findRoot(o.disk, o.arch().RootType)
	if o.rootErr != nil {
		o.dpkgErr = o.rootErr
		return
	}
	o.fs = NewExt4FS(ctx, o.disk.Path, o.root.Offset())
	b, err := o.fs.ReadFile("/var/lib/dpkg/status")
	if err != nil {
		o.dpkgErr = fmt.Errorf("reading /var/lib/dpkg/status: %w", err)
		return
	}
	o.dpkg, o.dpkgErr = debian.ParseStatus(b)
}

// findRoot picks the root partition: the partition typed rootType (the
// image architecture's root type) that holds ext4, else the largest ext4
// partition.
func findRoot(d *Disk, rootType string) (*Partition, *Ext4Super, error) {
	var best *Partition
	var bestSB *Ext4Super
	for i := range d.GPT.Partitions {
		p := &d.GPT.Partitions[i]
		b, err := d.ReadAt(p.Offset()+1024, 1024)
		if err != nil {
			continue
		}
		sb, err := ParseExt4Super(b)
		if err != nil {
			continue
		}
		if strings.EqualFold(p.TypeGUID, rootType) {
			return p, sb, nil
		}
		if best == nil || p.Size() > best.Size() {
			best, bestSB = p, sb
		}
	}
	if best == nil {
		return nil, nil, errors.New("no partition holds an ext4 filesystem")
	}
	return best, bestSB, nil
}

func (o *offlineImage) needFS() error {
	if o.rootErr != nil {
		return o.rootErr
	}
	return nil
}

func (o *offlineImage) readFile(p string) ([]byte, error) {
	if err := o.needFS(); err != nil {
		return nil, err
	}
	return o.fs.ReadFile(p)
}

// planOffline lists the offline checks a defaulted content implies.
func planOffline(o *offlineImage) []plannedCheck {
	c := o.content
	off := func(name string, f checkFunc) plannedCheck {
		return plannedCheck{name: name, category: Offline, run: f}
	}
	var p []plannedCheck
	p = append(p,
		off(CheckQemuImgFormat, o.checkFormat),
		off(CheckQemuImgVirtualSize, o.checkVirtualSize),
	)
	if c.Output.Format == imagev1.FormatQCOW2 {
		p = append(p, off(CheckQemuImgCompression, o.checkCompression), off(CheckQemuImgCheck, o.checkQemuImgCheck))
	}
	p = append(p,
		off(CheckQemuImgNoBacking, o.checkNoBacking),
		off(CheckPartitionTable, o.checkPartitionTable),
		off(CheckFilesystemRoot, o.checkRootFS),
		off(CheckFilesystemRootFsck, o.checkFsck),
	)
	bios := o.biosBoot()
	uefi := c.Disk.BootMode == imagev1.BootModeUEFI || c.Disk.BootMode == imagev1.BootModeHybrid
	if uefi {
		p = append(p, off(CheckFilesystemESP, o.checkESP))
	}
	p = append(p, off(CheckFstabRoot, o.checkFstabRoot))
	if bios {
		p = append(p, off(CheckBootloaderBIOS, o.checkBIOS))
	}
	if uefi {
		p = append(p, off(CheckBootloaderUEFI, o.checkUEFI))
	}
	p = append(p, off(CheckKernelInitrd, o.checkKernel), off(CheckPackagesConsistent, o.checkPackagesConsistent))
	// The same list the builder installs, so the two cannot disagree.
	for _, req := range contents.Packages(c) {
		p = append(p, off(PackageCheckName(req.Name), o.checkPackage(req)))
	}
	if k := c.Kubernetes; k != nil {
		if boolOf(k.Hold) {
			p = append(p, off(CheckKubePackagesHeld, o.checkKubeHeld))
		}
		p = append(p, off(CheckKubeAptRepository, o.checkKubeRepo))
	}
	for _, u := range enabledUnits(c) {
		p = append(p, off(ServiceCheckName(u), o.checkUnitEnabled(u)))
	}
	if len(c.Kernel.Modules) > 0 {
		p = append(p, off(CheckKernelModules, o.checkModules))
	}
	if len(c.Kernel.Sysctls) > 0 {
		p = append(p, off(CheckSysctls, o.checkSysctls))
	}
	cr := c.ContainerRuntime
	if boolOf(cr.Containerd.Enabled) && boolOf(cr.Containerd.SystemdCgroup) {
		p = append(p, off(CheckContainerdCgroup, o.checkContainerdCgroup))
	}
	if boolOf(cr.Containerd.Enabled) && boolOf(cr.CNIPlugins.Enabled) {
		p = append(p, off(CheckContainerdCNIDir, o.checkContainerdCNIDir))
	}
	if boolOf(cr.CNIPlugins.Enabled) {
		p = append(p, off(CheckCNIPlugins, o.checkCNI))
	}
	if boolOf(c.Swap.Disabled) {
		p = append(p, off(CheckFstabNoSwap, o.checkNoSwap), off(CheckSwapTargetMasked, o.checkSwapMasked))
	}
	if boolOf(c.SSH.Enabled) {
		p = append(p,
			off(CheckSSHDPasswordAuth, o.checkSSHD("PasswordAuthentication", "no")),
			off(CheckSSHDKbdInteractive, o.checkSSHD("KbdInteractiveAuthentication", "no")),
			off(CheckSSHDPermitRoot, o.checkSSHD("PermitRootLogin", string(c.SSH.PermitRootLogin))),
		)
	}
	p = append(p, off(CheckRootPassword, o.checkRootPassword), off(CheckCloudInitSources, o.checkDatasources))
	for _, u := range c.Users {
		p = append(p, off("user-"+sanitizeName(u.Name), o.checkUser(u)))
	}
	for _, f := range c.Files {
		if f.Content != "" || f.ConfigMapKeyRef == nil {
			p = append(p, off("file-"+sanitizeName(f.Path), o.checkFile(f)))
		}
	}
	p = append(p,
		off(CheckHygieneSSHKeys, o.checkNoHostKeys),
		off(CheckHygieneMachineID, o.checkMachineID),
		off(CheckHygieneCloudInit, o.checkCloudInitState),
		off(CheckHygieneAptLists, o.checkAptLists),
		off(CheckHygieneAptCache, o.checkAptCache),
		off(CheckHygieneLogs, o.checkLogs),
	)
	return p
}

func enabledUnits(c *imagev1.ImageContent) []string {
	var out []string
	if boolOf(c.ContainerRuntime.Containerd.Enabled) {
		out = append(out, "containerd.service")
	}
	if boolOf(c.SSH.Enabled) {
		out = append(out, "ssh.service")
	}
	if boolOf(c.Monitoring.NodeExporter.Enabled) {
		out = append(out, "prometheus-node-exporter.service")
	}
	if k := c.Kubernetes; k != nil && boolOf(k.EnableKubelet) {
		for _, comp := range k.Components {
			if comp == imagev1.ComponentKubelet {
				out = append(out, "kubelet.service")
			}
		}
	}
	for _, u := range c.Units {
		if boolOf(u.Enabled) {
			out = append(out, u.Name)
		}
	}
	return out
}

func (o *offlineImage) checkFormat(context.Context) (string, error) {
	if o.infoErr != nil {
		return "", o.infoErr
	}
	want := string(o.content.Output.Format)
	if o.info.Format != want {
		return "", fmt.Errorf("format is %s, want %s", o.info.Format, want)
	}
	return "format " + want, nil
}

func (o *offlineImage) checkVirtualSize(context.Context) (string, error) {
	if o.infoErr != nil {
		return "", o.infoErr
	}
	want := o.content.Disk.Size.Value()
	if o.info.VirtualSize != want {
		return "", fmt.Errorf("virtual size is %d bytes, want %d (%s)", o.info.VirtualSize, want, o.content.Disk.Size.String())
	}
	return fmt.Sprintf("virtual size %s, %d MiB on disk", o.content.Disk.Size.String(), o.info.ActualSize>>20), nil
}

func (o *offlineImage) checkCompression(context.Context) (string, error) {
	if o.infoErr != nil {
		return "", o.infoErr
	}
	want := string(o.content.Output.Compression)
	got := o.info.FormatSpecific.Data.CompressionType
	if want == string(imagev1.CompressionNone) {
		return "uncompressed requested; compression type " + got, nil
	}
	if got != want {
		return "", fmt.Errorf("qcow2 compression type is %q, want %q", got, want)
	}
	if o.info.ActualSize >= o.info.VirtualSize/2 && o.disk != nil {
		// A compressed node image is far smaller than its disk; a large
		// file usually means clusters were written uncompressed.
		return "", fmt.Errorf("compression type %s but the file is %d MiB for a %d MiB disk: clusters look uncompressed", got, o.info.ActualSize>>20, o.info.VirtualSize>>20)
	}
	return "compression type " + got, nil
}

func (o *offlineImage) checkNoBacking(context.Context) (string, error) {
	if o.infoErr != nil {
		return "", o.infoErr
	}
	if o.info.BackingFilename != "" {
		return "", fmt.Errorf("image has a backing file %q", o.info.BackingFilename)
	}
	return "no backing file", nil
}

func (o *offlineImage) checkQemuImgCheck(ctx context.Context) (string, error) {
	if o.infoErr != nil {
		return "", o.infoErr
	}
	if o.info.FormatSpecific.Data.Corrupt {
		return "", errors.New("qcow2 header marks the image corrupt")
	}
	if _, err := runCmd(ctx, "qemu-img", "check", "-f", o.info.Format, o.path); err != nil {
		return "", err
	}
	return "no errors, no leaked clusters", nil
}

func (o *offlineImage) checkPartitionTable(context.Context) (string, error) {
	if o.diskErr != nil {
		return "", o.diskErr
	}
	g := o.disk.GPT
	var missing []string
	mode := o.content.Disk.BootMode
	if o.biosBoot() && g.ByType(GUIDBIOSBoot) == nil {
		missing = append(missing, "BIOS boot partition")
	}
	if (mode == imagev1.BootModeUEFI || mode == imagev1.BootModeHybrid) && g.ByType(GUIDESP) == nil {
		missing = append(missing, "EFI system partition")
	}
	if g.ByType(GUIDLinuxSwap) != nil {
		missing = append(missing, "no swap partition (found one)")
	}
	var parts []string
	for _, p := range g.Partitions {
		parts = append(parts, fmt.Sprintf("%d:%s(%dMiB)", p.Number, typeName(p.TypeGUID), p.Size()>>20))
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("GPT for boot mode %s lacks %s; partitions %s", mode, strings.Join(missing, ", "), strings.Join(parts, " "))
	}
	return "GPT " + strings.Join(parts, " "), nil
}

func typeName(guid string) string {
	switch strings.ToUpper(guid) {
	case GUIDBIOSBoot:
		return "bios-boot"
	case GUIDESP:
		return "esp"
	case GUIDLinuxFS:
		return "linux"
	case GUIDLinuxSwap:
		return "swap"
	}
	if a, ok := arch.ByRootType(guid); ok {
		return a.RootTypeName
	}
	return guid
}

func (o *offlineImage) checkRootFS(context.Context) (string, error) {
	if o.rootErr != nil {
		return "", o.rootErr
	}
	sb := o.rootSB
	if !sb.Journal || !sb.Extents {
		return "", fmt.Errorf("root filesystem on partition %d is ext2/3, not ext4 (journal %v, extents %v)", o.root.Number, sb.Journal, sb.Extents)
	}
	if sb.UUID == "00000000-0000-0000-0000-000000000000" {
		return "", errors.New("root filesystem has a nil UUID")
	}
	if sb.Label == "" {
		return "", fmt.Errorf("root filesystem (UUID %s) has no label", sb.UUID)
	}
	return fmt.Sprintf("ext4 on partition %d, UUID %s, label %q", o.root.Number, sb.UUID, sb.Label), nil
}

func (o *offlineImage) checkFsck(context.Context) (string, error) {
	if o.rootErr != nil {
		return "", o.rootErr
	}
	out, err := o.fs.Fsck()
	if err != nil {
		return "", fmt.Errorf("e2fsck -fn: %w: %s", err, out)
	}
	return "clean", nil
}

func (o *offlineImage) esp() (*Partition, *FATBoot, error) {
	if o.diskErr != nil {
		return nil, nil, o.diskErr
	}
	p := o.disk.GPT.ByType(GUIDESP)
	if p == nil {
		return nil, nil, errors.New("no EFI system partition")
	}
	bs, err := o.disk.ReadAt(p.Offset(), 512)
	if err != nil {
		return nil, nil, err
	}
	fat, err := ParseFATBoot(bs)
	if err != nil {
		return nil, nil, fmt.Errorf("EFI system partition %d: %w", p.Number, err)
	}
	return p, fat, nil
}

func (o *offlineImage) checkESP(context.Context) (string, error) {
	p, fat, err := o.esp()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s on partition %d, volume ID %s, label %q", fat.Type, p.Number, fat.VolumeID, fat.Label), nil
}

func (o *offlineImage) checkFstabRoot(context.Context) (string, error) {
	b, err := o.readFile("/etc/fstab")
	if err != nil {
		return "", err
	}
	for _, e := range ParseFstab(b) {
		if e.File != "/" {
			continue
		}
		k, v, _ := strings.Cut(e.Spec, "=")
		ok := false
		switch strings.ToUpper(k) {
		case "UUID":
			ok = strings.EqualFold(v, o.rootSB.UUID)
		case "LABEL":
			ok = v == o.rootSB.Label
		case "PARTUUID":
			ok = strings.EqualFold(v, o.root.GUID)
		}
		if !ok {
			return "", fmt.Errorf("fstab mounts / from %s, which is not the root filesystem (UUID %s, label %q, PARTUUID %s)", e.Spec, o.rootSB.UUID, o.rootSB.Label, strings.ToLower(o.root.GUID))
		}
		if e.Type != "ext4" && e.Type != "auto" {
			return "", fmt.Errorf("fstab mounts / as %q, want ext4", e.Type)
		}
		return "/ from " + e.Spec, nil
	}
	return "", errors.New("/etc/fstab has no entry for /")
}

// checkBIOS looks for GRUB's boot.img in the MBR and the core image it
// loads in the BIOS boot partition.
func (o *offlineImage) checkBIOS(context.Context) (string, error) {
	if o.diskErr != nil {
		return "", o.diskErr
	}
	mbr := o.disk.MBR
	if bytes.Equal(mbr[:440], make([]byte, 440)) {
		return "", errors.New("the MBR boot code area is all zeros: no BIOS boot loader")
	}
	if !bytes.Contains(mbr[:440], []byte("GRUB")) {
		return "", errors.New("the MBR boot code is not GRUB's boot.img (no \"GRUB\" marker)")
	}
	coreLBA := binary.LittleEndian.Uint64(mbr[0x5c:])
	bb := o.disk.GPT.ByType(GUIDBIOSBoot)
	if bb == nil {
		return "", errors.New("GRUB boot code present but no BIOS boot partition for core.img")
	}
	if coreLBA < bb.FirstLBA || coreLBA > bb.LastLBA {
		return "", fmt.Errorf("boot.img loads core.img from LBA %d, outside the BIOS boot partition (%d-%d)", coreLBA, bb.FirstLBA, bb.LastLBA)
	}
	first, err := o.disk.ReadAt(int64(coreLBA)*sectorSize, sectorSize)
	if err != nil {
		return "", err
	}
	if bytes.Equal(first, make([]byte, sectorSize)) {
		return "", fmt.Errorf("core.img sector at LBA %d is empty", coreLBA)
	}
	start := binary.LittleEndian.Uint64(first[0x1f4:])
	n := binary.LittleEndian.Uint16(first[0x1fc:])
	if start != coreLBA+1 || n == 0 {
		return "", fmt.Errorf("core.img's first block list (start %d, %d sectors) does not follow its first sector %d", start, n, coreLBA)
	}
	return fmt.Sprintf("GRUB boot.img in the MBR, core.img at LBA %d (%d sectors) in BIOS boot partition %d", coreLBA, n+1, bb.Number), nil
}

// checkUEFI extracts the fallback boot loader of the image's architecture
// (EFI/BOOT/BOOTX64.EFI, BOOTAA64.EFI on arm64) from the ESP with mtools
// and checks that it is a PE image for that architecture.
func (o *offlineImage) checkUEFI(ctx context.Context) (string, error) {
	p, _, err := o.esp()
	if err != nil {
		return "", err
	}
	a := o.arch()
	name := "EFI/BOOT/" + a.EFIBootFile
	dst := filepath.Join(o.workDir, a.EFIBootFile)
	defer os.Remove(dst)
	cmd := exec.CommandContext(ctx, "mcopy", "-n", "-i", fmt.Sprintf("%s@@%d", o.disk.Path, p.Offset()), "::/"+name, dst)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s not readable on the ESP: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		return "", err
	}
	m, err := peMachine(b)
	if err != nil {
		return "", fmt.Errorf("%s %w", name, err)
	}
	if m != a.PEMachine {
		return "", fmt.Errorf("%s is for machine 0x%x, want %s (0x%x)", name, m, a.Name, a.PEMachine)
	}
	return fmt.Sprintf("%s (%d KiB, %s PE) on ESP partition %d", name, len(b)>>10, a.Name, p.Number), nil
}

// peMachine returns the machine type of a PE/COFF image.
func peMachine(b []byte) (uint16, error) {
	if len(b) < 0x40 || string(b[:2]) != "MZ" {
		return 0, errors.New("is not a PE image (no MZ header)")
	}
	pe := int(binary.LittleEndian.Uint32(b[0x3c:]))
	if pe < 0 || pe+6 > len(b) || string(b[pe:pe+4]) != "PE\x00\x00" {
		return 0, errors.New("has no PE signature")
	}
	return binary.LittleEndian.Uint16(b[pe+4:]), nil
}

func (o *offlineImage) checkKernel(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	ents, err := o.fs.ReadDir("/boot")
	if err != nil {
		return "", err
	}
	have := map[string]int64{}
	for _, e := range ents {
		have[e.Name] = e.Size
	}
	var kernels []string
	for n := range have {
		if v, ok := strings.CutPrefix(n, "vmlinuz-"); ok {
			kernels = append(kernels, v)
		}
	}
	if len(kernels) == 0 {
		return "", errors.New("/boot has no vmlinuz-*")
	}
	sort.Strings(kernels)
	for _, v := range kernels {
		if have["initrd.img-"+v] > 0 {
			return "kernel and initrd " + v, nil
		}
	}
	return "", fmt.Errorf("/boot has kernel %s but no non-empty initrd.img for it", strings.Join(kernels, ", "))
}

func (o *offlineImage) checkPackagesConsistent(context.Context) (string, error) {
	if o.dpkgErr != nil {
		return "", o.dpkgErr
	}
	var bad []string
	n := 0
	for name, p := range o.dpkg {
		if p.State == "not-installed" || p.State == "config-files" {
			continue
		}
		n++
		if !p.Installed() {
			bad = append(bad, fmt.Sprintf("%s (%s %s %s)", name, p.Want, p.Flag, p.State))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		return "", fmt.Errorf("%d package(s) not fully installed: %s", len(bad), strings.Join(bad, ", "))
	}
	return fmt.Sprintf("%d packages installed", n), nil
}

func (o *offlineImage) checkPackage(req contents.PackageRequest) checkFunc {
	return func(context.Context) (string, error) {
		if o.dpkgErr != nil {
			return "", o.dpkgErr
		}
		p, ok := o.dpkg[req.Name]
		if !ok || !p.Installed() {
			state := "absent from the dpkg database"
			if ok {
				state = fmt.Sprintf("in state %q", p.Want+" "+p.Flag+" "+p.State)
			}
			return "", fmt.Errorf("package %s (from %s) is not installed (%s)", req.Name, req.Why, state)
		}
		ok, err := req.Matches(p.Version)
		if err != nil {
			return "", fmt.Errorf("%s: %w", req.Why, err)
		}
		if !ok {
			return "", fmt.Errorf("%s %s installed, want %s (from %s)", req.Name, p.Version, req.Want(), req.Why)
		}
		return fmt.Sprintf("%s %s", req.Name, p.Version), nil
	}
}

func (o *offlineImage) checkKubeHeld(context.Context) (string, error) {
	if o.dpkgErr != nil {
		return "", o.dpkgErr
	}
	var notHeld []string
	for _, comp := range o.content.Kubernetes.Components {
		if p, ok := o.dpkg[string(comp)]; !ok || !p.Held() {
			want := "absent"
			if ok {
				want = p.Want
			}
			notHeld = append(notHeld, fmt.Sprintf("%s (selection %s)", comp, want))
		}
	}
	if len(notHeld) > 0 {
		return "", fmt.Errorf("not held: %s; apt upgrades could move them off %s", strings.Join(notHeld, ", "), o.content.Kubernetes.Version)
	}
	return "held: " + joinComponents(o.content.Kubernetes.Components), nil
}

func joinComponents(cs []imagev1.KubernetesComponent) string {
	var s []string
	for _, c := range cs {
		s = append(s, string(c))
	}
	return strings.Join(s, ", ")
}

func (o *offlineImage) checkKubeRepo(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	url := strings.TrimRight(o.content.Kubernetes.AptRepository.URL, "/")
	files := []string{"/etc/apt/sources.list"}
	if ents, err := o.fs.ReadDir("/etc/apt/sources.list.d"); err == nil {
		for _, e := range ents {
			files = append(files, "/etc/apt/sources.list.d/"+e.Name)
		}
	}
	for _, f := range files {
		b, err := o.fs.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if strings.HasPrefix(l, "#") {
				continue
			}
			if strings.Contains(l, url) {
				return "configured in " + f, nil
			}
		}
	}
	return "", fmt.Errorf("no apt source for %s in /etc/apt/sources.list{,.d}", url)
}

// wantedUnits lists unit names linked from *.wants and *.requires
// directories under /etc/systemd/system and /usr/lib/systemd/system.
func (o *offlineImage) wantedUnits() (map[string]string, error) {
	out := map[string]string{}
	for _, dir := range []string{"/etc/systemd/system", "/usr/lib/systemd/system"} {
		ents, err := o.fs.ReadDir(dir)
		if err != nil {
			if errors.Is(err, ErrNotExist) {
				continue
			}
			return nil, err
		}
		for _, e := range ents {
			if !e.IsDir || !strings.HasSuffix(e.Name, ".wants") && !strings.HasSuffix(e.Name, ".requires") {
				continue
			}
			sub, err := o.fs.ReadDir(dir + "/" + e.Name)
			if err != nil {
				return nil, err
			}
			for _, s := range sub {
				if _, seen := out[s.Name]; !seen {
					out[s.Name] = dir + "/" + e.Name
				}
			}
		}
	}
	return out, nil
}

func (o *offlineImage) checkUnitEnabled(unit string) checkFunc {
	return func(context.Context) (string, error) {
		if err := o.needFS(); err != nil {
			return "", err
		}
		if t, err := o.fs.Readlink("/etc/systemd/system/" + unit); err == nil && t == "/dev/null" {
			return "", fmt.Errorf("%s is masked", unit)
		}
		wants, err := o.wantedUnits()
		if err != nil {
			return "", err
		}
		if dir, ok := wants[unit]; ok {
			return "enabled in " + dir, nil
		}
		return "", fmt.Errorf("%s is not enabled: no link in any *.wants or *.requires directory", unit)
	}
}

// readConfDir returns the contents of NAME.conf files from dirs, with a
// name in an earlier dir overriding the same name in a later one, sorted
// by file name: the systemd *.d convention.
func (o *offlineImage) readConfDir(dirs ...string) ([]string, map[string][]byte, error) {
	files := map[string]string{}
	for i := len(dirs) - 1; i >= 0; i-- {
		ents, err := o.fs.ReadDir(dirs[i])
		if err != nil {
			if errors.Is(err, ErrNotExist) {
				continue
			}
			return nil, nil, err
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name, ".conf") && !e.IsDir {
				files[e.Name] = dirs[i] + "/" + e.Name
			}
		}
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	content := map[string][]byte{}
	var paths []string
	for _, n := range names {
		b, err := o.fs.ReadFile(files[n])
		if err != nil {
			// A link to /dev/null masks the file.
			continue
		}
		paths = append(paths, files[n])
		content[files[n]] = b
	}
	return paths, content, nil
}

func (o *offlineImage) checkModules(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	paths, content, err := o.readConfDir("/etc/modules-load.d", "/usr/lib/modules-load.d")
	if err != nil {
		return "", err
	}
	loaded := map[string]string{}
	if b, err := o.fs.ReadFile("/etc/modules"); err == nil {
		paths = append(paths, "/etc/modules")
		content["/etc/modules"] = b
	}
	for _, p := range paths {
		for _, l := range strings.Split(string(content[p]), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";") {
				continue
			}
			loaded[strings.ReplaceAll(strings.Fields(l)[0], "-", "_")] = p
		}
	}
	var missing, where []string
	for _, m := range o.content.Kernel.Modules {
		if p, ok := loaded[strings.ReplaceAll(m, "-", "_")]; ok {
			where = append(where, m+" ("+p+")")
		} else {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("not loaded at boot by any modules-load.d file: %s", strings.Join(missing, ", "))
	}
	if absent := o.modulesAbsentFromKernel(o.content.Kernel.Modules); len(absent) > 0 {
		return "", fmt.Errorf("configured, but the installed kernel ships no module %s", strings.Join(absent, ", "))
	}
	return strings.Join(where, ", "), nil
}

// modulesAbsentFromKernel checks modules.dep and modules.builtin of every
// installed kernel.
func (o *offlineImage) modulesAbsentFromKernel(mods []string) []string {
	kernels, err := o.fs.ReadDir("/usr/lib/modules")
	if err != nil || len(kernels) == 0 {
		return nil // the kernel check reports a missing kernel
	}
	var index strings.Builder
	for _, k := range kernels {
		for _, f := range []string{"modules.dep", "modules.builtin"} {
			if b, err := o.fs.ReadFile("/usr/lib/modules/" + k.Name + "/" + f); err == nil {
				index.Write(b)
			}
		}
	}
	idx := strings.ReplaceAll(index.String(), "-", "_")
	var absent []string
	for _, m := range mods {
		m = strings.ReplaceAll(m, "-", "_")
		if !strings.Contains(idx, "/"+m+".ko") {
			absent = append(absent, m)
		}
	}
	return absent
}

// EvaluateSysctlFiles applies sysctl.d files in order and returns the
// final value and source of every key (keys normalised to dots).
func EvaluateSysctlFiles(paths []string, content map[string][]byte) map[string][2]string {
	out := map[string][2]string{}
	for _, p := range paths {
		for _, l := range strings.Split(string(content[p]), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";") {
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				continue
			}
			k = strings.TrimPrefix(strings.TrimSpace(k), "-")
			k = strings.ReplaceAll(k, "/", ".")
			out[k] = [2]string{strings.TrimSpace(v), p}
		}
	}
	return out
}

func (o *offlineImage) checkSysctls(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	paths, content, err := o.readConfDir("/etc/sysctl.d", "/usr/lib/sysctl.d")
	if err != nil {
		return "", err
	}
	vals := EvaluateSysctlFiles(paths, content)
	var bad, good []string
	for _, s := range o.content.Kernel.Sysctls {
		v, ok := vals[s.Name]
		switch {
		case !ok:
			bad = append(bad, s.Name+" is not set")
		case v[0] != s.Value:
			bad = append(bad, fmt.Sprintf("%s = %s (from %s), want %s", s.Name, v[0], v[1], s.Value))
		default:
			good = append(good, s.Name+"="+v[0])
		}
	}
	if len(bad) > 0 {
		return "", errors.New(strings.Join(bad, "; "))
	}
	return strings.Join(good, ", "), nil
}

// containerdConfig reads the CRI settings of the image's containerd
// configuration.
func (o *offlineImage) containerdConfig() (containerd.CRISettings, error) {
	b, err := o.readFile(containerd.ConfigPath)
	if err != nil {
		return containerd.CRISettings{}, err
	}
	return containerd.Effective(b)
}

func (o *offlineImage) checkContainerdCgroup(context.Context) (string, error) {
	s, err := o.containerdConfig()
	if err != nil {
		return "", err
	}
	return cgroupVerdict(s, containerd.ConfigPath)
}

func (o *offlineImage) checkContainerdCNIDir(context.Context) (string, error) {
	s, err := o.containerdConfig()
	if err != nil {
		return "", err
	}
	return cniDirVerdict(s, o.content.ContainerRuntime.CNIPlugins.BinDir, containerd.ConfigPath)
}

// cgroupVerdict checks the CRI's default runtime uses the systemd cgroup
// driver, which the kubelet's default (cgroupDriver: systemd) needs.
func cgroupVerdict(s containerd.CRISettings, from string) (string, error) {
	switch {
	case s.SystemdCgroup == nil:
		return "", fmt.Errorf("%s does not set SystemdCgroup for the %s runtime (containerd then uses cgroupfs, which conflicts with the kubelet's systemd driver)", from, s.DefaultRuntime)
	case !*s.SystemdCgroup:
		return "", fmt.Errorf("%s sets SystemdCgroup = false for the %s runtime", from, s.DefaultRuntime)
	}
	return fmt.Sprintf("SystemdCgroup = true for the %s runtime", s.DefaultRuntime), nil
}

// cniDirVerdict checks the CRI loads CNI plugins from dir.
func cniDirVerdict(s containerd.CRISettings, dir, from string) (string, error) {
	if !slices.Contains(s.CNIBinDirs, dir) {
		if len(s.CNIBinDirs) == 0 {
			return "", fmt.Errorf("%s sets no CNI bin_dir: containerd's compiled-in default applies (Debian's: /usr/lib/cni), not %s", from, dir)
		}
		return "", fmt.Errorf("the CRI loads CNI plugins from %s (%s), not from cniPlugins.binDir %s", strings.Join(s.CNIBinDirs, ", "), from, dir)
	}
	return "CNI bin_dir " + dir, nil
}

func (o *offlineImage) checkCNI(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	dir := o.content.ContainerRuntime.CNIPlugins.BinDir
	ents, err := o.fs.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("CNI plugin directory %s: %w", dir, err)
	}
	have := map[string]DirEntry{}
	for _, e := range ents {
		have[e.Name] = e
	}
	var bad []string
	for _, n := range []string{"bridge", "host-local", "loopback", "portmap"} {
		e, ok := have[n]
		switch {
		case !ok:
			bad = append(bad, n+" missing")
		case e.Symlink:
			if st, err := o.fs.Lstat(dir + "/" + n); err != nil || st == nil {
				bad = append(bad, n+" is a broken link")
			}
		case e.Mode&0o111 == 0:
			bad = append(bad, n+" is not executable")
		}
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("%s: %s", dir, strings.Join(bad, ", "))
	}
	return fmt.Sprintf("%d plugins in %s", len(ents), dir), nil
}

func (o *offlineImage) checkNoSwap(context.Context) (string, error) {
	b, err := o.readFile("/etc/fstab")
	if err != nil {
		return "", err
	}
	if sw := SwapEntries(ParseFstab(b)); len(sw) > 0 {
		var s []string
		for _, e := range sw {
			s = append(s, e.Spec)
		}
		return "", fmt.Errorf("/etc/fstab activates swap: %s", strings.Join(s, ", "))
	}
	for _, f := range []string{"/swapfile", "/swap.img"} {
		if ok, _ := o.fs.Exists(f); ok {
			return "", fmt.Errorf("no swap in fstab, but %s exists", f)
		}
	}
	return "no swap entries", nil
}

func (o *offlineImage) checkSwapMasked(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	t, err := o.fs.Readlink("/etc/systemd/system/swap.target")
	if err != nil || t != "/dev/null" {
		return "", errors.New("swap.target is not masked (/etc/systemd/system/swap.target is not a link to /dev/null)")
	}
	return "swap.target masked", nil
}

func (o *offlineImage) checkSSHD(keyword, want string) checkFunc {
	return func(context.Context) (string, error) {
		if err := o.needFS(); err != nil {
			return "", err
		}
		cfg, err := EvaluateSSHDConfig(o.fs)
		if err != nil {
			return "", err
		}
		got, set := cfg.Get(keyword)
		src := cfg.Sources[strings.ToLower(keyword)]
		if !set {
			got, src = sshdDefault(keyword), "OpenSSH default"
		}
		if !strings.EqualFold(got, want) {
			return "", fmt.Errorf("effective %s is %s (%s), want %s", keyword, got, src, want)
		}
		return fmt.Sprintf("%s %s (%s)", keyword, got, src), nil
	}
}

func sshdDefault(keyword string) string {
	if strings.EqualFold(keyword, "permitrootlogin") {
		return "prohibit-password"
	}
	return "yes"
}

func (o *offlineImage) checkRootPassword(context.Context) (string, error) {
	b, err := o.readFile("/etc/shadow")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 2 || f[0] != "root" {
			continue
		}
		switch {
		case f[1] == "":
			return "", errors.New("root has an empty password field: anyone can log in as root on the console")
		case strings.HasPrefix(f[1], "!") || strings.HasPrefix(f[1], "*"):
			return fmt.Sprintf("root password field %q (locked)", f[1][:1]), nil
		default:
			return "", errors.New("root has a password hash in /etc/shadow")
		}
	}
	return "", errors.New("/etc/shadow has no root entry")
}

func (o *offlineImage) checkDatasources(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	files := []string{"/etc/cloud/cloud.cfg"}
	if ents, err := o.fs.ReadDir("/etc/cloud/cloud.cfg.d"); err == nil {
		var names []string
		for _, e := range ents {
			if strings.HasSuffix(e.Name, ".cfg") {
				names = append(names, e.Name)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			files = append(files, "/etc/cloud/cloud.cfg.d/"+n)
		}
	}
	var list []string
	src := ""
	for _, f := range files {
		b, err := o.fs.ReadFile(f)
		if err != nil {
			continue
		}
		var doc struct {
			DatasourceList []string `json:"datasource_list"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return "", fmt.Errorf("%s is not valid YAML: %w", f, err)
		}
		if doc.DatasourceList != nil {
			list, src = doc.DatasourceList, f
		}
	}
	var want []string
	for _, d := range o.content.CloudInit.Datasources {
		want = append(want, string(d))
	}
	if list == nil {
		return "", fmt.Errorf("no datasource_list in /etc/cloud: cloud-init probes every datasource, want %v", want)
	}
	if strings.Join(list, ",") != strings.Join(want, ",") {
		return "", fmt.Errorf("datasource_list is %v (%s), want %v", list, src, want)
	}
	return fmt.Sprintf("%v (%s)", list, src), nil
}

func (o *offlineImage) checkUser(u imagev1.UserSpec) checkFunc {
	return func(context.Context) (string, error) {
		b, err := o.readFile("/etc/passwd")
		if err != nil {
			return "", err
		}
		home := ""
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Split(l, ":"); len(f) >= 7 && f[0] == u.Name {
				home = f[5]
			}
		}
		if home == "" {
			return "", fmt.Errorf("user %s is not in /etc/passwd", u.Name)
		}
		if len(u.SSHAuthorizedKeys) > 0 {
			ak, err := o.fs.ReadFile(path.Join(home, ".ssh/authorized_keys"))
			if err != nil {
				return "", fmt.Errorf("user %s: %s/.ssh/authorized_keys: %w", u.Name, home, err)
			}
			for _, k := range u.SSHAuthorizedKeys {
				if !bytes.Contains(ak, []byte(strings.Join(strings.Fields(k)[:2], " "))) {
					return "", fmt.Errorf("user %s: a key from the spec is missing from authorized_keys", u.Name)
				}
			}
		}
		return "home " + home, nil
	}
}

func (o *offlineImage) checkFile(f imagev1.FileSpec) checkFunc {
	return func(context.Context) (string, error) {
		if err := o.needFS(); err != nil {
			return "", err
		}
		st, err := o.fs.Lstat(f.Path)
		if err != nil {
			return "", err
		}
		b, err := o.fs.ReadFile(f.Path)
		if err != nil {
			return "", err
		}
		if f.ConfigMapKeyRef == nil && string(b) != f.Content {
			return "", fmt.Errorf("%s differs from the spec's content (%d bytes, want %d)", f.Path, len(b), len(f.Content))
		}
		var mode uint32
		if _, err := fmt.Sscanf(f.Mode, "%o", &mode); err == nil && st.Mode&0o7777 != mode {
			return "", fmt.Errorf("%s has mode %04o, want %04o", f.Path, st.Mode&0o7777, mode)
		}
		return fmt.Sprintf("%s (%d bytes, mode %04o)", f.Path, len(b), st.Mode&0o7777), nil
	}
}

func (o *offlineImage) checkNoHostKeys(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	ents, err := o.fs.ReadDir("/etc/ssh")
	if err != nil {
		if errors.Is(err, ErrNotExist) {
			return "no /etc/ssh", nil
		}
		return "", err
	}
	var keys []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name, "ssh_host_") {
			keys = append(keys, e.Name)
		}
	}
	if len(keys) > 0 {
		return "", fmt.Errorf("SSH host keys left in the image (every VM would share them): /etc/ssh/%s", strings.Join(keys, ", /etc/ssh/"))
	}
	return "no host keys", nil
}

func (o *offlineImage) checkMachineID(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	st, err := o.fs.Lstat("/etc/machine-id")
	if err != nil {
		return "", fmt.Errorf("/etc/machine-id: %w (it must exist and be empty so systemd generates one at first boot)", err)
	}
	if st.Size != 0 {
		return "", fmt.Errorf("/etc/machine-id holds %d bytes: every VM would share the machine ID", st.Size)
	}
	if st2, err := o.fs.Lstat("/var/lib/dbus/machine-id"); err == nil && st2.Type == "regular" && st2.Size > 0 {
		return "", errors.New("/var/lib/dbus/machine-id holds a machine ID")
	}
	return "empty", nil
}

func (o *offlineImage) checkCloudInitState(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	var found []string
	for _, p := range []string{"/var/lib/cloud/instance", "/var/lib/cloud/instances", "/var/lib/cloud/data/instance-id", "/var/lib/cloud/sem"} {
		if ok, _ := o.fs.Exists(p); ok {
			if ents, err := o.fs.ReadDir(p); err == nil && len(ents) == 0 {
				continue
			}
			found = append(found, p)
		}
	}
	if len(found) > 0 {
		return "", fmt.Errorf("cloud-init state left in the image (first boot would be skipped): %s", strings.Join(found, ", "))
	}
	return "no instance state", nil
}

func (o *offlineImage) checkAptLists(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	ents, err := o.fs.ReadDir("/var/lib/apt/lists")
	if errors.Is(err, ErrNotExist) {
		return "no lists", nil
	}
	if err != nil {
		return "", err
	}
	var lists []string
	for _, e := range ents {
		if !e.IsDir && e.Name != "lock" && e.Size > 0 {
			lists = append(lists, e.Name)
		}
	}
	if len(lists) > 0 {
		return "", fmt.Errorf("%d apt list file(s) left in /var/lib/apt/lists, such as %s", len(lists), lists[0])
	}
	return "no lists", nil
}

func (o *offlineImage) checkAptCache(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	var found []string
	for _, dir := range []string{"/var/cache/apt", "/var/cache/apt/archives", "/var/cache/apt/archives/partial"} {
		ents, err := o.fs.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir && (strings.HasSuffix(e.Name, ".deb") || strings.HasSuffix(e.Name, ".bin")) {
				found = append(found, dir+"/"+e.Name)
			}
		}
	}
	if len(found) > 0 {
		return "", fmt.Errorf("%d cached apt file(s), such as %s", len(found), found[0])
	}
	return "no cached packages", nil
}

func (o *offlineImage) checkLogs(context.Context) (string, error) {
	if err := o.needFS(); err != nil {
		return "", err
	}
	var found []string
	var walk func(dir string, depth int) error
	walk = func(dir string, depth int) error {
		ents, err := o.fs.ReadDir(dir)
		if err != nil {
			if errors.Is(err, ErrNotExist) {
				return nil
			}
			return err
		}
		for _, e := range ents {
			p := dir + "/" + e.Name
			switch {
			case e.IsDir && depth < 4:
				if err := walk(p, depth+1); err != nil {
					return err
				}
			case !e.IsDir && !e.Symlink && e.Size > 0:
				found = append(found, fmt.Sprintf("%s (%d bytes)", p, e.Size))
			}
		}
		return nil
	}
	if err := walk("/var/log", 0); err != nil {
		return "", err
	}
	if len(found) > 0 {
		if len(found) > 5 {
			found = append(found[:5], fmt.Sprintf("and %d more", len(found)-5))
		}
		return "", fmt.Errorf("build logs left in the image: %s", strings.Join(found, ", "))
	}
	return "no non-empty logs", nil
}
