package verify

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// Check names. Every check an image's content implies is required by
// default; VerificationSpec.optional records a failure without failing the
// build, and VerificationSpec.skip does not run the check. docs/verification.md
// has the same list with what each check asserts.
//
// Offline checks (category "offline"), read from the image file without
// booting or mounting it:
//
//	qemu-img-format               image format equals output.format
//	qemu-img-virtual-size         virtual size equals disk.size
//	qemu-img-compression          qcow2 compression type equals output.compression
//	qemu-img-no-backing-file      the image stands alone
//	qemu-img-check                qemu-img check finds no corruption or leaks
//	partition-table               valid GPT (protective MBR, header and entry CRCs) with the partitions the boot mode needs
//	filesystem-root               the root partition holds ext4 with a UUID and a label
//	filesystem-root-fsck          e2fsck -fn finds the root filesystem clean
//	filesystem-esp                the EFI system partition holds FAT (uefi, hybrid)
//	fstab-root                    /etc/fstab mounts / by the root filesystem's UUID, LABEL or PARTUUID
//	bootloader-bios               GRUB boot code in the MBR pointing at core.img in the BIOS boot partition (bios, hybrid; amd64 only)
//	bootloader-uefi               EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI on arm64) on the ESP is a PE image for the architecture (uefi, hybrid)
//	kernel-initrd-present         /boot holds a kernel and its initrd
//	packages-consistent           every package in the dpkg database is fully installed
//	package-<name>                the package is installed at the expected version (kube packages at the pinned version)
//	kube-packages-held            kubeadm, kubelet, kubectl are on hold (kubernetes.hold)
//	kube-apt-repository           the Kubernetes apt repository is configured in the image
//	service-<unit>-enabled        the unit is enabled (a *.wants link) and not masked
//	kernel-modules-configured     modules-load.d loads kernel.modules, and the kernel ships them
//	sysctls-configured            sysctl.d sets kernel.sysctls to their values (last assignment wins)
//	containerd-systemd-cgroup     /etc/containerd/config.toml gives the CRI's default runtime SystemdCgroup = true
//	containerd-cni-bin-dir        /etc/containerd/config.toml points the CRI's CNI bin_dir at cniPlugins.binDir
//	cni-plugins-installed         bridge, host-local, loopback and portmap are executables in cniPlugins.binDir
//	fstab-no-swap                 /etc/fstab activates no swap
//	swap-target-masked            swap.target is masked
//	sshd-password-auth-disabled   effective PasswordAuthentication no
//	sshd-kbd-interactive-disabled effective KbdInteractiveAuthentication no
//	sshd-permit-root-login        effective PermitRootLogin equals ssh.permitRootLogin
//	root-password-locked          root has no usable password in /etc/shadow
//	cloud-init-datasources        cloud-init's datasource_list equals cloudInit.datasources
//	user-<name>                   the account exists with its SSH keys
//	file-<path>                   the file has the spec's content and mode
//	hygiene-ssh-host-keys         no /etc/ssh/ssh_host_* keys
//	hygiene-machine-id            /etc/machine-id exists and is empty
//	hygiene-cloud-init-state      no /var/lib/cloud/instance(s) state
//	hygiene-apt-lists             no downloaded apt lists
//	hygiene-apt-cache             no cached .debs or apt package caches
//	hygiene-logs                  no non-empty log files under /var/log
//
// Boot checks (category "boot"), run inside a throwaway overlay of the
// image booted under QEMU with a NoCloud seed:
//
//	boot-ssh                      SSH answers with the per-run key from user-data
//	boot-cloud-init-done          cloud-init finished without errors
//	boot-hostname                 the hostname from user-data is applied
//	boot-root-grown               the root filesystem was grown to the (enlarged) disk
//	boot-no-failed-units          systemctl --failed lists nothing
//	boot-sshd-effective           sshd -T shows key-only authentication
//	boot-containerd-active        containerd is active and ctr version answers
//	boot-containerd-config        containerd config dump (what containerd loaded) has the cgroup driver and CNI dir of the spec
//	boot-crictl                   crictl version and crictl info answer over the CRI: runtime ready, cgroup driver and CNI dir as the spec says
//	boot-runc                     runc --version runs
//	boot-cni-plugins              the CNI plugins run from cniPlugins.binDir
//	boot-kernel-modules           kernel.modules are loaded
//	boot-sysctls                  kernel.sysctls are live
//	boot-no-swap                  swapon --show is empty
//	boot-node-exporter            the node exporter serves metrics on its port
//	boot-kubeadm-version          kubeadm version -o short is the pinned version
//	boot-kubelet-version          kubelet --version is the pinned version
//	boot-kubectl-version          kubectl version --client is the pinned version
//	boot-kubelet-not-running      kubelet is installed but not running before kubeadm
//	boot-kubeadm-preflight        kubeadm init phase preflight passes (ignoring only what the test VM, not the image, causes)
const (
	CheckQemuImgFormat      = "qemu-img-format"
	CheckQemuImgVirtualSize = "qemu-img-virtual-size"
	CheckQemuImgCompression = "qemu-img-compression"
	CheckQemuImgNoBacking   = "qemu-img-no-backing-file"
	CheckQemuImgCheck       = "qemu-img-check"
	CheckPartitionTable     = "partition-table"
	CheckFilesystemRoot     = "filesystem-root"
	CheckFilesystemRootFsck = "filesystem-root-fsck"
	CheckFilesystemESP      = "filesystem-esp"
	CheckFstabRoot          = "fstab-root"
	CheckBootloaderBIOS     = "bootloader-bios"
	CheckBootloaderUEFI     = "bootloader-uefi"
	CheckKernelInitrd       = "kernel-initrd-present"
	CheckPackagesConsistent = "packages-consistent"
	CheckKubePackagesHeld   = "kube-packages-held"
	CheckKubeAptRepository  = "kube-apt-repository"
	CheckKernelModules      = "kernel-modules-configured"
	CheckSysctls            = "sysctls-configured"
	CheckContainerdCgroup   = "containerd-systemd-cgroup"
	CheckContainerdCNIDir   = "containerd-cni-bin-dir"
	CheckCNIPlugins         = "cni-plugins-installed"
	CheckFstabNoSwap        = "fstab-no-swap"
	CheckSwapTargetMasked   = "swap-target-masked"
	CheckSSHDPasswordAuth   = "sshd-password-auth-disabled"
	CheckSSHDKbdInteractive = "sshd-kbd-interactive-disabled"
	CheckSSHDPermitRoot     = "sshd-permit-root-login"
	CheckRootPassword       = "root-password-locked"
	CheckCloudInitSources   = "cloud-init-datasources"
	CheckHygieneSSHKeys     = "hygiene-ssh-host-keys"
	CheckHygieneMachineID   = "hygiene-machine-id"
	CheckHygieneCloudInit   = "hygiene-cloud-init-state"
	CheckHygieneAptLists    = "hygiene-apt-lists"
	CheckHygieneAptCache    = "hygiene-apt-cache"
	CheckHygieneLogs        = "hygiene-logs"

	CheckBootSSH              = "boot-ssh"
	CheckBootCloudInit        = "boot-cloud-init-done"
	CheckBootHostname         = "boot-hostname"
	CheckBootRootGrown        = "boot-root-grown"
	CheckBootFailedUnits      = "boot-no-failed-units"
	CheckBootSSHDEffective    = "boot-sshd-effective"
	CheckBootContainerd       = "boot-containerd-active"
	CheckBootContainerdConfig = "boot-containerd-config"
	CheckBootCrictl           = "boot-crictl"
	CheckBootRunc             = "boot-runc"
	CheckBootCNI              = "boot-cni-plugins"
	CheckBootModules          = "boot-kernel-modules"
	CheckBootSysctls          = "boot-sysctls"
	CheckBootNoSwap           = "boot-no-swap"
	CheckBootNodeExporter     = "boot-node-exporter"
	CheckBootKubeadmVersion   = "boot-kubeadm-version"
	CheckBootKubeletVersion   = "boot-kubelet-version"
	CheckBootKubectlVersion   = "boot-kubectl-version"
	CheckBootKubeletInactive  = "boot-kubelet-not-running"
	CheckBootKubeadmPreflight = "boot-kubeadm-preflight"
)

