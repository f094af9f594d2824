package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/metrics"
)

// BuildFinalizer lets the build controller delete a build's builders and
// spec ConfigMap before the build goes away.
const BuildFinalizer = "image.nodeforge.dev/build"

// InterruptAnnotation on a NodeImageBuild asks the build controller to stop
// the build: its builder is deleted and the build ends with reason
// Interrupted. The value is the reason, such as "superseded by B". The
// NodeImage controller sets it when a newer spec supersedes a build; people
// may set it to cancel a build.
const InterruptAnnotation = "image.nodeforge.dev/interrupt"

// SupersededAnnotation marks a build the NodeImage controller superseded
// (value: by what); it sets it together with InterruptAnnotation. A build
// of the current digest that is superseded is replaced by a new build; one
// canceled by a person (InterruptAnnotation alone) is not.
const SupersededAnnotation = "image.nodeforge.dev/superseded"

// Defaults of the build controller.
const (
	DefaultRetryBackoff    = 10 * time.Second
	DefaultMaxRetryBackoff = 5 * time.Minute
	DefaultPollInterval    = 15 * time.Second
	DefaultQueueRecheck    = 30 * time.Second
)

// NodeImageBuildReconciler runs the attempts of a NodeImageBuild through a
// backend and records what it observes of them.
type NodeImageBuildReconciler struct {
	client.Client
	// Recorder emits an event for every transition.
	Recorder events.EventRecorder
	// Clock is injected for tests; clock.RealClock{} by default.
	Clock clock.Clock
	// Backends by spec.builder.backend; the Pod backend is required.
	Backends map[imagev1.BuilderBackend]backend.Backend
	// RetryBackoff is the wait after the first failed attempt; it doubles
	// per attempt up to MaxRetryBackoff.
	RetryBackoff, MaxRetryBackoff time.Duration
	// PollInterval is how often a running builder's progress is read.
	PollInterval time.Duration
	// MaxConcurrentBuilds limits running builds cluster-wide (0: no limit),
	// or across Namespaces when those are set.
	MaxConcurrentBuilds int
	// Namespaces are the manager's --build-namespace: builders are counted
	// in these namespaces only, where its rights may end. Empty: all.
	Namespaces []string
	// APIReader reads live builders uncached for the build limit; the
	// manager's API reader by default (SetupWithManager), else Client.
	APIReader client.Reader

	// slots is held from counting the running builds to creating a
	// builder, so that concurrent reconciles cannot both take the last
	// slot.
	slots sync.Mutex
}

var _ reconcile.Reconciler = &NodeImageBuildReconciler{}

// +kubebuilder:rbac:groups=image.nodeforge.dev,resources=nodeimagebuilds,verbs=get;list;watch;create;delete;patch
// +kubebuilder:rbac:groups=image.nodeforge.dev,resources=nodeimagebuilds/status,verbs=get;patch
// +kubebuilder:rbac:groups=image.nodeforge.dev,resources=nodeimagebuilds/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=pods/log,verbs=get
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller; it watches the builder kinds
// of the configured backends.
func (r *NodeImageBuildReconciler) SetupWithManager(mgr ctrl.Manager, owned []client.Object, opts controller.Options) error {
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("nodeimagebuild").
		For(&imagev1.NodeImageBuild{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&corev1.Pod{}).
		WithOptions(opts)
	for _, o := range owned {
		b = b.Owns(o)
	}
	return b.Complete(r)
}

// apiReader is the uncached reader, or the client when none is set (unit
// tests that build the reconciler by hand).
func (r *NodeImageBuildReconciler) apiReader() client.Reader {
	if r.APIReader == nil {
		return r.Client
	}
	return r.APIReader
}

func (r *NodeImageBuildReconciler) clock() clock.Clock {
	if r.Clock == nil {
		return clock.RealClock{}
	}
	return r.Clock
}

func buildStatus(o client.Object) any { return o.(*imagev1.NodeImageBuild).Status }

// Reconcile drives one NodeImageBuild.
func (r *NodeImageBuildReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	build := &imagev1.NodeImageBuild{}
	if err := r.Get(ctx, req.NamespacedName, build); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithValues("nodeimagebuild", klog.KObj(build)))
	scope, err := newStatusScope(r.Client, r.Recorder, build, buildStatus)
	if err != nil {
		return ctrl.Result{}, err
	}
	defer scope.close(ctx, &res, &retErr)

	if !build.DeletionTimestamp.IsZero() {
		return resultOf(r.reconcileDelete(ctx, build))
	}
	if err := addFinalizer(ctx, r.Client, build, BuildFinalizer); err != nil {
		return ctrl.Result{}, err
	}
	return resultOf(r.reconcileBuild(ctx, build))
}

