package controller

import (
	"testing"

	. "github.com/onsi/gomega"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

func TestReconcilingAndStalledExclusive(t *testing.T) {
	g := NewWithT(t)
	ni := testImage(nil)
	markStalled(ni, imagev1.InvalidSpecReason, "missing ConfigMap")
	markReconciling(ni, imagev1.ProgressingReason, "reconciling generation 3")
	g.Expect(key(ni, imagev1.StalledCondition)).To(BeEmpty())
	g.Expect(key(ni, imagev1.ReconcilingCondition)).To(Equal("True/Progressing"))
	markStalled(ni, imagev1.InvalidSpecReason, "missing ConfigMap")
	g.Expect(key(ni, imagev1.ReconcilingCondition)).To(BeEmpty())
	g.Expect(key(ni, imagev1.StalledCondition)).To(Equal("True/InvalidSpec"))
}
