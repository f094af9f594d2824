package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeImageBuildKind is the kind of NodeImageBuild.
const NodeImageBuildKind = "NodeImageBuild"

// BuildReason says why a build was started.
// +kubebuilder:validation:Enum=FirstBuild;SpecChanged;RebuildRequested;BaseUpdated
type BuildReason string

const (
	// BuildReasonFirstBuild is the first build of a NodeImage.
	BuildReasonFirstBuild BuildReason = "FirstBuild"
	// BuildReasonSpecChanged follows a change of the image content.
	BuildReasonSpecChanged BuildReason = "SpecChanged"
	// BuildReasonRebuildRequested follows a change of the rebuild annotation.
	BuildReasonRebuildRequested BuildReason = "RebuildRequested"
	// BuildReasonBaseUpdated follows an update of the base distribution's
	// packages.
	BuildReasonBaseUpdated BuildReason = "BaseUpdated"
)

// NodeImageBuildSpec is one build attempt's resolved input. It is immutable.
type NodeImageBuildSpec struct {
	// nodeImageName is the NodeImage this build belongs to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=40
	NodeImageName string `json:"nodeImageName"`

	// specDigest is the content address of image, as
	// sha256:<64 hex digits>.
	// +required
	// +kubebuilder:validation:Pattern=`^sha256:[a-f0-9]{64}$`
	SpecDigest string `json:"specDigest"`

	// reason the build was started.
	// +required
	Reason BuildReason `json:"reason"`

	// rebuildRequestedAt is the rebuild annotation's value when reason is
	// RebuildRequested.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	RebuildRequestedAt string `json:"rebuildRequestedAt,omitempty"`

	// image is the resolved, defaulted image content, with ConfigMap
	// references replaced by their content.
	// +required
	Image ImageContent `json:"image"`

	// destination, verification and builder are copied from the NodeImage.
	// +optional
	Destination *DestinationSpec `json:"destination,omitempty"`

	// verification selects the checks run before publishing.
	// +optional
	Verification VerificationSpec `json:"verification,omitempty"`

	// builder configures where the build runs.
	// +optional
	Builder BuilderSpec `json:"builder,omitempty"`
}

// NodeImageBuildStatus is the observed state of a build.
type NodeImageBuildStatus struct {
	// conditions: Ready (always), Reconciling and Stalled (only when true),
	// and the domain conditions Built, Verified and Published.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// observedGeneration is the generation last handled.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// startTime is when the first attempt was started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// completionTime is when the build succeeded or finally failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// attempts is how many builder attempts were started.
	// +optional
	Attempts int32 `json:"attempts,omitempty"`

	// builderRef names the Pod or VirtualMachineInstance of the current
	// attempt.
	// +optional
	BuilderRef *BuilderReference `json:"builderRef,omitempty"`

	// progress of the current attempt.
	// +optional
	Progress *Progress `json:"progress,omitempty"`

	// artifact is the published image.
	// +optional
	Artifact *Artifact `json:"artifact,omitempty"`

	// verification holds every check's result.
	// +optional
	Verification *VerificationResults `json:"verification,omitempty"`

	// packageChanges is how the installed packages changed from the image
	// published under the same name before this build's (another spec's,
	// or an earlier build of the same spec). The build manifest
	// (artifact.manifestURL, field previous) lists every change.
	// +optional
	PackageChanges *PackageChanges `json:"packageChanges,omitempty"`

	// logExcerpt is the tail of the builder's output when the build failed.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	LogExcerpt string `json:"logExcerpt,omitempty"`
}

// PackageChanges counts the package changes from the previously published
// image and names the first of them with their versions.
type PackageChanges struct {
	// previousSpecDigest is the spec digest of the image compared with.
	// +required
	PreviousSpecDigest string `json:"previousSpecDigest"`

	// upgraded packages (a newer version).
	// +optional
	Upgraded int32 `json:"upgraded,omitempty"`

	// downgraded packages (an older version).
	// +optional
	Downgraded int32 `json:"downgraded,omitempty"`

	// added packages (new in this image).
	// +optional
	Added int32 `json:"added,omitempty"`

	// removed packages (gone from this image).
	// +optional
	Removed int32 `json:"removed,omitempty"`

	// summary names the first changes with their versions, e.g.
	// "upgraded libc6 2.41-12 → 2.41-12+deb13u1; added jq 1.7.1-6".
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Summary string `json:"summary,omitempty"`
}

// BuilderReference names the object running a build attempt.
type BuilderReference struct {
	// kind is Pod or VirtualMachineInstance.
	// +required
	Kind string `json:"kind"`

	// name of the object, in the build's namespace.
	// +required
	Name string `json:"name"`
}

// Progress is how far a build attempt is.
type Progress struct {
	// step is the pipeline step running, such as rootfs or boot-test.
	// +optional
	Step string `json:"step,omitempty"`

	// percent of the whole build done, 0 to 100.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent int32 `json:"percent,omitempty"`

	// message is a short human-readable note.
	// +optional
	Message string `json:"message,omitempty"`
}