func (r *NodeImageBuildReconciler) backendFor(b *imagev1.NodeImageBuild) (backend.Backend, error) {
	name := b.Spec.Builder.Backend
	if name == "" {
		name = imagev1.BuilderBackendPod
	}
	be, ok := r.Backends[name]
	if !ok {
		return nil, &StallingError{Reason: imagev1.InvalidSpecReason, Err: fmt.Errorf("builder backend %s is not enabled in this manager", name)}
	}
	return be, nil
}

func (r *NodeImageBuildReconciler) reconcileDelete(ctx context.Context, b *imagev1.NodeImageBuild) error {
	if be, err := r.backendFor(b); err == nil {
		gone, err := be.Delete(ctx, b, 0)
		if err != nil {
			if namespaceTerminating(ctx, r.apiReader(), b.Namespace) {
				// The namespace is being deleted, and with it the builders
				// and perhaps already the RoleBinding that lets the manager
				// delete them (the per-namespace mode): leave them to the
				// namespace's deletion rather than hold it up forever.
				r.event(b, corev1.EventTypeWarning, "DeleteFailed",
					"builders are left to the namespace's deletion: "+err.Error())
				return removeFinalizer(ctx, r.Client, b, BuildFinalizer)
			}
			return err
		}
		if !gone {
			return &WaitingError{Reason: "Deleting", RequeueAfter: 2 * time.Second, Err: errors.New("waiting for builders to be deleted")}
		}
	}
	return removeFinalizer(ctx, r.Client, b, BuildFinalizer)
}

