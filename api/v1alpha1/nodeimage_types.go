package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeImageKind is the kind of NodeImage.
const NodeImageKind = "NodeImage"

// RebuildAnnotation requests a new build of an unchanged spec when its value
// changes (for example to the current time). The handled value is echoed in
// status.lastHandledRebuildAt.
const RebuildAnnotation = "image.nodeforge.dev/rebuild-at"

// DeletionPolicy says what happens to published artifacts when the
// NodeImage is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type DeletionPolicy string

const (
	// DeletionPolicyRetain keeps published artifacts.
	DeletionPolicyRetain DeletionPolicy = "Retain"
	// DeletionPolicyDelete removes every artifact of the NodeImage.
	DeletionPolicyDelete DeletionPolicy = "Delete"
)

// NodeImageSpec is the desired node image and how it is built, verified and
// published.
// +kubebuilder:validation:XValidation:rule="!has(self.updates) || has(self.destination)",message="spec.updates needs spec.destination: a check reads the published image's manifest",fieldPath=".updates"
type NodeImageSpec struct {
	// ImageContent is everything that determines the image's bytes; its
	// canonical form is what status.specDigest addresses.
	ImageContent `json:",inline"`

	// destination is where images are published. When omitted, artifacts
	// stay on the builder's cache volume and only the build manifest is
	// recorded.
	// +optional
	Destination *DestinationSpec `json:"destination,omitempty"`

	// verification selects checks run before publishing.
	// +optional
	// +kubebuilder:default={}
	Verification VerificationSpec `json:"verification,omitempty"`

	// builder configures where builds run.
	// +optional
	// +kubebuilder:default={}
	Builder BuilderSpec `json:"builder,omitempty"`

	// successfulBuildsHistoryLimit is how many succeeded NodeImageBuilds are
	// kept; older ones are deleted (their published artifacts are pruned to
	// the same count).
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	SuccessfulBuildsHistoryLimit *int32 `json:"successfulBuildsHistoryLimit,omitempty"`

	// failedBuildsHistoryLimit is how many failed or interrupted
	// NodeImageBuilds are kept.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	FailedBuildsHistoryLimit *int32 `json:"failedBuildsHistoryLimit,omitempty"`

	// deletionPolicy says whether published artifacts are deleted with the
	// NodeImage.
	// +optional
	// +kubebuilder:default=Retain
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`

	// suspend stops new builds from starting. A running build finishes.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// updates turns on periodic checks for newer versions of the packages
	// installed in the published image (its whole package closure). When
	// omitted, no checks run. It is not part of the image content: adding,
	// changing or removing it never changes status.specDigest.
	// +optional
	Updates *UpdatesSpec `json:"updates,omitempty"`
}

// UpdatesSpec configures periodic update checks. A check runs in a
// short-lived Pod that resolves the image's installed packages against its
// repositories (the build's resolve step alone, seconds) and compares them
// with the versions in the published image's manifest.
type UpdatesSpec struct {
	// interval is the time between two checks of the same artifact. The
	// first check runs as soon as the current spec's artifact is
	// published and no build runs.
	// +required
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10m') && duration(self) <= duration('8760h')",message="updates.interval must be between 10m and 8760h"
	Interval metav1.Duration `json:"interval"`

	// rebuild starts a NodeImageBuild with reason BaseUpdated when a check
	// finds newer versions; false only reports them in status.updates.
	// +optional
	// +kubebuilder:default=true
	Rebuild *bool `json:"rebuild,omitempty"`
}

// MinUpdatesInterval is the shortest spec.updates.interval accepted.
const MinUpdatesInterval = 10 * time.Minute

// RebuildOnUpdates reports whether a check that finds newer versions
// starts a build (spec.updates.rebuild, true when unset).
func (u *UpdatesSpec) RebuildOnUpdates() bool { return u != nil && (u.Rebuild == nil || *u.Rebuild) }

// UpdatesResult is the outcome of the last update check.
// +kubebuilder:validation:Enum=UpToDate;UpdatesAvailable;Failed
type UpdatesResult string

// Update check results.
const (
	// UpdatesUpToDate: every installed package is at the version a build
	// now would install.
	UpdatesUpToDate UpdatesResult = "UpToDate"
	// UpdatesAvailable: a build now would install newer versions of some
	// packages.
	UpdatesAvailable UpdatesResult = "UpdatesAvailable"
	// UpdatesCheckFailed: the check could not run or complete; it is tried
	// again at the next interval.
	UpdatesCheckFailed UpdatesResult = "Failed"
)

// UpdatesStatus is what the last update check found.
type UpdatesStatus struct {
	// lastCheckTime is when the last check finished. The next one is due
	// spec.updates.interval later.
	// +optional
	LastCheckTime *metav1.Time `json:"lastCheckTime,omitempty"`

	// specDigest is the spec digest whose published artifact was checked.
	// +optional
	SpecDigest string `json:"specDigest,omitempty"`

	// result of the last check.
	// +optional
	Result UpdatesResult `json:"result,omitempty"`

	// checked is how many installed packages were compared.
	// +optional
	Checked int32 `json:"checked,omitempty"`

	// upgrades is how many installed packages have newer versions.
	// +optional
	Upgrades int32 `json:"upgrades,omitempty"`

	// unavailable is how many installed packages no repository offers any
	// more.
	// +optional
	Unavailable int32 `json:"unavailable,omitempty"`

	// digest identifies the set of newer versions found: the same updates
	// have the same digest however often they are found.
	// +optional
	// +kubebuilder:validation:MaxLength=71
	Digest string `json:"digest,omitempty"`

	// summary names the first newer versions ("name installed → new").
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Summary string `json:"summary,omitempty"`

	// message says why the last check failed.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`

	// build is the NodeImageBuild with reason BaseUpdated started for
	// these updates, if any.
	// +optional
	Build string `json:"build,omitempty"`
}

