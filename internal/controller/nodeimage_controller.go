package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/metrics"
	"github.com/nodeforge/nodeforge/internal/resolve"
)

// ImageFinalizer lets the NodeImage controller delete builds, and with
// deletionPolicy Delete the published artifacts, before the NodeImage goes.
const ImageFinalizer = "image.nodeforge.dev/nodeimage"

// NodeImageReconciler turns a NodeImage into a published artifact: it finds
// the artifact of the spec digest, or runs exactly one NodeImageBuild for it.
type NodeImageReconciler struct {
	client.Client
	// Recorder emits an event for every transition.
	Recorder events.EventRecorder
	// Artifacts finds, prunes and deletes published artifacts of NodeImages
	// with a destination. Nil disables the lookup (every digest is built).
	Artifacts ArtifactStore
	// APIReader reads Namespaces and ConfigMaps uncached; SetupWithManager
	// sets it.
	APIReader client.Reader
	// Clock is injected for tests; clock.RealClock{} by default.
	Clock clock.Clock
	// UpdateChecks makes the Pods that run spec.updates' checks; nil
	// turns update checks off.
	UpdateChecks UpdateCheckPods
}

var _ reconcile.Reconciler = &NodeImageReconciler{}

func (r *NodeImageReconciler) clock() clock.Clock {
	if r.Clock == nil {
		return clock.RealClock{}
	}
	return r.Clock
}

// +kubebuilder:rbac:groups=image.nodeforge.dev,resources=nodeimages,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=image.nodeforge.dev,resources=nodeimages/status,verbs=get;patch
// +kubebuilder:rbac:groups=image.nodeforge.dev,resources=nodeimages/finalizers,verbs=update
//
// Secrets (get only, through the uncached API reader) are granted per
// managed namespace by config/rbac/secret_reader_role.yaml and a
// RoleBinding, not by this ClusterRole.
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete

// SetupWithManager registers the controller. It watches the metadata of
// the ConfigMaps NodeImages refer to (a missing one stalls the NodeImage,
// an edited one changes its digest) and reads their content through the API
// reader, so ConfigMaps never fill the cache; Secrets and buckets are not
// watched, see StalledRecheckInterval.
func (r *NodeImageReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &imagev1.NodeImage{}, configMapRefsIndex,
		func(o client.Object) []string { return configMapRefs(o.(*imagev1.NodeImage)) }); err != nil {
		return fmt.Errorf("indexing NodeImages by ConfigMap: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("nodeimage").
		For(&imagev1.NodeImage{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&imagev1.NodeImageBuild{}).
		// Update check Pods (spec.updates).
		Owns(&corev1.Pod{}).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.imagesForConfigMap), builder.OnlyMetadata).
		WithOptions(opts).
		Complete(r)
}

// configMapRefsIndex indexes NodeImages by the names of the ConfigMaps
// their spec refers to.
const configMapRefsIndex = ".spec.configMapRefs"

// StalledRecheckInterval is how often a NodeImage stalled on something the
// manager does not watch (the credentials Secret, which it reads uncached,
// or the bucket) is reconciled again, so that fixing the cause is noticed.
const StalledRecheckInterval = 5 * time.Minute

// configMapRefs returns the ConfigMaps a NodeImage's spec refers to.
func configMapRefs(ni *imagev1.NodeImage) []string {
	var names []string
	add := func(ref *corev1.ConfigMapKeySelector) {
		if ref != nil && ref.Name != "" && !slices.Contains(names, ref.Name) {
			names = append(names, ref.Name)
		}
	}
	if k := ni.Spec.Kubernetes; k != nil {
		add(k.AptRepository.SigningKey.ConfigMapKeyRef)
	}
	for i := range ni.Spec.Files {
		add(ni.Spec.Files[i].ConfigMapKeyRef)
	}
	for i := range ni.Spec.Provisioners {
		if a := ni.Spec.Provisioners[i].Ansible; a != nil {
			add(a.PlaybookRef)
		}
	}
	return names
}

