// Package contents says what a NodeImage's content puts into an image, in
// terms of Debian packages: the seed's base system, what each enabled
// feature installs, and spec.packages, each with the version it must match.
// The builder resolves and installs this list, and verify checks a finished
// image against the same list, so the two cannot disagree.
package contents

import (
	"fmt"
	"slices"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/debian"
)

// VersionMatch is how a requested package's version is chosen.
type VersionMatch string

// Version matches.
const (
	// MatchAny takes the archive's candidate.
	MatchAny VersionMatch = ""
	// MatchExact takes exactly Version.
	MatchExact VersionMatch = "exact"
	// MatchPrefix takes the newest version starting with Version (the
	// Kubernetes packages: 1.37.2-*).
	MatchPrefix VersionMatch = "prefix"
	// MatchConstraint takes the newest version whose upstream part
	// satisfies Version, a constraint such as ">=1.7.23".
	MatchConstraint VersionMatch = "constraint"
)

// PackageRequest is one package the image needs.
type PackageRequest struct {
	Name    string
	Match   VersionMatch
	Version string
	// Why names the spec field the request comes from, for errors.
	Why string
	// Layer marks a request the builder installs on top of its cached
	// base layer rather than in it: Kubernetes (its packages, from their
	// own repository with a patch release every few weeks, and the
	// kubelet's recommends), what a provisioner needs, and spec.packages
	// (the part of a spec that changes most). The base is the rest, from
	// the Debian archive alone: the seed and the node's runtime, the
	// same for most specs, so one cached base serves them all.
	Layer bool
}

// Matches reports whether a Debian version satisfies the request.
func (p PackageRequest) Matches(version string) (bool, error) {
	switch p.Match {
	case MatchExact:
		return debian.Compare(version, p.Version) == 0, nil
	case MatchPrefix:
		return strings.HasPrefix(version, p.Version), nil
	case MatchConstraint:
		return debian.Satisfies(version, p.Version)
	}
	return true, nil
}

// Want describes the accepted versions: "1.7.24", "1.37.2-*", ">=1.7.23",
// or "any".
func (p PackageRequest) Want() string {
	switch p.Match {
	case MatchExact, MatchConstraint:
		return p.Version
	case MatchPrefix:
		return p.Version + "*"
	}
	return "any"
}

func (p PackageRequest) String() string {
	switch p.Match {
	case MatchExact:
		return p.Name + "=" + p.Version
	case MatchPrefix:
		return p.Name + "=" + p.Version + "*"
	case MatchConstraint:
		return p.Name + " (" + p.Version + ")"
	}
	return p.Name
}

// Seed packages every image gets: boot, init, networking through
// cloud-init, growing the root partition at first boot.
var basePackages = []string{
	"systemd-sysv", "udev", "dbus", "initramfs-tools", "zstd",
	"cloud-init", "cloud-guest-utils", "fdisk", "e2fsprogs",
	"netplan.io", "systemd-resolved", "systemd-timesyncd",
	"iproute2", "sudo", "less", "procps", "kmod", "ca-certificates",
}

// Packages lists the packages an image content needs, with the
// version each must match: the seed's base system, what the enabled
// features install, and spec.packages (a later, more specific request for
// the same package wins). The builder resolves and installs them; verify
// checks the finished image against the same list.
func Packages(c *imagev1.ImageContent) []PackageRequest {
	var reqs []PackageRequest
	add := func(r PackageRequest) {
		for i := range reqs {
			if reqs[i].Name == r.Name {
				if r.Match != MatchAny {
					reqs[i] = r
				}
				return
			}
		}
		reqs = append(reqs, r)
	}
	for _, p := range basePackages {
		add(PackageRequest{Name: p, Why: "seed"})
	}
	add(PackageRequest{Name: c.Base.KernelPackage, Why: "base.kernelPackage"})
	if c.Base.Architecture == imagev1.ArchitectureARM64 {
		// Debian builds GRUB's arm64-efi modules for arm64 only: the
		// builder makes the UEFI boot loader from the image's copy, as
		// Debian's own arm64 cloud images carry it.
		add(PackageRequest{Name: "grub-efi-arm64-bin", Why: "base.architecture (arm64: GRUB's arm64-efi modules)"})
	}
	cr := c.ContainerRuntime
	if *cr.Containerd.Enabled {
		r := PackageRequest{Name: "containerd", Why: "containerRuntime.containerd.version"}
		if v := cr.Containerd.Version; v != "" {
			r.Match, r.Version = MatchConstraint, v
		}
		add(r)
	}
	if *cr.Runc.Enabled {
		add(PackageRequest{Name: "runc", Why: "containerRuntime.runc"})
	}
	if *cr.CNIPlugins.Enabled {
		add(PackageRequest{Name: "containernetworking-plugins", Why: "containerRuntime.cniPlugins"})
	}
	if k := c.Kubernetes; k != nil {
		for _, comp := range k.Components {
			add(PackageRequest{Name: string(comp), Match: MatchPrefix, Version: KubernetesPackagePrefix(k.Version, comp), Why: "kubernetes.version", Layer: true})
		}
		// The kubelet's own recommends (installs run without recommends).
		if slices.Contains(k.Components, imagev1.ComponentKubelet) {
			for _, p := range []string{"conntrack", "ethtool", "iptables", "socat"} {
				add(PackageRequest{Name: p, Why: "kubernetes (kubelet)", Layer: true})
			}
		}
	}
	if *c.SSH.Enabled {
		add(PackageRequest{Name: "openssh-server", Why: "ssh.enabled"})
	}
	if *c.Monitoring.NodeExporter.Enabled {
		add(PackageRequest{Name: "prometheus-node-exporter", Why: "monitoring.nodeExporter"})
	}
	for _, p := range c.Provisioners {
		if p.Ansible != nil {
			// Ansible's chroot connection runs modules with the image's python3.
			add(PackageRequest{Name: "python3", Why: fmt.Sprintf("provisioners[%s].ansible", p.Name), Layer: true})
		}
	}
	for _, p := range c.Packages {
		name, ver, pinned := strings.Cut(p, "=")
		r := PackageRequest{Name: name, Why: "packages", Layer: true}
		if pinned {
			r.Match, r.Version = MatchExact, ver
		}
		add(r)
	}
	return reqs
}

// KubernetesPackagePrefix is the Debian version prefix a Kubernetes
// component's package must have for Kubernetes version v (v1.37.2): the
// exact release for kubeadm, kubelet and kubectl ("1.37.2-"), the minor
// release for cri-tools, whose versions follow Kubernetes minors ("1.37.").
func KubernetesPackagePrefix(v string, comp imagev1.KubernetesComponent) string {
	v = strings.TrimPrefix(v, "v")
	if comp == imagev1.ComponentCRITools {
		if i := strings.LastIndexByte(v, '.'); i > 0 {
			return v[:i+1]
		}
	}
	return v + "-"
}
