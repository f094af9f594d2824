package builder

import (
	"fmt"
	"path"
	"slices"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
	"github.com/nodeforge/nodeforge/internal/contents"
)

// Step names, in pipeline order. Provisioners are named
// "provisioner/<name>".
const (
	StepResolve   = "resolve"
	StepRootfs    = "rootfs"
	StepProvision = "provision"
	StepImages    = "images"
	StepHygiene   = "hygiene"
	StepDisk      = "disk"
	StepConvert   = "convert"
	StepManifest  = "manifest"
)

// ProvisionerStep is the step name of a spec provisioner.
func ProvisionerStep(name string) string { return "provisioner/" + name }

// Step is one planned pipeline step: its name, its share of a typical
// build's time (for percent), and its parameters, exactly one of the
// typed fields.
type Step struct {
	Name   string
	Weight int

	Resolve     *ResolveParams
	Rootfs      *RootfsParams
	Provision   *ProvisionParams
	Images      *ImagesParams
	Provisioner *ProvisionerParams
	Hygiene     *HygieneParams
	Disk        *DiskParams
	Convert     *ConvertParams
	Manifest    *ManifestParams
}

// PackageRequest is one package the image needs (see contents.Packages).
type PackageRequest = contents.PackageRequest

// Version matches of a PackageRequest.
const (
	MatchAny        = contents.MatchAny
	MatchExact      = contents.MatchExact
	MatchPrefix     = contents.MatchPrefix
	MatchConstraint = contents.MatchConstraint
)

// AptSource is an extra apt repository (the Kubernetes one).
type AptSource struct {
	// Name is the file stem in /etc/apt/sources.list.d and the keyring name.
	Name       string
	URL        string
	Suite      string
	Components []string
	Key        imagev1.KeySource
}

// ResolveParams checks that the archive can satisfy every request before
// anything is installed, and picks exact versions.
type ResolveParams struct {
	Release      string
	Architecture string
	// Mirror is spec.base.mirror; empty means mmdebstrap's default mirror
	// for the release with its -updates and -security suites.
	Mirror   string
	Sources  []AptSource
	Packages []PackageRequest
	// NeedsAnsible: an Ansible provisioner follows, so ansible-playbook
	// must be on the build host; checked before anything is downloaded.
	NeedsAnsible bool
	// BaseInstall are the apt-get install arguments of the base layer
	// (the variant's own set, then the base requests). Resolve simulates
	// that install from the Debian sources alone; the closure it prints,
	// every package with its exact version, keys the cached base layer.
	BaseInstall []string
}

// RootfsParams builds the root filesystem tree with mmdebstrap.
type RootfsParams struct {
	Release      string
	Architecture string
	Mirror       string
	Variant      string
	// Packages are installed with the versions resolve picked: those
	// without Layer in the base layer, from the Debian sources alone
	// (cached, see cache.go), the others on top of it from every source.
	Packages []PackageRequest
	Sources  []AptSource
	// AptOptions and DpkgOptions go to --aptopt and --dpkgopt (and stay in
	// the image, so later installs behave the same).
	AptOptions  []string
	DpkgOptions []string
}

// ProvisionParams makes the seed image's contents true in the tree.
type ProvisionParams struct {
	// Containerd writes /etc/containerd/config.toml from containerd's
	// default config.
	Containerd    bool
	SystemdCgroup bool
	// CNIBinDir gets the CNI plugins; empty when CNI plugins are off.
	CNIBinDir string
	// Crictl writes /etc/crictl.yaml pointing crictl at containerd's socket
	// (cri-tools and containerd both installed).
	Crictl bool
	// Kubernetes configures the repository in the image; Hold lists the
	// packages held at their version.
	Kubernetes *AptSource
	Hold       []string
	Modules    []string
	Sysctls    []imagev1.Sysctl
	// DisableSwap masks swap.target and keeps fstab free of swap.
	DisableSwap bool
	// SSH configures sshd key-only; nil when openssh-server is not installed.
	SSH              *SSHParams
	NodeExporterPort int32
	Datasources      []imagev1.Datasource
	DefaultUserData  string
	Users            []imagev1.UserSpec
	Files            []imagev1.FileSpec
	Units            []imagev1.UnitSpec
	// Enable lists units enabled (never started during the build).
	Enable []string
	// Mask lists units masked.
	Mask []string
}