// reconcileBuild decides from the observed builder of the current attempt.
func (r *NodeImageBuildReconciler) reconcileBuild(ctx context.Context, b *imagev1.NodeImageBuild) error {
	if b.Status.CompletionTime != nil {
		// The outcome is recorded and the spec is immutable: nothing to do.
		return nil
	}
	be, err := r.backendFor(b)
	if err != nil {
		var stall *StallingError
		if errors.As(err, &stall) {
			r.finish(b, stall.Reason, err.Error())
			markStalled(b, stall.Reason, err.Error())
		}
		return err
	}
	if msg, ok := b.Annotations[InterruptAnnotation]; ok {
		return r.interrupt(ctx, b, be, msg)
	}

	n := b.Status.Attempts
	if n == 0 {
		return r.startAttempt(ctx, b, be, 1)
	}
	obs, err := be.Observe(ctx, b, n)
	if err != nil {
		return err
	}
	b.Status.BuilderRef = &imagev1.BuilderReference{Kind: obs.Kind, Name: obs.Name}
	if obs.Progress != nil {
		b.Status.Progress = &imagev1.Progress{Step: obs.Progress.Step, Percent: obs.Progress.Percent, Message: obs.Progress.Message}
	}
	timeout := buildTimeout(b)
	started := obs.CreatedAt
	if started.IsZero() && b.Status.StartTime != nil {
		started = b.Status.StartTime.Time
	}

	switch obs.Phase {
	case backend.PhaseNotFound:
		// A builder this controller deleted (deadline, interruption) is
		// gone before the cache shows the status written about it: decide
		// only on the live object, not on a stale copy.
		if behind, err := r.cacheBehind(ctx, b); err != nil || behind {
			if err != nil {
				return err
			}
			return &WaitingError{Reason: "CacheSync", RequeueAfter: time.Second,
				Err: fmt.Errorf("builder %s %s is gone and the cached build is older than the live one; looking again", obs.Kind, obs.Name)}
		}
		return r.attemptFailed(ctx, b, be, n, obs, imagev1.BuildFailedReason,
			fmt.Sprintf("builder %s %s disappeared before it finished", obs.Kind, obs.Name))
	case backend.PhasePending, backend.PhaseRunning:
		if elapsed := r.clock().Since(started); elapsed >= timeout {
			if _, err := be.Delete(ctx, b, n); err != nil {
				return err
			}
			obs.FinishedAt = time.Time{} // deleted now; retry without waiting
			return r.attemptFailed(ctx, b, be, n, obs, imagev1.DeadlineExceededReason,
				fmt.Sprintf("attempt %d did not finish within %s (it was %s); builder deleted", n, timeout, phaseWord(obs.Phase)))
		}
		wait := min(timeout-r.clock().Since(started), r.pollInterval())
		if obs.Phase == backend.PhasePending {
			msg := fmt.Sprintf("attempt %d: builder %s %s is pending", n, obs.Kind, obs.Name)
			if obs.Message != "" {
				msg += ": " + obs.Message
			}
			r.markInProgress(b, imagev1.BuildPendingReason, msg)
			return &WaitingError{Reason: imagev1.BuildPendingReason, RequeueAfter: wait, Err: errors.New(msg)}
		}
		msg := fmt.Sprintf("attempt %d: building", n)
		if p := b.Status.Progress; p != nil {
			msg = fmt.Sprintf("attempt %d: %s (%d%%)", n, p.Step, p.Percent)
		}
		r.markInProgress(b, imagev1.BuildingReason, msg)
		return &WaitingError{Reason: imagev1.BuildingReason, RequeueAfter: wait, Err: errors.New(msg)}
	case backend.PhaseSucceeded:
		if obs.Result == nil || obs.Result.Outcome != buildresult.OutcomeSucceeded {
			return r.attemptFailed(ctx, b, be, n, obs, imagev1.BuildFailedReason,
				fmt.Sprintf("builder exited successfully without a valid result: %v", obs.ResultError))
		}
		if err := obs.Result.ValidateFor(b.Spec.Destination != nil); err != nil {
			return r.attemptFailed(ctx, b, be, n, obs, imagev1.BuildFailedReason,
				fmt.Sprintf("builder exited successfully without a valid result: %v", err))
		}
		r.succeed(ctx, b, obs)
		return nil
	default: // PhaseFailed
		reason, msg := failureOf(obs)
		return r.attemptFailed(ctx, b, be, n, obs, reason, msg)
	}
}

// waitForBuilderName waits, within the build's timeout, for the name of
// attempt n's builder, which an object this build does not control holds
// (the builder of an earlier build of the same name, still terminating).
// The attempt is not started: nothing of someone else's is adopted or
// deleted, and a name that never frees ends the build DeadlineExceeded
// instead of a reconcile error forever.
func (r *NodeImageBuildReconciler) waitForBuilderName(b *imagev1.NodeImageBuild, n int32, inUse error) error {
	since := b.CreationTimestamp.Time
	if b.Status.StartTime != nil {
		since = b.Status.StartTime.Time
	}
	timeout := buildTimeout(b)
	elapsed := r.clock().Since(since)
	if elapsed >= timeout {
		msg := fmt.Sprintf("attempt %d could not start within %s: %v", n, timeout, inUse)
		metrics.BuildsFailed.WithLabelValues(imagev1.DeadlineExceededReason, "true").Inc()
		r.finish(b, imagev1.DeadlineExceededReason, msg)
		markStalled(b, imagev1.DeadlineExceededReason, msg)
		return &StallingError{Reason: imagev1.DeadlineExceededReason, Err: errors.New(msg)}
	}
	msg := fmt.Sprintf("attempt %d: waiting for the builder's name: %v", n, inUse)
	r.markInProgress(b, imagev1.BuildPendingReason, msg)
	return &WaitingError{Reason: imagev1.BuildPendingReason, RequeueAfter: min(timeout-elapsed, 2*time.Second), Err: errors.New(msg)}
}

func phaseWord(p backend.Phase) string {
	if p == backend.PhasePending {
		return "still pending"
	}
	return "running"
}

