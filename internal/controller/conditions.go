package controller

import (
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// conditionsObject is a NodeImage or a NodeImageBuild.
type conditionsObject interface {
	client.Object
	GetConditions() []metav1.Condition
	SetConditions([]metav1.Condition)
}

const maxConditionMessage = 1024

// ReconcileErrorReason is Ready's reason when a reconcile failed with an
// error that is retried with backoff (an API or object-store error).
const ReconcileErrorReason = "ReconcileError"

// markReconcileError records a retried error in Ready, so that Ready is
// present and says why from the first reconcile on. Errors carry no secret
// values (see S3Opener).
func markReconcileError(obj conditionsObject, err error) {
	setCondition(obj, imagev1.ReadyCondition, metav1.ConditionFalse, ReconcileErrorReason, err.Error())
}

// setCondition sets a condition, keeping its transition time when only the
// reason or message change.
func setCondition(obj conditionsObject, typ string, status metav1.ConditionStatus, reason, message string) {
	conds := obj.GetConditions()
	apimeta.SetStatusCondition(&conds, metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            buildresult.Truncate(message, maxConditionMessage),
		ObservedGeneration: obj.GetGeneration(),
	})
	obj.SetConditions(conds)
}

func removeCondition(obj conditionsObject, typ string) {
	conds := obj.GetConditions()
	apimeta.RemoveStatusCondition(&conds, typ)
	obj.SetConditions(conds)
}

func getCondition(obj conditionsObject, typ string) *metav1.Condition {
	return apimeta.FindStatusCondition(obj.GetConditions(), typ)
}

func isTrue(obj conditionsObject, typ string) bool {
	return apimeta.IsStatusConditionTrue(obj.GetConditions(), typ)
}

// markReconciling sets Reconciling=True (kstatus InProgress) and drops
// Stalled: the two are never True together.
func markReconciling(obj conditionsObject, reason, message string) {
	removeCondition(obj, imagev1.StalledCondition)
	setCondition(obj, imagev1.ReconcilingCondition, metav1.ConditionTrue, reason, message)
}

// markStalled sets Stalled=True (kstatus Failed) and drops Reconciling.
func markStalled(obj conditionsObject, reason, message string) {
	removeCondition(obj, imagev1.ReconcilingCondition)
	setCondition(obj, imagev1.StalledCondition, metav1.ConditionTrue, reason, message)
}

// markSettled drops Reconciling and Stalled: kstatus then follows Ready.
func markSettled(obj conditionsObject) {
	removeCondition(obj, imagev1.ReconcilingCondition)
	removeCondition(obj, imagev1.StalledCondition)
}

// readyReason returns the Ready condition's reason, or "".
func readyReason(obj conditionsObject) string {
	if c := getCondition(obj, imagev1.ReadyCondition); c != nil {
		return c.Reason
	}
	return ""
}

// isFailureReason reports whether a Ready reason is a failure (Warning event).
func isFailureReason(reason string) bool {
	switch reason {
	case imagev1.BuildFailedReason, imagev1.VerificationFailedReason, imagev1.PublishFailedReason,
		imagev1.DeadlineExceededReason, imagev1.RetriesExhaustedReason, imagev1.InvalidSpecReason,
		imagev1.UnsupportedArchitectureReason, imagev1.InterruptedReason, ReconcileErrorReason:
		return true
	}
	return false
}
