package controller_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	v1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/backend/kubevirt"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/storage"
)

func vmiKey(ns, name string) *kubevirtv1.VirtualMachineInstance {
	return &kubevirtv1.VirtualMachineInstance{ObjectMeta: v1.ObjectMeta{Namespace: ns, Name: name}}
}

func playVMI(g Gomega, ns, name string, phase kubevirtv1.VirtualMachineInstancePhase, annotations map[string]string) {
	update(g, vmiKey(ns, name), func(vmi *kubevirtv1.VirtualMachineInstance) {
		vmi.Status.Phase = phase
		if vmi.Annotations == nil {
			vmi.Annotations = map[string]string{}
		}
		for k, v := range annotations {
			vmi.Annotations[k] = v
		}
	})
}

func TestKubeVirtBackend(t *testing.T) {
	needEnv(t)
	for _, relayed := range []bool{true, false} {
		name := "kv-relayed"
		if !relayed {
			name = "kv-manifest"
		}
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			// A key that is not a credential stays out of the VM.
			update(g, &corev1.Secret{ObjectMeta: v1.ObjectMeta{Namespace: ns, Name: "s3-creds"}}, func(s *corev1.Secret) {
				s.Data["unrelated"] = []byte("not for the builder")
			})
			ni := newNodeImage(ns, name)
			ni.Spec.Builder.Backend = imagev1.BuilderBackendKubeVirt
			wantKeys := 2
			if relayed {
				// The registry credentials' Docker configuration joins the
				// copy; the rest of that Secret does not.
				g.Expect(k8s.Create(ctx, &corev1.Secret{
					ObjectMeta: v1.ObjectMeta{Namespace: ns, Name: "pull"},
					Type:       corev1.SecretTypeDockerConfigJson,
					Data: map[string][]byte{
						corev1.DockerConfigJsonKey: []byte(`{"auths":{"127.0.0.1:5000":{"auth":"dTpw"}}}`),
						"unrelated":                []byte("not for the builder"),
					},
				})).To(Succeed())
				ni.Spec.Builder.RegistryCredentials = &corev1.LocalObjectReference{Name: "pull"}
				wantKeys = 3
			}
			digest := digestOf(g, ni)
			g.Expect(k8s.Create(ctx, ni)).To(Succeed())
			build := controller.BuildName(name, digest)
			vmiName := backend.BuilderName(build, 1)

			var vmi *kubevirtv1.VirtualMachineInstance
			g.Eventually(func(g Gomega) { vmi = get(g, vmiKey(ns, vmiName)) }, testTimeout).Should(Succeed())
			g.Expect(v1.IsControlledBy(vmi, get(g, buildKey(ns, build)))).To(BeTrue())
			g.Expect(vmi.Labels).To(HaveKeyWithValue(backend.LabelBuild, build))
			vols := map[string]kubevirtv1.Volume{}
			for _, v := range vmi.Spec.Volumes {
				vols[v.Name] = v
			}
			g.Expect(vols["appliance"].ContainerDisk.Image).To(Equal("nodeforge-appliance:test"))
			g.Expect(vols["spec"].ConfigMap.Name).To(Equal(build + "-spec"))
			g.Expect(vols["credentials"].Secret.SecretName).To(Equal(build+"-credentials"), "the VM gets the copy of the credential keys")
			creds := get(g, &corev1.Secret{ObjectMeta: v1.ObjectMeta{Namespace: ns, Name: build + "-credentials"}})
			g.Expect(creds.Data).To(HaveLen(wantKeys))
			if relayed {
				g.Expect(creds.Data).To(HaveKeyWithValue(corev1.DockerConfigJsonKey, []byte(`{"auths":{"127.0.0.1:5000":{"auth":"dTpw"}}}`)))
			}
			g.Expect(creds.Data).To(HaveKeyWithValue("secretAccessKey", []byte("sup3r-s3cret-value")))
			g.Expect(creds.Data).To(HaveKey("accessKeyID"))
			g.Expect(v1.IsControlledBy(creds, get(g, buildKey(ns, build)))).To(BeTrue())
			g.Expect(vols["scratch"].EmptyDisk).NotTo(BeNil())
			serials := map[string]string{}
			for _, d := range vmi.Spec.Domain.Devices.Disks {
				serials[d.Name] = d.Serial
			}
			g.Expect(serials).To(HaveKeyWithValue("spec", "nfspec"))
			g.Expect(serials).To(HaveKeyWithValue("credentials", "nfcreds"))

			g.Eventually(func(g Gomega) {
				b := get(g, buildKey(ns, build))
				g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/BuildPending"))
				g.Expect(b.Status.BuilderRef.Kind).To(Equal("VirtualMachineInstance"))
			}, testTimeout).Should(Succeed())

			playVMI(g, ns, vmiName, kubevirtv1.Running, map[string]string{
				kubevirt.ProgressAnnotation: `{"step":"image","percent":60}`,
			})
			g.Eventually(func(g Gomega) {
				b := get(g, buildKey(ns, build))
				g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/Building"))
				g.Expect(b.Status.Progress.Step).To(Equal("image"))
				g.Expect(kstatusOf(g, get(g, ni))).To(Equal(status.InProgressStatus))
			}, testTimeout).Should(Succeed())

			ann := map[string]string{}
			if relayed {
				res, err := succeeded(ni, digest).Encode()
				g.Expect(err).NotTo(HaveOccurred())
				ann[kubevirt.ResultAnnotation] = string(res)
			} else {
				// The appliance uploaded the image and manifest; the
				// controller finds them by the build's spec digest.
				img := filepath.Join(t.TempDir(), "img.qcow2")
				g.Expect(os.WriteFile(img, []byte("vm-built image"), 0o644)).To(Succeed())
				_, err := (&storage.Publisher{Store: dirStore}).Publish(ctx, storage.PublishInput{
					Name: name, SpecDigest: digest, ImagePath: img, Manifest: []byte(`{}`),
				})
				g.Expect(err).NotTo(HaveOccurred())
			}
			playVMI(g, ns, vmiName, kubevirtv1.Succeeded, ann)
			g.Eventually(func(g Gomega) {
				n := get(g, ni)
				g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
				g.Expect(n.Status.Artifact.SpecDigest).To(Equal(digest))
				g.Expect(kstatusOf(g, n)).To(Equal(status.CurrentStatus))
				if !relayed {
					g.Expect(n.Status.Artifact.Size).To(Equal(int64(len("vm-built image"))))
				}
			}, testTimeout).Should(Succeed())
		})
	}
}

