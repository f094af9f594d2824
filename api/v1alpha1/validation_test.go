package v1alpha1_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// runMain starts envtest for the tests that need it. With -short and no
// KUBEBUILDER_ASSETS those tests skip; otherwise a missing API server is an
// error, not a skip.
func runMain(m *testing.M) int {
	flag.Parse() // for testing.Short
	var err error
	env, err = testenv.Start(testenv.Options{})
	if err != nil {
		if testing.Short() || os.Getenv("KUBEBUILDER_ASSETS") == "" && !requireEnvtest() {
			fmt.Fprintln(os.Stderr, "envtest not started, envtest tests will skip:", err)
			return m.Run()
		}
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	return m.Run()
}

func requireEnvtest() bool { return os.Getenv("NODEFORGE_REQUIRE_ENVTEST") == "1" }

func needEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip("envtest not available:", testenv.ErrNoAssets)
	}
}

func validNodeImage(name string) *imagev1.NodeImage {
	return &imagev1.NodeImage{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: imagev1.NodeImageSpec{
			ImageContent: imagev1.ImageContent{
				Packages: []string{"vim", "htop"},
				Kubernetes: &imagev1.KubernetesSpec{
					Version: "v1.37.2",
					AptRepository: imagev1.AptRepository{
						URL:        "https://packages.example.com/deb/",
						SigningKey: imagev1.KeySource{URL: "https://packages.example.com/deb/Release.key"},
					},
				},
			},
			Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
				Endpoint:             "https://s3.example.com",
				Bucket:               "node-images",
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "creds"},
			}},
		},
	}
}

func validBuild(name string) *imagev1.NodeImageBuild {
	ni := validNodeImage("img")
	return &imagev1.NodeImageBuild{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: imagev1.NodeImageBuildSpec{
			NodeImageName: "img",
			SpecDigest:    "sha256:" + strings.Repeat("ab", 32),
			Reason:        imagev1.BuildReasonFirstBuild,
			Image:         ni.Spec.ImageContent,
		},
	}
}

func TestValidObjectsAreAccepted(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ctx := context.Background()
	ni := validNodeImage("valid")
	g.Expect(env.Client.Create(ctx, ni)).To(Succeed())
	b := validBuild("valid-build")
	g.Expect(env.Client.Create(ctx, b)).To(Succeed())

	// spec.updates: rebuild defaults to true.
	u := validNodeImage("valid-updates")
	u.Spec.Updates = &imagev1.UpdatesSpec{Interval: metav1.Duration{Duration: imagev1.MinUpdatesInterval}}
	g.Expect(env.Client.Create(ctx, u)).To(Succeed())
	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(u), u)).To(Succeed())
	g.Expect(u.Spec.Updates.Rebuild).To(Equal(ptr.To(true)))
	g.Expect(u.Spec.Updates.RebuildOnUpdates()).To(BeTrue())

	// destination.oci beside s3: tags default to latest.
	o := validNodeImage("valid-oci")
	o.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com:5000/images/node-base"}
	g.Expect(env.Client.Create(ctx, o)).To(Succeed())
	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(o), o)).To(Succeed())
	g.Expect(o.Spec.Destination.OCI.Tags).To(Equal([]string{"latest"}))
}

