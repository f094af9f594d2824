package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/storage"
)

var ctx = context.Background()

// startBuild creates ni and waits for its first build and builder Pod.
func startBuild(t *testing.T, g Gomega, ni *imagev1.NodeImage) (build string, podName string) {
	t.Helper()
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	build = controller.BuildName(ni.Name, digestOf(g, ni))
	podName = backend.BuilderName(build, 1)
	g.Eventually(func(g Gomega) {
		get(g, podKey(ni.Namespace, podName))
	}, testTimeout).Should(Succeed())
	return build, podName
}

func TestFirstBuild(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "first")
	digest := digestOf(g, ni)
	build, podName := startBuild(t, g, ni)

	// The build and its builder Pod carry the contract.
	b := get(g, buildKey(ns, build))
	g.Expect(b.Spec.Reason).To(Equal(imagev1.BuildReasonFirstBuild))
	g.Expect(b.Spec.SpecDigest).To(Equal(digest))
	g.Expect(metav1.IsControlledBy(b, get(g, ni))).To(BeTrue())
	p := get(g, podKey(ns, podName))
	g.Expect(metav1.IsControlledBy(p, b)).To(BeTrue())
	g.Expect(p.Labels).To(HaveKeyWithValue(backend.LabelBuild, build))
	g.Expect(p.Labels).To(HaveKeyWithValue(backend.LabelNodeImage, "first"))
	g.Expect(p.Spec.RestartPolicy).To(Equal(corev1.RestartPolicyNever))
	g.Expect(p.Spec.ServiceAccountName).To(Equal("nodeforge-builder"))
	g.Expect(*p.Spec.AutomountServiceAccountToken).To(BeFalse())
	g.Expect(*p.Spec.ActiveDeadlineSeconds).To(Equal(int64(45 * 60)))
	c := p.Spec.Containers[0]
	g.Expect(*c.SecurityContext.Privileged).To(BeTrue())
	g.Expect(c.Args).To(Equal([]string{"run", "--spec", "/etc/nodeforge/build/spec.json", "--result", "/dev/termination-log"}))
	g.Expect(c.TerminationMessagePath).To(Equal("/dev/termination-log"))
	g.Expect(toJSON(c.Env)).NotTo(ContainSubstring("s3-creds"))
	vols := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		vols[v.Name] = v
	}
	g.Expect(vols["kvm"].HostPath.Path).To(Equal("/dev/kvm"))
	g.Expect(*vols["kvm"].HostPath.Type).To(Equal(corev1.HostPathCharDev))
	g.Expect(vols["scratch"].EmptyDir.SizeLimit.String()).To(Equal("40Gi"))
	// Only the credential keys, projected one by one, reach the builder.
	g.Expect(vols["credentials"].Secret).To(BeNil(), "the credentials Secret is mounted whole")
	g.Expect(vols["credentials"].Projected).NotTo(BeNil())
	for _, src := range vols["credentials"].Projected.Sources {
		g.Expect(src.Secret.Name).To(Equal("s3-creds"))
		g.Expect(src.Secret.Items).To(HaveLen(1))
		g.Expect(storage.CredentialSecretKeys).To(ContainElement(src.Secret.Items[0].Key))
	}
	g.Expect(vols["spec"].ConfigMap.Name).To(Equal(build + "-spec"))
	g.Expect(p.Spec.Affinity.PodAntiAffinity).NotTo(BeNil())
	cm := &corev1.ConfigMap{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: build + "-spec"}, cm)).To(Succeed())
	g.Expect(cm.Data["spec.json"]).To(ContainSubstring(digest))
	g.Expect(cm.Data["spec.json"]).NotTo(ContainSubstring("sup3r-s3cret-value"))

	// Pending: InProgress, BuildPending.
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("False/BuildPending"))
		g.Expect(reasonOf(n, imagev1.ReconcilingCondition)).To(Equal("True/BuildPending"))
		g.Expect(kstatusOf(g, n)).To(Equal(status.InProgressStatus))
		g.Expect(n.Status.ObservedGeneration).To(BeZero())
		g.Expect(n.Status.CurrentBuild.Name).To(Equal(build))
	}, testTimeout).Should(Succeed())

	// Running with progress from the log tail.
	logs.set(ns, podName, "starting\n"+string(buildresult.ProgressLine(buildresult.Progress{Step: "rootfs", Percent: 35, Message: "installing packages"})))
	playPod(g, ns, podName, corev1.PodRunning, nil)
	g.Eventually(func(g Gomega) {
		b := get(g, buildKey(ns, build))
		g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/Building"))
		g.Expect(b.Status.Progress).To(Equal(&imagev1.Progress{Step: "rootfs", Percent: 35, Message: "installing packages"}))
		n := get(g, ni)
		g.Expect(n.Status.CurrentBuild.Progress).To(Equal(b.Status.Progress))
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("False/Building"))
	}, testTimeout).Should(Succeed())

	// Succeeded: Ready, Current, artifact mirrored, the package changes
	// from the image published before it in the build's status.
	res := succeeded(ni, digest)
	res.Changes = &buildresult.Changes{Previous: "sha256:" + strings.Repeat("1", 64), Upgraded: 2, Added: 1,
		Summary: "upgraded libc6 2.41-12 → 2.41-12+deb13u1, zlib1g 1:1.3-1 → 1:1.3-2; added jq 1.7.1-6"}
	playPod(g, ns, podName, corev1.PodSucceeded, res)
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
		g.Expect(condition(n, imagev1.ReconcilingCondition)).To(BeNil())
		g.Expect(condition(n, imagev1.StalledCondition)).To(BeNil())
		g.Expect(reasonOf(n, imagev1.ArtifactAvailableCondition)).To(Equal("True/Succeeded"))
		g.Expect(n.Status.ObservedGeneration).To(Equal(n.Generation))
		g.Expect(n.Status.Artifact).NotTo(BeNil())
		g.Expect(n.Status.Artifact.SpecDigest).To(Equal(digest))
		g.Expect(n.Status.Artifact.Revision).To(BeEquivalentTo(1))
		g.Expect(n.Status.Artifact.SBOMURL).To(Equal(strings.TrimSuffix(res.Artifact.ManifestURL, "manifest.json") + ni.Name + ".spdx.json"))
		g.Expect(n.Status.Artifact.ProvenanceURL).To(Equal(strings.TrimSuffix(res.Artifact.ManifestURL, "manifest.json") + ni.Name + ".provenance.json"))
		g.Expect(n.Status.Artifact.SignatureURL).To(Equal(strings.TrimSuffix(res.Artifact.ManifestURL, "manifest.json") + ni.Name + ".qcow2.sig"))
		g.Expect(n.Status.CurrentBuild).To(BeNil())
		g.Expect(kstatusOf(g, n)).To(Equal(status.CurrentStatus))
		b := get(g, buildKey(ns, build))
		for _, c := range []string{imagev1.BuiltCondition, imagev1.VerifiedCondition, imagev1.PublishedCondition, imagev1.ReadyCondition} {
			g.Expect(reasonOf(b, c)).To(Equal("True/Succeeded"), c)
		}
		g.Expect(b.Status.Verification.Accelerator).To(Equal("kvm"))
		g.Expect(b.Status.PackageChanges).To(Equal(&imagev1.PackageChanges{PreviousSpecDigest: res.Changes.Previous,
			Upgraded: 2, Added: 1, Summary: res.Changes.Summary}))
		g.Expect(kstatusOf(g, b)).To(Equal(status.CurrentStatus))
	}, testTimeout).Should(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(eventReasons(g, ns, build)).To(ContainElements("BuildPending", "Building", "Succeeded"))
		g.Expect(eventReasons(g, ns, "first")).To(ContainElements("BuildCreated", "Succeeded"))
	}, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(HaveLen(1))
	// No secret in any status or event.
	g.Expect(toJSON(get(g, ni).Status) + toJSON(get(g, buildKey(ns, build)).Status)).NotTo(ContainSubstring("sup3r"))
}

