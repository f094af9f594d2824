package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// UpdateCheckPods makes the Pods (and their spec ConfigMaps) that check a
// NodeImage's published artifact for newer packages (spec.updates). The
// pod backend implements it.
type UpdateCheckPods interface {
	// UpdateCheckPod returns the check Pod named name for b, a
	// NodeImageBuild-shaped input that is never created, without owner.
	UpdateCheckPod(b *imagev1.NodeImageBuild, name string) (*corev1.Pod, error)
	// UpdateCheckConfigMap returns the spec ConfigMap of the created Pod.
	UpdateCheckConfigMap(b *imagev1.NodeImageBuild, pod *corev1.Pod) (*corev1.ConfigMap, error)
}

// CheckedDigestAnnotation on an update check Pod holds the spec digest
// whose artifact it checks; a Pod of another digest than the current
// one's is deleted unread.
const CheckedDigestAnnotation = "image.nodeforge.dev/checked-spec-digest"

// UpdateCheckDeadline bounds an update check Pod from its creation,
// Pending time included (the Pod's own activeDeadlineSeconds, shorter,
// counts from its start only); one still running then is a failed check.
const UpdateCheckDeadline = 15 * time.Minute

// maxUpdatesText bounds status.updates.summary and message.
const maxUpdatesText = 1024

// UpdateCheckName is the deterministic name of the update check of the
// artifact of digest that is due at due (zero: never checked before), so
// that a retried or racing reconcile creates no second Pod for it.
func UpdateCheckName(nodeImage, digest string, due time.Time) string {
	h := sha256.Sum256([]byte(digest + "\n" + due.UTC().Format(time.RFC3339)))
	return nodeImage + "-updates-" + hex.EncodeToString(h[:])[:10]
}

// UpdateBuildName is the deterministic name of the BaseUpdated build of
// digest for the newer versions identified by updatesDigest: finding the
// same updates again never starts a second build.
func UpdateBuildName(nodeImage, digest, updatesDigest string) string {
	return BuildName(nodeImage, digest) + "-u" + imagev1.DigestHex(updatesDigest)[:6]
}

// checkUpdates runs spec.updates: when the current digest's artifact is
// published and no build is running or pending, it starts an update check
// Pod every interval, records what a finished one found in
// status.updates, deletes it, and starts a BaseUpdated build when it found
// newer versions (unless spec.updates.rebuild is false). The check itself
// runs in the Pod, never here.
func (r *NodeImageReconciler) checkUpdates(ctx context.Context, st *imageState) error {
	ni := st.ni
	pods, err := r.listUpdateChecks(ctx, ni)
	if err != nil {
		return err
	}
	if !r.updatesEligible(st) {
		// Not now (no spec.updates, a build running, no artifact of this
		// digest): a check in flight is of no use.
		for i := range pods {
			if err := r.deleteUpdateCheck(ctx, &pods[i]); err != nil {
				return err
			}
		}
		return nil
	}
	live := false
	for i := range pods {
		p := &pods[i]
		switch {
		case !p.DeletionTimestamp.IsZero():
			continue
		case p.Annotations[CheckedDigestAnnotation] != st.digest:
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
			if err := r.recordUpdateCheck(ctx, st, p); err != nil {
				return err
			}
		case r.clock().Since(p.CreationTimestamp.Time) >= UpdateCheckDeadline:
			// Its own deadline counts only once it started: one that
			// cannot be scheduled or pull its image would wait forever.
			r.setUpdatesStatus(ni, &imagev1.UpdatesStatus{LastCheckTime: ptrTime(r.clock().Now()), SpecDigest: st.digest,
				Result: imagev1.UpdatesCheckFailed, Message: buildresult.Truncate(fmt.Sprintf("update check Pod %s did not finish within %s (%s)",
					p.Name, UpdateCheckDeadline, podWaiting(p)), maxUpdatesText)})
		default:
			live = true
			r.requeueUntil(st, p.CreationTimestamp.Add(UpdateCheckDeadline))
			// A Pending Pod may wait for its spec (a reconcile that created
			// the Pod failed before the ConfigMap); a started one has it.
			if p.Status.Phase == corev1.PodPending || p.Status.Phase == "" {
				if err := r.ensureUpdateCheckConfigMap(ctx, updateCheckInput(st, p.Name), p); err != nil {
					return err
				}
			}
			continue
		}
		if err := r.deleteUpdateCheck(ctx, p); err != nil {
			return err
		}
	}
	if live || !r.updatesEligible(st) {
		// A running check comes back when its Pod changes; a build started
		// for what it found is mirrored.
		return nil
	}
	due := updatesDue(ni)
	if r.requeueUntil(st, due) {
		return nil
	}
	// The cached NodeImage may not show the result recorded by the last
	// reconcile yet, and the Pod that produced it is gone: read status
	// from the API server before starting a check, or the same check
	// would run again.
	fresh := &imagev1.NodeImage{}
	if err := r.apiReader().Get(ctx, client.ObjectKeyFromObject(ni), fresh); err != nil {
		return fmt.Errorf("reading NodeImage %s: %w", ni.Name, err)
	}
	if u := fresh.Status.Updates; u != nil && u.LastCheckTime != nil &&
		(ni.Status.Updates == nil || ni.Status.Updates.LastCheckTime == nil || ni.Status.Updates.LastCheckTime.Before(u.LastCheckTime)) {
		ni.Status.Updates = u.DeepCopy()
		if due = updatesDue(ni); r.requeueUntil(st, due) {
			return nil
		}
	}
	return r.startUpdateCheck(ctx, st, due)
}