// imagesForConfigMap maps a ConfigMap to the NodeImages that refer to it.
func (r *NodeImageReconciler) imagesForConfigMap(ctx context.Context, cm client.Object) []reconcile.Request {
	var list imagev1.NodeImageList
	if err := r.List(ctx, &list, client.InNamespace(cm.GetNamespace()), client.MatchingFields{configMapRefsIndex: cm.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "listing NodeImages that refer to a ConfigMap", "configMap", klog.KObj(cm))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

// apiReader is the uncached reader, or the client when none is set (unit
// tests that build the reconciler by hand).
func (r *NodeImageReconciler) apiReader() client.Reader {
	if r.APIReader == nil {
		return r.Client
	}
	return r.APIReader
}

func imageStatus(o client.Object) any { return o.(*imagev1.NodeImage).Status }

// imageState is what the steps of one reconcile share.
type imageState struct {
	ni      *imagev1.NodeImage
	content *imagev1.ImageContent
	digest  string
	// builds are the NodeImage's builds, newest first.
	builds []imagev1.NodeImageBuild
	// rebuild is a rebuild annotation value not handled yet.
	rebuild string
	// desired is the build that stands for the current digest.
	desired *imagev1.NodeImageBuild
	// found is a published artifact of the current digest (cache hit).
	found *imagev1.Artifact
	// requeueAfter, when set, brings the NodeImage back after a settled
	// reconcile (to renew the presigned URL in status).
	requeueAfter time.Duration
}

type imageStep func(context.Context, *imageState) error

// Reconcile drives one NodeImage.
func (r *NodeImageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	ni := &imagev1.NodeImage{}
	if err := r.Get(ctx, req.NamespacedName, ni); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("nodeimage", klog.KObj(ni)))
	scope, err := newStatusScope(r.Client, r.Recorder, ni, imageStatus)
	if err != nil {
		return ctrl.Result{}, err
	}
	defer scope.close(ctx, &res, &retErr)

	if !ni.DeletionTimestamp.IsZero() {
		return resultOf(r.reconcileDelete(ctx, ni))
	}
	if err := addFinalizer(ctx, r.Client, ni, ImageFinalizer); err != nil {
		return ctrl.Result{}, err
	}
	if ni.Generation != ni.Status.ObservedGeneration {
		// Watchers see a new generation being worked on at once.
		markReconciling(ni, imagev1.ProgressingReason, fmt.Sprintf("reconciling generation %d", ni.Generation))
	}

	st := &imageState{ni: ni}
	if err := r.resolve(ctx, st); err != nil {
		return resultOf(r.stallOnError(ni, err))
	}
	if ni.Spec.Suspend {
		return resultOf(r.stallOnError(ni, r.suspended(ctx, st)))
	}
	for _, step := range []imageStep{r.listBuilds, r.findArtifact, r.ensureBuild, r.supersede, r.mirror, r.pruneHistory, r.renewPresignedURL, r.checkUpdates} {
		if err := step(ctx, st); err != nil {
			return resultOf(r.stallOnError(ni, err))
		}
	}
	return ctrl.Result{RequeueAfter: st.requeueAfter}, nil
}

// stallOnError records a stalling error in the conditions; the generation
// counts as handled.
func (r *NodeImageReconciler) stallOnError(ni *imagev1.NodeImage, err error) error {
	var stall *StallingError
	if errors.As(err, &stall) {
		markStalled(ni, stall.Reason, err.Error())
		setCondition(ni, imagev1.ReadyCondition, metav1.ConditionFalse, stall.Reason, err.Error())
		ni.Status.ObservedGeneration = ni.Generation
	}
	return err
}

// resolve replaces ConfigMap references by their content and computes the
// spec digest.
func (r *NodeImageReconciler) resolve(ctx context.Context, st *imageState) error {
	ni := st.ni
	content, err := resolve.Content(ctx, &ni.Spec.ImageContent, resolve.FromClient(r.apiReader(), ni.Namespace))
	if err != nil {
		if errors.Is(err, resolve.ErrMissingReference) {
			return &StallingError{Reason: imagev1.InvalidSpecReason, Err: err}
		}
		return err
	}
	digest, err := content.Digest()
	if err != nil {
		return &StallingError{Reason: imagev1.InvalidSpecReason, Err: err}
	}
	st.content, st.digest = content, digest
	ni.Status.SpecDigest = digest
	return nil
}

// suspended starts, stops and prunes nothing. A build of the current
// digest that is running finishes on its own and is shown as usual (its
// progress, then its artifact or failure). Without one, the NodeImage is
// settled as asked: the generation counts as handled and, unless the
// artifact in status is the current digest's, Ready is True with reason
// Suspended, so that GitOps health checks (kstatus reads Ready) see it
// Current rather than in progress forever; ArtifactAvailable and
// status.artifact.specDigest tell whether the current spec's image exists.
func (r *NodeImageReconciler) suspended(ctx context.Context, st *imageState) error {
	ni := st.ni
	if err := r.listBuilds(ctx, st); err != nil {
		return err
	}
	if st.desired != nil {
		return r.mirror(ctx, st)
	}
	markSettled(ni)
	r.setArtifactAvailable(ni)
	ni.Status.ObservedGeneration = ni.Generation
	if a := ni.Status.Artifact; a == nil || a.SpecDigest != st.digest {
		msg := "spec.suspend is true: no build is started for " + shortDigest(st.digest) + "; no artifact published yet"
		if a := ni.Status.Artifact; a != nil {
			msg = "spec.suspend is true: no build is started for " + shortDigest(st.digest) + "; the artifact in status is of " + shortDigest(a.SpecDigest)
		}
		setCondition(ni, imagev1.ReadyCondition, metav1.ConditionTrue, imagev1.SuspendedReason, msg)
	}
	return nil
}

// listBuilds lists the NodeImage's builds and picks the one that stands
// for the current digest: the build of a pending rebuild request, else the
// newest build of the digest that was not superseded. A build someone
// canceled with the interrupt annotation still stands for its digest: its
// Interrupted outcome is mirrored and nothing is rebuilt until the spec
// changes or a rebuild is requested.
func (r *NodeImageReconciler) listBuilds(ctx context.Context, st *imageState) error {
	ni := st.ni
	var list imagev1.NodeImageBuildList
	if err := r.List(ctx, &list, client.InNamespace(ni.Namespace), client.MatchingLabels{backend.LabelNodeImage: ni.Name}); err != nil {
		return fmt.Errorf("listing builds: %w", err)
	}
	st.builds = st.builds[:0]
	for _, b := range list.Items {
		if metav1.IsControlledBy(&b, ni) {
			st.builds = append(st.builds, b)
		}
	}
	sort.SliceStable(st.builds, func(i, j int) bool {
		ti, tj := st.builds[i].CreationTimestamp, st.builds[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return tj.Before(&ti)
		}
		return st.builds[i].Name > st.builds[j].Name
	})
	if v := ni.Annotations[imagev1.RebuildAnnotation]; v != "" && v != ni.Status.LastHandledRebuildAt {
		st.rebuild = v
		st.desired = st.byName(rebuildBuildName(ni.Name, st.digest, v))
		return nil
	}
	for i := range st.builds {
		b := &st.builds[i]
		if b.Spec.SpecDigest == st.digest && !superseded(b) && b.DeletionTimestamp.IsZero() {
			st.desired = b
			return nil
		}
	}
	return nil
}

func (st *imageState) byName(name string) *imagev1.NodeImageBuild {
	for i := range st.builds {
		if st.builds[i].Name == name {
			return &st.builds[i]
		}
	}
	return nil
}

// findArtifact looks for a published artifact of the digest when no build
// stands for it (and no rebuild is requested). With spec.destination.oci
// it does not: the registry's tags must move to that artifact too, which
// the build does (its builder finds the artifact, builds nothing and only
// tags its containerDisk).
func (r *NodeImageReconciler) findArtifact(ctx context.Context, st *imageState) error {
	if st.desired != nil || st.rebuild != "" || st.ni.Spec.Destination == nil || r.Artifacts == nil {
		return nil
	}
	if st.ni.Spec.Destination.OCI != nil {
		return nil
	}
	a, err := r.Artifacts.Lookup(ctx, st.ni, st.digest)
	if errors.Is(err, ErrArtifactNotFound) {
		return nil
	}
	if stall := (*StallingError)(nil); errors.As(err, &stall) {
		// A missing Secret or bucket: neither is watched, so look again
		// now and then.
		stall.RequeueAfter = StalledRecheckInterval
		return stall
	}
	if err != nil {
		return err
	}
	st.found = a
	return nil
}

// BuildName is the deterministic name of the build of a digest.
func BuildName(nodeImage, digest string) string {
	return nodeImage + "-" + imagev1.DigestHex(digest)[:10]
}

func rebuildBuildName(nodeImage, digest, requestedAt string) string {
	h := sha256.Sum256([]byte(requestedAt))
	return BuildName(nodeImage, digest) + "-r" + hex.EncodeToString(h[:])[:6]
}

// ensureBuild creates the build of the current digest when none stands
// for it and nothing is published. The name is deterministic, so a racing
// or restarted reconcile creates no duplicate.
func (r *NodeImageReconciler) ensureBuild(ctx context.Context, st *imageState) error {
	ni := st.ni
	if st.desired != nil || st.found != nil {
		if st.rebuild != "" {
			ni.Status.LastHandledRebuildAt = st.rebuild
		}
		return nil
	}
	name := BuildName(ni.Name, st.digest)
	reason := imagev1.BuildReasonSpecChanged
	switch {
	case st.rebuild != "":
		name, reason = rebuildBuildName(ni.Name, st.digest, st.rebuild), imagev1.BuildReasonRebuildRequested
	case len(st.builds) == 0 && ni.Status.Artifact == nil:
		reason = imagev1.BuildReasonFirstBuild
	}
	if old := st.byName(name); old != nil {
		// A superseded build of this digest holds the name: replace it.
		if old.DeletionTimestamp.IsZero() {
			if err := r.Delete(ctx, old, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("deleting interrupted build %s: %w", name, err)
			}
		}
		markReconciling(ni, imagev1.BuildPendingReason, "replacing superseded build "+name)
		return &WaitingError{RequeueAfter: 2 * time.Second, Err: errors.New("waiting for the superseded build to be deleted")}
	}
	b := newBuild(st, name, reason)
	if err := controllerutil.SetControllerReference(ni, b, r.Scheme()); err != nil {
		return err
	}
	err := r.Create(ctx, b)
	switch {
	case apierrors.IsAlreadyExists(err):
		// Created by an earlier reconcile the cache has not shown yet.
		if err := r.Get(ctx, client.ObjectKeyFromObject(b), b); err != nil {
			return err
		}
	case apierrors.IsInvalid(err):
		// The NodeImage was admitted, but what its ConfigMaps hold makes an
		// invalid build (a file over the size limit, a key that is not an
		// armored key): retrying cannot help until the NodeImage or one of
		// its ConfigMaps changes, and both are watched.
		return &StallingError{Reason: imagev1.InvalidSpecReason,
			Err: fmt.Errorf("the content resolved from the referenced ConfigMaps is not valid: %w", err)}
	case err != nil:
		return fmt.Errorf("creating build %s: %w", name, err)
	default:
		log.FromContext(ctx).Info("build created", "build", name, "reason", reason, "specDigest", st.digest)
		r.event(ni, corev1.EventTypeNormal, "BuildCreated", fmt.Sprintf("created NodeImageBuild %s (%s)", name, reason))
	}
	if st.rebuild != "" {
		ni.Status.LastHandledRebuildAt = st.rebuild
	}
	st.builds = append([]imagev1.NodeImageBuild{*b}, st.builds...)
	st.desired = &st.builds[0]
	return nil
}

// newBuild returns the build of the current digest named name.
func newBuild(st *imageState, name string, reason imagev1.BuildReason) *imagev1.NodeImageBuild {
	ni := st.ni
	b := &imagev1.NodeImageBuild{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: ni.Namespace,
			Labels:    map[string]string{backend.LabelNodeImage: ni.Name, backend.LabelManagedBy: "nodeforge"},
		},
		Spec: imagev1.NodeImageBuildSpec{
			NodeImageName: ni.Name,
			SpecDigest:    st.digest,
			Reason:        reason,
			Image:         *st.content.DeepCopy(),
			Destination:   ni.Spec.Destination.DeepCopy(),
			Verification:  *ni.Spec.Verification.DeepCopy(),
			Builder:       *ni.Spec.Builder.DeepCopy(),
		},
	}
	if reason == imagev1.BuildReasonRebuildRequested {
		b.Spec.RebuildRequestedAt = st.rebuild
	}
	return b
}