func TestCacheHitStartsNoBuild(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "cached")
	ni.Spec.Packages = []string{"htop"}
	digest := digestOf(g, ni)
	img := filepath.Join(t.TempDir(), "cached.qcow2")
	g.Expect(os.WriteFile(img, []byte("qcow2 image bytes"), 0o644)).To(Succeed())
	_, err := (&storage.Publisher{Store: dirStore}).Publish(ctx, storage.PublishInput{
		Name: "cached", SpecDigest: digest, ImagePath: img, Manifest: []byte(`{"name":"cached"}`),
	})
	g.Expect(err).NotTo(HaveOccurred())

	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/ArtifactFound"))
		g.Expect(n.Status.Artifact.SpecDigest).To(Equal(digest))
		g.Expect(n.Status.Artifact.Size).To(Equal(int64(len("qcow2 image bytes"))))
		g.Expect(n.Status.ObservedGeneration).To(Equal(n.Generation))
		g.Expect(kstatusOf(g, n)).To(Equal(status.CurrentStatus))
	}, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) { g.Expect(listBuilds(g, ns)).To(BeEmpty()) }, time.Second).Should(Succeed())
}

func TestSpecChangeSupersedesRunningBuild(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "change")
	oldBuild, oldPod := startBuild(t, g, ni)
	playPod(g, ns, oldPod, corev1.PodRunning, nil)

	n := update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) { n.Spec.Packages = append(n.Spec.Packages, "curl") })
	newDigest := digestOf(g, n)
	newBuild := controller.BuildName("change", newDigest)

	g.Eventually(func(g Gomega) {
		b := get(g, buildKey(ns, newBuild))
		g.Expect(b.Spec.Reason).To(Equal(imagev1.BuildReasonSpecChanged))
		old := get(g, buildKey(ns, oldBuild))
		g.Expect(reasonOf(old, imagev1.ReadyCondition)).To(Equal("False/Interrupted"))
		g.Expect(kstatusOf(g, old)).To(Equal(status.FailedStatus))
		err := k8s.Get(ctx, client.ObjectKeyFromObject(podKey(ns, oldPod)), podKey(ns, oldPod))
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "old builder Pod deleted")
		n := get(g, ni)
		g.Expect(n.Status.CurrentBuild.Name).To(Equal(newBuild))
		g.Expect(n.Status.SpecDigest).To(Equal(newDigest))
		g.Expect(kstatusOf(g, n)).To(Equal(status.InProgressStatus))
	}, testTimeout).Should(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(eventReasons(g, ns, "change")).To(ContainElement("Interrupted")) }, testTimeout).Should(Succeed())
}

