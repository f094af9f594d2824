package controller_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// The update check tests publish an artifact first (a cache hit, no build),
// then play the check Pods the manager starts, as the kubelet would.

const updatesInterval = 10 * time.Minute

// publishedWithUpdates creates a NodeImage with spec.updates whose
// artifact is already published, and waits for it to settle on it.
func publishedWithUpdates(t *testing.T, g Gomega, ns, name string, rebuild *bool) (*imagev1.NodeImage, string) {
	t.Helper()
	ni := newNodeImage(ns, name)
	ni.Spec.Packages = []string{"htop", name}
	ni.Spec.Updates = &imagev1.UpdatesSpec{Interval: metav1.Duration{Duration: updatesInterval}, Rebuild: rebuild}
	digest := digestOf(g, ni)
	img := filepath.Join(t.TempDir(), name+".qcow2")
	g.Expect(os.WriteFile(img, []byte("qcow2 image bytes"), 0o644)).To(Succeed())
	_, err := (&storage.Publisher{Store: dirStore}).Publish(ctx, storage.PublishInput{
		Name: name, SpecDigest: digest, ImagePath: img,
		Manifest: []byte(`{"name":"` + name + `","packages":[{"name":"libc6","version":"2.41-12","architecture":"amd64"}]}`),
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(k8s.Create(ctx, ni)).To(Succeed())
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/ArtifactFound"))
	}, testTimeout).Should(Succeed())
	return ni, digest
}

// updateCheckPods lists the NodeImage's update check Pods.
func updateCheckPods(g Gomega, ns, name string) []corev1.Pod {
	var l corev1.PodList
	g.Expect(k8s.List(ctx, &l, client.InNamespace(ns), backend.UpdateCheckSelector,
		client.MatchingLabels{backend.LabelNodeImage: name})).To(Succeed())
	return l.Items
}

// waitForCheckPod waits for exactly one update check Pod and returns it.
func waitForCheckPod(g Gomega, ns, name string) *corev1.Pod {
	var p *corev1.Pod
	g.Eventually(func(g Gomega) {
		pods := updateCheckPods(g, ns, name)
		g.Expect(pods).To(HaveLen(1))
		g.Expect(pods[0].DeletionTimestamp).To(BeNil())
		p = &pods[0]
	}, testTimeout).Should(Succeed())
	return p
}

// playCheck ends an update check Pod with a termination message.
func playCheck(g Gomega, ns, name string, phase corev1.PodPhase, msg string) {
	p := get(g, podKey(ns, name))
	now := metav1.Now()
	code := int32(0)
	if phase == corev1.PodFailed {
		code = 1
	}
	p.Status.Phase = phase
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "builder", Image: p.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Message: msg, StartedAt: now, FinishedAt: now}}}}
	g.Expect(k8s.Status().Update(ctx, p)).To(Succeed())
}

func updatesFound(digest string) string {
	r := &buildresult.UpdatesResult{Outcome: buildresult.OutcomeSucceeded, SpecDigest: digest, Checked: 245, Upgrades: 2, Unavailable: 1,
		Digest:  "sha256:" + strings.Repeat("5e", 32),
		Changes: []string{"libc6 2.41-12 → 2.41-12+deb13u1", "openssl 3.5.1-1 → 3.5.1-1+deb13u1"}}
	b, err := r.Encode()
	if err != nil {
		panic(err)
	}
	return string(b)
}

func baseUpdatedBuilds(g Gomega, ns string) []string {
	var names []string
	for _, b := range listBuilds(g, ns) {
		if b.Spec.Reason == imagev1.BuildReasonBaseUpdated {
			names = append(names, b.Name)
		}
	}
	return names
}