// requeueUntil brings the NodeImage back at due, and reports whether that
// is in the future.
func (r *NodeImageReconciler) requeueUntil(st *imageState, due time.Time) bool {
	wait := due.Sub(r.clock().Now())
	if wait <= 0 {
		return false
	}
	if st.requeueAfter <= 0 || wait < st.requeueAfter {
		st.requeueAfter = wait
	}
	return true
}

// updatesEligible reports whether an update check may run now.
func (r *NodeImageReconciler) updatesEligible(st *imageState) bool {
	ni := st.ni
	if ni.Spec.Updates == nil || r.UpdateChecks == nil || ni.Spec.Destination == nil || ni.Spec.Destination.S3 == nil ||
		st.rebuild != "" || !ni.DeletionTimestamp.IsZero() {
		return false
	}
	if a := ni.Status.Artifact; a == nil || a.SpecDigest != st.digest {
		return false
	}
	for i := range st.builds {
		if b := &st.builds[i]; b.Status.CompletionTime == nil && b.DeletionTimestamp.IsZero() {
			return false
		}
	}
	return true
}

// updatesDue is when the next check is due: spec.updates.interval after
// the last one, or at once when none ran yet.
func updatesDue(ni *imagev1.NodeImage) time.Time {
	u := ni.Status.Updates
	if u == nil || u.LastCheckTime == nil {
		return time.Time{}
	}
	return u.LastCheckTime.Add(max(ni.Spec.Updates.Interval.Duration, imagev1.MinUpdatesInterval))
}