func TestManualRebuild(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "rebuild")
	digest := digestOf(g, ni)
	build, podName := startBuild(t, g, ni)
	playPod(g, ns, podName, corev1.PodSucceeded, succeeded(ni, digest))
	g.Eventually(func(g Gomega) {
		g.Expect(reasonOf(get(g, ni), imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
	}, testTimeout).Should(Succeed())

	update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) {
		n.Annotations = map[string]string{imagev1.RebuildAnnotation: "2026-01-02T03:04:05Z"}
	})
	var rebuild imagev1.NodeImageBuild
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(n.Status.LastHandledRebuildAt).To(Equal("2026-01-02T03:04:05Z"))
		builds := listBuilds(g, ns)
		g.Expect(builds).To(HaveLen(2))
		for _, b := range builds {
			if b.Name != build {
				rebuild = b
			}
		}
		g.Expect(rebuild.Name).To(HavePrefix(build + "-r"))
		g.Expect(rebuild.Spec.Reason).To(Equal(imagev1.BuildReasonRebuildRequested))
		g.Expect(rebuild.Spec.RebuildRequestedAt).To(Equal("2026-01-02T03:04:05Z"))
		g.Expect(reasonOf(n, imagev1.ReconcilingCondition)).To(Equal("True/BuildPending"))
	}, testTimeout).Should(Succeed())

	rebuildPod := backend.BuilderName(rebuild.Name, 1)
	g.Eventually(func(g Gomega) { get(g, podKey(ns, rebuildPod)) }, testTimeout).Should(Succeed())
	res := succeeded(ni, digest)
	res.Artifact.SHA256 = strings.Repeat("b", 64)
	playPod(g, ns, rebuildPod, corev1.PodSucceeded, res)
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
		g.Expect(n.Status.Artifact.SHA256).To(Equal(strings.Repeat("b", 64)))
	}, testTimeout).Should(Succeed())
	// The handled request does not start more builds.
	g.Consistently(func(g Gomega) { g.Expect(listBuilds(g, ns)).To(HaveLen(2)) }, time.Second).Should(Succeed())
}

