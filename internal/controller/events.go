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

// emitTransitions emits one event per transition of Ready (reason = the
// new Ready reason) and of Stalled (reason = the Stalled reason). Failure
// reasons are Warnings.
func emitTransitions(rec events.EventRecorder, obj conditionsObject, before transitions) {
	if rec == nil {
		return
	}
	after := snapshotTransitions(obj)
	if after.ready != before.ready && after.ready != "" {
		c := getCondition(obj, imagev1.ReadyCondition)
		typ := corev1.EventTypeNormal
		if isFailureReason(c.Reason) {
			typ = corev1.EventTypeWarning
		}
		rec.Eventf(obj, nil, typ, c.Reason, "Reconcile", "%s", buildresult.Truncate(c.Message, 1024))
	}
	if after.stalled != before.stalled && after.stalled != "" {
		c := getCondition(obj, imagev1.StalledCondition)
		if after.ready != "False/"+c.Reason { // not the same event twice
			rec.Eventf(obj, nil, corev1.EventTypeWarning, c.Reason, "Reconcile", "%s", buildresult.Truncate(c.Message, 1024))
		}
	}
}
