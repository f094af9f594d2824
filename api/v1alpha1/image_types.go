package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ImageContent is everything that determines the bytes of a node image. It
// is embedded in NodeImageSpec and copied into every NodeImageBuild, and its
// canonical form (after defaulting) is what the spec digest addresses: two
// NodeImages with equal content produce, and share, the same artifact.
// Where the image is published, how it is verified and where it is built are
// deliberately outside of it.
// +kubebuilder:validation:XValidation:rule="!(has(self.base) && has(self.base.architecture) && self.base.architecture == 'arm64' && has(self.disk) && has(self.disk.bootMode) && self.disk.bootMode == 'bios')",message="disk.bootMode bios is not available on arm64, which has no BIOS boot: use uefi (hybrid means uefi there)",fieldPath=".disk.bootMode"
type ImageContent struct {
	// base selects the distribution the image is installed from.
	// +optional
	// +kubebuilder:default={}
	Base BaseSpec `json:"base,omitempty"`

	// disk describes the disk the image is written to.
	// +optional
	// +kubebuilder:default={}
	Disk DiskSpec `json:"disk,omitempty"`

	// packages are extra Debian packages installed into the image, by name,
	// optionally pinned as name=version.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=512
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$`
	Packages []string `json:"packages,omitempty"`

	// containerRuntime configures containerd, runc and the CNI plugins.
	// +optional
	// +kubebuilder:default={}
	ContainerRuntime ContainerRuntimeSpec `json:"containerRuntime,omitempty"`

	// kubernetes installs kubeadm, kubelet and kubectl from an apt
	// repository. When omitted the image carries no Kubernetes components.
	// +optional
	Kubernetes *KubernetesSpec `json:"kubernetes,omitempty"`

	// kernel lists the modules loaded at boot and the sysctls applied.
	// +optional
	// +kubebuilder:default={}
	Kernel KernelSpec `json:"kernel,omitempty"`

	// swap controls swap in the image. Kubernetes nodes run without it.
	// +optional
	// +kubebuilder:default={}
	Swap SwapSpec `json:"swap,omitempty"`

	// ssh configures the OpenSSH server.
	// +optional
	// +kubebuilder:default={}
	SSH SSHSpec `json:"ssh,omitempty"`

	// users are local accounts baked into the image. Most images need none:
	// cloud-init creates the default user at first boot.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Users []UserSpec `json:"users,omitempty"`

	// cloudInit configures cloud-init's datasources and default user-data.
	// +optional
	// +kubebuilder:default={}
	CloudInit CloudInitSpec `json:"cloudInit,omitempty"`

	// monitoring configures the Prometheus node exporter.
	// +optional
	// +kubebuilder:default={}
	Monitoring MonitoringSpec `json:"monitoring,omitempty"`

	// files are written into the image after packages are installed.
	// +optional
	// +listType=map
	// +listMapKey=path
	// +kubebuilder:validation:MaxItems=128
	Files []FileSpec `json:"files,omitempty"`

	// units are systemd units written into the image and enabled, but not
	// started during the build.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Units []UnitSpec `json:"units,omitempty"`

	// provisioners run in order against the provisioned root filesystem,
	// after packages, files and units, before hygiene and cleanup.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Provisioners []Provisioner `json:"provisioners,omitempty"`

	// output selects the artifact's format and compression.
	// +optional
	// +kubebuilder:default={}
	Output OutputSpec `json:"output,omitempty"`
}

// Distribution names a Linux distribution.
// +kubebuilder:validation:Enum=debian
type Distribution string

// DistributionDebian is Debian.
const DistributionDebian Distribution = "debian"

// Release names a distribution release (its suite code name).
// +kubebuilder:validation:Enum=trixie
type Release string

// ReleaseTrixie is Debian 13.
const ReleaseTrixie Release = "trixie"

// Architecture is a Debian architecture name.
// +kubebuilder:validation:Enum=amd64;arm64
type Architecture string

const (
	// ArchitectureAMD64 is x86-64.
	ArchitectureAMD64 Architecture = "amd64"
	// ArchitectureARM64 is 64-bit ARM (aarch64). An amd64 builder builds it
	// under qemu-user-static (binfmt_misc) and verifies it under
	// qemu-system-aarch64 with AAVMF. It boots by UEFI only: bootMode
	// hybrid means uefi, bios is refused.
	ArchitectureARM64 Architecture = "arm64"
)

// BaseSpec selects the distribution, release, architecture and kernel.
type BaseSpec struct {
	// distribution of the image.
	// +optional
	// +kubebuilder:default=debian
	Distribution Distribution `json:"distribution,omitempty"`

	// release (suite code name) of the distribution.
	// +optional
	// +kubebuilder:default=trixie
	Release Release `json:"release,omitempty"`

	// architecture of the image.
	// +optional
	// +kubebuilder:default=amd64
	Architecture Architecture `json:"architecture,omitempty"`

	// mirror is the Debian archive URL packages are installed from. When
	// empty the builder uses mmdebstrap's default mirror for the release,
	// including its -updates and -security suites. A custom mirror
	// serves the release and its -updates suite only: Debian's security
	// updates are a separate archive, so no -security suite is configured,
	// neither for the build nor in the image's sources.list. The
	// manifest's base.suites records the suites used.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^(https?|file)://[^\s]+$`
	Mirror string `json:"mirror,omitempty"`

	// kernelPackage is the Debian package providing the kernel. When empty:
	// linux-image-cloud-<architecture>, Debian's kernel for virtual machines.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[a-z0-9][a-z0-9+.-]+$`
	KernelPackage string `json:"kernelPackage,omitempty"`
}