// supersede interrupts every unfinished build other than the desired one
// and marks it superseded; a canceled build no longer desired is marked
// too, so that returning to its digest builds again.
func (r *NodeImageReconciler) supersede(ctx context.Context, st *imageState) error {
	for i := range st.builds {
		b := &st.builds[i]
		if (st.desired != nil && b.Name == st.desired.Name) || superseded(b) || !b.DeletionTimestamp.IsZero() {
			continue
		}
		_, canceled := b.Annotations[InterruptAnnotation]
		if b.Status.CompletionTime != nil && (!canceled || readyReason(b) != imagev1.InterruptedReason) {
			continue // finished builds stay as they are
		}
		why := fmt.Sprintf("superseded by generation %d of NodeImage %s", st.ni.Generation, st.ni.Name)
		if st.desired != nil {
			why += " (build " + st.desired.Name + ")"
		} else if st.found != nil {
			why += " (artifact already published)"
		}
		base := b.DeepCopy()
		if b.Annotations == nil {
			b.Annotations = map[string]string{}
		}
		b.Annotations[SupersededAnnotation] = why
		if !canceled {
			b.Annotations[InterruptAnnotation] = why
		}
		if err := r.Patch(ctx, b, client.MergeFrom(base)); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("interrupting build %s: %w", b.Name, err)
		}
		if !canceled {
			r.event(st.ni, corev1.EventTypeNormal, imagev1.InterruptedReason, "build "+b.Name+" "+why)
		}
	}
	return nil
}

