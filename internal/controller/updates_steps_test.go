package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/backend/pod"
	"github.com/nodeforge/nodeforge/internal/testenv"
)

func TestUpdateNamesAreDeterministic(t *testing.T) {
	g := NewWithT(t)
	d := "sha256:ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
	g.Expect(UpdateCheckName("img", d, t0)).To(Equal(UpdateCheckName("img", d, t0)))
	g.Expect(UpdateCheckName("img", d, t0)).NotTo(Equal(UpdateCheckName("img", d, t0.Add(time.Minute))))
	g.Expect(UpdateCheckName("img", d, t0)).To(MatchRegexp(`^img-updates-[0-9a-f]{10}$`))
	u := "sha256:5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"
	g.Expect(UpdateBuildName("img", d, u)).To(Equal(BuildName("img", d) + "-u5e5e5e"))
	// The longest NodeImage name still gives valid names.
	long := "a123456789b123456789c123456789d123456789"
	g.Expect(len(UpdateCheckName(long, d, t0) + "-spec")).To(BeNumerically("<=", 253))
	g.Expect(len(UpdateCheckName(long, d, t0))).To(BeNumerically("<=", 63))
}

// TestCheckUpdatesStep drives the update check step on a fake client.
func TestCheckUpdatesStep(t *testing.T) {
	scheme := testenv.Scheme()
	digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	other := "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
	newImage := func(lastCheck *time.Time) *imagev1.NodeImage {
		ni := &imagev1.NodeImage{
			ObjectMeta: metav1.ObjectMeta{Name: "img", Namespace: "ns", UID: "ni-uid", Generation: 1},
			Spec: imagev1.NodeImageSpec{
				Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: "https://s3.example.com", Bucket: "b",
					CredentialsSecretRef: corev1.LocalObjectReference{Name: "creds"}}},
				Updates: &imagev1.UpdatesSpec{Interval: metav1.Duration{Duration: time.Hour}},
			},
			Status: imagev1.NodeImageStatus{Artifact: &imagev1.Artifact{SpecDigest: digest, URL: "s3://b/img"}},
		}
		if lastCheck != nil {
			ni.Status.Updates = &imagev1.UpdatesStatus{LastCheckTime: &metav1.Time{Time: *lastCheck}, Result: imagev1.UpdatesUpToDate}
		}
		return ni
	}
	checkPod := func(ni *imagev1.NodeImage, name, checked string, phase corev1.PodPhase) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: "pod-uid",
			Labels:      map[string]string{backend.LabelNodeImage: "img", backend.LabelComponent: backend.ComponentUpdateCheck, backend.LabelManagedBy: "nodeforge"},
			Annotations: map[string]string{CheckedDigestAnnotation: checked}},
			Status: corev1.PodStatus{Phase: phase}}
		p.CreationTimestamp = metav1.NewTime(t0.Add(-time.Minute))
		if err := controllerutil.SetControllerReference(ni, p, scheme); err != nil {
			t.Fatal(err)
		}
		return p
	}
	running := imagev1.NodeImageBuild{ObjectMeta: metav1.ObjectMeta{Name: "img-build"}}
	recent, old := t0.Add(-10*time.Minute), t0.Add(-2*time.Hour)
	tests := []struct {
		name        string
		ni          *imagev1.NodeImage
		builds      []imagev1.NodeImageBuild
		pods        func(*imagev1.NodeImage) []client.Object
		image       string // spec.builder.image
		funcs       interceptor.Funcs
		wantErr     bool
		wantPods    []string
		wantRequeue time.Duration
		wantResult  imagev1.UpdatesResult
		wantMessage string
	}{
		{name: "first check is due at once", ni: newImage(nil),
			wantPods: []string{UpdateCheckName("img", digest, time.Time{})}},
		{name: "due after the interval", ni: newImage(&old),
			wantPods: []string{UpdateCheckName("img", digest, old.Add(time.Hour))}, wantResult: imagev1.UpdatesUpToDate},
		{name: "not due: requeued for the due time", ni: newImage(&recent), wantRequeue: 50 * time.Minute, wantResult: imagev1.UpdatesUpToDate},
		{name: "a build runs: no check, a running one is deleted", ni: newImage(&old), builds: []imagev1.NodeImageBuild{running},
			pods: func(ni *imagev1.NodeImage) []client.Object {
				return []client.Object{checkPod(ni, "img-updates-running", digest, corev1.PodRunning)}
			}, wantResult: imagev1.UpdatesUpToDate},
		{name: "spec.updates removed: a check in flight is deleted", ni: func() *imagev1.NodeImage {
			ni := newImage(&old)
			ni.Spec.Updates = nil
			return ni
		}(), pods: func(ni *imagev1.NodeImage) []client.Object {
			return []client.Object{checkPod(ni, "img-updates-running", digest, corev1.PodRunning)}
		}, wantResult: imagev1.UpdatesUpToDate},
		{name: "no artifact of the current digest: no check", ni: func() *imagev1.NodeImage {
			ni := newImage(nil)
			ni.Status.Artifact.SpecDigest = other
			return ni
		}()},
		{name: "a finished check of another digest is deleted unread", ni: newImage(&recent),
			pods: func(ni *imagev1.NodeImage) []client.Object {
				return []client.Object{checkPod(ni, "img-updates-old", other, corev1.PodSucceeded)}
			}, wantRequeue: 50 * time.Minute, wantResult: imagev1.UpdatesUpToDate},
		{name: "a running check is waited for", ni: newImage(&old),
			pods: func(ni *imagev1.NodeImage) []client.Object {
				return []client.Object{checkPod(ni, "img-updates-running", digest, corev1.PodRunning)}
			}, wantPods: []string{"img-updates-running"}, wantRequeue: UpdateCheckDeadline - time.Minute, wantResult: imagev1.UpdatesUpToDate},
		{name: "a check Pending past the deadline is a failed check", ni: newImage(&old),
			pods: func(ni *imagev1.NodeImage) []client.Object {
				p := checkPod(ni, "img-updates-stuck", digest, corev1.PodPending)
				p.CreationTimestamp = metav1.NewTime(t0.Add(-UpdateCheckDeadline))
				p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
					Reason: "Unschedulable", Message: "0/3 nodes are available"}}
				return []client.Object{p}
			}, wantResult: imagev1.UpdatesCheckFailed, wantMessage: "img-updates-stuck did not finish within 15m0s (not scheduled: Unschedulable 0/3 nodes are available)",
			wantRequeue: time.Hour},
		{name: "a running check is requeued for its deadline", ni: newImage(&old),
			pods: func(ni *imagev1.NodeImage) []client.Object {
				p := checkPod(ni, "img-updates-running", digest, corev1.PodRunning)
				p.CreationTimestamp = metav1.NewTime(t0.Add(-5 * time.Minute))
				return []client.Object{p}
			}, wantPods: []string{"img-updates-running"}, wantRequeue: 10 * time.Minute, wantResult: imagev1.UpdatesUpToDate},
		{name: "a check recorded already is deleted, not recorded again", ni: newImage(&recent),
			pods: func(ni *imagev1.NodeImage) []client.Object {
				p := checkPod(ni, "img-updates-done", digest, corev1.PodSucceeded)
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "builder", State: corev1.ContainerState{
					Terminated: &corev1.ContainerStateTerminated{FinishedAt: metav1.NewTime(recent),
						Message: `{"outcome":"succeeded","checked":3,"upgrades":1,"digest":"sha256:` + strings.Repeat("5e", 32) + `"}`}}}}
				return []client.Object{p}
			}, wantRequeue: 50 * time.Minute, wantResult: imagev1.UpdatesUpToDate},
		{name: "a refused builder image is a failed check", ni: newImage(&old), image: "elsewhere.example.com/tool:1",
			wantResult: imagev1.UpdatesCheckFailed, wantMessage: "spec.builder.image", wantRequeue: time.Hour},
		{name: "creating the Pod fails: retried with backoff", ni: newImage(&old),
			funcs: interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				if _, ok := obj.(*corev1.Pod); ok {
					return errors.New("admission webhook denied")
				}
				return c.Create(ctx, obj, opts...)
			}}, wantErr: true, wantResult: imagev1.UpdatesUpToDate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			tt.ni.Spec.Builder.Image = tt.image
			objs := []client.Object{tt.ni}
			if tt.pods != nil {
				objs = append(objs, tt.pods(tt.ni)...)
			}
			c := newFakeClient(scheme, tt.funcs, objs...)
			r := &NodeImageReconciler{Client: c, Recorder: events.NewFakeRecorder(20), Clock: clocktesting.NewFakeClock(t0),
				UpdateChecks: &pod.Backend{Scheme: scheme, Image: "nodeforge-builder:test"}}
			content := &imagev1.ImageContent{}
			st := &imageState{ni: tt.ni, content: content, digest: digest, builds: tt.builds}
			err := r.checkUpdates(context.Background(), st)
			g.Expect(err != nil).To(Equal(tt.wantErr), "err = %v", err)

			var pods corev1.PodList
			g.Expect(c.List(context.Background(), &pods)).To(Succeed())
			var names []string
			for _, p := range pods.Items {
				names = append(names, p.Name)
				if p.Name == UpdateCheckName("img", digest, time.Time{}) || p.Name == UpdateCheckName("img", digest, old.Add(time.Hour)) {
					g.Expect(metav1.IsControlledBy(&p, tt.ni)).To(BeTrue())
					g.Expect(p.Annotations).To(HaveKeyWithValue(CheckedDigestAnnotation, digest))
					var cm corev1.ConfigMap
					g.Expect(c.Get(context.Background(), client.ObjectKey{Namespace: "ns", Name: p.Name + "-spec"}, &cm)).To(Succeed())
				}
			}
			g.Expect(names).To(ConsistOf(tt.wantPods))
			var builds imagev1.NodeImageBuildList
			g.Expect(c.List(context.Background(), &builds)).To(Succeed())
			g.Expect(builds.Items).To(BeEmpty())
			g.Expect(st.requeueAfter).To(Equal(tt.wantRequeue))
			if tt.wantResult == "" {
				g.Expect(tt.ni.Status.Updates).To(BeNil())
			} else {
				g.Expect(tt.ni.Status.Updates.Result).To(Equal(tt.wantResult))
			}
			if tt.wantResult == imagev1.UpdatesCheckFailed {
				g.Expect(tt.ni.Status.Updates.Message).To(ContainSubstring(tt.wantMessage))
				g.Expect(tt.ni.Status.Updates.LastCheckTime.Time).To(Equal(t0))
			}
		})
	}
}