// startKubeVirtBuild creates a NodeImage on the KubeVirt backend in a new
// namespace and waits for its first builder VMI.
func startKubeVirtBuild(t *testing.T, g Gomega, name string) (ni *imagev1.NodeImage, digest, build, vmiName string) {
	ns := newNamespace(t)
	ni = newNodeImage(ns, name)
	ni.Spec.Builder.Backend = imagev1.BuilderBackendKubeVirt
	digest = digestOf(g, ni)
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	build = controller.BuildName(name, digest)
	vmiName = backend.BuilderName(build, 1)
	g.Eventually(func(g Gomega) { get(g, vmiKey(ns, vmiName)) }, testTimeout).Should(Succeed())
	return ni, digest, build, vmiName
}

func TestKubeVirtBuilderFailure(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ni, _, build, vmiName := startKubeVirtBuild(t, g, "kv-fail")
	ns := ni.Namespace
	playVMI(g, ns, vmiName, kubevirtv1.Failed, nil)
	g.Eventually(func(g Gomega) {
		b := get(g, buildKey(ns, build))
		g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/BuildFailed"))
		g.Expect(kstatusOf(g, get(g, ni))).To(Equal(status.FailedStatus))
	}, testTimeout).Should(Succeed())

	// Deleting the NodeImage removes the build, the VMI and the ConfigMap.
	g.Expect(k8s.Delete(ctx, get(g, ni))).To(Succeed())
	g.Eventually(func(g Gomega) {
		var l kubevirtv1.VirtualMachineInstanceList
		g.Expect(k8s.List(ctx, &l)).To(Succeed())
		for _, v := range l.Items {
			g.Expect(v.Namespace).NotTo(Equal(ns))
		}
		g.Expect(listBuilds(g, ns)).To(BeEmpty())
	}, testTimeout).Should(Succeed())
}

// A Secret named like the build's credentials copy that the build does not
// control is neither used nor deleted with the build: the VM never starts
// with it, and it outlives the NodeImage.
func TestKubeVirtForeignCredentialsSecretSurvives(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "kv-foreign")
	ni.Spec.Builder.Backend = imagev1.BuilderBackendKubeVirt
	build := controller.BuildName(ni.Name, digestOf(g, ni))
	foreign := &corev1.Secret{
		ObjectMeta: v1.ObjectMeta{Namespace: ns, Name: build + "-credentials"},
		Data:       map[string][]byte{"secretAccessKey": []byte("someone else's")},
	}
	g.Expect(k8s.Create(ctx, foreign)).To(Succeed())
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())

	g.Eventually(func(g Gomega) { get(g, buildKey(ns, build)) }, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) {
		var l kubevirtv1.VirtualMachineInstanceList
		g.Expect(k8s.List(ctx, &l)).To(Succeed())
		for _, v := range l.Items {
			g.Expect(v.Namespace).NotTo(Equal(ns), "a VM started with a Secret the build does not own")
		}
	}, 2*time.Second).Should(Succeed())

	g.Expect(k8s.Delete(ctx, get(g, ni))).To(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(listBuilds(g, ns)).To(BeEmpty()) }, testTimeout).Should(Succeed())
	s := get(g, foreign)
	g.Expect(s.Data).To(HaveKeyWithValue("secretAccessKey", []byte("someone else's")))
	g.Expect(s.OwnerReferences).To(BeEmpty())
}

// A VM that powers off without relaying a result does not get credit for an
// artifact published before it was created (another run's output).
func TestKubeVirtStaleArtifactIsNotTheVMsOutput(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ni, digest, build, vmiName := startKubeVirtBuild(t, g, "kv-stale")
	ns := ni.Namespace

	img := filepath.Join(t.TempDir(), "img.qcow2")
	g.Expect(os.WriteFile(img, []byte("an older run's image"), 0o644)).To(Succeed())
	a, err := (&storage.Publisher{Store: dirStore}).Publish(ctx, storage.PublishInput{
		Name: "kv-stale", SpecDigest: digest, ImagePath: img, Manifest: []byte(`{}`),
	})
	g.Expect(err).NotTo(HaveOccurred())
	old := time.Now().Add(-2 * time.Hour)
	g.Expect(os.Chtimes(filepath.Join(dirStore.Root(), filepath.FromSlash(a.ManifestKey)), old, old)).To(Succeed())

	playVMI(g, ns, vmiName, kubevirtv1.Succeeded, nil)
	g.Eventually(func(g Gomega) {
		b := get(g, buildKey(ns, build))
		g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/BuildFailed"))
		g.Expect(condition(b, imagev1.ReadyCondition).Message).To(ContainSubstring("not this VM's output"))
		g.Expect(get(g, ni).Status.Artifact).To(BeNil())
	}, testTimeout).Should(Succeed())
}