func TestFailureRetriesThenStalls(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "flaky")
	ni.Spec.Builder.Retries = ptr.To[int32](1)
	build, pod1 := startBuild(t, g, ni)

	logs.set(ns, pod1, "boot test failed\nkubelet is not enabled\n")
	playPod(g, ns, pod1, corev1.PodFailed, failed(imagev1.VerificationFailedReason, "verify", "required check failed"))
	pod2 := backend.BuilderName(build, 2)
	g.Eventually(func(g Gomega) {
		get(g, podKey(ns, pod2))
		b := get(g, buildKey(ns, build))
		g.Expect(b.Status.Attempts).To(Equal(int32(2)))
		g.Expect(kstatusOf(g, b)).To(Equal(status.InProgressStatus))
	}, testTimeout).Should(Succeed())
	g.Eventually(func(g Gomega) { g.Expect(eventReasons(g, ns, build)).To(ContainElement("Retrying")) }, testTimeout).Should(Succeed())

	playPod(g, ns, pod2, corev1.PodFailed, failed(imagev1.VerificationFailedReason, "verify", "required check failed again"))
	g.Eventually(func(g Gomega) {
		b := get(g, buildKey(ns, build))
		g.Expect(reasonOf(b, imagev1.StalledCondition)).To(Equal("True/RetriesExhausted"))
		g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/VerificationFailed"))
		g.Expect(reasonOf(b, imagev1.BuiltCondition)).To(Equal("True/Succeeded"))
		g.Expect(reasonOf(b, imagev1.VerifiedCondition)).To(Equal("False/VerificationFailed"))
		g.Expect(b.Status.Verification.Failed).To(Equal(int32(1)))
		g.Expect(kstatusOf(g, b)).To(Equal(status.FailedStatus))
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.StalledCondition)).To(Equal("True/RetriesExhausted"))
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("False/RetriesExhausted"))
		g.Expect(n.Status.LastFailure.Reason).To(Equal(imagev1.VerificationFailedReason))
		g.Expect(condition(n, imagev1.ReconcilingCondition)).To(BeNil())
		g.Expect(n.Status.LastFailure.Build).To(Equal(build))
		g.Expect(n.Status.LastFailure.Message).To(ContainSubstring("kubelet-enabled"))
		g.Expect(n.Status.ObservedGeneration).To(Equal(n.Generation))
		g.Expect(kstatusOf(g, n)).To(Equal(status.FailedStatus))
	}, testTimeout).Should(Succeed())
	// No third attempt.
	g.Consistently(func(g Gomega) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(podKey(ns, backend.BuilderName(build, 3))), podKey(ns, "x"))
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
	}, time.Second).Should(Succeed())
}

func TestDeadlineWhilePending(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "stuck")
	ni.Spec.Builder.Timeout = &metav1.Duration{Duration: 2 * time.Second}
	build, podName := startBuild(t, g, ni)
	// The Pod stays Pending (unschedulable, no kubelet): the controller
	// enforces the deadline itself.
	g.Eventually(func(g Gomega) {
		b := get(g, buildKey(ns, build))
		g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/DeadlineExceeded"))
		g.Expect(reasonOf(b, imagev1.StalledCondition)).To(Equal("True/DeadlineExceeded"))
		err := k8s.Get(ctx, client.ObjectKeyFromObject(podKey(ns, podName)), podKey(ns, podName))
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "pending builder Pod deleted")
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("False/DeadlineExceeded"))
		g.Expect(kstatusOf(g, n)).To(Equal(status.FailedStatus))
	}, testTimeout).Should(Succeed())
}

