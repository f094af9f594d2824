package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/testenv"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// fakeBackend plays a backend from a table of observations.
type fakeBackend struct {
	obs       map[int32]backend.Observation
	ensured   []int32
	deleted   []int32
	ensureErr error
}

func (f *fakeBackend) Kind() string { return "Pod" }
func (f *fakeBackend) Ensure(_ context.Context, _ *imagev1.NodeImageBuild, n int32) error {
	if f.ensureErr != nil {
		return f.ensureErr
	}
	f.ensured = append(f.ensured, n)
	return nil
}
func (f *fakeBackend) Observe(_ context.Context, _ *imagev1.NodeImageBuild, n int32) (backend.Observation, error) {
	o, ok := f.obs[n]
	if !ok {
		return backend.Observation{Phase: backend.PhaseNotFound, Kind: "Pod", Name: "x"}, nil
	}
	o.Kind, o.Name = "Pod", backend.BuilderName("b", n)
	return o, nil
}
func (f *fakeBackend) Delete(_ context.Context, _ *imagev1.NodeImageBuild, n int32) (bool, error) {
	f.deleted = append(f.deleted, n)
	return true, nil
}

func testBuild(mutate func(*imagev1.NodeImageBuild)) *imagev1.NodeImageBuild {
	b := &imagev1.NodeImageBuild{
		ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "ns", Generation: 1, Finalizers: []string{BuildFinalizer}},
		Spec: imagev1.NodeImageBuildSpec{
			NodeImageName: "img", SpecDigest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			Reason:  imagev1.BuildReasonFirstBuild,
			Builder: imagev1.BuilderSpec{Retries: ptr.To[int32](1), Timeout: &metav1.Duration{Duration: time.Hour}},
		},
	}
	if mutate != nil {
		mutate(b)
	}
	return b
}

func newFakeClient(s *runtime.Scheme, funcs interceptor.Funcs, objs ...client.Object) client.Client {
	return fake.NewClientBuilder().WithScheme(s).
		WithStatusSubresource(&imagev1.NodeImage{}, &imagev1.NodeImageBuild{}).
		WithObjects(objs...).WithInterceptorFuncs(funcs).Build()
}

