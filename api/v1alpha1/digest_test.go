package v1alpha1_test

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

func digestOf(t *testing.T, c imagev1.ImageContent) string {
	t.Helper()
	d, err := c.Digest()
	if err != nil {
		t.Fatalf("Digest: %v", err)
	}
	return d
}

func TestDigestIsStableAndIgnoresDefaulting(t *testing.T) {
	g := NewWithT(t)
	spec := validNodeImage("x").Spec
	d1 := digestOf(t, spec.ImageContent)
	g.Expect(d1).To(MatchRegexp(`^sha256:[a-f0-9]{64}$`))
	g.Expect(digestOf(t, spec.ImageContent)).To(Equal(d1), "same spec, same digest")

	spec.Default()
	g.Expect(digestOf(t, spec.ImageContent)).To(Equal(d1), "writing the defaults out does not change the digest")

	// Digest does not modify its receiver.
	fresh := validNodeImage("x").Spec
	_ = digestOf(t, fresh.ImageContent)
	g.Expect(fresh.ImageContent.Disk.Size).To(BeNil())
}

func TestDigestChangesWithImageContent(t *testing.T) {
	base := digestOf(t, validNodeImage("x").Spec.ImageContent)
	q := resource.MustParse("16Gi")
	cases := map[string]func(*imagev1.ImageContent){
		"extra package":      func(c *imagev1.ImageContent) { c.Packages = append(c.Packages, "jq") },
		"kubernetes version": func(c *imagev1.ImageContent) { c.Kubernetes.Version = "v1.37.3" },
		"no kubernetes":      func(c *imagev1.ImageContent) { c.Kubernetes = nil },
		"apt repository":     func(c *imagev1.ImageContent) { c.Kubernetes.AptRepository.URL = "https://mirror.example.com/k8s/" },
		"disk size":          func(c *imagev1.ImageContent) { c.Disk.Size = &q },
		"boot mode":          func(c *imagev1.ImageContent) { c.Disk.BootMode = imagev1.BootModeUEFI },
		"mirror":             func(c *imagev1.ImageContent) { c.Base.Mirror = "https://mirror.example.com/debian" },
		"kernel package":     func(c *imagev1.ImageContent) { c.Base.KernelPackage = "linux-image-amd64" },
		"systemd cgroup":     func(c *imagev1.ImageContent) { c.ContainerRuntime.Containerd.SystemdCgroup = ptr.To(false) },
		"module":             func(c *imagev1.ImageContent) { c.Kernel.Modules = []string{"overlay"} },
		"sysctl": func(c *imagev1.ImageContent) {
			c.Kernel.Sysctls = []imagev1.Sysctl{{Name: "vm.swappiness", Value: "0"}}
		},
		"swap":                 func(c *imagev1.ImageContent) { c.Swap.Disabled = ptr.To(false) },
		"root login":           func(c *imagev1.ImageContent) { c.SSH.PermitRootLogin = imagev1.PermitRootLoginProhibitPassword },
		"datasource order":     func(c *imagev1.ImageContent) { c.CloudInit.Datasources = []imagev1.Datasource{"Ec2", "NoCloud"} },
		"node exporter port":   func(c *imagev1.ImageContent) { c.Monitoring.NodeExporter.Port = 9101 },
		"file":                 func(c *imagev1.ImageContent) { c.Files = []imagev1.FileSpec{{Path: "/etc/motd", Content: "hi"}} },
		"unit":                 func(c *imagev1.ImageContent) { c.Units = []imagev1.UnitSpec{{Name: "a.service", Content: "[Unit]"}} },
		"provisioner":          func(c *imagev1.ImageContent) { c.Provisioners = shell("a", "b") },
		"compression":          func(c *imagev1.ImageContent) { c.Output.Compression = imagev1.CompressionZlib },
		"user":                 func(c *imagev1.ImageContent) { c.Users = []imagev1.UserSpec{{Name: "ops"}} },
		"default user-data":    func(c *imagev1.ImageContent) { c.CloudInit.DefaultUserData = "#cloud-config\n" },
		"kubelet not enabled":  func(c *imagev1.ImageContent) { c.Kubernetes.EnableKubelet = ptr.To(false) },
		"packages not held":    func(c *imagev1.ImageContent) { c.Kubernetes.Hold = ptr.To(false) },
		"containerd version":   func(c *imagev1.ImageContent) { c.ContainerRuntime.Containerd.Version = "=1.7.24" },
		"node exporter off":    func(c *imagev1.ImageContent) { c.Monitoring.NodeExporter.Enabled = ptr.To(false) },
		"architecture":         func(c *imagev1.ImageContent) { c.Base.Architecture = imagev1.ArchitectureARM64 },
		"raw output":           func(c *imagev1.ImageContent) { c.Output.Format = imagev1.FormatRaw },
		"armored signing key":  func(c *imagev1.ImageContent) { c.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: "k"} },
		"provisioner reorder":  func(c *imagev1.ImageContent) { c.Provisioners = shell("b", "a") },
		"kubernetes component": func(c *imagev1.ImageContent) { c.Kubernetes.Components = []imagev1.KubernetesComponent{"kubectl"} },
	}
	seen := map[string]string{"base": base}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			c := validNodeImage("x").Spec.ImageContent
			mutate(&c)
			d := digestOf(t, c)
			if d == base {
				t.Fatalf("%s did not change the digest", name)
			}
		})
		c := validNodeImage("x").Spec.ImageContent
		mutate(&c)
		d := digestOf(t, c)
		if other, dup := seen[d]; dup && other != name {
			// Every change gives a digest of its own.
			t.Errorf("%s and %s give the same digest", name, other)
		}
		seen[d] = name
	}
	// Provisioners run in order: reordering them is a different image.
	a := validNodeImage("x").Spec.ImageContent
	a.Provisioners = shell("a", "b")
	b := validNodeImage("x").Spec.ImageContent
	b.Provisioners = shell("b", "a")
	NewWithT(t).Expect(digestOf(t, a)).NotTo(Equal(digestOf(t, b)))
}