// PackageCheckName is the check name for a Debian package: package-<name>
// with characters outside [a-z0-9-] replaced ("+" by "plus", "." by "-").
func PackageCheckName(pkg string) string { return "package-" + sanitizeName(pkg) }

// ServiceCheckName is the check name for a systemd unit being enabled:
// service-<unit without .service>-enabled.
func ServiceCheckName(unit string) string {
	return "service-" + sanitizeName(strings.TrimSuffix(unit, ".service")) + "-enabled"
}

func sanitizeName(s string) string {
	s = strings.ToLower(s)
	s = strings.ReplaceAll(s, "+", "plus")
	var b strings.Builder
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteRune('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	for strings.Contains(out, "--") {
		out = strings.ReplaceAll(out, "--", "-")
	}
	if len(out) > 48 {
		out = strings.TrimRight(out[:48], "-")
	}
	return out
}

// Options control a verification run.
type Options struct {
	// Boot runs the boot test after the offline checks.
	Boot bool
	// BootTimeout bounds the boot test from QEMU start to the last check.
	BootTimeout time.Duration
	// Cluster runs the cluster checks after the boot checks, where the
	// content implies them (kubeadm, the kubelet, the control-plane images).
	Cluster bool
	// ClusterTimeout bounds the cluster checks; zero means
	// DefaultClusterTimeout.
	ClusterTimeout time.Duration
	// Optional check names are recorded but not required.
	Optional []string
	// Skip check names are not run.
	Skip []string
	// WorkDir holds temporary files (a raw copy of the image, the overlay,
	// the seed); a private directory below it is removed afterwards. When
	// empty, os.TempDir().
	WorkDir string
	// Accelerator forces "kvm" or "tcg"; empty probes KVM and falls back to
	// TCG.
	Accelerator string
	// Progress, when set, receives one line per finished check.
	Progress func(Check)
}