// checkAgain makes the next check due now, as if the interval had passed
// since the last one, and wakes the NodeImage.
func checkAgain(g Gomega, ni *imagev1.NodeImage) {
	// Let the manager's cache see the last check's Pod go first: a
	// reconcile that still sees it records it again, with its own time,
	// over the rewound one (the same status it wrote, in real life).
	g.Consistently(func(g Gomega) {
		g.Expect(updateCheckPods(g, ni.Namespace, ni.Name)).To(BeEmpty())
	}, time.Second).Should(Succeed())
	g.Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n := &imagev1.NodeImage{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(ni), n); err != nil {
			return err
		}
		n.Status.Updates.LastCheckTime = &metav1.Time{Time: n.Status.Updates.LastCheckTime.Add(-updatesInterval - time.Second)}
		return k8s.Status().Update(ctx, n)
	})).To(Succeed())
	update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) {
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		n.Annotations["test.nodeforge.dev/wake"] = time.Now().String()
	})
}

// A check that finds newer versions starts exactly one BaseUpdated build,
// named for the digest and the updates; finding the same updates again
// starts nothing.
func TestUpdateCheckStartsOneBaseUpdatedBuild(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni, digest := publishedWithUpdates(t, g, ns, "upd-found", nil)

	// The first check is due at once: a Pod made like a builder, owned by
	// the NodeImage, with its spec in a ConfigMap owned by the Pod.
	p := waitForCheckPod(g, ns, "upd-found")
	g.Expect(p.Name).To(Equal(controller.UpdateCheckName("upd-found", digest, time.Time{})))
	g.Expect(metav1.IsControlledBy(p, get(g, ni))).To(BeTrue())
	g.Expect(p.Annotations).To(HaveKeyWithValue(controller.CheckedDigestAnnotation, digest))
	g.Expect(p.Labels).NotTo(HaveKey(backend.LabelBuild))
	c := p.Spec.Containers[0]
	g.Expect(c.Image).To(Equal("nodeforge-builder:test"))
	g.Expect(c.Args).To(Equal([]string{"run", "--check-updates", "--spec", buildresult.SpecPath, "--result", buildresult.ResultPath}))
	g.Expect(toJSON(p.Spec)).NotTo(ContainSubstring("sup3r"))
	cm := &corev1.ConfigMap{}
	g.Eventually(func() error {
		return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: p.Name + "-spec"}, cm)
	}, testTimeout).Should(Succeed())
	g.Expect(metav1.IsControlledBy(cm, p)).To(BeTrue())
	g.Expect(cm.Data[buildresult.SpecFile]).To(ContainSubstring(digest))
	g.Expect(listBuilds(g, ns)).To(BeEmpty(), "a check is no build")

	playCheck(g, ns, p.Name, corev1.PodSucceeded, updatesFound(digest))
	want := controller.UpdateBuildName("upd-found", digest, "sha256:"+strings.Repeat("5e", 32))
	g.Eventually(func(g Gomega) {
		g.Expect(baseUpdatedBuilds(g, ns)).To(Equal([]string{want}))
		n := get(g, ni)
		u := n.Status.Updates
		g.Expect(u).NotTo(BeNil())
		g.Expect(u.Result).To(Equal(imagev1.UpdatesAvailable))
		g.Expect(u.SpecDigest).To(Equal(digest))
		g.Expect(u.Checked).To(Equal(int32(245)))
		g.Expect(u.Upgrades).To(Equal(int32(2)))
		g.Expect(u.Unavailable).To(Equal(int32(1)))
		g.Expect(u.Digest).To(Equal("sha256:" + strings.Repeat("5e", 32)))
		g.Expect(u.Summary).To(Equal("2 of 245 packages have newer versions: libc6 2.41-12 → 2.41-12+deb13u1, openssl 3.5.1-1 → 3.5.1-1+deb13u1; 1 no longer offered by any repository"))
		g.Expect(u.Build).To(Equal(want))
		g.Expect(u.LastCheckTime).NotTo(BeNil())
		g.Expect(n.Status.CurrentBuild).NotTo(BeNil())
		g.Expect(n.Status.CurrentBuild.Name).To(Equal(want))
		g.Expect(updateCheckPods(g, ns, "upd-found")).To(BeEmpty(), "the finished check Pod is deleted")
	}, testTimeout).Should(Succeed())
	b := get(g, buildKey(ns, want))
	g.Expect(b.Spec.SpecDigest).To(Equal(digest))
	g.Expect(metav1.IsControlledBy(b, get(g, ni))).To(BeTrue())
	g.Eventually(func(g Gomega) {
		g.Expect(eventReasons(g, ns, "upd-found")).To(ContainElements("UpdatesAvailable", "BuildCreated"))
	}, testTimeout).Should(Succeed())

	// No check runs while the build does.
	g.Consistently(func(g Gomega) { g.Expect(updateCheckPods(g, ns, "upd-found")).To(BeEmpty()) }, time.Second).Should(Succeed())

	// The build publishes; the NodeImage settles on its artifact.
	builder := backend.BuilderName(want, 1)
	g.Eventually(func() error {
		return k8s.Get(ctx, client.ObjectKeyFromObject(podKey(ns, builder)), podKey(ns, builder))
	}, testTimeout).Should(Succeed())
	playPod(g, ns, builder, corev1.PodSucceeded, succeeded(ni, digest))
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
		g.Expect(n.Status.CurrentBuild).To(BeNil())
	}, testTimeout).Should(Succeed())
	// Not due yet: nothing runs.
	g.Consistently(func(g Gomega) { g.Expect(updateCheckPods(g, ns, "upd-found")).To(BeEmpty()) }, time.Second).Should(Succeed())

	// The interval passes; the next check finds the same updates: no
	// second build.
	checkAgain(g, ni)
	p2 := waitForCheckPod(g, ns, "upd-found")
	g.Expect(p2.Name).NotTo(Equal(p.Name))
	playCheck(g, ns, p2.Name, corev1.PodSucceeded, updatesFound(digest))
	g.Eventually(func(g Gomega) {
		g.Expect(updateCheckPods(g, ns, "upd-found")).To(BeEmpty())
		u := get(g, ni).Status.Updates
		g.Expect(u.LastCheckTime.Time).To(BeTemporally(">", time.Now().Add(-time.Minute)))
		g.Expect(u.Build).To(Equal(want))
	}, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) {
		g.Expect(baseUpdatedBuilds(g, ns)).To(Equal([]string{want}))
		g.Expect(listBuilds(g, ns)).To(HaveLen(1))
	}, 2*time.Second).Should(Succeed())
}