// TestInvalidObjectsAreRejected feeds the API server objects that break one
// rule each and expects the rejection to name the offending field.
func TestInvalidObjectsAreRejected(t *testing.T) {
	needEnv(t)
	q := func(s string) *resource.Quantity { v := resource.MustParse(s); return &v }
	cases := []struct {
		name   string
		mutate func(*imagev1.NodeImage)
		field  string // must appear in the error message
	}{
		{"unknown distribution", func(n *imagev1.NodeImage) { n.Spec.Base.Distribution = "ubuntu" }, "spec.base.distribution"},
		{"unknown release", func(n *imagev1.NodeImage) { n.Spec.Base.Release = "bookworm" }, "spec.base.release"},
		{"unknown architecture", func(n *imagev1.NodeImage) { n.Spec.Base.Architecture = "riscv64" }, "spec.base.architecture"},
		{"mirror not a URL", func(n *imagev1.NodeImage) { n.Spec.Base.Mirror = "debian mirror" }, "spec.base.mirror"},
		{"kernel package with spaces", func(n *imagev1.NodeImage) { n.Spec.Base.KernelPackage = "linux image" }, "spec.base.kernelPackage"},
		{"disk too small", func(n *imagev1.NodeImage) { n.Spec.Disk.Size = q("1Gi") }, "spec.disk"},
		{"disk too large", func(n *imagev1.NodeImage) { n.Spec.Disk.Size = q("3Ti") }, "spec.disk"},
		{"unknown filesystem", func(n *imagev1.NodeImage) { n.Spec.Disk.Filesystem = "btrfs" }, "spec.disk.filesystem"},
		{"unknown boot mode", func(n *imagev1.NodeImage) { n.Spec.Disk.BootMode = "coreboot" }, "spec.disk.bootMode"},
		{"bios on arm64", func(n *imagev1.NodeImage) {
			n.Spec.Base.Architecture, n.Spec.Disk.BootMode = imagev1.ArchitectureARM64, imagev1.BootModeBIOS
		}, "spec.disk.bootMode: Invalid value: disk.bootMode bios is not available on arm64"},
		{"invalid package name", func(n *imagev1.NodeImage) { n.Spec.Packages = []string{"Vim!"} }, "spec.packages[0]"},
		{"duplicate package", func(n *imagev1.NodeImage) { n.Spec.Packages = []string{"vim", "vim"} }, "spec.packages[1]"},
		{"containerd constraint malformed", func(n *imagev1.NodeImage) { n.Spec.ContainerRuntime.Containerd.Version = "latest" }, "spec.containerRuntime.containerd.version"},
		{"CNI dir relative", func(n *imagev1.NodeImage) { n.Spec.ContainerRuntime.CNIPlugins.BinDir = "opt/cni/bin" }, "spec.containerRuntime.cniPlugins.binDir"},
		{"kubernetes version without v", func(n *imagev1.NodeImage) { n.Spec.Kubernetes.Version = "1.37.2" }, "spec.kubernetes.version"},
		{"unknown kubernetes component", func(n *imagev1.NodeImage) {
			n.Spec.Kubernetes.Components = []imagev1.KubernetesComponent{"kube-proxy"}
		}, "spec.kubernetes.components[0]"},
		{"apt repository URL scheme", func(n *imagev1.NodeImage) { n.Spec.Kubernetes.AptRepository.URL = "ftp://x/deb" }, "spec.kubernetes.aptRepository.url"},
		{"two signing key sources", func(n *imagev1.NodeImage) {
			n.Spec.Kubernetes.AptRepository.SigningKey.Armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
		}, "spec.kubernetes.aptRepository.signingKey"},
		{"no signing key source", func(n *imagev1.NodeImage) {
			n.Spec.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{}
		}, "spec.kubernetes.aptRepository.signingKey"},
		{"armored key not armored", func(n *imagev1.NodeImage) {
			n.Spec.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: "not a key"}
		}, "spec.kubernetes.aptRepository.signingKey.armored"},
		{"module name invalid", func(n *imagev1.NodeImage) { n.Spec.Kernel.Modules = []string{"br netfilter"} }, "spec.kernel.modules[0]"},
		{"sysctl name invalid", func(n *imagev1.NodeImage) {
			n.Spec.Kernel.Sysctls = []imagev1.Sysctl{{Name: "ip_forward", Value: "1"}}
		}, "spec.kernel.sysctls[0].name"},
		{"permitRootLogin yes", func(n *imagev1.NodeImage) { n.Spec.SSH.PermitRootLogin = "yes" }, "spec.ssh.permitRootLogin"},
		{"user named root", func(n *imagev1.NodeImage) { n.Spec.Users = []imagev1.UserSpec{{Name: "root"}} }, "spec.users[0]"},
		{"user key malformed", func(n *imagev1.NodeImage) {
			n.Spec.Users = []imagev1.UserSpec{{Name: "ops", SSHAuthorizedKeys: []string{"password123"}}}
		}, "spec.users[0].sshAuthorizedKeys[0]"},
		{"unknown datasource", func(n *imagev1.NodeImage) { n.Spec.CloudInit.Datasources = []imagev1.Datasource{"Floppy"} }, "spec.cloudInit.datasources[0]"},
		{"user-data not cloud-config", func(n *imagev1.NodeImage) { n.Spec.CloudInit.DefaultUserData = "runcmd: []" }, "spec.cloudInit.defaultUserData"},
		{"node exporter port out of range", func(n *imagev1.NodeImage) { n.Spec.Monitoring.NodeExporter.Port = 70000 }, "spec.monitoring.nodeExporter.port"},
		{"file path relative", func(n *imagev1.NodeImage) {
			n.Spec.Files = []imagev1.FileSpec{{Path: "etc/motd", Content: "hi"}}
		}, "spec.files[0].path"},
		{"file path escapes", func(n *imagev1.NodeImage) {
			n.Spec.Files = []imagev1.FileSpec{{Path: "/etc/../../root/x", Content: "hi"}}
		}, "spec.files[0].path"},
		{"file with two sources", func(n *imagev1.NodeImage) {
			n.Spec.Files = []imagev1.FileSpec{{Path: "/etc/motd", Content: "hi", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "motd"}}}
		}, "spec.files[0]"},
		{"file mode not octal", func(n *imagev1.NodeImage) {
			n.Spec.Files = []imagev1.FileSpec{{Path: "/etc/motd", Content: "hi", Mode: "0999"}}
		}, "spec.files[0].mode"},
		{"unit without type suffix", func(n *imagev1.NodeImage) {
			n.Spec.Units = []imagev1.UnitSpec{{Name: "agent", Content: "[Unit]"}}
		}, "spec.units[0].name"},
		{"provisioner with shell and ansible", func(n *imagev1.NodeImage) {
			n.Spec.Provisioners = []imagev1.Provisioner{{Name: "both", Shell: &imagev1.ShellProvisioner{Inline: "true"},
				Ansible: &imagev1.AnsibleProvisioner{Playbook: "- hosts: all"}}}
		}, "spec.provisioners[0]"},
		{"provisioner with neither", func(n *imagev1.NodeImage) {
			n.Spec.Provisioners = []imagev1.Provisioner{{Name: "none"}}
		}, "spec.provisioners[0]"},
		{"duplicate provisioner names", func(n *imagev1.NodeImage) {
			s := &imagev1.ShellProvisioner{Inline: "true"}
			n.Spec.Provisioners = []imagev1.Provisioner{{Name: "a", Shell: s}, {Name: "a", Shell: s}}
		}, "spec.provisioners[1]"},
		{"unknown output format", func(n *imagev1.NodeImage) { n.Spec.Output.Format = "vmdk" }, "spec.output.format"},
		{"raw with compression", func(n *imagev1.NodeImage) {
			n.Spec.Output = imagev1.OutputSpec{Format: imagev1.FormatRaw, Compression: imagev1.CompressionZstd}
		}, "spec.output"},
		{"bucket name invalid", func(n *imagev1.NodeImage) { n.Spec.Destination.S3.Bucket = "Node_Images" }, "spec.destination.s3.bucket"},
		{"endpoint with path", func(n *imagev1.NodeImage) { n.Spec.Destination.S3.Endpoint = "s3.example.com" }, "spec.destination.s3.endpoint"},
		{"prefix absolute", func(n *imagev1.NodeImage) { n.Spec.Destination.S3.Prefix = "/images" }, "spec.destination.s3.prefix"},
		{"insecure with CA", func(n *imagev1.NodeImage) {
			n.Spec.Destination.S3.Insecure = true
			n.Spec.Destination.S3.CASecretRef = &corev1.LocalObjectReference{Name: "ca"}
		}, "spec.destination.s3"},
		{"destination without s3", func(n *imagev1.NodeImage) { n.Spec.Destination.S3 = nil }, "spec.destination"},
		{"oci alone", func(n *imagev1.NodeImage) {
			n.Spec.Destination.S3 = nil
			n.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/node"}
		}, "spec.destination"},
		{"oci repository with a tag", func(n *imagev1.NodeImage) {
			n.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/node:stable"}
		}, "spec.destination.oci.repository"},
		{"oci repository without a host", func(n *imagev1.NodeImage) {
			n.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "node"}
		}, "spec.destination.oci.repository"},
		{"oci tag invalid", func(n *imagev1.NodeImage) {
			n.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/node", Tags: []string{"-stable"}}
		}, "spec.destination.oci.tags[0]"},
		{"oci insecure with CA", func(n *imagev1.NodeImage) {
			n.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/node", Insecure: true,
				CASecretRef: &corev1.LocalObjectReference{Name: "registry-ca"}}
		}, "spec.destination.oci"},
		{"update interval too short", func(n *imagev1.NodeImage) {
			n.Spec.Updates = &imagev1.UpdatesSpec{Interval: metav1.Duration{Duration: time.Minute}}
		}, "spec.updates.interval"},
		{"updates without destination", func(n *imagev1.NodeImage) {
			n.Spec.Updates = &imagev1.UpdatesSpec{Interval: metav1.Duration{Duration: time.Hour}}
			n.Spec.Destination = nil
		}, "spec.updates"},
		{"unknown builder backend", func(n *imagev1.NodeImage) { n.Spec.Builder.Backend = "Docker" }, "spec.builder.backend"},
		{"too many retries", func(n *imagev1.NodeImage) { n.Spec.Builder.Retries = ptr.To[int32](50) }, "spec.builder.retries"},
		{"builder timeout zero", func(n *imagev1.NodeImage) { n.Spec.Builder.Timeout = &metav1.Duration{} }, "spec.builder.timeout"},
		{"boot timeout too long", func(n *imagev1.NodeImage) {
			n.Spec.Verification.Boot.Timeout = &metav1.Duration{Duration: 3 * time.Hour}
		}, "spec.verification.boot.timeout"},
		{"presign expiry over S3's limit", func(n *imagev1.NodeImage) {
			n.Spec.Destination.S3.PresignExpiry = &metav1.Duration{Duration: 8 * 24 * time.Hour}
		}, "spec.destination.s3.presignExpiry"},
		{"history limit zero", func(n *imagev1.NodeImage) { n.Spec.SuccessfulBuildsHistoryLimit = ptr.To[int32](0) }, "spec.successfulBuildsHistoryLimit"},
		{"unknown deletion policy", func(n *imagev1.NodeImage) { n.Spec.DeletionPolicy = "Orphan" }, "spec.deletionPolicy"},
		{"check name invalid", func(n *imagev1.NodeImage) {
			n.Spec.Verification.Skip = []imagev1.CheckName{"Boot Test"}
		}, "spec.verification.skip[0]"},
		{"name too long", func(n *imagev1.NodeImage) { n.Name = strings.Repeat("a", 41) }, "metadata.name"},
	}
	ctx := context.Background()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ni := validNodeImage(fmt.Sprintf("invalid-%d", i))
			tc.mutate(ni)
			err := env.Client.Create(ctx, ni, client.DryRunAll)
			g.Expect(err).To(HaveOccurred(), "object should be rejected")
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want an Invalid error, got %v", err)
			g.Expect(err.Error()).To(ContainSubstring(tc.field))
		})
	}
}

