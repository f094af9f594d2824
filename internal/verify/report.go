package verify

import (
	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// Category says how a check looks at the image.
type Category = imagev1.CheckCategory

// Check categories.
const (
	Offline = imagev1.CheckCategoryOffline
	Boot    = imagev1.CheckCategoryBoot
)

// Check is one verification check's result. Its JSON form is the one
// `nodeforge verify --json` writes and the build manifest embeds.
type Check struct {
	Name            string   `json:"name"`
	Category        Category `json:"category"`
	Passed          bool     `json:"passed"`
	Skipped         bool     `json:"skipped,omitempty"`
	Required        bool     `json:"required"`
	Message         string   `json:"message,omitempty"`
	DurationSeconds float64  `json:"durationSeconds"`
}

// Summary counts check outcomes.
type Summary struct {
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
}

// Report is the outcome of verifying one image.
type Report struct {
	Checks  []Check `json:"checks"`
	Summary Summary `json:"summary"`
	// Accelerator the boot test ran under ("kvm" or "tcg"); empty without a boot test.
	Accelerator string `json:"accelerator,omitempty"`
	// AcceleratorNote says why the boot test ran under TCG when it chose
	// the accelerator itself: KVM unavailable, or unable to run the guest.
	AcceleratorNote string `json:"acceleratorNote,omitempty"`
	// TimeToSSHSeconds and TimeToCloudInitSeconds are measured from QEMU start.
	TimeToSSHSeconds       float64 `json:"timeToSSHSeconds,omitempty"`
	TimeToCloudInitSeconds float64 `json:"timeToCloudInitSeconds,omitempty"`
	// BootSeconds is the boot test's duration from QEMU start to the last
	// in-guest check.
	BootSeconds float64 `json:"bootSeconds,omitempty"`
	// ClusterSeconds is the cluster checks' duration, from kubeadm init's
	// preparation to the test Pod Running.
	ClusterSeconds float64 `json:"clusterSeconds,omitempty"`
	// TimeToNodeReadySeconds is from QEMU start to the node Ready after
	// kubeadm init (cluster-node-ready).
	TimeToNodeReadySeconds float64 `json:"timeToNodeReadySeconds,omitempty"`
	// BootAnalysis is systemd-analyze's summary, critical chain and the
	// slowest units of the booted image: where its boot time goes.
	BootAnalysis string `json:"bootAnalysis,omitempty"`
	// ConsoleTail is the end of the serial console when a boot check failed.
	ConsoleTail string `json:"consoleTail,omitempty"`
}

// Add appends a check and updates the summary.
func (r *Report) Add(c Check) {
	r.Checks = append(r.Checks, c)
	switch {
	case c.Skipped:
		r.Summary.Skipped++
	case c.Passed:
		r.Summary.Passed++
	default:
		r.Summary.Failed++
	}
}

// RequiredFailures returns the required checks that did not pass.
func (r *Report) RequiredFailures() []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Required && !c.Passed && !c.Skipped {
			out = append(out, c)
		}
	}
	return out
}

// Results converts the report to its API form for NodeImageBuild status.
func (r *Report) Results() *imagev1.VerificationResults {
	res := &imagev1.VerificationResults{
		Accelerator:     r.Accelerator,
		AcceleratorNote: r.AcceleratorNote,
		Passed:          int32(r.Summary.Passed),
		Failed:          int32(r.Summary.Failed),
		Skipped:         int32(r.Summary.Skipped),
	}
	for _, c := range r.Checks {
		if c.Skipped {
			continue
		}
		res.Checks = append(res.Checks, imagev1.CheckResult{
			Name:     c.Name,
			Category: c.Category,
			Passed:   c.Passed,
			Required: c.Required,
			Message:  c.Message,
			Duration: durationOf(c.DurationSeconds),
		})
	}
	return res
}