// BootMode is the firmware interface the image boots with.
// +kubebuilder:validation:Enum=bios;uefi;hybrid
type BootMode string

const (
	// BootModeBIOS installs GRUB for legacy BIOS only.
	BootModeBIOS BootMode = "bios"
	// BootModeUEFI installs GRUB for UEFI only.
	BootModeUEFI BootMode = "uefi"
	// BootModeHybrid installs GRUB for both, so one image boots anywhere.
	BootModeHybrid BootMode = "hybrid"
)

// Filesystem is the root filesystem type.
// +kubebuilder:validation:Enum=ext4
type Filesystem string

// FilesystemExt4 is ext4.
const FilesystemExt4 Filesystem = "ext4"

// DiskSpec describes the image's disk.
// +kubebuilder:validation:XValidation:rule="!has(self.size) || quantity(self.size).compareTo(quantity('2Gi')) >= 0",message="disk.size must be at least 2Gi"
// +kubebuilder:validation:XValidation:rule="!has(self.size) || quantity(self.size).compareTo(quantity('2Ti')) <= 0",message="disk.size must be at most 2Ti"
type DiskSpec struct {
	// size is the virtual size of the disk. The root partition fills it;
	// cloud-init grows it further when the VM's disk is larger.
	// +optional
	// +kubebuilder:default="8Gi"
	Size *resource.Quantity `json:"size,omitempty"`

	// filesystem of the root partition.
	// +optional
	// +kubebuilder:default=ext4
	Filesystem Filesystem `json:"filesystem,omitempty"`

	// bootMode selects BIOS, UEFI, or both (hybrid: a GPT disk with a BIOS
	// boot partition and an EFI system partition). arm64 has no BIOS boot:
	// there hybrid builds the EFI system partition alone, and bios is
	// refused.
	// +optional
	// +kubebuilder:default=hybrid
	BootMode BootMode `json:"bootMode,omitempty"`
}

// ContainerRuntimeSpec configures containerd, runc and CNI plugins.
type ContainerRuntimeSpec struct {
	// containerd configures the containerd package and its config.
	// +optional
	// +kubebuilder:default={}
	Containerd ContainerdSpec `json:"containerd,omitempty"`

	// runc installs the runc runtime.
	// +optional
	// +kubebuilder:default={}
	Runc RuncSpec `json:"runc,omitempty"`

	// cniPlugins installs the reference CNI plugins.
	// +optional
	// +kubebuilder:default={}
	CNIPlugins CNIPluginsSpec `json:"cniPlugins,omitempty"`
}