func buildTimeout(b *imagev1.NodeImageBuild) time.Duration {
	if t := b.Spec.Builder.Timeout; t != nil && t.Duration > 0 {
		return t.Duration
	}
	return imagev1.DefaultBuildTimeout
}

func buildRetries(b *imagev1.NodeImageBuild) int32 {
	if r := b.Spec.Builder.Retries; r != nil {
		return *r
	}
	return imagev1.DefaultBuildRetries
}

func (r *NodeImageBuildReconciler) pollInterval() time.Duration {
	if r.PollInterval > 0 {
		return r.PollInterval
	}
	return DefaultPollInterval
}

// retryBackoff is the wait after failed attempt n.
func (r *NodeImageBuildReconciler) retryBackoff(n int32) time.Duration {
	base, maxWait := r.RetryBackoff, r.MaxRetryBackoff
	if base == 0 {
		base = DefaultRetryBackoff
	}
	if maxWait == 0 {
		maxWait = DefaultMaxRetryBackoff
	}
	d := base
	for i := int32(1); i < n && d < maxWait; i++ {
		d *= 2
	}
	return min(d, maxWait)
}

// failureOf says why a builder failed, from its result when it wrote one.
func failureOf(obs backend.Observation) (reason, message string) {
	if obs.DeadlineExceeded {
		return imagev1.DeadlineExceededReason, "the builder ran past its active deadline: " + obs.Message
	}
	if res := obs.Result; res != nil && res.Outcome == buildresult.OutcomeFailed {
		msg := res.Message
		if res.Step != "" {
			msg = fmt.Sprintf("step %s: %s", res.Step, res.Message)
		}
		if v := res.Verification; v != nil && len(v.FailedChecks) > 0 {
			msg += fmt.Sprintf(" (failed checks: %v)", v.FailedChecks)
		}
		return res.Reason, msg
	}
	if obs.Message != "" {
		return imagev1.BuildFailedReason, obs.Message
	}
	return imagev1.BuildFailedReason, "the builder failed without a result"
}

// startAttempt creates the builder of attempt n, unless the build must
// wait for a slot.
func (r *NodeImageBuildReconciler) startAttempt(ctx context.Context, b *imagev1.NodeImageBuild, be backend.Backend, n int32) error {
	if r.MaxConcurrentBuilds > 0 {
		r.slots.Lock()
		defer r.slots.Unlock()
	}
	if n == 1 && r.MaxConcurrentBuilds > 0 {
		running, queued, err := r.countBuilds(ctx, b)
		if err != nil {
			return err
		}
		metrics.QueueDepth.Set(float64(queued))
		if running >= r.MaxConcurrentBuilds {
			msg := fmt.Sprintf("waiting for a build slot: %d of %d builds are running", running, r.MaxConcurrentBuilds)
			r.markInProgress(b, imagev1.BuildPendingReason, msg)
			return &WaitingError{Reason: imagev1.BuildPendingReason, RequeueAfter: DefaultQueueRecheck, Err: errors.New(msg)}
		}
	}
	if err := be.Ensure(ctx, b, n); err != nil {
		if errors.Is(err, backend.ErrNameInUse) {
			return r.waitForBuilderName(b, n, err)
		}
		if !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) && !errors.Is(err, backend.ErrInvalidConfig) {
			return err
		}
		// Retrying cannot fix a rejected builder or a builder
		// configuration error: the build ends Stalled.
		msg := fmt.Sprintf("attempt %d: cannot create the builder: %v", n, err)
		metrics.BuildsFailed.WithLabelValues(imagev1.InvalidSpecReason, "true").Inc()
		r.finish(b, imagev1.InvalidSpecReason, msg)
		markStalled(b, imagev1.InvalidSpecReason, msg)
		return &StallingError{Reason: imagev1.InvalidSpecReason, Err: errors.New(msg)}
	}
	now := metav1.NewTime(r.clock().Now())
	if b.Status.StartTime == nil {
		b.Status.StartTime = &now
	}
	if b.Status.Attempts < n {
		b.Status.Attempts = n
		metrics.BuildsStarted.WithLabelValues(be.Kind()).Inc()
	}
	b.Status.BuilderRef = &imagev1.BuilderReference{Kind: be.Kind(), Name: backend.BuilderName(b.Name, n)}
	b.Status.Progress = nil
	if n > 1 {
		// The step conditions describe one attempt; the new one has
		// reached none of the steps yet.
		for _, c := range []string{imagev1.BuiltCondition, imagev1.VerifiedCondition, imagev1.PublishedCondition} {
			removeCondition(b, c)
		}
	}
	msg := fmt.Sprintf("attempt %d of %d: created %s %s", n, buildRetries(b)+1, be.Kind(), backend.BuilderName(b.Name, n))
	r.markInProgress(b, imagev1.BuildPendingReason, msg)
	return &WaitingError{Reason: imagev1.BuildPendingReason, RequeueAfter: r.pollInterval(), Err: errors.New(msg)}
}