// OptionsFromSpec derives options from a (defaulted) VerificationSpec.
func OptionsFromSpec(v imagev1.VerificationSpec) Options {
	o := Options{
		Boot: v.Boot.Enabled == nil || *v.Boot.Enabled, BootTimeout: imagev1.DefaultBootTimeout,
		Cluster: v.Cluster.Enabled == nil || *v.Cluster.Enabled, ClusterTimeout: imagev1.DefaultClusterTimeout,
	}
	if v.Boot.Timeout != nil {
		o.BootTimeout = v.Boot.Timeout.Duration
	}
	if v.Cluster.Timeout != nil {
		o.ClusterTimeout = v.Cluster.Timeout.Duration
	}
	for _, n := range v.Optional {
		o.Optional = append(o.Optional, string(n))
	}
	for _, n := range v.Skip {
		o.Skip = append(o.Skip, string(n))
	}
	return o
}

// checkFunc returns a message on success, or an error saying what was
// wrong.
type checkFunc func(ctx context.Context) (string, error)

// plannedCheck is a check the content implies, before it runs.
type plannedCheck struct {
	name     string
	category Category
	run      checkFunc
}

// selector decides, per check name, whether it runs and whether it is
// required.
type selector struct {
	optional map[string]bool
	skip     map[string]bool
}

func newSelector(o Options) selector {
	s := selector{optional: map[string]bool{}, skip: map[string]bool{}}
	for _, n := range o.Optional {
		s.optional[n] = true
	}
	for _, n := range o.Skip {
		s.skip[n] = true
	}
	return s
}