// mirror records the desired build's progress and outcome, or the cache
// hit, and summarizes Ready.
func (r *NodeImageReconciler) mirror(ctx context.Context, st *imageState) error {
	ni := st.ni
	if st.found != nil {
		if a := ni.Status.Artifact; a == nil || a.SpecDigest != st.found.SpecDigest || a.URL != st.found.URL {
			metrics.CacheHits.Inc()
		} else if a.SHA256 == st.found.SHA256 {
			// The same artifact: keep the presigned URL renewed for it.
			st.found.PresignedURL, st.found.PresignedURLExpiresAt = a.PresignedURL, a.PresignedURLExpiresAt
		}
		ni.Status.Artifact = st.found
		ni.Status.CurrentBuild = nil
		r.settle(ni, imagev1.ArtifactFoundReason, "artifact of "+shortDigest(st.digest)+" already published: "+st.found.URL)
		return nil
	}
	b := st.desired
	ref := &imagev1.BuildReference{Name: b.Name, SpecDigest: b.Spec.SpecDigest, Progress: b.Status.Progress.DeepCopy()}
	ready := getCondition(b, imagev1.ReadyCondition)
	switch {
	case b.Status.CompletionTime != nil && ready != nil && ready.Status == metav1.ConditionTrue && b.Status.Artifact != nil:
		if a := ni.Status.Artifact; a == nil || a.URL != b.Status.Artifact.URL || a.SHA256 != b.Status.Artifact.SHA256 {
			ni.Status.Artifact = b.Status.Artifact.DeepCopy()
			r.pruneArtifacts(ctx, ni)
		}
		ni.Status.CurrentBuild = nil
		r.settle(ni, imagev1.SucceededReason, fmt.Sprintf("build %s published %s", b.Name, b.Status.Artifact.URL))
	case b.Status.CompletionTime != nil:
		reason, detail := imagev1.BuildFailedReason, "failed"
		if ready != nil {
			reason, detail = ready.Reason, ready.Message
		}
		stalled := reason
		if s := getCondition(b, imagev1.StalledCondition); s != nil {
			stalled = s.Reason
		}
		msg := fmt.Sprintf("build %s failed (%s): %s", b.Name, reason, detail)
		ni.Status.LastFailure = &imagev1.FailureSummary{Build: b.Name, Reason: reason, Message: detail, Time: *b.Status.CompletionTime}
		ni.Status.CurrentBuild = ref
		r.setArtifactAvailable(ni)
		// Ready carries the Stalled reason; lastFailure has the build's.
		markStalled(ni, stalled, msg)
		setCondition(ni, imagev1.ReadyCondition, metav1.ConditionFalse, stalled, msg)
		ni.Status.ObservedGeneration = ni.Generation
	default:
		reason, msg := imagev1.BuildPendingReason, "build "+b.Name+" created"
		if ready != nil {
			reason, msg = ready.Reason, "build "+b.Name+": "+ready.Message
		}
		ni.Status.CurrentBuild = ref
		r.setArtifactAvailable(ni)
		removeCondition(ni, imagev1.StalledCondition)
		markReconciling(ni, reason, msg)
		setCondition(ni, imagev1.ReadyCondition, metav1.ConditionFalse, reason, msg)
	}
	return nil
}