func TestNodeImageBuildReconcile(t *testing.T) {
	scheme := testenv.Scheme()
	failedRes := &buildresult.Result{Outcome: buildresult.OutcomeFailed, Reason: buildresult.ReasonPublishFailed, Step: "publish", Message: "access denied"}
	okRes := &buildresult.Result{Outcome: buildresult.OutcomeSucceeded, Artifact: &buildresult.Artifact{URL: "s3://b/k", SHA256: "ab", Size: 10, Format: "qcow2"}}
	noURLRes := &buildresult.Result{Outcome: buildresult.OutcomeSucceeded, Artifact: &buildresult.Artifact{SHA256: "ab", Size: 10, Format: "qcow2"}}
	started := func(n int32) func(*imagev1.NodeImageBuild) {
		return func(b *imagev1.NodeImageBuild) {
			b.Status.Attempts = n
			b.Status.StartTime = &metav1.Time{Time: t0}
		}
	}
	tests := []struct {
		name        string
		build       *imagev1.NodeImageBuild
		obs         map[int32]backend.Observation
		ensureErr   error
		funcs       interceptor.Funcs
		wantErr     bool
		wantRequeue bool
		wantEnsured []int32
		wantDeleted []int32
		wantReady   string
		wantStalled string
		wantRecon   string
		wantDone    bool
	}{
		{name: "new build creates attempt 1", build: testBuild(nil),
			wantEnsured: []int32{1}, wantReady: "False/BuildPending", wantRecon: "True/BuildPending", wantRequeue: true},
		{name: "create error is returned", build: testBuild(nil), ensureErr: errors.New("boom"),
			wantErr: true},
		{name: "invalid builder stalls", build: testBuild(nil),
			ensureErr: fmt.Errorf("creating builder Pod b-1: %w", apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "b-1", nil)),
			wantReady: "False/InvalidSpec", wantStalled: "True/InvalidSpec", wantDone: true},
		{name: "forbidden builder stalls", build: testBuild(nil),
			ensureErr: apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "b-1", errors.New("violates PodSecurity")),
			wantReady: "False/InvalidSpec", wantStalled: "True/InvalidSpec", wantDone: true},
		{name: "builder configuration error stalls", build: testBuild(nil),
			ensureErr: fmt.Errorf("%w: no builder image", backend.ErrInvalidConfig),
			wantReady: "False/InvalidSpec", wantStalled: "True/InvalidSpec", wantDone: true},
		{name: "pending builder waits", build: testBuild(started(1)),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhasePending, CreatedAt: t0, Message: "Unschedulable: 0/3 nodes"}},
			wantReady: "False/BuildPending", wantRecon: "True/BuildPending", wantRequeue: true},
		{name: "pending past the deadline is deleted and retried", build: testBuild(started(1)),
			obs:         map[int32]backend.Observation{1: {Phase: backend.PhasePending, CreatedAt: t0.Add(-2 * time.Hour)}},
			wantDeleted: []int32{1}, wantEnsured: []int32{2}, wantReady: "False/BuildPending", wantRecon: "True/BuildPending", wantRequeue: true},
		{name: "pending past the deadline on the last attempt stalls", build: testBuild(started(2)),
			obs:         map[int32]backend.Observation{2: {Phase: backend.PhasePending, CreatedAt: t0.Add(-2 * time.Hour)}},
			wantDeleted: []int32{2}, wantReady: "False/DeadlineExceeded", wantStalled: "True/RetriesExhausted", wantDone: true},
		{name: "failure within backoff waits", build: testBuild(started(1)),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhaseFailed, CreatedAt: t0, FinishedAt: t0.Add(-time.Second), Result: failedRes}},
			wantReady: "False/PublishFailed", wantRecon: "True/PublishFailed", wantRequeue: true},
		{name: "failure after backoff retries", build: testBuild(started(1)),
			obs:         map[int32]backend.Observation{1: {Phase: backend.PhaseFailed, CreatedAt: t0, FinishedAt: t0.Add(-time.Minute), Result: failedRes}},
			wantEnsured: []int32{2}, wantReady: "False/BuildPending", wantRecon: "True/BuildPending", wantRequeue: true},
		{name: "vanished builder counts as failure", build: testBuild(started(2)),
			wantReady: "False/BuildFailed", wantStalled: "True/RetriesExhausted", wantDone: true},
		{name: "kubelet deadline", build: testBuild(func(b *imagev1.NodeImageBuild) { started(1)(b); b.Spec.Builder.Retries = ptr.To[int32](0) }),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhaseFailed, DeadlineExceeded: true, Message: "Pod was active too long"}},
			wantReady: "False/DeadlineExceeded", wantStalled: "True/DeadlineExceeded", wantDone: true},
		{name: "success", build: testBuild(started(1)),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhaseSucceeded, CreatedAt: t0, FinishedAt: t0, Result: okRes}},
			wantReady: "True/Succeeded", wantDone: true},
		{name: "success without url of a build with a destination fails", build: testBuild(func(b *imagev1.NodeImageBuild) {
			started(1)(b)
			b.Spec.Builder.Retries = ptr.To[int32](0)
			b.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Bucket: "b"}}
		}),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhaseSucceeded, CreatedAt: t0, FinishedAt: t0, Result: noURLRes}},
			wantReady: "False/BuildFailed", wantStalled: "True/BuildFailed", wantDone: true},
		{name: "success without url of a build without destination", build: testBuild(started(1)),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhaseSucceeded, CreatedAt: t0, FinishedAt: t0, Result: noURLRes}},
			wantReady: "True/Succeeded", wantDone: true},
		{name: "exit 0 without result fails", build: testBuild(func(b *imagev1.NodeImageBuild) { started(1)(b); b.Spec.Builder.Retries = ptr.To[int32](0) }),
			obs:       map[int32]backend.Observation{1: {Phase: backend.PhaseSucceeded, ResultError: errors.New("empty result")}},
			wantReady: "False/BuildFailed", wantStalled: "True/BuildFailed", wantDone: true},
		{name: "interrupt annotation", build: testBuild(func(b *imagev1.NodeImageBuild) {
			started(1)(b)
			b.Annotations = map[string]string{InterruptAnnotation: "superseded"}
		}), wantDeleted: []int32{0}, wantReady: "False/Interrupted", wantStalled: "True/Interrupted", wantDone: true},
		{name: "interrupt before any recorded attempt deletes every builder", build: testBuild(func(b *imagev1.NodeImageBuild) {
			b.Annotations = map[string]string{InterruptAnnotation: "canceled"}
		}), wantDeleted: []int32{0}, wantReady: "False/Interrupted", wantStalled: "True/Interrupted", wantDone: true},
		{name: "status patch error is returned", build: testBuild(nil),
			funcs: interceptor.Funcs{SubResourcePatch: func(context.Context, client.Client, string, client.Object, client.Patch, ...client.SubResourcePatchOption) error {
				return apierrors.NewServiceUnavailable("etcd down")
			}},
			wantErr: true, wantEnsured: []int32{1}},
		{name: "get error is returned", build: testBuild(nil),
			funcs: interceptor.Funcs{Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
				return apierrors.NewTooManyRequests("slow down", 1)
			}},
			wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			be := &fakeBackend{obs: tt.obs, ensureErr: tt.ensureErr}
			c := newFakeClient(scheme, tt.funcs, tt.build)
			rec := events.NewFakeRecorder(20)
			r := &NodeImageBuildReconciler{
				Client: c, Recorder: rec, Clock: clocktesting.NewFakeClock(t0),
				Backends: map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: be},
			}
			res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(tt.build)})
			if tt.wantErr {
				g.Expect(err).To(HaveOccurred())
				g.Expect(res.RequeueAfter).To(BeZero(), "never a result together with an error")
			} else {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(res.RequeueAfter > 0).To(Equal(tt.wantRequeue))
			}
			g.Expect(be.ensured).To(Equal(tt.wantEnsured))
			g.Expect(be.deleted).To(Equal(tt.wantDeleted))
			if tt.wantErr {
				return
			}
			got := &imagev1.NodeImageBuild{}
			g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(tt.build), got)).To(Succeed())
			g.Expect(key(got, imagev1.ReadyCondition)).To(Equal(tt.wantReady))
			g.Expect(key(got, imagev1.StalledCondition)).To(Equal(tt.wantStalled))
			g.Expect(key(got, imagev1.ReconcilingCondition)).To(Equal(tt.wantRecon))
			g.Expect(got.Status.CompletionTime != nil).To(Equal(tt.wantDone))
			if tt.wantDone {
				g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			}
			if tt.wantReady != "" && tt.wantReady != "False/BuildPending" || len(tt.wantEnsured) > 0 {
				g.Expect(rec.Events).NotTo(BeEmpty(), "a transition emits an event")
			}
		})
	}
}