func TestNodeImageBuildValidation(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	cases := []struct {
		name   string
		mutate func(*imagev1.NodeImageBuild)
		field  string
	}{
		{"digest not sha256", func(b *imagev1.NodeImageBuild) { b.Spec.SpecDigest = "md5:abc" }, "spec.specDigest"},
		{"unknown reason", func(b *imagev1.NodeImageBuild) { b.Spec.Reason = "Because" }, "spec.reason"},
		{"missing node image name", func(b *imagev1.NodeImageBuild) { b.Spec.NodeImageName = "" }, "spec.nodeImageName"},
		{"invalid image content", func(b *imagev1.NodeImageBuild) { b.Spec.Image.Disk.BootMode = "coreboot" }, "spec.image.disk.bootMode"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			b := validBuild(fmt.Sprintf("invalid-build-%d", i))
			tc.mutate(b)
			err := env.Client.Create(ctx, b, client.DryRunAll)
			g.Expect(err).To(HaveOccurred())
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
			g.Expect(err.Error()).To(ContainSubstring(tc.field))
		})
	}

	t.Run("spec is immutable", func(t *testing.T) {
		g := NewWithT(t)
		b := validBuild("immutable")
		g.Expect(env.Client.Create(ctx, b)).To(Succeed())
		b.Spec.Reason = imagev1.BuildReasonSpecChanged
		err := env.Client.Update(ctx, b)
		g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
		g.Expect(err.Error()).To(ContainSubstring("spec is immutable"))
		// Status stays writable.
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(b), b)).To(Succeed())
		b.Status.Attempts = 1
		g.Expect(env.Client.Status().Update(ctx, b)).To(Succeed())
	})
}