// presignRenewal is the part of a presigned URL's lifetime left when the
// manager renews it: a consumer reading status gets a URL valid for at
// least this fraction of presignExpiry.
const presignRenewal = 5 // renew when less than a fifth is left

// renewPresignedURL keeps the presigned URL of the artifact in status
// usable: one that is missing, of unknown age (as the builder recorded
// it) or in the last fifth of its lifetime is replaced by a fresh one, and
// the NodeImage comes back when the new one reaches that point. A failure
// keeps the old URL and is reported as an event; the next reconcile tries
// again.
func (r *NodeImageReconciler) renewPresignedURL(ctx context.Context, st *imageState) error {
	ni := st.ni
	a := ni.Status.Artifact
	if a == nil || r.Artifacts == nil || ni.Spec.Destination == nil || ni.Spec.Destination.S3 == nil ||
		getCondition(ni, imagev1.ReconcilingCondition) != nil {
		return nil
	}
	expiry := presignExpiry(ni)
	margin := expiry / presignRenewal
	now := r.clock().Now()
	if a.PresignedURL != "" && a.PresignedURLExpiresAt != nil {
		if left := a.PresignedURLExpiresAt.Sub(now); left > margin {
			st.requeueAfter = left - margin
			return nil
		}
	}
	u, expires, err := r.Artifacts.Presign(ctx, ni, a)
	if err != nil {
		r.event(ni, corev1.EventTypeWarning, "PresignFailed", "renewing the presigned URL: "+err.Error())
		st.requeueAfter = time.Minute
		return nil
	}
	a.PresignedURL = u
	t := metav1.NewTime(expires)
	a.PresignedURLExpiresAt = &t
	st.requeueAfter = expiry - margin
	return nil
}