// ContainerdSpec configures containerd.
type ContainerdSpec struct {
	// enabled installs containerd and enables its service (not started
	// during the build).
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// version is a constraint the installed containerd must satisfy, on
	// its upstream version: ">=1.7.23" (at least), "<=1.7.30" (at most),
	// "=1.7" or a bare "1.7" (that version or its patch releases), "~1.7.23"
	// (1.7.x from 1.7.23 on). The build fails when the archive has no
	// matching version; verification checks the installed one.
	// +optional
	// +kubebuilder:default=">=1.7.23"
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^(>=|<=|=|~)?[0-9]+\.[0-9]+(\.[0-9]+)?$`
	Version string `json:"version,omitempty"`

	// systemdCgroup sets SystemdCgroup = true for the runc runtime in
	// /etc/containerd/config.toml, matching the kubelet's systemd cgroup
	// driver.
	// +optional
	// +kubebuilder:default=true
	SystemdCgroup *bool `json:"systemdCgroup,omitempty"`
}

// RuncSpec configures runc.
type RuncSpec struct {
	// enabled installs runc.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`
}

// CNIPluginsSpec configures the CNI plugins.
type CNIPluginsSpec struct {
	// enabled installs the reference CNI plugins.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// binDir is where the plugins are made available; the kubelet and most
	// CNI add-ons look in /opt/cni/bin.
	// +optional
	// +kubebuilder:default="/opt/cni/bin"
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^/[A-Za-z0-9._/-]*$`
	BinDir string `json:"binDir,omitempty"`
}

// KubernetesComponent is a Kubernetes node package, named as in the
// Kubernetes project's package repository.
// +kubebuilder:validation:Enum=kubeadm;kubelet;kubectl;cri-tools
type KubernetesComponent string

const (
	// ComponentKubeadm is kubeadm.
	ComponentKubeadm KubernetesComponent = "kubeadm"
	// ComponentKubelet is the kubelet.
	ComponentKubelet KubernetesComponent = "kubelet"
	// ComponentKubectl is kubectl.
	ComponentKubectl KubernetesComponent = "kubectl"
	// ComponentCRITools is crictl, the CRI client kubeadm and node
	// operators use. Its releases follow Kubernetes minor versions
	// (v1.37.x for Kubernetes v1.37), so it is matched by minor version.
	ComponentCRITools KubernetesComponent = "cri-tools"
)

// KubernetesSpec installs Kubernetes node components.
// +kubebuilder:validation:XValidation:rule="!has(self.images) || !has(self.components) || self.components.exists(c, c == 'kubeadm')",message="kubernetes.images needs kubeadm in kubernetes.components (it names the control-plane images)"
type KubernetesSpec struct {
	// version of the Kubernetes packages, such as v1.37.2.
	// +required
	// +kubebuilder:validation:Pattern=`^v[0-9]+\.[0-9]+\.[0-9]+$`
	// +kubebuilder:validation:MaxLength=32
	Version string `json:"version"`

	// components to install.
	// +optional
	// +listType=set
	// +kubebuilder:default={kubeadm,kubelet,kubectl,cri-tools}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=4
	Components []KubernetesComponent `json:"components,omitempty"`

	// aptRepository is the apt repository the components come from. It is
	// also configured in the image, so later upgrades use the same source.
	// +required
	AptRepository AptRepository `json:"aptRepository"`

	// hold marks the installed components held (apt-mark hold), so an
	// unattended upgrade cannot move them off the pinned version.
	// +optional
	// +kubebuilder:default=true
	Hold *bool `json:"hold,omitempty"`

	// enableKubelet enables the kubelet service. It is never started during
	// the build; kubeadm (or Kubespray) starts it when the node joins.
	// +optional
	// +kubebuilder:default=true
	EnableKubelet *bool `json:"enableKubelet,omitempty"`

	// images preloads container images into the image's containerd (the
	// k8s.io namespace the kubelet uses), unpacked, so a node runs
	// `kubeadm init` or `kubeadm join` without pulling them: no registry
	// at boot, no import at first boot. Needs kubeadm among components
	// and containerd enabled.
	// +optional
	Images *KubernetesImagesSpec `json:"images,omitempty"`
}

// KubernetesImagesSpec lists the container images an image ships.
type KubernetesImagesSpec struct {
	// controlPlane preloads the images the installed kubeadm names for
	// version (`kubeadm config images list`): kube-apiserver,
	// kube-controller-manager, kube-scheduler, kube-proxy, etcd, CoreDNS
	// and pause. containerd's sandbox image is set to that pause image.
	// +optional
	// +kubebuilder:default=true
	ControlPlane *bool `json:"controlPlane,omitempty"`

	// mirror is a registry (host[:port][/path]) serving registry.k8s.io's
	// repositories under the same names; images are pulled from it and
	// stored under their registry.k8s.io names, so kubeadm's defaults find
	// them. Empty pulls from registry.k8s.io. Plain HTTP is used only for a
	// loopback host (127.0.0.0/8, ::1, localhost).
	// +optional
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$`
	Mirror string `json:"mirror,omitempty"`

	// extra images to preload, as full references (registry/repository
	// with a tag and/or digest). Those under registry.k8s.io are pulled
	// through mirror too.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9][a-z0-9.-]*(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`
	Extra []string `json:"extra,omitempty"`
}

