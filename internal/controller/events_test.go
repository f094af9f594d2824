package controller

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// TestEventNotesFitTheAPI: events.k8s.io rejects notes over 1024 bytes, and
// an S3 error message can be longer; both reconcilers cut it.
func TestEventNotesFitTheAPI(t *testing.T) {
	rec := events.NewFakeRecorder(2)
	ni := &imagev1.NodeImage{}
	(&NodeImageReconciler{Recorder: rec}).event(ni, corev1.EventTypeWarning, "PruneFailed", strings.Repeat("x", 3000))
	(&NodeImageBuildReconciler{Recorder: rec}).event(&imagev1.NodeImageBuild{}, corev1.EventTypeWarning, "BuildFailed", strings.Repeat("y", 3000))
	for range 2 {
		e := <-rec.Events
		if len(e) > maxEventNote+len("Warning PruneFailed ") {
			t.Errorf("event of %d bytes: %.60s…", len(e), e)
		}
	}
}
