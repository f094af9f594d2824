package v1alpha1

// Condition types. Ready is always present. Reconciling and Stalled follow
// kstatus: they are present only while True. The domain conditions say how
// far a build got.
const (
	// ReadyCondition is True when the object's desired state is achieved:
	// for a NodeImage, an artifact of the current spec digest is published;
	// for a NodeImageBuild, its image was built, verified and published.
	ReadyCondition = "Ready"

	// ReconcilingCondition is True while the controller works towards the
	// desired state (a build is pending or running).
	ReconcilingCondition = "Reconciling"

	// StalledCondition is True when progress needs a human: an invalid or
	// unsupported spec, or a build that failed after all its retries.
	StalledCondition = "Stalled"

	// ArtifactAvailableCondition is True on a NodeImage when
	// status.artifact holds a published image, even if it belongs to an
	// older spec.
	ArtifactAvailableCondition = "ArtifactAvailable"

	// BuiltCondition is True on a NodeImageBuild when the image file was
	// assembled.
	BuiltCondition = "Built"

	// VerifiedCondition is True on a NodeImageBuild when every required
	// verification check passed.
	VerifiedCondition = "Verified"

	// PublishedCondition is True on a NodeImageBuild when the image, its
	// checksum and manifest were uploaded and verified in object storage.
	PublishedCondition = "Published"
)

// Condition reasons.
const (
	// SucceededReason: the desired state is achieved.
	SucceededReason = "Succeeded"

	// ArtifactFoundReason: an artifact with the current spec digest was
	// already published, so no build was needed.
	ArtifactFoundReason = "ArtifactFound"

	// BuildPendingReason: the builder was created but does not run yet.
	BuildPendingReason = "BuildPending"

	// BuildingReason: the builder runs.
	BuildingReason = "Building"

	// BuildFailedReason: the builder failed before the image was assembled.
	BuildFailedReason = "BuildFailed"

	// VerificationFailedReason: a required verification check failed.
	VerificationFailedReason = "VerificationFailed"

	// PublishFailedReason: uploading or verifying the upload failed.
	PublishFailedReason = "PublishFailed"

	// InterruptedReason: a newer spec superseded the build, or it was
	// canceled.
	InterruptedReason = "Interrupted"

	// DeadlineExceededReason: the build ran (or waited) longer than its
	// timeout.
	DeadlineExceededReason = "DeadlineExceeded"

	// RetriesExhaustedReason: every allowed attempt failed.
	RetriesExhaustedReason = "RetriesExhausted"

	// InvalidSpecReason: the spec cannot be built as written, such as a
	// missing ConfigMap or Secret it refers to.
	InvalidSpecReason = "InvalidSpec"

	// UnsupportedArchitectureReason: the requested architecture is accepted
	// by the schema but not built yet. Every architecture the schema
	// accepts today (amd64, arm64) is built; the reason stays for a future
	// one.
	UnsupportedArchitectureReason = "UnsupportedArchitecture"

	// SuspendedReason: spec.suspend is true; no new build starts. On Ready
	// (True): settled as asked, with no artifact of the current digest.
	SuspendedReason = "Suspended"

	// ProgressingReason: the controller is working on a new generation.
	ProgressingReason = "Progressing"
)