// Deleting a NodeImage deletes its check Pods without waiting, and a
// refusal (a namespace being deleted has lost the manager's RoleBinding)
// does not keep the finalizer.
func TestReconcileDeleteLeavesUpdateChecksToTheGarbageCollector(t *testing.T) {
	scheme := testenv.Scheme()
	for _, forbidden := range []bool{false, true} {
		g := NewWithT(t)
		now := metav1.NewTime(t0)
		ni := &imagev1.NodeImage{ObjectMeta: metav1.ObjectMeta{Name: "img", Namespace: "ns", UID: "ni-uid",
			Finalizers: []string{ImageFinalizer}, DeletionTimestamp: &now}}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "img-updates-0123456789", Namespace: "ns", UID: "pod-uid",
			Labels: map[string]string{backend.LabelNodeImage: "img", backend.LabelComponent: backend.ComponentUpdateCheck, backend.LabelManagedBy: "nodeforge"}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		g.Expect(controllerutil.SetControllerReference(ni, p, scheme)).To(Succeed())
		funcs := interceptor.Funcs{}
		if forbidden {
			funcs.Delete = func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				if _, ok := obj.(*corev1.Pod); ok {
					return apierrors.NewForbidden(corev1.Resource("pods"), obj.GetName(), errors.New("no RoleBinding"))
				}
				return c.Delete(ctx, obj, opts...)
			}
		}
		c := newFakeClient(scheme, funcs, ni, p)
		r := &NodeImageReconciler{Client: c, Recorder: events.NewFakeRecorder(20)}
		g.Expect(r.reconcileDelete(context.Background(), ni)).To(Succeed())
		err := c.Get(context.Background(), client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "finalizer released (forbidden: %v)", forbidden)
		err = c.Get(context.Background(), client.ObjectKeyFromObject(p), &corev1.Pod{})
		g.Expect(apierrors.IsNotFound(err)).To(Equal(!forbidden), "check Pod deleted (forbidden: %v)", forbidden)
	}
}
