package v1alpha1

import (
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Defaults applied by the API server through the CRD schema are repeated
// here, because the CLI reads NodeImages from files that never pass an API
// server. TestDefaultsMatchCRD keeps the two in agreement. Defaults that
// depend on another field (kernelPackage, compression) exist only here and
// are documented on their fields.

// Default values.
const (
	DefaultDiskSize                     = "8Gi"
	DefaultContainerdVersion            = ">=1.7.23"
	DefaultCNIBinDir                    = "/opt/cni/bin"
	DefaultNodeExporterPort             = 9100
	DefaultS3Region                     = "us-east-1"
	DefaultPresignExpiry                = 24 * time.Hour
	DefaultBootTimeout                  = 10 * time.Minute
	DefaultClusterTimeout               = 15 * time.Minute
	DefaultBuildTimeout                 = 45 * time.Minute
	DefaultBuildRetries                 = 2
	DefaultSuccessfulBuildsHistoryLimit = 3
	DefaultFailedBuildsHistoryLimit     = 1
)

// DefaultKernelModules are loaded at boot unless kernel.modules is set.
func DefaultKernelModules() []string { return []string{"br_netfilter", "overlay"} }

// DefaultSysctls are applied unless kernel.sysctls is set.
func DefaultSysctls() []Sysctl {
	return []Sysctl{
		{Name: "net.ipv4.ip_forward", Value: "1"},
		{Name: "net.bridge.bridge-nf-call-iptables", Value: "1"},
		{Name: "net.bridge.bridge-nf-call-ip6tables", Value: "1"},
	}
}

// DefaultDatasources are probed unless cloudInit.datasources is set.
func DefaultDatasources() []Datasource {
	return []Datasource{"NoCloud", "ConfigDrive", "OpenStack", "Ec2", "None"}
}

// DefaultKubernetesComponents are installed unless kubernetes.components is set.
func DefaultKubernetesComponents() []KubernetesComponent {
	return []KubernetesComponent{ComponentKubeadm, ComponentKubelet, ComponentKubectl, ComponentCRITools}
}

func defaultString[T ~string](v *T, d T) {
	if *v == "" {
		*v = d
	}
}

// defaultTrue sets an unset *bool to true: every boolean default of this
// API is true, so that leaving a field out never turns a feature off.
func defaultTrue(v **bool) {
	if *v == nil {
		*v = ptr.To(true)
	}
}

func defaultDuration(v **metav1.Duration, d time.Duration) {
	if *v == nil {
		*v = &metav1.Duration{Duration: d}
	}
}

// Default fills every unset field of the NodeImage spec with its default.
func (s *NodeImageSpec) Default() {
	s.ImageContent.Default()
	if s.Destination != nil && s.Destination.S3 != nil {
		s.Destination.S3.Default()
	}
	s.Verification.Default()
	s.Builder.Default()
	if s.SuccessfulBuildsHistoryLimit == nil {
		s.SuccessfulBuildsHistoryLimit = ptr.To[int32](DefaultSuccessfulBuildsHistoryLimit)
	}
	if s.FailedBuildsHistoryLimit == nil {
		s.FailedBuildsHistoryLimit = ptr.To[int32](DefaultFailedBuildsHistoryLimit)
	}
	defaultString(&s.DeletionPolicy, DeletionPolicyRetain)
}

// Default fills every unset field of the image content with its default.
func (c *ImageContent) Default() {
	b := &c.Base
	defaultString(&b.Distribution, DistributionDebian)
	defaultString(&b.Release, ReleaseTrixie)
	defaultString(&b.Architecture, ArchitectureAMD64)
	defaultString(&b.KernelPackage, "linux-image-cloud-"+string(b.Architecture))

	if c.Disk.Size == nil {
		q := resource.MustParse(DefaultDiskSize)
		c.Disk.Size = &q
	}
	defaultString(&c.Disk.Filesystem, FilesystemExt4)
	defaultString(&c.Disk.BootMode, BootModeHybrid)

	cr := &c.ContainerRuntime
	defaultTrue(&cr.Containerd.Enabled)
	defaultString(&cr.Containerd.Version, DefaultContainerdVersion)
	defaultTrue(&cr.Containerd.SystemdCgroup)
	defaultTrue(&cr.Runc.Enabled)
	defaultTrue(&cr.CNIPlugins.Enabled)
	defaultString(&cr.CNIPlugins.BinDir, DefaultCNIBinDir)

	if k := c.Kubernetes; k != nil {
		if len(k.Components) == 0 {
			k.Components = DefaultKubernetesComponents()
		}
		defaultString(&k.AptRepository.Suite, "/")
		defaultTrue(&k.Hold)
		defaultTrue(&k.EnableKubelet)
		if k.Images != nil {
			defaultTrue(&k.Images.ControlPlane)
		}
	}

	if c.Kernel.Modules == nil {
		c.Kernel.Modules = DefaultKernelModules()
	}
	if c.Kernel.Sysctls == nil {
		c.Kernel.Sysctls = DefaultSysctls()
	}
	defaultTrue(&c.Swap.Disabled)
	defaultTrue(&c.SSH.Enabled)
	defaultString(&c.SSH.PermitRootLogin, PermitRootLoginNo)
	if len(c.CloudInit.Datasources) == 0 {
		c.CloudInit.Datasources = DefaultDatasources()
	}
	defaultTrue(&c.Monitoring.NodeExporter.Enabled)
	if c.Monitoring.NodeExporter.Port == 0 {
		c.Monitoring.NodeExporter.Port = DefaultNodeExporterPort
	}
	for i := range c.Files {
		defaultString(&c.Files[i].Mode, "0644")
		defaultString(&c.Files[i].Owner, "root:root")
	}
	for i := range c.Units {
		defaultTrue(&c.Units[i].Enabled)
	}
	defaultString(&c.Output.Format, FormatQCOW2)
	if c.Output.Format == FormatRaw {
		defaultString(&c.Output.Compression, CompressionNone)
	} else {
		defaultString(&c.Output.Compression, CompressionZstd)
	}
}

// Default fills unset S3 fields.
func (d *S3Destination) Default() {
	defaultString(&d.Region, DefaultS3Region)
	defaultString(&d.BucketLookup, BucketLookupAuto)
	defaultDuration(&d.PresignExpiry, DefaultPresignExpiry)
}

// Default fills unset verification fields.
func (v *VerificationSpec) Default() {
	defaultTrue(&v.Boot.Enabled)
	defaultDuration(&v.Boot.Timeout, DefaultBootTimeout)
	defaultTrue(&v.Cluster.Enabled)
	defaultDuration(&v.Cluster.Timeout, DefaultClusterTimeout)
}

// Default fills unset builder fields.
func (b *BuilderSpec) Default() {
	defaultString(&b.Backend, BuilderBackendPod)
	defaultDuration(&b.Timeout, DefaultBuildTimeout)
	if b.Retries == nil {
		b.Retries = ptr.To[int32](DefaultBuildRetries)
	}
}