// NodeImageStatus is the observed state of a NodeImage.
type NodeImageStatus struct {
	// conditions: Ready (always), Reconciling and Stalled (only when true),
	// and ArtifactAvailable. See docs/spec/v1alpha1/nodeimages.md.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// observedGeneration is the last generation that was fully handled
	// (built and published, or stalled).
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// specDigest is the content address of the current spec's image
	// content.
	// +optional
	SpecDigest string `json:"specDigest,omitempty"`

	// artifact is the latest successfully built, verified and published
	// image. It stays while a newer build runs or after one fails.
	// +optional
	Artifact *Artifact `json:"artifact,omitempty"`

	// currentBuild is the build working towards the current spec.
	// +optional
	CurrentBuild *BuildReference `json:"currentBuild,omitempty"`

	// lastFailure summarizes the most recent failed build.
	// +optional
	LastFailure *FailureSummary `json:"lastFailure,omitempty"`

	// lastHandledRebuildAt is the value of the rebuild annotation that was
	// last acted on.
	// +optional
	LastHandledRebuildAt string `json:"lastHandledRebuildAt,omitempty"`

	// updates is what the last update check (spec.updates) found.
	// +optional
	Updates *UpdatesStatus `json:"updates,omitempty"`
}

// BuildReference points at a NodeImageBuild and mirrors its progress.
type BuildReference struct {
	// name of the NodeImageBuild.
	// +required
	Name string `json:"name"`

	// specDigest the build produces.
	// +optional
	SpecDigest string `json:"specDigest,omitempty"`

	// progress of the build.
	// +optional
	Progress *Progress `json:"progress,omitempty"`
}

// FailureSummary describes a failed build.
type FailureSummary struct {
	// build is the failed NodeImageBuild's name.
	// +required
	Build string `json:"build"`

	// reason is the failure's condition reason, such as BuildFailed.
	// +required
	Reason string `json:"reason"`

	// message says what failed, at which step.
	// +optional
	Message string `json:"message,omitempty"`

	// time the failure was observed.
	// +optional
	Time metav1.Time `json:"time,omitempty"`
}

// NodeImage is the desired content of a virtual-machine node image. nodeforge
// builds it in a NodeImageBuild, verifies it, publishes it, and records the
// artifact in status.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ni,categories=nodeforge
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].message`,priority=1
// +kubebuilder:printcolumn:name="Artifact",type=string,JSONPath=`.status.artifact.url`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.artifact.size`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 40",message="metadata.name must be at most 40 characters: build and builder Pod names are derived from it"
type NodeImage struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired image.
	// +required
	Spec NodeImageSpec `json:"spec"`

	// status is the observed state.
	// +optional
	Status NodeImageStatus `json:"status,omitempty"`
}

// NodeImageList is a list of NodeImages.
//
// +kubebuilder:object:root=true
type NodeImageList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the NodeImages.
	Items []NodeImage `json:"items"`
}

// GetConditions returns the status conditions.
func (in *NodeImage) GetConditions() []metav1.Condition { return in.Status.Conditions }

// SetConditions replaces the status conditions.
func (in *NodeImage) SetConditions(c []metav1.Condition) { in.Status.Conditions = c }