func key(obj conditionsObject, typ string) string {
	if c := getCondition(obj, typ); c != nil {
		return string(c.Status) + "/" + c.Reason
	}
	return ""
}

// fakeArtifacts is an ArtifactStore with one optional artifact.
type fakeArtifacts struct {
	found   *imagev1.Artifact
	err     error
	deleted bool
	// presigned counts Presign calls; presignErr fails them.
	presigned  int
	presignErr error
	now        func() time.Time
}

func (f *fakeArtifacts) Presign(_ context.Context, ni *imagev1.NodeImage, a *imagev1.Artifact) (string, time.Time, error) {
	if f.presignErr != nil {
		return "", time.Time{}, f.presignErr
	}
	f.presigned++
	now := time.Now()
	if f.now != nil {
		now = f.now()
	}
	return fmt.Sprintf("https://s3.example.com/b/%s?signature=%d", ni.Name, f.presigned), now.Add(presignExpiry(ni)), nil
}

func (f *fakeArtifacts) Lookup(context.Context, *imagev1.NodeImage, string) (*imagev1.Artifact, error) {
	if f.err != nil {
		return nil, f.err
	}
	if f.found == nil {
		return nil, ErrArtifactNotFound
	}
	return f.found, nil
}
func (f *fakeArtifacts) Prune(context.Context, *imagev1.NodeImage, int) error { return nil }
func (f *fakeArtifacts) DeleteAll(context.Context, *imagev1.NodeImage) error {
	f.deleted = true
	return f.err
}

func testImage(mutate func(*imagev1.NodeImage)) *imagev1.NodeImage {
	ni := &imagev1.NodeImage{
		ObjectMeta: metav1.ObjectMeta{Name: "img", Namespace: "ns", Generation: 2, UID: "uid-img", Finalizers: []string{ImageFinalizer}},
		Spec: imagev1.NodeImageSpec{
			ImageContent: imagev1.ImageContent{Packages: []string{"vim"}},
			Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
				Endpoint: "https://s3.example.com", Bucket: "b", CredentialsSecretRef: corev1.LocalObjectReference{Name: "c"},
			}},
		},
	}
	if mutate != nil {
		mutate(ni)
	}
	return ni
}

