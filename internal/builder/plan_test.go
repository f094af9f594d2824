package builder

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
)

func kubeContent() imagev1.ImageContent {
	return imagev1.ImageContent{
		Packages: []string{"vim", "htop", "jq=1.7.1-6"},
		Kubernetes: &imagev1.KubernetesSpec{
			Version: "v1.37.2",
			AptRepository: imagev1.AptRepository{
				URL:        "http://127.0.0.1:8080/",
				SigningKey: imagev1.KeySource{Armored: "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAA==\n-----END PGP PUBLIC KEY BLOCK-----\n"},
			},
		},
	}
}

func stepNames(steps []Step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.Name)
	}
	return out
}

func request(reqs []PackageRequest, name string) (PackageRequest, bool) {
	i := slices.IndexFunc(reqs, func(r PackageRequest) bool { return r.Name == name })
	if i < 0 {
		return PackageRequest{}, false
	}
	return reqs[i], true
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content func() imagev1.ImageContent
		steps   []string
		check   func(t *testing.T, steps []Step)
	}{{
		name:    "defaults: seed image without Kubernetes",
		content: func() imagev1.ImageContent { return imagev1.ImageContent{} },
		steps:   []string{"resolve", "rootfs", "provision", "hygiene", "disk", "convert", "manifest"},
		check: func(t *testing.T, steps []Step) {
			r := steps[1].Rootfs
			if r.Variant != "minbase" || r.Release != "trixie" || r.Mirror != "" {
				t.Errorf("rootfs = %+v; want minbase trixie from the default mirror", r)
			}
			for _, want := range []string{"linux-image-cloud-amd64", "cloud-init", "openssh-server", "containerd", "runc", "containernetworking-plugins", "prometheus-node-exporter", "systemd-sysv"} {
				if _, ok := request(r.Packages, want); !ok {
					t.Errorf("package %s missing from %v", want, r.Packages)
				}
			}
			if c, _ := request(r.Packages, "containerd"); c.Match != MatchConstraint || c.Version != ">=1.7.23" {
				t.Errorf("containerd request = %+v; want constraint >=1.7.23", c)
			}
			if _, ok := request(r.Packages, "kubeadm"); ok {
				t.Error("kubeadm requested without spec.kubernetes")
			}
			if !slices.Contains(r.AptOptions, `APT::Install-Recommends "false"`) {
				t.Errorf("recommends not disabled: %v", r.AptOptions)
			}
			for _, want := range []string{"path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/locale/*"} {
				if !slices.Contains(r.DpkgOptions, want) {
					t.Errorf("dpkg option %s missing", want)
				}
			}
			p := steps[2].Provision
			if !p.Containerd || !p.SystemdCgroup || p.CNIBinDir != "/opt/cni/bin" || !p.DisableSwap || p.NodeExporterPort != 9100 {
				t.Errorf("provision = %+v", p)
			}
			if p.SSH == nil || p.SSH.PermitRootLogin != imagev1.PermitRootLoginNo {
				t.Errorf("ssh = %+v; want key-only, no root login", p.SSH)
			}
			if !slices.Equal(p.Modules, []string{"br_netfilter", "overlay"}) || len(p.Sysctls) != 3 {
				t.Errorf("kernel settings = %v %v", p.Modules, p.Sysctls)
			}
			for _, u := range []string{"ssh.service", "containerd.service", "prometheus-node-exporter.service"} {
				if !slices.Contains(p.Enable, u) {
					t.Errorf("%s not enabled: %v", u, p.Enable)
				}
			}
			if slices.Contains(p.Enable, "kubelet.service") {
				t.Error("kubelet enabled without spec.kubernetes")
			}
			if !slices.Equal(p.Mask, []string{"swap.target", "e2scrub_reap.service"}) {
				t.Errorf("mask = %v", p.Mask)
			}
			d := steps[4].Disk
			if d.SizeBytes != 8<<30 || d.BootMode != imagev1.BootModeHybrid {
				t.Errorf("disk = %+v", d)
			}
			if c := steps[5].Convert; c.Format != imagev1.FormatQCOW2 || c.Compression != imagev1.CompressionZstd {
				t.Errorf("convert = %+v", c)
			}
		},
	}, {
		name:    "kubernetes pinned, held, kubelet enabled; user packages",
		content: kubeContent,
		steps:   []string{"resolve", "rootfs", "provision", "hygiene", "disk", "convert", "manifest"},
		check: func(t *testing.T, steps []Step) {
			res := steps[0].Resolve
			for _, c := range []string{"kubeadm", "kubelet", "kubectl"} {
				r, ok := request(res.Packages, c)
				if !ok || r.Match != MatchPrefix || r.Version != "1.37.2-" {
					t.Errorf("%s request = %+v; want prefix 1.37.2-", c, r)
				}
			}
			// cri-tools follows Kubernetes minors.
			if r, ok := request(res.Packages, "cri-tools"); !ok || r.Match != MatchPrefix || r.Version != "1.37." {
				t.Errorf("cri-tools request = %+v; want prefix 1.37.", r)
			}
			for _, c := range []string{"conntrack", "ethtool", "iptables"} {
				if _, ok := request(res.Packages, c); !ok {
					t.Errorf("kubelet dependency %s missing", c)
				}
			}
			if r, _ := request(res.Packages, "jq"); r.Match != MatchExact || r.Version != "1.7.1-6" {
				t.Errorf("jq = %+v; want exact 1.7.1-6", r)
			}
			// The base layer's simulated install: minbase's own set and the
			// base requests, not Kubernetes (its packages, the kubelet's
			// recommends) or spec.packages.
			if bi := res.BaseInstall; !slices.Equal(bi[:3], []string{"?essential", "?priority(required)", "apt"}) ||
				!slices.Contains(bi, "containerd") || !slices.Contains(bi, "openssh-server") || slices.Contains(bi, "conntrack") ||
				slices.Contains(bi, "kubeadm") || slices.Contains(bi, "jq") || slices.Contains(bi, "vim") {
				t.Errorf("base install = %v", bi)
			}
			if r, _ := request(res.Packages, "vim"); r.Match != MatchAny {
				t.Errorf("vim = %+v; want any", r)
			}
			if len(res.Sources) != 1 || res.Sources[0].URL != "http://127.0.0.1:8080/" || res.Sources[0].Suite != "/" {
				t.Errorf("sources = %+v", res.Sources)
			}
			p := steps[2].Provision
			if !slices.Equal(p.Hold, []string{"cri-tools", "kubeadm", "kubectl", "kubelet"}) {
				t.Errorf("hold = %v", p.Hold)
			}
			if !p.Crictl {
				t.Errorf("crictl not configured with containerd and cri-tools")
			}
			if !slices.Contains(p.Enable, "kubelet.service") || p.Kubernetes == nil {
				t.Errorf("kubelet not enabled or repository not configured: %+v", p)
			}
		},
	}, {
		name: "kubernetes without hold, kubelet not enabled, kubectl only",
		content: func() imagev1.ImageContent {
			c := kubeContent()
			c.Kubernetes.Hold = ptr.To(false)
			c.Kubernetes.EnableKubelet = ptr.To(false)
			c.Kubernetes.Components = []imagev1.KubernetesComponent{imagev1.ComponentKubectl}
			return c
		},
		steps: []string{"resolve", "rootfs", "provision", "hygiene", "disk", "convert", "manifest"},
		check: func(t *testing.T, steps []Step) {
			p := steps[2].Provision
			if len(p.Hold) != 0 || slices.Contains(p.Enable, "kubelet.service") {
				t.Errorf("provision = %+v", p)
			}
			if _, ok := request(steps[1].Rootfs.Packages, "kubeadm"); ok {
				t.Error("kubeadm requested")
			}
		},
	}, {
		name: "features off, custom mirror, BIOS, raw",
		content: func() imagev1.ImageContent {
			size := resource.MustParse("4Gi")
			return imagev1.ImageContent{
				Base: imagev1.BaseSpec{Mirror: "http://127.0.0.1:3142/debian", KernelPackage: "linux-image-amd64"},
				Disk: imagev1.DiskSpec{Size: &size, BootMode: imagev1.BootModeBIOS},
				ContainerRuntime: imagev1.ContainerRuntimeSpec{
					Containerd: imagev1.ContainerdSpec{Enabled: ptr.To(false)},
					Runc:       imagev1.RuncSpec{Enabled: ptr.To(false)},
					CNIPlugins: imagev1.CNIPluginsSpec{Enabled: ptr.To(false)},
				},
				SSH:        imagev1.SSHSpec{Enabled: ptr.To(false)},
				Swap:       imagev1.SwapSpec{Disabled: ptr.To(false)},
				Monitoring: imagev1.MonitoringSpec{NodeExporter: imagev1.NodeExporterSpec{Enabled: ptr.To(false)}},
				Output:     imagev1.OutputSpec{Format: imagev1.FormatRaw},
			}
		},
		steps: []string{"resolve", "rootfs", "provision", "hygiene", "disk", "convert", "manifest"},
		check: func(t *testing.T, steps []Step) {
			r := steps[1].Rootfs
			if r.Mirror != "http://127.0.0.1:3142/debian" {
				t.Errorf("mirror = %q", r.Mirror)
			}
			for _, no := range []string{"containerd", "runc", "containernetworking-plugins", "openssh-server", "prometheus-node-exporter", "linux-image-cloud-amd64"} {
				if _, ok := request(r.Packages, no); ok {
					t.Errorf("%s requested though disabled", no)
				}
			}
			if _, ok := request(r.Packages, "linux-image-amd64"); !ok {
				t.Error("kernel package from spec missing")
			}
			p := steps[2].Provision
			if p.Containerd || p.CNIBinDir != "" || p.SSH != nil || p.NodeExporterPort != 0 || p.DisableSwap || slices.Contains(p.Mask, "swap.target") || len(p.Enable) != 0 {
				t.Errorf("provision = %+v", p)
			}
			if d := steps[4].Disk; d.SizeBytes != 4<<30 || d.BootMode != imagev1.BootModeBIOS {
				t.Errorf("disk = %+v", d)
			}
			if c := steps[5].Convert; c.Format != imagev1.FormatRaw || c.Compression != imagev1.CompressionNone {
				t.Errorf("convert = %+v", c)
			}
		},
	}, {
		name: "provisioners become steps in order; ansible needs python3 and the host tool once",
		content: func() imagev1.ImageContent {
			return imagev1.ImageContent{Provisioners: []imagev1.Provisioner{
				{Name: "motd", Shell: &imagev1.ShellProvisioner{Inline: "echo hi > /etc/motd"}},
				{Name: "site", Ansible: &imagev1.AnsibleProvisioner{Playbook: "- hosts: all\n  tasks: []\n", ExtraVars: []imagev1.AnsibleVar{{Name: "x", Value: "1"}}}},
				{Name: "more", Ansible: &imagev1.AnsibleProvisioner{Playbook: "- hosts: all\n  tasks: []\n"}},
			}}
		},
		steps: []string{"resolve", "rootfs", "provision", "provisioner/motd", "provisioner/site", "provisioner/more", "hygiene", "disk", "convert", "manifest"},
		check: func(t *testing.T, steps []Step) {
			if s := steps[3].Provisioner; s.Shell != "echo hi > /etc/motd" || s.Ansible != nil {
				t.Errorf("shell step = %+v", s)
			}
			if s := steps[4].Provisioner; s.Ansible == nil || s.Ansible.ExtraVars[0].Name != "x" {
				t.Errorf("first ansible step = %+v", s)
			}
			if !steps[0].Resolve.NeedsAnsible {
				t.Error("the resolve step does not check for ansible-playbook")
			}
			if _, ok := request(steps[1].Rootfs.Packages, "python3"); !ok {
				t.Error("python3 not requested for the ansible chroot connection")
			}
			got := ansibleArgs("/w/rootfs", "/w/p.yml", "/w/v.json")
			want := []string{"ansible-playbook", "-i", "/w/rootfs,", "-l", "/w/rootfs", "-c", "community.general.chroot", "-e", "@/w/v.json", "/w/p.yml"}
			if !slices.Equal(got, want) {
				t.Errorf("ansible args = %v; want %v", got, want)
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := Plan(tc.content())
			if err != nil {
				t.Fatal(err)
			}
			if got := stepNames(steps); !slices.Equal(got, tc.steps) {
				t.Fatalf("steps = %v; want %v", got, tc.steps)
			}
			for _, s := range steps {
				if s.Weight <= 0 {
					t.Errorf("step %s has weight %d", s.Name, s.Weight)
				}
			}
			tc.check(t, steps)
		})
	}
}

func TestPlanRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content imagev1.ImageContent
		want    string
	}{
		{"arm64 with BIOS boot", imagev1.ImageContent{Base: imagev1.BaseSpec{Architecture: imagev1.ArchitectureARM64}, Disk: imagev1.DiskSpec{BootMode: imagev1.BootModeBIOS}}, "arm64 has no BIOS boot"},
		{"unknown architecture", imagev1.ImageContent{Base: imagev1.BaseSpec{Architecture: "riscv64"}}, "base.architecture"},
		{"unresolved reference", imagev1.ImageContent{Files: []imagev1.FileSpec{{Path: "/etc/x", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k"}}}}, "not resolved"},
		{"control-plane images without kubeadm", func() imagev1.ImageContent {
			c := kubeContent()
			c.Kubernetes.Components = []imagev1.KubernetesComponent{imagev1.ComponentKubelet}
			c.Kubernetes.Images = &imagev1.KubernetesImagesSpec{}
			return c
		}(), "kubernetes.images.controlPlane needs kubeadm"},
		{"images without containerd", func() imagev1.ImageContent {
			c := kubeContent()
			c.Kubernetes.Images = &imagev1.KubernetesImagesSpec{}
			c.ContainerRuntime.Containerd.Enabled = ptr.To(false)
			return c
		}(), "containerRuntime.containerd.enabled"},
		{"an extra image without a tag", func() imagev1.ImageContent {
			c := kubeContent()
			c.Kubernetes.Images = &imagev1.KubernetesImagesSpec{Extra: []string{"quay.io/a/b:1", "quay.io/team/tool"}}
			return c
		}(), "kubernetes.images.extra[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Plan(tc.content)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !IsInputError(err) {
				t.Fatalf("Plan() error = %v; want an input error about %q", err, tc.want)
			}
		})
	}
}

func TestPlanImages(t *testing.T) {
	c := kubeContent()
	if slices.Contains(stepNames(mustPlan(t, c)), StepImages) {
		t.Fatal("an image without kubernetes.images plans an images step")
	}
	c.Kubernetes.Images = &imagev1.KubernetesImagesSpec{Mirror: "127.0.0.1:5000", Extra: []string{"quay.io/team/tool:1.0"}}
	steps := mustPlan(t, c)
	names := stepNames(steps)
	i := slices.Index(names, StepImages)
	if i < 0 || names[i-1] != StepProvision {
		t.Fatalf("steps %q: want images right after provision (containerd configured, before the author's provisioners)", names)
	}
	want := ImagesParams{KubernetesVersion: "v1.37.2", ControlPlane: true, Mirror: "127.0.0.1:5000", Extra: []string{"quay.io/team/tool:1.0"}, Architecture: "amd64"}
	if got := *steps[i].Images; got.KubernetesVersion != want.KubernetesVersion || got.ControlPlane != want.ControlPlane ||
		got.Mirror != want.Mirror || !slices.Equal(got.Extra, want.Extra) || got.Architecture != want.Architecture {
		t.Fatalf("images params %+v, want %+v", got, want)
	}
	c.Kubernetes.Images = &imagev1.KubernetesImagesSpec{ControlPlane: ptr.To(false)}
	if slices.Contains(stepNames(mustPlan(t, c)), StepImages) {
		t.Fatal("no control-plane images and no extra ones plan an images step")
	}
}

func TestPlanIsPure(t *testing.T) {
	c := kubeContent()
	a, err := Plan(c)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Plan(c)
	if len(a) != len(b) || !slices.Equal(a[1].Rootfs.Packages, b[1].Rootfs.Packages) {
		t.Error("two plans of the same content differ")
	}
	if c.Disk.Size != nil || c.ContainerRuntime.Containerd.Enabled != nil {
		t.Error("Plan modified its input")
	}
}

func TestPlanLayout(t *testing.T) {
	amd64, _ := arch.For(imagev1.ArchitectureAMD64)
	arm64, _ := arch.For(imagev1.ArchitectureARM64)
	for _, tc := range []struct {
		arch      arch.Arch
		mode      imagev1.BootMode
		bios, esp bool
		rootStart int64
		rootNum   int
		rootType  string
	}{
		{amd64, imagev1.BootModeHybrid, true, true, 128 * mib, 3, TypeRootX86_64},
		{amd64, imagev1.BootModeBIOS, true, false, 2 * mib, 2, TypeRootX86_64},
		{amd64, imagev1.BootModeUEFI, false, true, 127 * mib, 2, TypeRootX86_64},
		// arm64 has no BIOS boot: hybrid is the ESP alone.
		{arm64, imagev1.BootModeHybrid, false, true, 127 * mib, 2, TypeRootARM64},
		{arm64, imagev1.BootModeUEFI, false, true, 127 * mib, 2, TypeRootARM64},
	} {
		name := string(tc.arch.Name) + "/" + string(tc.mode)
		l, err := PlanLayout(8<<30, tc.mode, tc.arch)
		if err != nil {
			t.Fatal(err)
		}
		if (l.BIOS != nil) != tc.bios || (l.ESP != nil) != tc.esp || l.Root.Start != tc.rootStart || l.Root.Number != tc.rootNum {
			t.Errorf("%s: layout = %+v", name, l)
		}
		if end := l.Root.Start + l.Root.Size; end > 8<<30-33*sector || l.Root.Size%mib != 0 {
			t.Errorf("%s: root ends at %d (size %d): overlaps the backup GPT or is unaligned", name, end, l.Root.Size)
		}
		script := l.sfdiskScript()
		if !strings.Contains(script, "label: gpt") || !strings.Contains(script, "type="+tc.rootType) {
			t.Errorf("%s: sfdisk script:\n%s", name, script)
		}
	}
	if _, err := PlanLayout(100*mib, imagev1.BootModeHybrid, amd64); !IsInputError(err) {
		t.Errorf("tiny disk: err = %v; want an input error", err)
	}
	if _, err := PlanLayout(8<<30, imagev1.BootModeBIOS, arm64); !IsInputError(err) {
		t.Errorf("arm64 BIOS: err = %v; want an input error", err)
	}
}

// TestPlanArchitecture: the architecture reaches every step that depends on
// it, and an arm64 image carries GRUB's arm64-efi modules.
func TestPlanArchitecture(t *testing.T) {
	for _, tc := range []struct {
		arch   imagev1.Architecture
		kernel string
		grub   bool
	}{
		{imagev1.ArchitectureAMD64, "linux-image-cloud-amd64", false},
		{imagev1.ArchitectureARM64, "linux-image-cloud-arm64", true},
	} {
		t.Run(string(tc.arch), func(t *testing.T) {
			c := kubeContent()
			c.Base.Architecture = tc.arch
			c.Kubernetes.Images = &imagev1.KubernetesImagesSpec{}
			steps := mustPlan(t, c)
			for _, s := range steps {
				var got string
				switch {
				case s.Resolve != nil:
					got = s.Resolve.Architecture
				case s.Rootfs != nil:
					got = s.Rootfs.Architecture
				case s.Images != nil:
					got = s.Images.Architecture
				case s.Disk != nil:
					got = s.Disk.Architecture
				default:
					continue
				}
				if got != string(tc.arch) {
					t.Errorf("step %s: architecture %q, want %q", s.Name, got, tc.arch)
				}
			}
			reqs := steps[1].Rootfs.Packages
			if _, ok := request(reqs, tc.kernel); !ok {
				t.Errorf("no %s in %v", tc.kernel, reqs)
			}
			if _, ok := request(reqs, "grub-efi-arm64-bin"); ok != tc.grub {
				t.Errorf("grub-efi-arm64-bin requested = %v, want %v", ok, tc.grub)
			}
		})
	}
}

func TestPlanRefusesFilesTheBuilderOwns(t *testing.T) {
	for _, p := range []string{
		"/etc/fstab", "/etc//fstab", "/etc/hostname", "/etc/machine-id", "/etc/resolv.conf",
		SSHDConfigPath, "/etc/ssh/ssh_host_ed25519_key", "/boot/grub/grub.cfg", PolicyRCPath,
		"/var/lib/cloud/seed/nocloud/user-data", "/var/log/app/app.log", "/tmp/x", "/root/.cache/pip/x",
		"/etc/systemd/system/app.service",
	} {
		c := kubeContent()
		c.Units = []imagev1.UnitSpec{{Name: "app.service", Content: "[Service]\nExecStart=/bin/true\n"}}
		c.Files = []imagev1.FileSpec{{Path: "/etc/motd", Content: "hi\n"}, {Path: p, Content: "x\n"}}
		_, err := Plan(c)
		if !IsInputError(err) || !strings.Contains(err.Error(), "spec.files[1].path "+p+": ") {
			t.Errorf("Plan with spec.files %s: err = %v; want an input error naming spec.files[1].path", p, err)
		}
	}
	// Files the builder leaves alone, or writes before spec.files (which
	// then win), are fine; so is the sshd drop-in without ssh.
	c := kubeContent()
	c.Files = []imagev1.FileSpec{
		{Path: "/etc/motd", Content: "hi\n"},
		{Path: "/etc/ssh/sshd_config.d/50-site.conf", Content: "X11Forwarding no\n"},
		{Path: ContainerdConfig, Content: "version = 2\n"},
		{Path: "/var/lib/cloudy", Content: "x\n"},
	}
	if _, err := Plan(c); err != nil {
		t.Errorf("Plan: %v", err)
	}
	c.SSH.Enabled = ptr.To(false)
	c.Files = []imagev1.FileSpec{{Path: SSHDConfigPath, Content: "PasswordAuthentication no\n"}}
	if _, err := Plan(c); err != nil {
		t.Errorf("Plan without ssh: %v", err)
	}
}