// SSHParams configures sshd.
type SSHParams struct {
	PermitRootLogin imagev1.PermitRootLogin
}

// ProvisionerParams runs one spec provisioner in the tree.
type ProvisionerParams struct {
	Name  string
	Shell string
	// Ansible is set for an Ansible provisioner.
	Ansible *imagev1.AnsibleProvisioner
}

// HygieneParams removes machine-specific and build-time state.
type HygieneParams struct {
	// KeepHostKeys keeps SSH host keys (never set by Plan; for debugging).
	KeepHostKeys bool
}

// DiskParams assembles the disk image without loop devices or mounts.
type DiskParams struct {
	// Architecture selects GRUB's platforms, the root partition type and
	// the serial console (package arch).
	Architecture string
	SizeBytes    int64
	// BootMode is spec.disk.bootMode; hybrid on an architecture without
	// BIOS boot (arm64) lays out and installs UEFI only.
	BootMode   imagev1.BootMode
	Filesystem imagev1.Filesystem
	// KernelCmdline is appended to the kernel command line.
	KernelCmdline string
}

// ConvertParams writes the output artifact.
type ConvertParams struct {
	Format      imagev1.Format
	Compression imagev1.Compression
}

// ManifestParams records the build manifest.
type ManifestParams struct{}

// DpkgUnsafeIO is the dpkg option used during the build only.
const DpkgUnsafeIO = "force-unsafe-io"

// Plan turns resolved, defaulted image content into the ordered steps that
// build it. It is pure: no I/O, same content, same plan.
func Plan(content imagev1.ImageContent) ([]Step, error) {
	c := content.DeepCopy()
	c.Default()
	if refs := c.References(); len(refs) > 0 {
		return nil, inputErrorf("image content is not resolved: %s", strings.Join(refs, ", "))
	}
	a, err := arch.For(c.Base.Architecture)
	if err != nil {
		return nil, inputErrorf("base.architecture: %v", err)
	}
	if !a.HasBIOS() && c.Disk.BootMode == imagev1.BootModeBIOS {
		return nil, inputErrorf("disk.bootMode bios: %s has no BIOS boot; use uefi (hybrid means uefi on %s)", a.Name, a.Name)
	}
	if c.Disk.Filesystem != imagev1.FilesystemExt4 {
		return nil, inputErrorf("filesystem %s is not supported (ext4 only)", c.Disk.Filesystem)
	}

	if err := checkFiles(c); err != nil {
		return nil, err
	}

	reqs := contents.Packages(c)
	var sources []AptSource
	var hold []string
	var kube *AptSource
	if k := c.Kubernetes; k != nil {
		src := AptSource{
			Name:       "kubernetes",
			URL:        k.AptRepository.URL,
			Suite:      k.AptRepository.Suite,
			Components: k.AptRepository.Components,
			Key:        k.AptRepository.SigningKey,
		}
		sources = append(sources, src)
		kube = &src
		if *k.Hold {
			for _, comp := range k.Components {
				hold = append(hold, string(comp))
			}
			slices.Sort(hold)
		}
	}

	steps := []Step{
		{Name: StepResolve, Weight: 4, Resolve: &ResolveParams{
			Release: string(c.Base.Release), Architecture: string(c.Base.Architecture),
			Mirror: c.Base.Mirror, Sources: sources, Packages: reqs,
			NeedsAnsible: slices.ContainsFunc(c.Provisioners, func(p imagev1.Provisioner) bool { return p.Ansible != nil }),
			BaseInstall:  baseInstall(reqs),
		}},
		{Name: StepRootfs, Weight: 55, Rootfs: &RootfsParams{
			Release: string(c.Base.Release), Architecture: string(c.Base.Architecture),
			Mirror: c.Base.Mirror, Variant: "minbase", Packages: reqs, Sources: sources,
			AptOptions: []string{
				`APT::Install-Recommends "false"`,
				`APT::Install-Suggests "false"`,
				`Acquire::Languages "none"`,
			},
			DpkgOptions: dpkgExcludes(),
		}},
		{Name: StepProvision, Weight: 8, Provision: provisionParams(c, kube, hold)},
	}
	if k := c.Kubernetes; k != nil && k.Images != nil {
		ip := &ImagesParams{KubernetesVersion: k.Version, ControlPlane: *k.Images.ControlPlane, Mirror: k.Images.Mirror, Extra: k.Images.Extra,
			Architecture: string(c.Base.Architecture)}
		if ip.ControlPlane && !slices.Contains(k.Components, imagev1.ComponentKubeadm) {
			return nil, inputErrorf("kubernetes.images.controlPlane needs kubeadm in kubernetes.components (it names the images)")
		}
		if !*c.ContainerRuntime.Containerd.Enabled {
			return nil, inputErrorf("kubernetes.images needs containerRuntime.containerd.enabled (the images are preloaded into its store)")
		}
		for i, e := range ip.Extra {
			if _, err := parseImageRef(e, ip.Mirror); err != nil {
				return nil, inputErrorf("kubernetes.images.extra[%d]: %v", i, err)
			}
		}
		if ip.ControlPlane || len(ip.Extra) > 0 {
			steps = append(steps, Step{Name: StepImages, Weight: 6, Images: ip})
		}
	}
	for _, p := range c.Provisioners {
		pp := &ProvisionerParams{Name: p.Name}
		switch {
		case p.Shell != nil:
			pp.Shell = p.Shell.Inline
		case p.Ansible != nil:
			pp.Ansible = p.Ansible.DeepCopy()
		default:
			return nil, inputErrorf("provisioner %q has neither shell nor ansible", p.Name)
		}
		steps = append(steps, Step{Name: ProvisionerStep(p.Name), Weight: 4, Provisioner: pp})
	}
	steps = append(steps,
		Step{Name: StepHygiene, Weight: 2, Hygiene: &HygieneParams{}},
		Step{Name: StepDisk, Weight: 16, Disk: &DiskParams{
			Architecture: string(a.Name),
			SizeBytes:    c.Disk.Size.Value(), BootMode: c.Disk.BootMode, Filesystem: c.Disk.Filesystem,
		}},
		Step{Name: StepConvert, Weight: 8, Convert: &ConvertParams{
			Format: c.Output.Format, Compression: c.Output.Compression,
		}},
		Step{Name: StepManifest, Weight: 3, Manifest: &ManifestParams{}},
	)
	return steps, nil
}

