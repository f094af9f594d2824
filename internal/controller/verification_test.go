package controller

import (
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// Status shows each reported check with its category and, where the
// builder sent one, its duration; entries of an unknown format are left
// out while the counts stay.
func TestVerificationOf(t *testing.T) {
	res := &buildresult.Result{Accelerator: "tcg", Verification: &buildresult.Verification{Passed: 2, Failed: 1, Skipped: 1,
		Checks: []string{"O+hygiene-logs", "B~boot-ssh", "C+cluster-node-ready@302.5", "C-cluster-test-pod-running@12", "z?future"}}}
	v := verificationOf(res)
	if v.Passed != 2 || v.Failed != 1 || v.Skipped != 1 || v.Accelerator != "tcg" || len(v.Checks) != 4 {
		t.Fatalf("got %+v", v)
	}
	want := []struct {
		name     string
		category imagev1.CheckCategory
		passed   bool
		message  string
		duration time.Duration
	}{
		{"hygiene-logs", imagev1.CheckCategoryOffline, true, "", 0},
		{"boot-ssh", imagev1.CheckCategoryBoot, false, "skipped", 0},
		{"cluster-node-ready", imagev1.CheckCategoryCluster, true, "", 302500 * time.Millisecond},
		{"cluster-test-pod-running", imagev1.CheckCategoryCluster, false, "", 12 * time.Second},
	}
	for i, w := range want {
		c := v.Checks[i]
		var d time.Duration
		if c.Duration != nil {
			d = c.Duration.Duration
		}
		if c.Name != w.name || c.Category != w.category || c.Passed != w.passed || c.Message != w.message || d != w.duration || !c.Required {
			t.Errorf("check %d = %+v (duration %s), want %+v", i, c, d, w)
		}
	}
}