func shell(names ...string) []imagev1.Provisioner {
	var ps []imagev1.Provisioner
	for _, n := range names {
		ps = append(ps, imagev1.Provisioner{Name: n, Shell: &imagev1.ShellProvisioner{Inline: "echo " + n}})
	}
	return ps
}

func TestDigestIgnoresNonImageFieldsAndOrderOfSets(t *testing.T) {
	g := NewWithT(t)
	ref := validNodeImage("x").Spec
	base := digestOf(t, ref.ImageContent)

	other := validNodeImage("y").Spec
	other.SuccessfulBuildsHistoryLimit = ptr.To[int32](10)
	other.FailedBuildsHistoryLimit = ptr.To[int32](5)
	other.Suspend = true
	other.DeletionPolicy = imagev1.DeletionPolicyDelete
	other.Destination.S3.Bucket = "elsewhere"
	other.Verification.Boot.Enabled = ptr.To(false)
	other.Builder.Backend = imagev1.BuilderBackendKubeVirt
	other.Builder.Timeout = &metav1.Duration{Duration: time.Hour}
	g.Expect(digestOf(t, other.ImageContent)).To(Equal(base))

	// Sets are compared as sets.
	reordered := validNodeImage("x").Spec
	reordered.Packages = []string{"htop", "vim"}
	reordered.Kernel.Modules = []string{"overlay", "br_netfilter"}
	reordered.Kernel.Sysctls = []imagev1.Sysctl{
		{Name: "net.bridge.bridge-nf-call-ip6tables", Value: "1"},
		{Name: "net.bridge.bridge-nf-call-iptables", Value: "1"},
		{Name: "net.ipv4.ip_forward", Value: "1"},
	}
	reordered.Kubernetes.Components = []imagev1.KubernetesComponent{"kubectl", "cri-tools", "kubelet", "kubeadm"}
	g.Expect(digestOf(t, reordered.ImageContent)).To(Equal(base))

	// A quantity written another way is the same size.
	q := resource.MustParse("8192Mi")
	sameSize := validNodeImage("x").Spec
	sameSize.Disk.Size = &q
	g.Expect(digestOf(t, sameSize.ImageContent)).To(Equal(base))
}

func TestDigestRefusesUnresolvedReferences(t *testing.T) {
	g := NewWithT(t)
	c := validNodeImage("x").Spec.ImageContent
	c.Files = []imagev1.FileSpec{{Path: "/etc/motd", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "motd"}, Key: "text"}}}
	_, err := c.Digest()
	g.Expect(err).To(MatchError(imagev1.ErrUnresolvedReference))
	g.Expect(err.Error()).To(ContainSubstring("files[0].configMapKeyRef (motd/text)"))
}