// AptRepository is an apt repository and the key that signs it.
type AptRepository struct {
	// url of the repository. For a flat repository (like the Kubernetes
	// project's), leave suite at "/".
	// +required
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^(https?|file)://[^\s]+$`
	URL string `json:"url"`

	// suite of the repository; "/" for a flat repository.
	// +optional
	// +kubebuilder:default="/"
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^(/|[A-Za-z0-9._-]+)$`
	Suite string `json:"suite,omitempty"`

	// components of a non-flat repository (such as main).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9._-]+$`
	Components []string `json:"components,omitempty"`

	// signingKey is the OpenPGP key that signs the repository.
	// +required
	SigningKey KeySource `json:"signingKey"`
}

// KeySource provides an OpenPGP public key from exactly one source.
// +kubebuilder:validation:XValidation:rule="[has(self.url), has(self.armored), has(self.configMapKeyRef)].filter(x, x).size() == 1",message="exactly one of url, armored or configMapKeyRef must be set"
type KeySource struct {
	// url to fetch the (ASCII-armored or binary) key from at build time.
	// https:// (redirects included); plain http:// only on a loopback host
	// (127.0.0.0/8, ::1, localhost); file:// only when the nodeforge CLI
	// builds on the spec author's machine, never in a builder Pod (it would
	// read the builder's files into the image); keys are at most 1 MiB.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^(https?|file)://[^\s]+$`
	URL string `json:"url,omitempty"`

	// armored is the ASCII-armored key itself.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	// +kubebuilder:validation:XValidation:rule="self.startsWith('-----BEGIN PGP PUBLIC KEY BLOCK-----')",message="armored must be an ASCII-armored OpenPGP public key block"
	Armored string `json:"armored,omitempty"`

	// configMapKeyRef selects the key from a ConfigMap in the NodeImage's
	// namespace.
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`
}

// KernelSpec lists kernel modules and sysctls.
type KernelSpec struct {
	// modules are loaded at every boot (modules-load.d).
	// +optional
	// +listType=set
	// +kubebuilder:default={br_netfilter,overlay}
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9_-]+$`
	Modules []string `json:"modules,omitempty"`

	// sysctls are applied at every boot (sysctl.d).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:default={{name: "net.ipv4.ip_forward", value: "1"}, {name: "net.bridge.bridge-nf-call-iptables", value: "1"}, {name: "net.bridge.bridge-nf-call-ip6tables", value: "1"}}
	// +kubebuilder:validation:MaxItems=128
	Sysctls []Sysctl `json:"sysctls,omitempty"`
}

// Sysctl is one kernel parameter.
type Sysctl struct {
	// name of the parameter, dotted, such as net.ipv4.ip_forward.
	// +required
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[a-z0-9_]+(\.[a-z0-9_-]+)+$`
	Name string `json:"name"`

	// value of the parameter.
	// +required
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\n]*$`
	Value string `json:"value"`
}

// SwapSpec controls swap.
type SwapSpec struct {
	// disabled keeps swap off for good: no swap entry in fstab, no swap
	// file, and systemd's swap units masked.
	// +optional
	// +kubebuilder:default=true
	Disabled *bool `json:"disabled,omitempty"`
}

// PermitRootLogin mirrors sshd's PermitRootLogin.
// +kubebuilder:validation:Enum=no;prohibit-password
type PermitRootLogin string

const (
	// PermitRootLoginNo forbids root logins over SSH.
	PermitRootLoginNo PermitRootLogin = "no"
	// PermitRootLoginProhibitPassword allows key-only root logins.
	PermitRootLoginProhibitPassword PermitRootLogin = "prohibit-password"
)