// minbaseSet is what mmdebstrap's minbase variant installs besides the
// requested packages, as apt-get install arguments (apt patterns).
var minbaseSet = []string{"?essential", "?priority(required)", "apt"}

// baseInstall lists the apt-get install arguments of the base layer: the
// minbase set and the base requests, by name (resolve compares the
// closure's versions with its pins).
func baseInstall(reqs []PackageRequest) []string {
	out := slices.Clone(minbaseSet)
	for _, r := range reqs {
		if !r.Layer {
			out = append(out, r.Name)
		}
	}
	return out
}

// builderOwned are the image paths the builder writes, replaces or
// removes after spec.files are applied (globs; a path below a match is
// covered too), and why: a spec file there would be silently lost.
func builderOwned(c *imagev1.ImageContent) [][2]string {
	out := [][2]string{
		{"/etc/fstab", "the disk step writes it (the root and EFI partitions by UUID)"},
		{"/boot/grub/grub.cfg", "the disk step writes it"},
		{"/etc/hostname", "hygiene writes it (localhost; cloud-init sets the hostname at boot)"},
		{"/etc/machine-id", "hygiene empties it (every VM gets its own at first boot)"},
		{"/var/lib/dbus/machine-id", "hygiene removes it (every VM gets its own at first boot)"},
		{"/etc/resolv.conf", "hygiene restores the image's own (systemd-resolved's stub)"},
		{savedResolvConf, "the builder keeps the image's resolv.conf there during the build"},
		{PolicyRCPath, "hygiene removes it (it only stops services starting during the build)"},
		{"/etc/ssh/ssh_host_*", "hygiene removes SSH host keys (every VM generates its own at first boot)"},
		{"/var/lib/cloud/*", "hygiene removes cloud-init state"},
		{"/var/log/*", "hygiene removes log files"},
	}
	for _, g := range aptCacheGlobs {
		out = append(out, [2]string{g, "hygiene removes apt lists and caches"})
	}
	for _, g := range tempGlobs {
		out = append(out, [2]string{g, "hygiene removes temporary and per-machine files"})
	}
	if *c.SSH.Enabled {
		out = append(out, [2]string{SSHDConfigPath, "it holds the builder's key-only sshd settings (ssh.enabled); put other settings in a later drop-in"})
	}
	for _, u := range c.Units {
		out = append(out, [2]string{"/etc/systemd/system/" + u.Name, "spec.units writes it"})
	}
	return out
}