func TestNodeImageReconcile(t *testing.T) {
	scheme := testenv.Scheme()
	found := &imagev1.Artifact{URL: "s3://b/img/x/img.qcow2", SHA256: "ab", Size: 1, Format: imagev1.FormatQCOW2, SpecDigest: "sha256:x"}
	alreadyExists := interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		if _, ok := obj.(*imagev1.NodeImageBuild); ok {
			_ = c.Create(ctx, obj, opts...) // a racing reconcile won
			return apierrors.NewAlreadyExists(schema.GroupResource{Group: imagev1.GroupVersion.Group, Resource: "nodeimagebuilds"}, obj.GetName())
		}
		return c.Create(ctx, obj, opts...)
	}}
	createFails := interceptor.Funcs{Create: func(context.Context, client.WithWatch, client.Object, ...client.CreateOption) error {
		return apierrors.NewForbidden(schema.GroupResource{Resource: "nodeimagebuilds"}, "x", errors.New("quota"))
	}}
	tests := []struct {
		name        string
		ni          *imagev1.NodeImage
		artifacts   *fakeArtifacts
		funcs       interceptor.Funcs
		wantErr     bool
		wantBuilds  int
		wantReady   string
		wantStalled string
		wantRecon   string
		wantObsGen  bool
		wantRequeue time.Duration
		wantMsg     string
	}{
		{name: "first build", ni: testImage(nil), artifacts: &fakeArtifacts{},
			wantBuilds: 1, wantReady: "False/BuildPending", wantRecon: "True/BuildPending"},
		{name: "cache hit starts no build", ni: testImage(nil), artifacts: &fakeArtifacts{found: found},
			wantReady: "True/ArtifactFound", wantObsGen: true},
		// The registry's tags must move to the found artifact too: a
		// build does it (its builder finds the artifact and only tags).
		{name: "cache hit with destination.oci starts a build", ni: testImage(func(ni *imagev1.NodeImage) {
			ni.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/img"}
		}), artifacts: &fakeArtifacts{found: found},
			wantBuilds: 1, wantReady: "False/BuildPending", wantRecon: "True/BuildPending"},
		{name: "lookup error is retried", ni: testImage(nil), artifacts: &fakeArtifacts{err: errors.New("s3 unreachable")},
			wantErr: true, wantMsg: "s3 unreachable"},
		{name: "forbidden Secret read is retried", ni: testImage(nil),
			artifacts: &fakeArtifacts{err: fmt.Errorf("reading Secret ns/c: %w", apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "c", errors.New("no RBAC")))},
			wantErr:   true, wantMsg: `reading Secret ns/c: secrets "c" is forbidden: no RBAC`},
		{name: "missing ConfigMap stalls", ni: testImage(func(ni *imagev1.NodeImage) {
			ni.Spec.Files = []imagev1.FileSpec{{Path: "/etc/x", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Key: "k"}}}
		}), artifacts: &fakeArtifacts{}, wantReady: "False/InvalidSpec", wantStalled: "True/InvalidSpec", wantObsGen: true},
		{name: "missing Secret stalls and is rechecked", ni: testImage(nil),
			artifacts: &fakeArtifacts{err: &StallingError{Reason: imagev1.InvalidSpecReason, Err: errors.New("secret ns/c does not exist")}},
			wantReady: "False/InvalidSpec", wantStalled: "True/InvalidSpec", wantObsGen: true, wantRequeue: StalledRecheckInterval},
		{name: "arm64 builds", ni: testImage(func(ni *imagev1.NodeImage) { ni.Spec.Base.Architecture = imagev1.ArchitectureARM64 }),
			artifacts: &fakeArtifacts{}, wantBuilds: 1, wantReady: "False/BuildPending", wantRecon: "True/BuildPending"},
		{name: "suspended starts nothing", ni: testImage(func(ni *imagev1.NodeImage) { ni.Spec.Suspend = true }),
			artifacts: &fakeArtifacts{}, wantReady: "True/Suspended", wantObsGen: true},
		{name: "AlreadyExists is success", ni: testImage(nil), artifacts: &fakeArtifacts{}, funcs: alreadyExists,
			wantBuilds: 1, wantReady: "False/BuildPending", wantRecon: "True/BuildPending"},
		{name: "create error is returned", ni: testImage(nil), artifacts: &fakeArtifacts{}, funcs: createFails,
			wantErr: true, wantMsg: "creating build img-" + imagev1.DigestHex(digestOfImage(testImage(nil)))[:10] + `: nodeimagebuilds "x" is forbidden: quota`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c := newFakeClient(scheme, tt.funcs, tt.ni)
			r := &NodeImageReconciler{Client: c, Recorder: events.NewFakeRecorder(20), Artifacts: tt.artifacts}
			res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(tt.ni)})
			if tt.wantErr {
				g.Expect(err).To(HaveOccurred())
				g.Expect(res.RequeueAfter).To(BeZero())
			} else {
				g.Expect(err).NotTo(HaveOccurred())
				if tt.wantStalled != "" {
					g.Expect(res.RequeueAfter).To(Equal(tt.wantRequeue))
				}
			}
			var builds imagev1.NodeImageBuildList
			g.Expect(c.List(context.Background(), &builds)).To(Succeed())
			g.Expect(builds.Items).To(HaveLen(tt.wantBuilds))
			got := &imagev1.NodeImage{}
			g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(tt.ni), got)).To(Succeed())
			if tt.wantErr {
				g.Expect(key(got, imagev1.ReconcilingCondition)).To(Equal("True/Progressing"), "an error keeps the object InProgress")
				g.Expect(key(got, imagev1.ReadyCondition)).To(Equal("False/ReconcileError"), "Ready is present and says why")
				g.Expect(getCondition(got, imagev1.ReadyCondition).Message).To(Equal(tt.wantMsg))
				return
			}
			g.Expect(key(got, imagev1.ReadyCondition)).To(Equal(tt.wantReady))
			g.Expect(key(got, imagev1.StalledCondition)).To(Equal(tt.wantStalled))
			g.Expect(key(got, imagev1.ReconcilingCondition)).To(Equal(tt.wantRecon))
			g.Expect(got.Status.ObservedGeneration == got.Generation).To(Equal(tt.wantObsGen))
			for _, b := range builds.Items {
				g.Expect(b.Name).To(Equal(BuildName("img", got.Status.SpecDigest)))
				g.Expect(metav1.IsControlledBy(&b, got)).To(BeTrue())
			}
		})
	}
}

func TestNodeImageDeletion(t *testing.T) {
	scheme := testenv.Scheme()
	for _, policy := range []imagev1.DeletionPolicy{imagev1.DeletionPolicyRetain, imagev1.DeletionPolicyDelete} {
		t.Run(string(policy), func(t *testing.T) {
			g := NewWithT(t)
			ni := testImage(func(ni *imagev1.NodeImage) {
				ni.Spec.DeletionPolicy = policy
				ni.DeletionTimestamp = &metav1.Time{Time: t0}
			})
			arts := &fakeArtifacts{}
			c := newFakeClient(scheme, interceptor.Funcs{}, ni)
			r := &NodeImageReconciler{Client: c, Artifacts: arts}
			_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ni)})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(arts.deleted).To(Equal(policy == imagev1.DeletionPolicyDelete))
			err = c.Get(context.Background(), client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "finalizer removed, object gone")
		})
	}
}