// SSHSpec configures the OpenSSH server. Password and keyboard-interactive
// authentication are always off: the image accepts keys only.
type SSHSpec struct {
	// enabled installs openssh-server and enables its service.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// permitRootLogin is sshd's PermitRootLogin.
	// +optional
	// +kubebuilder:default=no
	PermitRootLogin PermitRootLogin `json:"permitRootLogin,omitempty"`
}

// UserSpec is a local account.
// +kubebuilder:validation:XValidation:rule="self.name != 'root'",message="users[].name must not be root; root has no password and logs in with keys only"
type UserSpec struct {
	// name of the account.
	// +required
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^[a-z_][a-z0-9_-]*$`
	Name string `json:"name"`

	// groups the account is added to, such as sudo.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:Pattern=`^[a-z_][a-z0-9_-]*$`
	Groups []string `json:"groups,omitempty"`

	// sshAuthorizedKeys are public keys allowed to log in as this user.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=16384
	// +kubebuilder:validation:items:Pattern=`^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( [^\n]*)?$`
	SSHAuthorizedKeys []string `json:"sshAuthorizedKeys,omitempty"`

	// sudo grants passwordless sudo.
	// +optional
	Sudo bool `json:"sudo,omitempty"`
}

// Datasource is a cloud-init datasource name.
// +kubebuilder:validation:Enum=NoCloud;ConfigDrive;OpenStack;Ec2;GCE;Azure;OpenNebula;VMware;Hetzner;Oracle;Scaleway;LXD;None
type Datasource string

// CloudInitSpec configures cloud-init.
type CloudInitSpec struct {
	// datasources cloud-init probes, in order. Fewer datasources mean a
	// faster first boot.
	// +optional
	// +listType=set
	// +kubebuilder:default={NoCloud,ConfigDrive,OpenStack,Ec2,None}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=13
	Datasources []Datasource `json:"datasources,omitempty"`

	// defaultUserData is cloud-config baked into the image
	// (/etc/cloud/cloud.cfg.d), merged under the user-data a VM is given.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	// +kubebuilder:validation:XValidation:rule="self.startsWith('#cloud-config')",message="defaultUserData must start with #cloud-config"
	DefaultUserData string `json:"defaultUserData,omitempty"`
}

// MonitoringSpec configures monitoring agents.
type MonitoringSpec struct {
	// nodeExporter installs the Prometheus node exporter.
	// +optional
	// +kubebuilder:default={}
	NodeExporter NodeExporterSpec `json:"nodeExporter,omitempty"`
}

// NodeExporterSpec configures the Prometheus node exporter.
type NodeExporterSpec struct {
	// enabled installs prometheus-node-exporter and enables its service.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// port the exporter listens on.
	// +optional
	// +kubebuilder:default=9100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
}

// FileSpec is a file written into the image.
// +kubebuilder:validation:XValidation:rule="has(self.content) != has(self.configMapKeyRef)",message="exactly one of content or configMapKeyRef must be set"
type FileSpec struct {
	// path of the file in the image; absolute, without "..".
	// +required
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^/[A-Za-z0-9._+@/-]+$`
	// +kubebuilder:validation:XValidation:rule="!self.contains('/../') && !self.endsWith('/..')",message="path must not contain .."
	Path string `json:"path"`

	// content of the file.
	// +optional
	// +kubebuilder:validation:MaxLength=262144
	Content string `json:"content,omitempty"`

	// configMapKeyRef takes the content from a ConfigMap in the NodeImage's
	// namespace.
	// +optional
	ConfigMapKeyRef *corev1.ConfigMapKeySelector `json:"configMapKeyRef,omitempty"`

	// mode is the octal permission mode, such as "0644".
	// +optional
	// +kubebuilder:default="0644"
	// +kubebuilder:validation:Pattern=`^0?[0-7]{3,4}$`
	Mode string `json:"mode,omitempty"`

	// owner is user:group, such as root:root.
	// +optional
	// +kubebuilder:default="root:root"
	// +kubebuilder:validation:MaxLength=65
	// +kubebuilder:validation:Pattern=`^[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*$`
	Owner string `json:"owner,omitempty"`
}