// run executes one planned check (or records it as skipped) into the report.
func (s selector) run(ctx context.Context, r *Report, pc plannedCheck, progress func(Check)) Check {
	c := s.exec(ctx, pc)
	record(r, c, progress)
	return c
}

// exec runs one planned check (unless it is skipped) and returns its result
// without recording it, so independent checks can run concurrently.
func (s selector) exec(ctx context.Context, pc plannedCheck) Check {
	c := Check{Name: pc.name, Category: pc.category, Required: !s.optional[pc.name]}
	switch {
	case s.skip[pc.name]:
		c.Skipped, c.Required = true, false
		c.Message = "skipped (verification.skip)"
	case ctx.Err() != nil:
		c.Message = fmt.Sprintf("not run: %v", context.Cause(ctx))
	default:
		start := time.Now()
		msg, err := safeRun(ctx, pc.run)
		c.DurationSeconds = roundSeconds(time.Since(start))
		if err != nil {
			c.Message = err.Error()
		} else {
			c.Passed, c.Message = true, msg
		}
	}
	return c
}

// runAll runs independent checks, at most limit at a time, and records
// their results in plan order. It returns whether any (not skipped) failed.
func (s selector) runAll(ctx context.Context, r *Report, pcs []plannedCheck, limit int, progress func(Check)) (failed bool) {
	results := make([]Check, len(pcs))
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i, pc := range pcs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = s.exec(ctx, pc)
		}()
	}
	wg.Wait()
	for _, c := range results {
		record(r, c, progress)
		failed = failed || (!c.Passed && !c.Skipped)
	}
	return failed
}

func record(r *Report, c Check, progress func(Check)) {
	r.Add(c)
	if progress != nil {
		progress(c)
	}
}

// failWith records a check as failed without running it (for example when
// the step it depends on failed).
func (s selector) failWith(r *Report, name string, cat Category, msg string, progress func(Check)) {
	c := Check{Name: name, Category: cat, Required: !s.optional[name], Message: msg}
	if s.skip[name] {
		c.Skipped, c.Required, c.Message = true, false, "skipped (verification.skip)"
	}
	r.Add(c)
	if progress != nil {
		progress(c)
	}
}

func safeRun(ctx context.Context, f checkFunc) (msg string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("check panicked: %v", p)
		}
	}()
	return f(ctx)
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// checkNameRE is the CheckName pattern of the API.
var checkNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// plannedNames lists every check a defaulted content implies, offline and
// boot (whether or not the boot test runs), in plan order.
func plannedNames(c *imagev1.ImageContent) []string {
	var names []string
	for _, pc := range planOffline(&offlineImage{content: c}) {
		names = append(names, pc.name)
	}
	names = append(names, CheckBootSSH, CheckBootCloudInit)
	names = append(names, bootNames(c)...)
	if clusterApplies(c) {
		names = append(names, clusterNames...)
	}
	return names
}

// CheckSelection returns an error naming every check in o.Optional or
// o.Skip (verification.optional / verification.skip, the CLI's --optional /
// --skip) that is malformed or that the content does not imply, so a typo
// does not silently leave a check required or running.
func CheckSelection(content imagev1.ImageContent, o Options) error {
	c := content.DeepCopy()
	c.Default()
	planned := plannedNames(c)
	known := map[string]bool{}
	for _, n := range planned {
		known[n] = true
	}
	var bad []string
	seen := map[string]bool{}
	for _, list := range [][]string{o.Optional, o.Skip} {
		for _, n := range list {
			if !seen[n] && (!checkNameRE.MatchString(n) || !known[n]) {
				bad = append(bad, fmt.Sprintf("%q", n))
			}
			seen[n] = true
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("unknown check name(s) in verification optional/skip (--optional/--skip): %s; this image's checks are %s (see docs/verification.md)",
		strings.Join(bad, ", "), strings.Join(planned, ", "))
}