func TestImagesForConfigMap(t *testing.T) {
	g := NewWithT(t)
	ref := func(name string) *corev1.ConfigMapKeySelector {
		return &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: "k"}
	}
	files := testImage(func(ni *imagev1.NodeImage) {
		ni.Name = "files"
		ni.Spec.Files = []imagev1.FileSpec{{Path: "/etc/a", ConfigMapKeyRef: ref("shared")}, {Path: "/etc/b", ConfigMapKeyRef: ref("shared")}}
	})
	playbook := testImage(func(ni *imagev1.NodeImage) {
		ni.Name = "playbook"
		ni.Spec.Provisioners = []imagev1.Provisioner{{Ansible: &imagev1.AnsibleProvisioner{PlaybookRef: ref("shared")}}}
	})
	key := testImage(func(ni *imagev1.NodeImage) {
		ni.Name = "key"
		ni.Spec.Kubernetes = &imagev1.KubernetesSpec{AptRepository: imagev1.AptRepository{SigningKey: imagev1.KeySource{ConfigMapKeyRef: ref("gpg")}}}
	})
	other := testImage(func(ni *imagev1.NodeImage) { ni.Name = "other"; ni.Namespace = "elsewhere" })
	other.Spec.Files = files.Spec.Files
	g.Expect(configMapRefs(files)).To(Equal([]string{"shared"}))
	g.Expect(configMapRefs(key)).To(Equal([]string{"gpg"}))

	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).
		WithIndex(&imagev1.NodeImage{}, configMapRefsIndex, func(o client.Object) []string { return configMapRefs(o.(*imagev1.NodeImage)) }).
		WithObjects(files, playbook, key, other).Build()
	r := &NodeImageReconciler{Client: c}
	cm := func(name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	}
	names := func(reqs []reconcile.Request) []string {
		var out []string
		for _, r := range reqs {
			out = append(out, r.Name)
		}
		return out
	}
	g.Expect(names(r.imagesForConfigMap(context.Background(), cm("shared")))).To(ConsistOf("files", "playbook"))
	g.Expect(names(r.imagesForConfigMap(context.Background(), cm("gpg")))).To(ConsistOf("key"))
	g.Expect(r.imagesForConfigMap(context.Background(), cm("unrelated"))).To(BeEmpty())
}

// A build of the current digest canceled with the interrupt annotation
// stands: its outcome is mirrored and nothing is rebuilt. A superseded one
// is replaced.
func TestCancelledBuildIsNotRebuilt(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		finished    bool
		wantDeleted bool
		wantReady   string
		wantStalled string
	}{
		{name: "canceled, not finished yet", annotations: map[string]string{InterruptAnnotation: "not needed"},
			wantReady: "False/BuildPending"},
		{name: "canceled and finished", annotations: map[string]string{InterruptAnnotation: "not needed"}, finished: true,
			wantReady: "False/Interrupted", wantStalled: "True/Interrupted"},
		{name: "superseded", annotations: map[string]string{InterruptAnnotation: "superseded", SupersededAnnotation: "superseded"}, finished: true,
			wantDeleted: true, wantReady: "False/BuildPending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ni := testImage(nil)
			c := newFakeClient(testenv.Scheme(), interceptor.Funcs{}, ni)
			r := &NodeImageReconciler{Client: c, Recorder: events.NewFakeRecorder(20), Artifacts: &fakeArtifacts{}}
			req := ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ni)}
			_, err := r.Reconcile(context.Background(), req)
			g.Expect(err).NotTo(HaveOccurred())
			var builds imagev1.NodeImageBuildList
			g.Expect(c.List(context.Background(), &builds)).To(Succeed())
			g.Expect(builds.Items).To(HaveLen(1))
			b := &builds.Items[0]
			b.Annotations = tc.annotations
			g.Expect(c.Update(context.Background(), b)).To(Succeed())
			if tc.finished {
				b.Status.CompletionTime = &metav1.Time{Time: t0}
				setCondition(b, imagev1.ReadyCondition, metav1.ConditionFalse, imagev1.InterruptedReason, "not needed")
				markStalled(b, imagev1.InterruptedReason, "not needed")
				g.Expect(c.Status().Update(context.Background(), b)).To(Succeed())
			}

			_, err = r.Reconcile(context.Background(), req)
			g.Expect(err).NotTo(HaveOccurred())
			builds = imagev1.NodeImageBuildList{}
			g.Expect(c.List(context.Background(), &builds)).To(Succeed())
			if tc.wantDeleted {
				g.Expect(builds.Items).To(BeEmpty(), "the superseded build is deleted to be replaced")
			} else {
				g.Expect(builds.Items).To(HaveLen(1))
				g.Expect(builds.Items[0].Name).To(Equal(b.Name))
			}
			got := &imagev1.NodeImage{}
			g.Expect(c.Get(context.Background(), req.NamespacedName, got)).To(Succeed())
			g.Expect(key(got, imagev1.ReadyCondition)).To(Equal(tc.wantReady))
			g.Expect(key(got, imagev1.StalledCondition)).To(Equal(tc.wantStalled))
			if tc.finished && !tc.wantDeleted {
				g.Expect(got.Status.LastFailure.Reason).To(Equal(imagev1.InterruptedReason))
				g.Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			}
		})
	}
}