func (r *NodeImageReconciler) listUpdateChecks(ctx context.Context, ni *imagev1.NodeImage) ([]corev1.Pod, error) {
	var list corev1.PodList
	if err := r.List(ctx, &list, client.InNamespace(ni.Namespace), backend.UpdateCheckSelector,
		client.MatchingLabels{backend.LabelNodeImage: ni.Name}); err != nil {
		return nil, fmt.Errorf("listing update check Pods: %w", err)
	}
	pods := list.Items[:0]
	for _, p := range list.Items {
		if metav1.IsControlledBy(&p, ni) {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

// updateCheckInput is the NodeImageBuild-shaped spec of the check Pod
// named name: the resolved content and where its artifact is published.
func updateCheckInput(st *imageState, name string) *imagev1.NodeImageBuild {
	b := newBuild(st, name, imagev1.BuildReasonBaseUpdated)
	b.Labels = nil
	return b
}

// startUpdateCheck creates the check Pod due at due, then its spec
// ConfigMap (owned by the Pod). An invalid builder configuration is
// recorded as a failed check, tried again at the next interval.
func (r *NodeImageReconciler) startUpdateCheck(ctx context.Context, st *imageState, due time.Time) error {
	ni := st.ni
	name := UpdateCheckName(ni.Name, st.digest, due)
	in := updateCheckInput(st, name)
	pod, err := r.UpdateChecks.UpdateCheckPod(in, name)
	if errors.Is(err, backend.ErrInvalidConfig) {
		r.setUpdatesStatus(ni, &imagev1.UpdatesStatus{LastCheckTime: ptrTime(r.clock().Now()), SpecDigest: st.digest,
			Result: imagev1.UpdatesCheckFailed, Message: buildresult.Truncate(err.Error(), maxUpdatesText)})
		r.requeueUntil(st, updatesDue(ni))
		return nil
	}
	if err != nil {
		return err
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[CheckedDigestAnnotation] = st.digest
	if err := controllerutil.SetControllerReference(ni, pod, r.Scheme()); err != nil {
		return err
	}
	switch err := r.Create(ctx, pod); {
	case apierrors.IsAlreadyExists(err):
		// Created by an earlier reconcile the cache has not shown yet.
		if err := r.apiReader().Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return fmt.Errorf("reading update check Pod %s: %w", name, err)
		}
		if !metav1.IsControlledBy(pod, ni) {
			return fmt.Errorf("update check Pod %s exists and is not controlled by NodeImage %s", name, ni.Name)
		}
	case err != nil:
		return fmt.Errorf("creating update check Pod %s: %w", name, err)
	default:
		log.FromContext(ctx).Info("update check started", "pod", name, "specDigest", st.digest)
	}
	return r.ensureUpdateCheckConfigMap(ctx, in, pod)
}

// ensureUpdateCheckConfigMap creates the spec ConfigMap (in) of a check
// Pod unless it exists.
func (r *NodeImageReconciler) ensureUpdateCheckConfigMap(ctx context.Context, in *imagev1.NodeImageBuild, pod *corev1.Pod) error {
	cm, err := r.UpdateChecks.UpdateCheckConfigMap(in, pod)
	if err != nil {
		return err
	}
	if err := r.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating update check ConfigMap %s: %w", cm.Name, err)
	}
	return nil
}

// deleteUpdateCheck deletes a check Pod; its ConfigMap goes with it (owner
// reference).
func (r *NodeImageReconciler) deleteUpdateCheck(ctx context.Context, p *corev1.Pod) error {
	if !p.DeletionTimestamp.IsZero() {
		return nil
	}
	uid := p.UID
	err := r.Delete(ctx, p, client.Preconditions{UID: &uid}, client.PropagationPolicy(metav1.DeletePropagationBackground))
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting update check Pod %s: %w", p.Name, err)
	}
	return nil
}

// recordUpdateCheck writes what a finished check Pod found into
// status.updates, and starts the BaseUpdated build for newer versions.
// Recording the same Pod twice (its deletion failed) gives the same status
// and starts nothing new.
func (r *NodeImageReconciler) recordUpdateCheck(ctx context.Context, st *imageState, p *corev1.Pod) error {
	ni := st.ni
	term := terminatedState(p)
	finished := r.clock().Now()
	if term != nil && !term.FinishedAt.IsZero() {
		finished = term.FinishedAt.Time
	}
	if last := ni.Status.Updates; last != nil && last.LastCheckTime != nil && !last.LastCheckTime.Before(ptrTime(finished)) {
		// Recorded already (the cache still shows the Pod deleted after
		// it), or an older check than the one recorded.
		return nil
	}
	u := &imagev1.UpdatesStatus{LastCheckTime: ptrTime(finished), SpecDigest: st.digest}
	var res *buildresult.UpdatesResult
	var decodeErr error
	if term != nil {
		res, decodeErr = buildresult.DecodeUpdates([]byte(term.Message))
	} else {
		decodeErr = errors.New("no termination message")
	}
	switch {
	case decodeErr != nil:
		u.Result = imagev1.UpdatesCheckFailed
		u.Message = fmt.Sprintf("update check Pod %s %s without a result (%v)", p.Name, podEnd(p, term), decodeErr)
	case res.Outcome != buildresult.OutcomeSucceeded:
		u.Result, u.Message = imagev1.UpdatesCheckFailed, res.Message
	case res.SpecDigest != "" && res.SpecDigest != st.digest:
		u.Result = imagev1.UpdatesCheckFailed
		u.Message = fmt.Sprintf("update check Pod %s checked %s, not the current %s", p.Name, shortDigest(res.SpecDigest), shortDigest(st.digest))
	default:
		u.Checked, u.Upgrades, u.Unavailable = res.Checked, res.Upgrades, res.Unavailable
		u.Summary = res.Summary(maxUpdatesText)
		u.Result = imagev1.UpdatesUpToDate
		if res.Upgrades > 0 {
			u.Result, u.Digest = imagev1.UpdatesAvailable, res.Digest
		}
	}
	u.Message = buildresult.Truncate(u.Message, maxUpdatesText)
	if u.Result == imagev1.UpdatesAvailable && ni.Spec.Updates.RebuildOnUpdates() {
		name, err := r.ensureUpdateBuild(ctx, st, u)
		if err != nil {
			return err
		}
		u.Build = name
	}
	r.setUpdatesStatus(ni, u)
	return nil
}

// setUpdatesStatus replaces status.updates and emits an event when the
// result or the updates found changed.
func (r *NodeImageReconciler) setUpdatesStatus(ni *imagev1.NodeImage, u *imagev1.UpdatesStatus) {
	old := ni.Status.Updates
	ni.Status.Updates = u
	if old != nil && old.Result == u.Result && old.Digest == u.Digest && old.Message == u.Message && old.Build == u.Build {
		return
	}
	switch u.Result {
	case imagev1.UpdatesCheckFailed:
		r.event(ni, corev1.EventTypeWarning, "UpdateCheckFailed", u.Message)
	case imagev1.UpdatesAvailable:
		note := u.Summary
		if u.Build != "" {
			note += "; build " + u.Build + " started"
		}
		r.event(ni, corev1.EventTypeNormal, string(imagev1.UpdatesAvailable), note)
	case imagev1.UpdatesUpToDate:
		if old != nil && old.Result != imagev1.UpdatesUpToDate {
			r.event(ni, corev1.EventTypeNormal, string(imagev1.UpdatesUpToDate), u.Summary)
		}
	}
}

// ensureUpdateBuild creates the BaseUpdated build of the current digest
// for the updates found, unless it exists (finished or not), and mirrors
// it.
func (r *NodeImageReconciler) ensureUpdateBuild(ctx context.Context, st *imageState, u *imagev1.UpdatesStatus) (string, error) {
	ni := st.ni
	name := UpdateBuildName(ni.Name, st.digest, u.Digest)
	if st.byName(name) != nil {
		return name, nil
	}
	b := newBuild(st, name, imagev1.BuildReasonBaseUpdated)
	if err := controllerutil.SetControllerReference(ni, b, r.Scheme()); err != nil {
		return "", err
	}
	switch err := r.Create(ctx, b); {
	case apierrors.IsAlreadyExists(err):
		if err := r.Get(ctx, client.ObjectKeyFromObject(b), b); err != nil {
			return "", err
		}
	case err != nil:
		return "", fmt.Errorf("creating build %s: %w", name, err)
	default:
		log.FromContext(ctx).Info("build created", "build", name, "reason", imagev1.BuildReasonBaseUpdated, "specDigest", st.digest, "updates", u.Digest)
		r.event(ni, corev1.EventTypeNormal, "BuildCreated", fmt.Sprintf("created NodeImageBuild %s (%s): %s", name, imagev1.BuildReasonBaseUpdated, u.Summary))
	}
	st.builds = append([]imagev1.NodeImageBuild{*b}, st.builds...)
	st.desired = &st.builds[0]
	return name, r.mirror(ctx, st)
}

// deleteUpdateChecks deletes the NodeImage's check Pods without waiting:
// nothing is left to wait for once their deletion is requested (the
// garbage collector would remove them with the NodeImage anyway).
func (r *NodeImageReconciler) deleteUpdateChecks(ctx context.Context, ni *imagev1.NodeImage) error {
	pods, err := r.listUpdateChecks(ctx, ni)
	if err != nil {
		return err
	}
	for i := range pods {
		if err := r.deleteUpdateCheck(ctx, &pods[i]); err != nil {
			return err
		}
	}
	return nil
}

func terminatedState(p *corev1.Pod) *corev1.ContainerStateTerminated {
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			return t
		}
	}
	return nil
}

// podEnd says how a check Pod ended, for status.
func podEnd(p *corev1.Pod, term *corev1.ContainerStateTerminated) string {
	s := "ended " + string(p.Status.Phase)
	if p.Status.Reason != "" {
		s += " (" + p.Status.Reason + ")"
	}
	if term != nil {
		s += fmt.Sprintf(", exit code %d", term.ExitCode)
		if term.Reason != "" && term.Reason != "Error" && term.Reason != "Completed" {
			s += " (" + term.Reason + ")"
		}
	}
	return s
}

// podWaiting says what a Pod that has not ended is waiting for.
func podWaiting(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return "waiting: " + w.Reason + " " + w.Message
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return "not scheduled: " + c.Reason + " " + c.Message
		}
	}
	return "phase " + string(p.Status.Phase)
}

func ptrTime(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t.Truncate(time.Second))
	return &mt
}