// A check that finds nothing new records UpToDate and starts nothing;
// with rebuild false, updates are reported and nothing is built.
func TestUpdateCheckUpToDateAndReportOnly(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni, digest := publishedWithUpdates(t, g, ns, "upd-current", nil)
	p := waitForCheckPod(g, ns, "upd-current")
	current, err := (&buildresult.UpdatesResult{Outcome: buildresult.OutcomeSucceeded, SpecDigest: digest, Checked: 245}).Encode()
	g.Expect(err).NotTo(HaveOccurred())
	playCheck(g, ns, p.Name, corev1.PodSucceeded, string(current))
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(n.Status.Updates).NotTo(BeNil())
		g.Expect(n.Status.Updates.Result).To(Equal(imagev1.UpdatesUpToDate))
		g.Expect(n.Status.Updates.Summary).To(Equal("all 245 packages are current"))
		g.Expect(n.Status.Updates.Build).To(BeEmpty())
		g.Expect(updateCheckPods(g, ns, "upd-current")).To(BeEmpty())
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/ArtifactFound"))
	}, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) {
		g.Expect(listBuilds(g, ns)).To(BeEmpty())
		g.Expect(updateCheckPods(g, ns, "upd-current")).To(BeEmpty(), "the next check waits for the interval")
	}, 2*time.Second).Should(Succeed())

	// spec.updates is not image content: changing it changes no digest and
	// builds nothing.
	update(g, ni.DeepCopy(), func(n *imagev1.NodeImage) { n.Spec.Updates.Interval.Duration = 2 * updatesInterval })
	g.Eventually(func(g Gomega) {
		n := get(g, ni)
		g.Expect(n.Status.ObservedGeneration).To(Equal(n.Generation))
		g.Expect(n.Status.SpecDigest).To(Equal(digest))
		g.Expect(reasonOf(n, imagev1.ReadyCondition)).To(Equal("True/ArtifactFound"))
	}, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) { g.Expect(listBuilds(g, ns)).To(BeEmpty()) }, time.Second).Should(Succeed())

	ns2 := newNamespace(t)
	ro, digest2 := publishedWithUpdates(t, g, ns2, "upd-report", ptr.To(false))
	p = waitForCheckPod(g, ns2, "upd-report")
	playCheck(g, ns2, p.Name, corev1.PodSucceeded, updatesFound(digest2))
	g.Eventually(func(g Gomega) {
		u := get(g, ro).Status.Updates
		g.Expect(u).NotTo(BeNil())
		g.Expect(u.Result).To(Equal(imagev1.UpdatesAvailable))
		g.Expect(u.Upgrades).To(Equal(int32(2)))
		g.Expect(u.Build).To(BeEmpty())
	}, testTimeout).Should(Succeed())
	g.Consistently(func(g Gomega) { g.Expect(listBuilds(g, ns2)).To(BeEmpty()) }, 2*time.Second).Should(Succeed())
}