// podBackend is a fakeBackend whose Ensure creates a live builder Pod,
// slowly, as an API round trip would.
type podBackend struct {
	fakeBackend
	c       client.Client
	mu      sync.Mutex
	ensures int
}

func (p *podBackend) Ensure(ctx context.Context, b *imagev1.NodeImageBuild, n int32) error {
	time.Sleep(50 * time.Millisecond)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: backend.BuilderName(b.Name, n), Labels: backend.Labels(b, "builder", n)}}
	p.mu.Lock()
	p.ensures++
	p.mu.Unlock()
	return p.c.Create(ctx, pod)
}

// --max-concurrent-builds counts live builders as the API server shows
// them, and two reconciles cannot both take the last slot.
func TestMaxConcurrentBuilds(t *testing.T) {
	scheme := testenv.Scheme()
	t.Run("a live builder the cache does not show holds a slot", func(t *testing.T) {
		g := NewWithT(t)
		b := testBuild(func(b *imagev1.NodeImageBuild) { b.UID = "uid-b" })
		other := testBuild(func(b *imagev1.NodeImageBuild) { b.Name, b.UID = "other", "uid-other" }) // attempts 0 in the cache
		live := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "other-1", Labels: backend.Labels(other, "builder", 1)},
			Status: corev1.PodStatus{Phase: corev1.PodPending}}
		c := newFakeClient(scheme, interceptor.Funcs{}, b, other, live)
		be := &fakeBackend{}
		r := &NodeImageBuildReconciler{Client: c, Clock: clocktesting.NewFakeClock(t0), MaxConcurrentBuilds: 1,
			Backends: map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: be}}
		res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(b)})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.RequeueAfter).To(Equal(DefaultQueueRecheck))
		g.Expect(be.ensured).To(BeEmpty())
		got := &imagev1.NodeImageBuild{}
		g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(b), got)).To(Succeed())
		g.Expect(getCondition(got, imagev1.ReadyCondition).Message).To(ContainSubstring("waiting for a build slot"))
	})
	t.Run("with --build-namespace, builders are counted in those namespaces only", func(t *testing.T) {
		g := NewWithT(t)
		b := testBuild(func(b *imagev1.NodeImageBuild) { b.UID = "uid-b" })
		other := testBuild(func(b *imagev1.NodeImageBuild) { b.Name, b.UID = "other", "uid-other" })
		live := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "other-1", Labels: backend.Labels(other, "builder", 1)},
			Status: corev1.PodStatus{Phase: corev1.PodPending}}
		foreign := testBuild(func(b *imagev1.NodeImageBuild) { b.Namespace, b.Name, b.UID = "elsewhere", "foreign", "uid-foreign" })
		outside := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "elsewhere", Name: "foreign-1", Labels: backend.Labels(foreign, "builder", 1)},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		// RBAC of the namespaced mode: no right to list Pods cluster-wide.
		funcs := interceptor.Funcs{List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			lo := (&client.ListOptions{}).ApplyOptions(opts)
			if _, pods := list.(*corev1.PodList); pods && lo.Namespace == "" {
				return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("cluster-wide list not granted"))
			}
			return c.List(ctx, list, opts...)
		}}
		for _, tc := range []struct {
			max  int
			want bool // Ensure called
		}{{max: 1, want: false}, {max: 2, want: true}} {
			c := newFakeClient(scheme, funcs, b, other, live, outside)
			be := &fakeBackend{}
			r := &NodeImageBuildReconciler{Client: c, Clock: clocktesting.NewFakeClock(t0), MaxConcurrentBuilds: tc.max, Namespaces: []string{"ns"},
				Backends: map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: be}}
			_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(b)})
			g.Expect(err).NotTo(HaveOccurred())
			// ns's live builder takes the one slot of max 1; with max 2 the
			// builder in "elsewhere" (not ours to count) leaves one free.
			g.Expect(len(be.ensured) > 0).To(Equal(tc.want), "max %d: ensured %v", tc.max, be.ensured)
		}
	})
	t.Run("concurrent reconciles", func(t *testing.T) {
		g := NewWithT(t)
		b1 := testBuild(func(b *imagev1.NodeImageBuild) { b.Name, b.UID = "b1", "uid-1" })
		b2 := testBuild(func(b *imagev1.NodeImageBuild) { b.Name, b.UID = "b2", "uid-2" })
		c := newFakeClient(scheme, interceptor.Funcs{}, b1, b2)
		be := &podBackend{c: c}
		r := &NodeImageBuildReconciler{Client: c, Clock: clocktesting.NewFakeClock(t0), MaxConcurrentBuilds: 1,
			Backends: map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: be}}
		var wg sync.WaitGroup
		for _, b := range []*imagev1.NodeImageBuild{b1, b2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(b)})
				g.Expect(err).NotTo(HaveOccurred())
			}()
		}
		wg.Wait()
		g.Expect(be.ensures).To(Equal(1), "only one build may start")
	})
}