func TestHistoryPruning(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "history")
	ni.Spec.SuccessfulBuildsHistoryLimit = ptr.To[int32](1)
	first, pod1 := startBuild(t, g, ni)
	playPod(g, ns, pod1, corev1.PodSucceeded, succeeded(ni, digestOf(g, ni)))
	g.Eventually(func(g Gomega) {
		g.Expect(reasonOf(get(g, ni), imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
	}, testTimeout).Should(Succeed())

	n := update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) { n.Spec.Packages = []string{"vim", "jq"} })
	second := controller.BuildName("history", digestOf(g, n))
	pod2 := backend.BuilderName(second, 1)
	g.Eventually(func(g Gomega) { get(g, podKey(ns, pod2)) }, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(HaveLen(2), "the old build is kept while the new one runs")
	playPod(g, ns, pod2, corev1.PodSucceeded, succeeded(n, digestOf(g, n)))
	g.Eventually(func(g Gomega) {
		builds := listBuilds(g, ns)
		g.Expect(builds).To(HaveLen(1))
		g.Expect(builds[0].Name).To(Equal(second))
		g.Expect(get(g, ni).Status.Artifact.SpecDigest).To(Equal(digestOf(g, n)))
		// The pruned build's Pod and ConfigMap went with it.
		for _, p := range listPods(g, ns) {
			g.Expect(p.Labels[backend.LabelBuild]).NotTo(Equal(first))
		}
		err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: backend.SpecConfigMapName(first)}, &corev1.ConfigMap{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "spec ConfigMap of the pruned build deleted")
	}, testTimeout).Should(Succeed())
}

func TestSuspend(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "paused")
	ni.Spec.Suspend = true
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/Suspended"))
		// Suspended is settled, not in progress: GitOps tools wait on it.
		g.Expect(n.Status.ObservedGeneration).To(Equal(n.Generation))
		g.Expect(kstatusOf(g, n)).To(Equal(status.CurrentStatus))
	}, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) { g.Expect(listBuilds(g, ns)).To(BeEmpty()) }, time.Second).Should(Succeed())

	update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) { n.Spec.Suspend = false })
	g.Eventually(func(g Gomega) { g.Expect(listBuilds(g, ns)).To(HaveLen(1)) }, testTimeout).Should(Succeed())
}

// A build running when its NodeImage is suspended finishes on its own, and
// its outcome still reaches the NodeImage's status.
func TestSuspendKeepsTheRunningBuildsResult(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "suspended-mid-build")
	digest := digestOf(g, ni)
	build, podName := startBuild(t, g, ni)
	playPod(g, ns, podName, corev1.PodRunning, nil)
	update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) { n.Spec.Suspend = true })
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(n.Status.CurrentBuild).NotTo(BeNil())
		g.Expect(n.Status.CurrentBuild.Name).To(Equal(build))
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("False/Building"))
		g.Expect(kstatusOf(g, n)).To(Equal(status.InProgressStatus), "a build is still running")
	}, testTimeout).Should(Succeed())

	playPod(g, ns, podName, corev1.PodSucceeded, succeeded(ni, digest))
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(n.Status.Artifact).NotTo(BeNil())
		g.Expect(n.Status.Artifact.SpecDigest).To(Equal(digest))
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
		g.Expect(kstatusOf(g, n)).To(Equal(status.CurrentStatus))
	}, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(HaveLen(1))
}

func TestDeletionPolicies(t *testing.T) {
	needEnv(t)
	for _, policy := range []imagev1.DeletionPolicy{imagev1.DeletionPolicyRetain, imagev1.DeletionPolicyDelete} {
		t.Run(string(policy), func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			name := "del-" + strings.ToLower(string(policy))
			ni := newNodeImage(ns, name)
			ni.Spec.DeletionPolicy = policy
			img := filepath.Join(t.TempDir(), "img.qcow2")
			g.Expect(os.WriteFile(img, []byte("image"), 0o644)).To(Succeed())
			pub := &storage.Publisher{Store: dirStore}
			// An older published digest, and a build that runs for the current one.
			_, err := pub.Publish(ctx, storage.PublishInput{Name: name, SpecDigest: "sha256:" + strings.Repeat("1", 64), ImagePath: img, Manifest: []byte(`{}`)})
			g.Expect(err).NotTo(HaveOccurred())
			build, podName := startBuild(t, g, ni)
			playPod(g, ns, podName, corev1.PodRunning, nil)

			g.Expect(k8s.Delete(ctx, get(g, ni))).To(Succeed())
			g.Eventually(func(g Gomega) {
				err := k8s.Get(ctx, client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
				g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
			}, testTimeout).Should(Succeed())
			g.Expect(listBuilds(g, ns)).To(BeEmpty())
			g.Expect(listPods(g, ns)).To(BeEmpty())
			err = k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: build + "-spec"}, &corev1.ConfigMap{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
			published, err := pub.Published(ctx, name)
			g.Expect(err).NotTo(HaveOccurred())
			if policy == imagev1.DeletionPolicyDelete {
				g.Expect(published).To(BeEmpty())
			} else {
				g.Expect(published).To(HaveLen(1))
			}
		})
	}
}