// Artifact is a built, verified, published image.
type Artifact struct {
	// url is the stable location of the image (s3://bucket/key, or a file
	// path for local builds).
	// +required
	URL string `json:"url"`

	// presignedURL is a time-limited HTTP(S) download URL. On a NodeImage
	// the manager renews it before it expires (presignedURLExpiresAt).
	// +optional
	PresignedURL string `json:"presignedURL,omitempty"`

	// presignedURLExpiresAt is when presignedURL stops working; unset when
	// not known (a build's own record).
	// +optional
	PresignedURLExpiresAt *metav1.Time `json:"presignedURLExpiresAt,omitempty"`

	// manifestURL is the location of the build manifest JSON.
	// +optional
	ManifestURL string `json:"manifestURL,omitempty"`

	// sha256 of the image file, hex.
	// +required
	// +kubebuilder:validation:Pattern=`^[a-f0-9]{64}$`
	SHA256 string `json:"sha256"`

	// size of the image file in bytes.
	// +required
	Size int64 `json:"size"`

	// virtualSize of the disk in bytes.
	// +optional
	VirtualSize int64 `json:"virtualSize,omitempty"`

	// format of the image.
	// +required
	Format Format `json:"format"`

	// builtAt is when the image was built.
	// +optional
	BuiltAt metav1.Time `json:"builtAt,omitempty"`

	// specDigest of the content the image was built from.
	// +required
	SpecDigest string `json:"specDigest"`

	// revision numbers the images published under the NodeImage's name:
	// every publish, a rebuild of the same spec included, is the next
	// revision, and never overwrites an earlier one. 0 or unset for
	// images published before revisions, or not published.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Revision int32 `json:"revision,omitempty"`

	// sbomURL is the location of the image's SPDX 2.3 JSON software bill
	// of materials (NAME.spdx.json next to the manifest).
	// +optional
	SBOMURL string `json:"sbomURL,omitempty"`

	// provenanceURL is the location of the image's SLSA v1 provenance, an
	// in-toto statement (NAME.provenance.json next to the manifest).
	// +optional
	ProvenanceURL string `json:"provenanceURL,omitempty"`

	// signatureURL is the location of the image's signature (FILE.sig,
	// as cosign sign-blob writes it), when spec.destination.signing is
	// set; the SBOM's and the provenance's are beside them, named the same
	// way.
	// +optional
	SignatureURL string `json:"signatureURL,omitempty"`

	// containerDisk is the image as a KubeVirt containerDisk in the
	// registry of spec.destination.oci, by digest
	// (host/path@sha256:...), when it was pushed there.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	ContainerDisk string `json:"containerDisk,omitempty"`
}

// CheckCategory says how a check looks at the image.
// +kubebuilder:validation:Enum=offline;boot;cluster
type CheckCategory string

const (
	// CheckCategoryOffline checks inspect the image file without booting it.
	CheckCategoryOffline CheckCategory = "offline"
	// CheckCategoryBoot checks run inside the booted image.
	CheckCategoryBoot CheckCategory = "boot"
	// CheckCategoryCluster checks run in the same boot, after the boot
	// checks: kubeadm init on the image to a Ready single-node cluster.
	CheckCategoryCluster CheckCategory = "cluster"
)

// CheckResult is one verification check's outcome.
type CheckResult struct {
	// name of the check.
	// +required
	Name string `json:"name"`

	// category of the check.
	// +required
	Category CheckCategory `json:"category"`

	// passed is true when the check passed.
	Passed bool `json:"passed"`

	// required checks fail the build when they do not pass.
	// +optional
	Required bool `json:"required,omitempty"`

	// message says what was seen.
	// +optional
	Message string `json:"message,omitempty"`

	// duration the check took.
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
}

// VerificationResults is the outcome of verifying one image.
type VerificationResults struct {
	// accelerator the boot test ran under: kvm or tcg.
	// +optional
	Accelerator string `json:"accelerator,omitempty"`

	// acceleratorNote says why the boot test ran under tcg although it
	// chose the accelerator itself: /dev/kvm missing, or KVM unable to run
	// the guest on this node (then the boot ran again under tcg).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	AcceleratorNote string `json:"acceleratorNote,omitempty"`

	// passed, failed and skipped count the checks.
	Passed int32 `json:"passed"`
	// failed counts checks that did not pass.
	Failed int32 `json:"failed"`
	// skipped counts checks that were not run.
	Skipped int32 `json:"skipped"`

	// checks are the individual results, each boot and cluster check with
	// its duration. The builder reports them in its 4 KiB termination
	// message: when they do not all fit, the offline checks that passed
	// are left out (the counts above still include them). The build's
	// manifest (status.artifact.manifestURL) holds the full report.
	// +optional
	// +listType=atomic
	Checks []CheckResult `json:"checks,omitempty"`
}

// NodeImageBuild is one immutable attempt to build, verify and publish a
// NodeImage's content. It is created and owned by its NodeImage.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=nib,categories=nodeforge
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.nodeImageName`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Step",type=string,JSONPath=`.status.progress.step`,priority=1
// +kubebuilder:printcolumn:name="Artifact",type=string,JSONPath=`.status.artifact.url`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.spec.reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeImageBuild struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the resolved build input; immutable.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable: create a new NodeImageBuild instead"
	Spec NodeImageBuildSpec `json:"spec"`

	// status is the observed state.
	// +optional
	Status NodeImageBuildStatus `json:"status,omitempty"`
}

// NodeImageBuildList is a list of NodeImageBuilds.
//
// +kubebuilder:object:root=true
type NodeImageBuildList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the NodeImageBuilds.
	Items []NodeImageBuild `json:"items"`
}

// GetConditions returns the status conditions.
func (in *NodeImageBuild) GetConditions() []metav1.Condition { return in.Status.Conditions }

// SetConditions replaces the status conditions.
func (in *NodeImageBuild) SetConditions(c []metav1.Condition) { in.Status.Conditions = c }