// settle marks the generation done with the artifact of the current digest.
func (r *NodeImageReconciler) settle(ni *imagev1.NodeImage, reason, msg string) {
	markSettled(ni)
	r.setArtifactAvailable(ni)
	setCondition(ni, imagev1.ReadyCondition, metav1.ConditionTrue, reason, msg)
	ni.Status.ObservedGeneration = ni.Generation
}

func (r *NodeImageReconciler) setArtifactAvailable(ni *imagev1.NodeImage) {
	if a := ni.Status.Artifact; a != nil {
		setCondition(ni, imagev1.ArtifactAvailableCondition, metav1.ConditionTrue, imagev1.SucceededReason, "artifact "+a.URL)
		return
	}
	setCondition(ni, imagev1.ArtifactAvailableCondition, metav1.ConditionFalse, imagev1.BuildPendingReason, "no artifact published yet")
}

// pruneArtifacts keeps successfulBuildsHistoryLimit published digests. A
// failure is reported, not retried: the next success prunes again.
func (r *NodeImageReconciler) pruneArtifacts(ctx context.Context, ni *imagev1.NodeImage) {
	if ni.Spec.Destination == nil || r.Artifacts == nil {
		return
	}
	if err := r.Artifacts.Prune(ctx, ni, int(successfulLimit(ni))); err != nil {
		r.event(ni, corev1.EventTypeWarning, "PruneFailed", "pruning old artifacts: "+err.Error())
	}
}

func successfulLimit(ni *imagev1.NodeImage) int32 {
	if l := ni.Spec.SuccessfulBuildsHistoryLimit; l != nil {
		return *l
	}
	return imagev1.DefaultSuccessfulBuildsHistoryLimit
}

func failedLimit(ni *imagev1.NodeImage) int32 {
	if l := ni.Spec.FailedBuildsHistoryLimit; l != nil {
		return *l
	}
	return imagev1.DefaultFailedBuildsHistoryLimit
}