// countBuilds counts the builds other than b that hold a slot (running)
// and the builds that wait for their first builder (queued, b included).
// A build holds a slot when the API server shows a live builder of it, or
// while it is unfinished after its first attempt (between attempts); the
// cache alone lags behind a builder just created by another reconcile.
func (r *NodeImageBuildReconciler) countBuilds(ctx context.Context, b *imagev1.NodeImageBuild) (running, queued int, err error) {
	holding := map[client.ObjectKey]bool{}
	live, err := r.liveBuilds(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, k := range live {
		holding[k] = true
	}
	var list imagev1.NodeImageBuildList
	if err := r.List(ctx, &list); err != nil {
		return 0, 0, fmt.Errorf("listing builds: %w", err)
	}
	for i := range list.Items {
		o := &list.Items[i]
		if o.Status.CompletionTime != nil || !o.DeletionTimestamp.IsZero() {
			continue
		}
		k := client.ObjectKeyFromObject(o)
		switch {
		case o.Status.Attempts > 0:
			holding[k] = true
		case !holding[k] && o.UID != b.UID:
			queued++
		}
	}
	delete(holding, client.ObjectKeyFromObject(b))
	return len(holding), queued + 1, nil
}

// cacheBehind reports whether the API server holds a newer version of b
// than the one this reconcile read from the cache.
func (r *NodeImageBuildReconciler) cacheBehind(ctx context.Context, b *imagev1.NodeImageBuild) (bool, error) {
	if r.APIReader == nil {
		return false, nil
	}
	var live imagev1.NodeImageBuild
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(b), &live); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return live.ResourceVersion != b.ResourceVersion, nil
}

// liveBuilds lists the builds with a live builder, from every backend.
func (r *NodeImageBuildReconciler) liveBuilds(ctx context.Context) ([]client.ObjectKey, error) {
	reader := r.apiReader()
	var keys []client.ObjectKey
	seen := map[backend.Backend]bool{}
	for _, be := range r.Backends {
		if seen[be] {
			continue
		}
		seen[be] = true
		var k []client.ObjectKey
		var err error
		switch l := be.(type) {
		case backend.ActiveLister:
			k, err = l.ActiveBuilds(ctx, r.Namespaces)
		default:
			if be.Kind() != "Pod" {
				continue
			}
			k, err = backend.ActivePodBuilds(ctx, reader, r.Namespaces)
		}
		if err != nil {
			return nil, err
		}
		keys = append(keys, k...)
	}
	return keys, nil
}