// TestSamplesApplyWithServerDryRun applies every sample with kubectl, as a
// user would, and a broken one to see kubectl's field-level message.
func TestSamplesApplyWithServerDryRun(t *testing.T) {
	needEnv(t)
	samples, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "image_*.yaml"))
	if err != nil || len(samples) < 3 {
		t.Fatalf("want at least 3 samples, found %v (%v)", samples, err)
	}
	for _, s := range samples {
		t.Run(filepath.Base(s), func(t *testing.T) {
			out, stderr, err := env.Kubectl("apply", "--dry-run=server", "-n", "default", "-f", s)
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server -f %s: %v\n%s%s", s, err, out, stderr)
			}
		})
	}
	t.Run("invalid sample", func(t *testing.T) {
		g := NewWithT(t)
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		g.Expect(os.WriteFile(bad, []byte(`apiVersion: image.nodeforge.dev/v1alpha1
kind: NodeImage
metadata: {name: bad}
spec:
  disk: {bootMode: coreboot}
`), 0o600)).To(Succeed())
		_, stderr, err := env.Kubectl("apply", "--dry-run=server", "-n", "default", "-f", bad)
		g.Expect(err).To(HaveOccurred())
		g.Expect(stderr).To(ContainSubstring("spec.disk.bootMode"))
	})
}