// With deletionPolicy Delete, a credentials Secret that is gone (the
// namespace is being deleted) does not hold the finalizer forever.
func TestNodeImageDeletionWithoutSecret(t *testing.T) {
	g := NewWithT(t)
	ni := testImage(func(ni *imagev1.NodeImage) {
		ni.Spec.DeletionPolicy = imagev1.DeletionPolicyDelete
		ni.DeletionTimestamp = &metav1.Time{Time: t0}
	})
	c := newFakeClient(testenv.Scheme(), interceptor.Funcs{}, ni)
	// The real opener, reading a Secret that does not exist.
	_, openErr := S3Opener(c)(context.Background(), ni)
	g.Expect(apierrors.IsNotFound(openErr)).To(BeTrue(), "the missing Secret is recognizable: %v", openErr)
	rec := events.NewFakeRecorder(5)
	r := &NodeImageReconciler{Client: c, Recorder: rec, Artifacts: &fakeArtifacts{err: openErr}}
	_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ni)})
	g.Expect(err).NotTo(HaveOccurred())
	err = c.Get(context.Background(), client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "finalizer removed, object gone")
	g.Expect(rec.Events).To(Receive(ContainSubstring("Warning DeleteFailed")))
}

func digestOfImage(ni *imagev1.NodeImage) string {
	c, err := resolve.Content(context.Background(), &ni.Spec.ImageContent, resolve.FromConfigMaps(nil))
	if err != nil {
		panic(err)
	}
	d, err := c.Digest()
	if err != nil {
		panic(err)
	}
	return d
}

// A new attempt starts without the step conditions of the previous one.
func TestRetryResetsStepConditions(t *testing.T) {
	g := NewWithT(t)
	b := testBuild(func(b *imagev1.NodeImageBuild) {
		b.Status.Attempts = 1
		b.Status.StartTime = &metav1.Time{Time: t0}
	})
	res := &buildresult.Result{Outcome: buildresult.OutcomeFailed, Reason: buildresult.ReasonPublishFailed, Step: "publish", Message: "access denied"}
	be := &fakeBackend{obs: map[int32]backend.Observation{1: {Phase: backend.PhaseFailed, CreatedAt: t0, FinishedAt: t0.Add(-time.Minute), Result: res}}}
	c := newFakeClient(testenv.Scheme(), interceptor.Funcs{}, b)
	r := &NodeImageBuildReconciler{Client: c, Clock: clocktesting.NewFakeClock(t0),
		Backends: map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: be}}
	_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(b)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(be.ensured).To(Equal([]int32{2}))
	got := &imagev1.NodeImageBuild{}
	g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(b), got)).To(Succeed())
	for _, typ := range []string{imagev1.BuiltCondition, imagev1.VerifiedCondition, imagev1.PublishedCondition} {
		g.Expect(getCondition(got, typ)).To(BeNil(), typ)
	}
	g.Expect(key(got, imagev1.ReadyCondition)).To(Equal("False/BuildPending"))
}

// With deletionPolicy Delete, deleting the namespace removes the RoleBinding
// that lets the manager read the credentials before the NodeImage goes: the
// read is Forbidden. The finalizer must not hold the namespace forever.
func TestNodeImageDeletionInTerminatingNamespace(t *testing.T) {
	ni := testImage(func(ni *imagev1.NodeImage) {
		ni.Spec.DeletionPolicy = imagev1.DeletionPolicyDelete
		ni.DeletionTimestamp = &metav1.Time{Time: t0}
	})
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ni.Namespace, Finalizers: []string{"kubernetes"}, DeletionTimestamp: &metav1.Time{Time: t0}}}
	forbidden := apierrors.NewForbidden(corev1.Resource("secrets"), "s3", errors.New("no RoleBinding"))
	for _, tc := range []struct {
		name        string
		objs        []client.Object
		wantRemoved bool
	}{
		{"namespace terminating", []client.Object{ni.DeepCopy(), ns.DeepCopy()}, true},
		{"namespace live", []client.Object{ni.DeepCopy()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c := newFakeClient(testenv.Scheme(), interceptor.Funcs{}, tc.objs...)
			r := &NodeImageReconciler{Client: c, Recorder: events.NewFakeRecorder(5), Artifacts: &fakeArtifacts{err: forbidden}}
			_, _ = r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ni)})
			err := c.Get(context.Background(), client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
			g.Expect(apierrors.IsNotFound(err)).To(Equal(tc.wantRemoved), "finalizer removed: %v", err)
		})
	}
}

// TestBuilderGoneWhileCacheIsBehind: the controller deleted a builder (its
// deadline passed) and recorded the failure; a reconcile that still reads
// the older cached build sees the builder gone. It must look again, not
// record the attempt as lost (BuildFailed over DeadlineExceeded).
func TestBuilderGoneWhileCacheIsBehind(t *testing.T) {
	for _, tc := range []struct {
		name       string
		liveRV     string
		wantReason string
	}{
		{name: "cache behind: look again", liveRV: "424242", wantReason: ""},
		{name: "cache current: the builder is lost", liveRV: "", wantReason: imagev1.BuildFailedReason},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			build := testBuild(func(b *imagev1.NodeImageBuild) {
				b.Status.Attempts = 1
				b.Status.StartTime = &metav1.Time{Time: t0}
				b.Spec.Builder.Retries = ptr.To[int32](0)
			})
			c := newFakeClient(testenv.Scheme(), interceptor.Funcs{}, build)
			live := newFakeClient(testenv.Scheme(), interceptor.Funcs{Get: func(ctx context.Context, cl client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if err := cl.Get(ctx, key, obj, opts...); err != nil {
					return err
				}
				if tc.liveRV != "" {
					obj.SetResourceVersion(tc.liveRV)
				}
				return nil
			}}, build.DeepCopy())
			r := &NodeImageBuildReconciler{
				Client: c, APIReader: live, Recorder: events.NewFakeRecorder(20), Clock: clocktesting.NewFakeClock(t0),
				Backends: map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: &fakeBackend{}},
			}
			_, _ = r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(build)})
			got := &imagev1.NodeImageBuild{}
			g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(build), got)).To(Succeed())
			ready := getCondition(got, imagev1.ReadyCondition)
			if tc.wantReason == "" {
				g.Expect(ready == nil || ready.Reason != imagev1.BuildFailedReason).To(BeTrue(), "recorded as lost: %+v", ready)
				g.Expect(got.Status.CompletionTime).To(BeNil())
			} else {
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Reason).To(Equal(tc.wantReason))
			}
		})
	}
}

