package controller

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// transitions is what decides whether an event is due.
type transitions struct {
	ready, stalled string
}

func conditionKey(obj conditionsObject, typ string) string {
	if c := getCondition(obj, typ); c != nil && c.Status != metav1.ConditionUnknown {
		return string(c.Status) + "/" + c.Reason
	}
	return ""
}

func snapshotTransitions(obj conditionsObject) transitions {
	return transitions{ready: conditionKey(obj, imagev1.ReadyCondition), stalled: conditionKey(obj, imagev1.StalledCondition)}
}

// maxEventNote is the longest note events.k8s.io accepts.
const maxEventNote = 1024

// event records one event, its note cut to what the API accepts.
func event(rec events.EventRecorder, obj conditionsObject, typ, reason, note string) {
	if rec != nil {
		rec.Eventf(obj, nil, typ, reason, "Reconcile", "%s", buildresult.Truncate(note, maxEventNote))
	}
}

// emitTransitions emits one event per transition of Ready (reason = the
// new Ready reason) and of Stalled (reason = the Stalled reason). Failure
// reasons are Warnings.
func emitTransitions(rec events.EventRecorder, obj conditionsObject, before transitions) {
	after := snapshotTransitions(obj)
	if after.ready != before.ready && after.ready != "" {
		c := getCondition(obj, imagev1.ReadyCondition)
		typ := corev1.EventTypeNormal
		if isFailureReason(c.Reason) {
			typ = corev1.EventTypeWarning
		}
		event(rec, obj, typ, c.Reason, c.Message)
	}
	if after.stalled != before.stalled && after.stalled != "" {
		c := getCondition(obj, imagev1.StalledCondition)
		if after.ready != "False/"+c.Reason { // not the same event twice
			event(rec, obj, corev1.EventTypeWarning, c.Reason, c.Message)
		}
	}
}