// attemptFailed retries attempt n after a backoff, or ends the build.
func (r *NodeImageBuildReconciler) attemptFailed(ctx context.Context, b *imagev1.NodeImageBuild, be backend.Backend, n int32, obs backend.Observation, reason, msg string) error {
	b.Status.LogExcerpt = buildresult.TailBytes(obs.LogTail, 4096)
	r.setStepConditions(b, obs.Result, reason)
	retries := buildRetries(b)
	total := retries + 1
	if n <= retries {
		if !obs.FinishedAt.IsZero() {
			if wait := r.retryBackoff(n) - r.clock().Since(obs.FinishedAt); wait > 0 {
				text := fmt.Sprintf("attempt %d of %d failed: %s; retrying in %s", n, total, msg, wait.Round(time.Second))
				setCondition(b, imagev1.ReadyCondition, metav1.ConditionFalse, reason, text)
				markReconciling(b, reason, text)
				return &WaitingError{Reason: reason, RequeueAfter: wait, Err: errors.New(text)}
			}
		}
		metrics.BuildsFailed.WithLabelValues(reason, "false").Inc()
		r.event(b, corev1.EventTypeWarning, "Retrying", fmt.Sprintf("attempt %d of %d failed: %s: %s; starting attempt %d", n, total, reason, msg, n+1))
		return r.startAttempt(ctx, b, be, n+1)
	}
	metrics.BuildsFailed.WithLabelValues(reason, "true").Inc()
	observeDuration(obs, r.clock().Now(), stepOf(b, obs))
	text := fmt.Sprintf("attempt %d of %d failed: %s", n, total, msg)
	r.finish(b, reason, text)
	if total > 1 {
		markStalled(b, imagev1.RetriesExhaustedReason, fmt.Sprintf("all %d attempts failed; last: %s: %s", total, reason, msg))
	} else {
		markStalled(b, reason, text)
	}
	return &StallingError{Reason: reason, Err: errors.New(text)}
}

func stepOf(b *imagev1.NodeImageBuild, obs backend.Observation) string {
	if obs.Result != nil && obs.Result.Step != "" {
		return obs.Result.Step
	}
	if b.Status.Progress != nil && b.Status.Progress.Step != "" {
		return b.Status.Progress.Step
	}
	return "unknown"
}

func observeDuration(obs backend.Observation, now time.Time, step string) {
	if obs.CreatedAt.IsZero() {
		return
	}
	end := obs.FinishedAt
	if end.IsZero() {
		end = now
	}
	metrics.BuildDuration.WithLabelValues(step).Observe(end.Sub(obs.CreatedAt).Seconds())
}

// setStepConditions records how far the attempt got: Built, Verified and
// Published, from the failure reason.
func (r *NodeImageBuildReconciler) setStepConditions(b *imagev1.NodeImageBuild, res *buildresult.Result, reason string) {
	msg := reason
	if res != nil && res.Message != "" {
		msg = res.Message
	}
	switch reason {
	case imagev1.VerificationFailedReason:
		setCondition(b, imagev1.BuiltCondition, metav1.ConditionTrue, imagev1.SucceededReason, "image assembled")
		setCondition(b, imagev1.VerifiedCondition, metav1.ConditionFalse, reason, msg)
	case imagev1.PublishFailedReason:
		setCondition(b, imagev1.BuiltCondition, metav1.ConditionTrue, imagev1.SucceededReason, "image assembled")
		setCondition(b, imagev1.VerifiedCondition, metav1.ConditionTrue, imagev1.SucceededReason, "required checks passed")
		setCondition(b, imagev1.PublishedCondition, metav1.ConditionFalse, reason, msg)
	case imagev1.BuildFailedReason:
		setCondition(b, imagev1.BuiltCondition, metav1.ConditionFalse, reason, msg)
	}
	if res != nil && res.Verification != nil {
		b.Status.Verification = verificationOf(res)
	}
}

func verificationOf(res *buildresult.Result) *imagev1.VerificationResults {
	v := res.Verification
	out := &imagev1.VerificationResults{Accelerator: res.Accelerator, AcceleratorNote: buildresult.Truncate(res.AcceleratorNote, 1024),
		Passed: v.Passed, Failed: v.Failed, Skipped: v.Skipped}
	for _, s := range v.Checks {
		c, err := buildresult.DecodeCheck(s)
		if err != nil {
			continue // a newer builder's format; the counts still hold
		}
		r := imagev1.CheckResult{Name: c.Name, Category: imagev1.CheckCategory(c.Category), Passed: c.Passed, Required: c.Required}
		if c.Skipped {
			r.Message = "skipped"
		}
		if c.Duration > 0 {
			r.Duration = &metav1.Duration{Duration: c.Duration}
		}
		out.Checks = append(out.Checks, r)
	}
	return out
}