// checkFiles refuses spec.files entries the builder would overwrite or
// remove later.
func checkFiles(c *imagev1.ImageContent) error {
	owned := builderOwned(c)
	var problems []string
	for i, f := range c.Files {
		p := path.Clean(f.Path)
	paths:
		for q := p; q != "/" && q != "."; q = path.Dir(q) {
			for _, o := range owned {
				if ok, _ := path.Match(o[0], q); ok {
					problems = append(problems, fmt.Sprintf("spec.files[%d].path %s: the builder owns this file: %s", i, f.Path, o[1]))
					break paths
				}
			}
		}
	}
	if len(problems) > 0 {
		return inputErrorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

func provisionParams(c *imagev1.ImageContent, kube *AptSource, hold []string) *ProvisionParams {
	cr := c.ContainerRuntime
	p := &ProvisionParams{
		Containerd:      *cr.Containerd.Enabled,
		SystemdCgroup:   *cr.Containerd.SystemdCgroup,
		Kubernetes:      kube,
		Hold:            hold,
		Modules:         c.Kernel.Modules,
		Sysctls:         c.Kernel.Sysctls,
		DisableSwap:     *c.Swap.Disabled,
		Datasources:     c.CloudInit.Datasources,
		DefaultUserData: c.CloudInit.DefaultUserData,
		Users:           c.Users,
		Files:           c.Files,
		Units:           c.Units,
	}
	if *cr.CNIPlugins.Enabled {
		p.CNIBinDir = cr.CNIPlugins.BinDir
	}
	if *c.SSH.Enabled {
		p.SSH = &SSHParams{PermitRootLogin: c.SSH.PermitRootLogin}
		p.Enable = append(p.Enable, "ssh.service", "nodeforge-ssh-keygen.service")
	}
	if p.Containerd {
		p.Enable = append(p.Enable, "containerd.service")
		p.Crictl = c.Kubernetes != nil && slices.Contains(c.Kubernetes.Components, imagev1.ComponentCRITools)
	}
	if *c.Monitoring.NodeExporter.Enabled {
		p.NodeExporterPort = c.Monitoring.NodeExporter.Port
		p.Enable = append(p.Enable, "prometheus-node-exporter.service")
	}
	if k := c.Kubernetes; k != nil && *k.EnableKubelet && slices.Contains(k.Components, imagev1.ComponentKubelet) {
		p.Enable = append(p.Enable, "kubelet.service")
	}
	for _, u := range c.Units {
		if *u.Enabled {
			p.Enable = append(p.Enable, u.Name)
		}
	}
	if p.DisableSwap {
		p.Mask = append(p.Mask, "swap.target")
	}
	// A fresh image has no e2scrub snapshots to reap; the unit costs seconds
	// of CPU at first boot.
	p.Mask = append(p.Mask, "e2scrub_reap.service")
	return p
}

// dpkgExcludes keeps documentation, man pages and translations out of the
// image (copyright files stay: they are the license record). force-unsafe-io
// skips dpkg's fsyncs while building (the disk image is written from the
// tree afterwards anyway); hygiene removes it from the image's dpkg config.
func dpkgExcludes() []string {
	return []string{
		DpkgUnsafeIO,
		"path-exclude=/usr/share/man/*",
		"path-exclude=/usr/share/info/*",
		"path-exclude=/usr/share/doc/*",
		"path-include=/usr/share/doc/*/copyright",
		"path-exclude=/usr/share/locale/*",
		"path-include=/usr/share/locale/locale.alias",
		"path-exclude=/usr/share/lintian/*",
		"path-exclude=/usr/share/linda/*",
	}
}