// UnitSpec is a systemd unit written into the image and enabled.
type UnitSpec struct {
	// name of the unit, with its type suffix.
	// +required
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9:_.@-]+\.(service|timer|socket|mount|path|target)$`
	Name string `json:"name"`

	// content of the unit file.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=65536
	Content string `json:"content"`

	// enabled enables the unit (it is never started during the build).
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`
}

// Provisioner is one customisation step. Exactly one of shell or ansible is
// set.
// +kubebuilder:validation:XValidation:rule="has(self.shell) != has(self.ansible)",message="exactly one of shell or ansible must be set"
type Provisioner struct {
	// name identifies the step in progress and errors.
	// +required
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`
	Name string `json:"name"`

	// shell runs an inline script with /bin/sh -e inside the image's root
	// filesystem (chroot), with network access to the package mirror.
	// +optional
	Shell *ShellProvisioner `json:"shell,omitempty"`

	// ansible runs a playbook against the image's root filesystem through
	// Ansible's chroot connection: the seed pipeline's customisation path,
	// without a VM or SSH. Plays for localhost match no host; delegate_to,
	// local_action and lookups still run on the build host.
	// +optional
	Ansible *AnsibleProvisioner `json:"ansible,omitempty"`
}

// ShellProvisioner is an inline shell script.
type ShellProvisioner struct {
	// inline is the script.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=65536
	Inline string `json:"inline"`
}

// AnsibleProvisioner runs an Ansible playbook. Exactly one of playbook or
// playbookRef is set.
//
// The inventory is the image's root filesystem alone, and ansible-playbook
// runs with --limit set to it, so a play for localhost (Ansible's implicit
// localhost) or for all matches only the image, never the build host.
// Tasks delegated to the build host (delegate_to: localhost,
// local_action), lookups and templating still run on the build host, as
// root in the builder: run only playbooks you trust with the builder.
// +kubebuilder:validation:XValidation:rule="has(self.playbook) != has(self.playbookRef)",message="exactly one of playbook or playbookRef must be set"
type AnsibleProvisioner struct {
	// playbook is the playbook YAML itself.
	// +optional
	// +kubebuilder:validation:MaxLength=262144
	Playbook string `json:"playbook,omitempty"`

	// playbookRef selects the playbook YAML from a ConfigMap in the
	// NodeImage's namespace.
	// +optional
	PlaybookRef *corev1.ConfigMapKeySelector `json:"playbookRef,omitempty"`

	// extraVars are passed to ansible-playbook as --extra-vars.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	ExtraVars []AnsibleVar `json:"extraVars,omitempty"`
}

// AnsibleVar is one extra variable.
type AnsibleVar struct {
	// name of the variable.
	// +required
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Name string `json:"name"`

	// value of the variable.
	// +required
	// +kubebuilder:validation:MaxLength=4096
	Value string `json:"value"`
}

// Format is a disk image format.
// +kubebuilder:validation:Enum=qcow2;raw
type Format string

const (
	// FormatQCOW2 is QEMU's qcow2.
	FormatQCOW2 Format = "qcow2"
	// FormatRaw is a plain disk image.
	FormatRaw Format = "raw"
)

// Compression is the qcow2 cluster compression.
// +kubebuilder:validation:Enum=zstd;zlib;none
type Compression string

const (
	// CompressionZstd compresses qcow2 clusters with zstd: fast and small.
	CompressionZstd Compression = "zstd"
	// CompressionZlib compresses with zlib, readable by older QEMU.
	CompressionZlib Compression = "zlib"
	// CompressionNone writes an uncompressed image.
	CompressionNone Compression = "none"
)

// OutputSpec selects the artifact format.
// +kubebuilder:validation:XValidation:rule="!(has(self.format) && self.format == 'raw' && has(self.compression) && self.compression != 'none')",message="compression must be none when format is raw"
type OutputSpec struct {
	// format of the artifact.
	// +optional
	// +kubebuilder:default=qcow2
	Format Format `json:"format,omitempty"`

	// compression of a qcow2 artifact. zstd needs QEMU 5.1 or newer to read;
	// choose zlib for older consumers. When empty: zstd for qcow2, none for
	// raw.
	// +optional
	Compression Compression `json:"compression,omitempty"`
}