// finish ends the build without an artifact.
func (r *NodeImageBuildReconciler) finish(b *imagev1.NodeImageBuild, reason, msg string) {
	now := metav1.NewTime(r.clock().Now())
	b.Status.CompletionTime = &now
	b.Status.ObservedGeneration = b.Generation
	setCondition(b, imagev1.ReadyCondition, metav1.ConditionFalse, reason, msg)
}

func (r *NodeImageBuildReconciler) succeed(ctx context.Context, b *imagev1.NodeImageBuild, obs backend.Observation) {
	res := obs.Result
	a := res.Artifact
	builtAt := obs.FinishedAt
	if builtAt.IsZero() {
		builtAt = r.clock().Now()
	}
	b.Status.Artifact = &imagev1.Artifact{
		URL: a.URL, PresignedURL: a.PresignedURL, ManifestURL: a.ManifestURL,
		SHA256: a.SHA256, Size: a.Size, VirtualSize: a.VirtualSize,
		Format: imagev1.Format(a.Format), BuiltAt: metav1.NewTime(builtAt), SpecDigest: b.Spec.SpecDigest,
		Revision: a.Revision, ContainerDisk: a.ContainerDisk,
	}
	setAttestationURLs(b.Status.Artifact, companionURLs(a))
	if res.Verification != nil {
		b.Status.Verification = verificationOf(res)
	}
	if c := res.Changes; c != nil {
		b.Status.PackageChanges = &imagev1.PackageChanges{PreviousSpecDigest: c.Previous,
			Upgraded: c.Upgraded, Downgraded: c.Downgraded, Added: c.Added, Removed: c.Removed,
			Summary: buildresult.Truncate(c.Summary, 1024)}
	}
	b.Status.Progress = &imagev1.Progress{Step: "done", Percent: 100}
	b.Status.LogExcerpt = ""
	now := metav1.NewTime(r.clock().Now())
	b.Status.CompletionTime = &now
	b.Status.ObservedGeneration = b.Generation
	setCondition(b, imagev1.BuiltCondition, metav1.ConditionTrue, imagev1.SucceededReason, "image assembled")
	setCondition(b, imagev1.VerifiedCondition, metav1.ConditionTrue, imagev1.SucceededReason, "required checks passed")
	setCondition(b, imagev1.PublishedCondition, metav1.ConditionTrue, imagev1.SucceededReason, "published "+a.URL)
	setCondition(b, imagev1.ReadyCondition, metav1.ConditionTrue, imagev1.SucceededReason,
		fmt.Sprintf("published %s (sha256 %s)", a.URL, shortHex(a.SHA256)))
	markSettled(b)
	metrics.BuildsSucceeded.Inc()
	metrics.ArtifactSize.Observe(float64(a.Size))
	observeDuration(obs, r.clock().Now(), "complete")
	log.FromContext(ctx).Info("build succeeded", "url", a.URL, "sha256", a.SHA256, "size", a.Size)
}

func shortHex(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// interrupt deletes the builders and ends the build as Interrupted. Every
// labeled builder goes (attempt 0), not only the one status records: a
// builder may have been created by a reconcile whose status patch failed.
func (r *NodeImageBuildReconciler) interrupt(ctx context.Context, b *imagev1.NodeImageBuild, be backend.Backend, why string) error {
	if _, err := be.Delete(ctx, b, 0); err != nil {
		return err
	}
	if why == "" {
		why = "interrupted by the " + InterruptAnnotation + " annotation"
	}
	metrics.BuildsFailed.WithLabelValues(imagev1.InterruptedReason, "true").Inc()
	r.finish(b, imagev1.InterruptedReason, why)
	markStalled(b, imagev1.InterruptedReason, why)
	return nil
}

func (r *NodeImageBuildReconciler) markInProgress(b *imagev1.NodeImageBuild, reason, msg string) {
	setCondition(b, imagev1.ReadyCondition, metav1.ConditionFalse, reason, msg)
	removeCondition(b, imagev1.StalledCondition)
	markReconciling(b, reason, msg)
}

func (r *NodeImageBuildReconciler) event(obj conditionsObject, typ, reason, note string) {
	event(r.Recorder, obj, typ, reason, note)
}