func TestDefault(t *testing.T) {
	g := NewWithT(t)
	var s imagev1.NodeImageSpec
	s.Default()
	g.Expect(s.Base.Distribution).To(Equal(imagev1.DistributionDebian))
	g.Expect(s.Base.Release).To(Equal(imagev1.ReleaseTrixie))
	g.Expect(s.Base.KernelPackage).To(Equal("linux-image-cloud-amd64"))
	g.Expect(s.Disk.Size.String()).To(Equal("8Gi"))
	g.Expect(s.Disk.BootMode).To(Equal(imagev1.BootModeHybrid))
	g.Expect(*s.ContainerRuntime.Containerd.SystemdCgroup).To(BeTrue())
	g.Expect(s.ContainerRuntime.CNIPlugins.BinDir).To(Equal("/opt/cni/bin"))
	g.Expect(s.Kernel.Modules).To(ConsistOf("br_netfilter", "overlay"))
	g.Expect(s.Kernel.Sysctls).To(ContainElement(imagev1.Sysctl{Name: "net.ipv4.ip_forward", Value: "1"}))
	g.Expect(*s.Swap.Disabled).To(BeTrue())
	g.Expect(s.SSH.PermitRootLogin).To(Equal(imagev1.PermitRootLoginNo))
	g.Expect(s.Monitoring.NodeExporter.Port).To(Equal(int32(9100)))
	g.Expect(s.Output.Compression).To(Equal(imagev1.CompressionZstd))
	g.Expect(s.Kubernetes).To(BeNil(), "no Kubernetes components unless asked for")
	g.Expect(s.Builder.Backend).To(Equal(imagev1.BuilderBackendPod))
	g.Expect(*s.SuccessfulBuildsHistoryLimit).To(Equal(int32(3)))
	g.Expect(s.DeletionPolicy).To(Equal(imagev1.DeletionPolicyRetain))

	arm := imagev1.ImageContent{Base: imagev1.BaseSpec{Architecture: imagev1.ArchitectureARM64}}
	arm.Default()
	g.Expect(arm.Base.KernelPackage).To(Equal("linux-image-cloud-arm64"))

	raw := imagev1.ImageContent{Output: imagev1.OutputSpec{Format: imagev1.FormatRaw}}
	raw.Default()
	g.Expect(raw.Output.Compression).To(Equal(imagev1.CompressionNone))

	// Explicit values are kept.
	kept := imagev1.ImageContent{Kernel: imagev1.KernelSpec{Modules: []string{}}, SSH: imagev1.SSHSpec{PermitRootLogin: imagev1.PermitRootLoginProhibitPassword}}
	kept.Default()
	g.Expect(kept.Kernel.Modules).To(BeEmpty())
	g.Expect(kept.SSH.PermitRootLogin).To(Equal(imagev1.PermitRootLoginProhibitPassword))
}

// TestDefaultsMatchCRD proves the CRD schema's defaults and the Go defaults
// (used by the CLI, which never talks to an API server) agree: the server
// fills the same values Go would, and Go defaulting changes nothing the
// server already set.
func TestDefaultsMatchCRD(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ctx := context.Background()
	ni := validNodeImage("defaults")
	ni.Spec.Files = []imagev1.FileSpec{{Path: "/etc/motd", Content: "hi"}}
	ni.Spec.Units = []imagev1.UnitSpec{{Name: "a.service", Content: "[Unit]"}}
	local := ni.Spec.DeepCopy()
	local.Default()

	g.Expect(env.Client.Create(ctx, ni)).To(Succeed())
	fromServer := &imagev1.NodeImage{}
	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(ni), fromServer)).To(Succeed())
	g.Expect(fromServer.Spec.Disk.BootMode).To(Equal(imagev1.BootModeHybrid), "the server applied schema defaults")
	g.Expect(fromServer.Spec.Kernel.Sysctls).To(HaveLen(3))

	server := fromServer.Spec.DeepCopy()
	server.Default()
	g.Expect(server.Disk.Size.Cmp(*local.Disk.Size)).To(Equal(0))
	server.Disk.Size, local.Disk.Size = nil, nil
	g.Expect(*server).To(Equal(*local))

	d1, err := fromServer.Spec.ImageContent.Digest()
	g.Expect(err).NotTo(HaveOccurred())
	d2, err := ni.Spec.ImageContent.Digest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(d1).To(Equal(d2), "the digest is the same before and after the server's defaulting")
}