func TestManagerRestartAdoptsRunningBuild(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "restart")
	build, podName := startBuild(t, g, ni)
	playPod(g, ns, podName, corev1.PodRunning, nil)
	g.Eventually(func(g Gomega) {
		g.Expect(reasonOf(get(g, buildKey(ns, build)), imagev1.ReadyCondition)).To(Equal("False/Building"))
	}, testTimeout).Should(Succeed())

	managerMu.Lock()
	stop := stopManager
	managerMu.Unlock()
	stop()
	_, err := startManager()
	g.Expect(err).NotTo(HaveOccurred())

	g.Consistently(func(g Gomega) {
		g.Expect(listBuilds(g, ns)).To(HaveLen(1))
		g.Expect(listPods(g, ns)).To(HaveLen(1))
	}, 2*time.Second).Should(Succeed())
	playPod(g, ns, podName, corev1.PodSucceeded, succeeded(ni, digestOf(g, ni)))
	g.Eventually(func(g Gomega) {
		g.Expect(reasonOf(get(g, ni), imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
	}, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(HaveLen(1))
}

// A NodeImage stalled on a missing ConfigMap recovers when the ConfigMap is
// created, and editing it (a content change) starts a build of the new
// digest.
func TestConfigMapReferenceWatched(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni := newNodeImage(ns, "cmref")
	ni.Spec.Files = []imagev1.FileSpec{{Path: "/etc/motd", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "motd"}, Key: "motd"}}}
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(reasonOf(get(g, ni), imagev1.StalledCondition)).To(Equal("True/InvalidSpec"))
	}, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(BeEmpty())

	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "motd"}, Data: map[string]string{"motd": "hello"}}
	g.Expect(k8s.Create(ctx, cm)).To(Succeed())
	var first string
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(condition(n, imagev1.StalledCondition)).To(BeNil())
		g.Expect(n.Status.CurrentBuild).NotTo(BeNil())
		first = n.Status.CurrentBuild.Name
	}, testTimeout).Should(Succeed())

	update(g, cm, func(cm *corev1.ConfigMap) { cm.Data["motd"] = "hello again" })
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(n.Status.CurrentBuild).NotTo(BeNil())
		g.Expect(n.Status.CurrentBuild.Name).NotTo(Equal(first))
		g.Expect(listBuilds(g, ns)).To(HaveLen(2))
	}, testTimeout).Should(Succeed())
}

// A ConfigMap whose content the NodeImage cannot check (it only names the
// key) but the build's schema refuses (a file over 256 KiB) stalls the
// NodeImage with the field named, instead of failing every reconcile; a
// fixed ConfigMap starts the build.
func TestConfigMapContentRejectedByTheBuildStalls(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "big"},
		Data: map[string]string{"file": strings.Repeat("x", 300<<10)}}
	g.Expect(k8s.Create(ctx, cm)).To(Succeed())
	ni := newNodeImage(ns, "bigfile")
	ni.Spec.Files = []imagev1.FileSpec{{Path: "/etc/big", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "big"}, Key: "file"}}}
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.StalledCondition)).To(Equal("True/InvalidSpec"))
		g.Expect(condition(n, imagev1.StalledCondition).Message).To(ContainSubstring("spec.image.files[0].content"))
	}, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(BeEmpty())

	update(g, cm, func(cm *corev1.ConfigMap) { cm.Data["file"] = "small" })
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(condition(n, imagev1.StalledCondition)).To(BeNil())
		g.Expect(listBuilds(g, ns)).To(HaveLen(1))
	}, testTimeout).Should(Succeed())
}