// A check Pod that fails without a result is a failed check: reported,
// nothing built, tried again at the next interval. Deleting the NodeImage
// while a check runs deletes the check and does not wait for it.
func TestUpdateCheckFailureAndDeletion(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	ns := newNamespace(t)
	ni, _ := publishedWithUpdates(t, g, ns, "upd-fail", nil)
	p := waitForCheckPod(g, ns, "upd-fail")
	playCheck(g, ns, p.Name, corev1.PodFailed, "Error: exec format error")
	g.Eventually(func(g Gomega) {
		u := get(g, ni).Status.Updates
		g.Expect(u).NotTo(BeNil())
		g.Expect(u.Result).To(Equal(imagev1.UpdatesCheckFailed))
		g.Expect(u.Message).To(ContainSubstring("update check Pod " + p.Name + " ended Failed"))
		g.Expect(u.Message).To(ContainSubstring("exit code 1"))
		g.Expect(updateCheckPods(g, ns, "upd-fail")).To(BeEmpty())
		g.Expect(eventReasons(g, ns, "upd-fail")).To(ContainElement("UpdateCheckFailed"))
	}, testTimeout).Should(Succeed())
	g.Expect(listBuilds(g, ns)).To(BeEmpty())
	g.Expect(toJSON(get(g, ni).Status)).NotTo(ContainSubstring("sup3r"))

	// A failed result written by the check is shown as it is.
	checkAgain(g, ni)
	p = waitForCheckPod(g, ns, "upd-fail")
	msg, err := (&buildresult.UpdatesResult{Outcome: buildresult.OutcomeFailed,
		Message: "resolving the image's packages: E: The repository does not have a Release file"}).Encode()
	g.Expect(err).NotTo(HaveOccurred())
	playCheck(g, ns, p.Name, corev1.PodFailed, string(msg))
	g.Eventually(func(g Gomega) {
		u := get(g, ni).Status.Updates
		g.Expect(u.Message).To(Equal("resolving the image's packages: E: The repository does not have a Release file"))
	}, testTimeout).Should(Succeed())

	// Deleting the NodeImage with a check running.
	checkAgain(g, ni)
	p = waitForCheckPod(g, ns, "upd-fail")
	g.Expect(k8s.Delete(ctx, get(g, ni))).To(Succeed())
	g.Eventually(func(g Gomega) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "NodeImage gone")
		err = k8s.Get(ctx, client.ObjectKeyFromObject(p), &corev1.Pod{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "check Pod deleted")
	}, testTimeout).Should(Succeed())
}