// pruneHistory deletes finished builds beyond the history limits, oldest
// first; the desired build is always kept.
func (r *NodeImageReconciler) pruneHistory(ctx context.Context, st *imageState) error {
	var succeeded, failed int32
	for i := range st.builds {
		b := &st.builds[i]
		if b.Status.CompletionTime == nil || !b.DeletionTimestamp.IsZero() {
			continue
		}
		ok := isTrue(b, imagev1.ReadyCondition)
		keep := st.desired != nil && b.Name == st.desired.Name
		if ok {
			succeeded++
			keep = keep || succeeded <= successfulLimit(st.ni)
		} else {
			failed++
			keep = keep || failed <= failedLimit(st.ni)
		}
		if keep {
			continue
		}
		if err := r.Delete(ctx, b, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("pruning build %s: %w", b.Name, err)
		}
		log.FromContext(ctx).Info("pruned build", "build", b.Name)
	}
	return nil
}

func (r *NodeImageReconciler) reconcileDelete(ctx context.Context, ni *imagev1.NodeImage) error {
	if err := r.deleteUpdateChecks(ctx, ni); err != nil {
		// Best effort, never waited for: the garbage collector deletes
		// them with the NodeImage, and a namespace being deleted may
		// already have lost the RoleBinding that lets the manager do it.
		log.FromContext(ctx).Info("update check Pods left to the garbage collector", "error", err.Error())
	}
	var list imagev1.NodeImageBuildList
	if err := r.List(ctx, &list, client.InNamespace(ni.Namespace), client.MatchingLabels{backend.LabelNodeImage: ni.Name}); err != nil {
		return err
	}
	remaining := 0
	for i := range list.Items {
		b := &list.Items[i]
		if !metav1.IsControlledBy(b, ni) {
			continue
		}
		remaining++
		if b.DeletionTimestamp.IsZero() {
			if err := r.Delete(ctx, b, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("deleting build %s: %w", b.Name, err)
			}
		}
	}
	if remaining > 0 {
		return &WaitingError{RequeueAfter: 2 * time.Second, Err: fmt.Errorf("waiting for %d builds to be deleted", remaining)}
	}
	if ni.Spec.DeletionPolicy == imagev1.DeletionPolicyDelete && ni.Spec.Destination != nil && r.Artifacts != nil {
		if err := r.Artifacts.DeleteAll(ctx, ni); err != nil {
			if apierrors.IsNotFound(err) || r.namespaceTerminating(ctx, ni.Namespace) {
				// The credentials Secret is gone, or the namespace is being
				// deleted and with it the Secret and the RoleBinding that
				// lets the manager read it: nothing can be deleted, ever.
				// Leave the artifacts and let the NodeImage (and the
				// namespace) go.
				r.event(ni, corev1.EventTypeWarning, "DeleteFailed",
					"published artifacts are left in place, the credentials cannot be read: "+err.Error())
				return removeFinalizer(ctx, r.Client, ni, ImageFinalizer)
			}
			r.event(ni, corev1.EventTypeWarning, "DeleteFailed", "deleting published artifacts: "+err.Error())
			var stall *StallingError
			if errors.As(err, &stall) {
				// Without credentials nothing can be deleted; retry slowly so
				// that fixing the Secret (or removing the finalizer) helps.
				return &WaitingError{RequeueAfter: time.Minute, Err: err}
			}
			return err
		}
		r.event(ni, corev1.EventTypeNormal, "ArtifactsDeleted", "deleted every published artifact of "+ni.Name)
	}
	return removeFinalizer(ctx, r.Client, ni, ImageFinalizer)
}

// namespaceTerminating reports whether ns is being deleted.
func (r *NodeImageReconciler) namespaceTerminating(ctx context.Context, ns string) bool {
	return namespaceTerminating(ctx, r.apiReader(), ns)
}

// namespaceTerminating reports whether ns is being deleted, read through r
// (an uncached reader: the manager's rights to read Namespaces are get
// only).
func namespaceTerminating(ctx context.Context, r client.Reader, ns string) bool {
	var n corev1.Namespace
	if err := r.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
		return false
	}
	return !n.DeletionTimestamp.IsZero()
}

func (r *NodeImageReconciler) event(obj conditionsObject, typ, reason, note string) {
	event(r.Recorder, obj, typ, reason, note)
}

// superseded reports whether the NodeImage controller interrupted a build
// for a newer spec or rebuild request (not a person canceling it).
func superseded(b *imagev1.NodeImageBuild) bool {
	_, ok := b.Annotations[SupersededAnnotation]
	return ok
}

func shortDigest(d string) string {
	h := imagev1.DigestHex(d)
	if len(h) > 12 {
		h = h[:12]
	}
	return "sha256:" + h
}