// A NodeImage deleted and created again gets a build of the same name
// while the earlier build's Pod is still terminating (held here by a
// finalizer, as by a kubelet that has not confirmed). The new build must
// neither adopt nor delete that Pod: it waits for the name, then starts
// its own builder. With a short timeout, a name that never frees ends the
// build DeadlineExceeded instead of a reconcile error forever.
func TestRecreatedBuildWaitsForTerminatingPod(t *testing.T) {
	needEnv(t)
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		release bool
	}{
		{name: "name frees", timeout: 45 * time.Minute, release: true},
		{name: "name never frees", timeout: 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			ni := newNodeImage(ns, "again")
			ni.Spec.Builder.Timeout = &metav1.Duration{Duration: tc.timeout}
			build, podName := startBuild(t, g, ni)
			const hold = "test.nodeforge.dev/hold"
			update(g, podKey(ns, podName), func(p *corev1.Pod) { p.Finalizers = append(p.Finalizers, hold) })
			releasePod := func() {
				pod := podKey(ns, podName)
				if err := k8s.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
					return
				}
				update(g, pod, func(p *corev1.Pod) {
					p.Finalizers = slices.DeleteFunc(p.Finalizers, func(f string) bool { return f == hold })
				})
			}
			t.Cleanup(releasePod)
			old := get(g, podKey(ns, podName))

			g.Expect(k8s.Delete(ctx, get(g, ni))).To(Succeed())
			g.Eventually(func(g Gomega) {
				err := k8s.Get(ctx, client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
				g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
				g.Expect(listBuilds(g, ns)).To(BeEmpty())
			}, testTimeout).Should(Succeed())
			g.Expect(get(g, podKey(ns, podName)).DeletionTimestamp).NotTo(BeNil(), "the old Pod is terminating")

			again := newNodeImage(ns, "again")
			again.Spec.Builder.Timeout = &metav1.Duration{Duration: tc.timeout}
			g.Expect(k8s.Create(ctx, again)).To(Succeed())
			g.Eventually(func(g Gomega) {
				b := get(g, buildKey(ns, build))
				c := condition(b, imagev1.ReadyCondition)
				g.Expect(c).NotTo(BeNil())
				g.Expect(c.Message).To(ContainSubstring("Pod " + podName + " of an earlier build of the same name is still terminating"))
			}, testTimeout).Should(Succeed())
			b := get(g, buildKey(ns, build))
			g.Expect(b.Status.Attempts).To(BeZero(), "no attempt starts on someone else's Pod")
			p := get(g, podKey(ns, podName))
			g.Expect(p.UID).To(Equal(old.UID))
			g.Expect(metav1.IsControlledBy(p, b)).To(BeFalse(), "the old Pod is not adopted")

			if !tc.release {
				g.Eventually(func(g Gomega) {
					b := get(g, buildKey(ns, build))
					g.Expect(reasonOf(b, imagev1.ReadyCondition)).To(Equal("False/DeadlineExceeded"))
					g.Expect(reasonOf(b, imagev1.StalledCondition)).To(Equal("True/DeadlineExceeded"))
					g.Expect(condition(b, imagev1.ReadyCondition).Message).To(ContainSubstring("could not start within 3s"))
				}, testTimeout).Should(Succeed())
				g.Expect(get(g, podKey(ns, podName)).UID).To(Equal(old.UID), "the old Pod is not deleted by the new build")
				return
			}
			releasePod()
			g.Eventually(func(g Gomega) {
				b := get(g, buildKey(ns, build))
				p := get(g, podKey(ns, podName))
				g.Expect(p.UID).NotTo(Equal(old.UID))
				g.Expect(metav1.IsControlledBy(p, b)).To(BeTrue(), "the new build runs its own builder")
				g.Expect(b.Status.Attempts).To(Equal(int32(1)))
			}, testTimeout).Should(Succeed())
		})
	}
}