// The presigned URL in a settled NodeImage's status is renewed before it
// expires: at once when its age is unknown (the builder's record), then
// each time less than a fifth of presignExpiry is left. A failed renewal
// keeps the old URL and tries again a minute later.
func TestRenewPresignedURL(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	arts := &fakeArtifacts{now: clk.Now}
	r := &NodeImageReconciler{Artifacts: arts, Clock: clk, Recorder: events.NewFakeRecorder(20)}
	ni := testImage(func(ni *imagev1.NodeImage) {
		ni.Spec.Destination.S3.PresignExpiry = &metav1.Duration{Duration: 10 * time.Hour}
		ni.Status.Artifact = &imagev1.Artifact{URL: "s3://b/ns/img/x/img.qcow2", PresignedURL: "https://builder-signed", SpecDigest: "sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Format: imagev1.FormatQCOW2}
	})
	st := &imageState{ni: ni}

	g.Expect(r.renewPresignedURL(context.Background(), st)).To(Succeed())
	a := ni.Status.Artifact
	g.Expect(a.PresignedURL).To(Equal("https://s3.example.com/b/img?signature=1"), "the builder's URL of unknown age is replaced")
	g.Expect(a.PresignedURLExpiresAt.Time).To(Equal(t0.Add(10 * time.Hour)))
	g.Expect(st.requeueAfter).To(Equal(8 * time.Hour))

	clk.SetTime(t0.Add(7 * time.Hour))
	st = &imageState{ni: ni}
	g.Expect(r.renewPresignedURL(context.Background(), st)).To(Succeed())
	g.Expect(arts.presigned).To(Equal(1), "3h of 10h left: not renewed yet")
	g.Expect(st.requeueAfter).To(Equal(time.Hour))

	clk.SetTime(t0.Add(8*time.Hour + time.Minute))
	st = &imageState{ni: ni}
	g.Expect(r.renewPresignedURL(context.Background(), st)).To(Succeed())
	g.Expect(a.PresignedURL).To(Equal("https://s3.example.com/b/img?signature=2"))
	g.Expect(a.PresignedURLExpiresAt.Time).To(Equal(clk.Now().Add(10 * time.Hour)))

	arts.presignErr = errors.New("endpoint down")
	clk.SetTime(clk.Now().Add(9 * time.Hour))
	st = &imageState{ni: ni}
	g.Expect(r.renewPresignedURL(context.Background(), st)).To(Succeed())
	g.Expect(a.PresignedURL).To(Equal("https://s3.example.com/b/img?signature=2"), "a failed renewal keeps the URL")
	g.Expect(st.requeueAfter).To(Equal(time.Minute))

	// While a build is on its way nothing is renewed.
	arts.presignErr = nil
	markReconciling(ni, imagev1.BuildPendingReason, "building")
	st = &imageState{ni: ni}
	g.Expect(r.renewPresignedURL(context.Background(), st)).To(Succeed())
	g.Expect(arts.presigned).To(Equal(2))
}

// A cache hit found again keeps the presigned URL renewed for the same
// artifact instead of signing a new one on every reconcile.
func TestCacheHitKeepsThePresignedURL(t *testing.T) {
	g := NewWithT(t)
	found := &imagev1.Artifact{URL: "s3://b/ns/img/x/img.qcow2", SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Size: 1, Format: imagev1.FormatQCOW2}
	ni := testImage(nil)
	found.SpecDigest = digestOfImage(ni)
	arts := &fakeArtifacts{found: found}
	c := newFakeClient(testenv.Scheme(), interceptor.Funcs{}, ni)
	r := &NodeImageReconciler{Client: c, Recorder: events.NewFakeRecorder(20), Artifacts: arts}
	for range 3 {
		arts.found = found.DeepCopy()
		_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(ni)})
		g.Expect(err).NotTo(HaveOccurred())
	}
	got := &imagev1.NodeImage{}
	g.Expect(c.Get(context.Background(), client.ObjectKeyFromObject(ni), got)).To(Succeed())
	g.Expect(got.Status.Artifact.PresignedURL).To(Equal("https://s3.example.com/b/img?signature=1"))
	g.Expect(arts.presigned).To(Equal(1), "signed once, kept after")
}
