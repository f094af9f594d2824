// Package backend defines how a NodeImageBuild attempt is run: a Backend
// creates the builder (a Pod or a KubeVirt VirtualMachineInstance) of one
// attempt, observes it, and deletes it. Implementations live in the pod and
// kubevirt subpackages; both follow the contract of package buildresult.
//
// Backends are reentrant: names are deterministic (<build>-<attempt>), Ensure
// treats AlreadyExists as success, and Observe reports what the cluster
// holds, never what was created earlier.
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// Labels on every object made for a build.
const (
	// LabelBuild holds the NodeImageBuild's name.
	LabelBuild = "image.nodeforge.dev/build"
	// LabelNodeImage holds the NodeImage's name.
	LabelNodeImage = "image.nodeforge.dev/nodeimage"
	// LabelAttempt holds the attempt number of a builder.
	LabelAttempt = "image.nodeforge.dev/attempt"
	// LabelComponent marks builders (ComponentBuilder), spec ConfigMaps
	// ("build-spec") and update check Pods and their ConfigMaps
	// (ComponentUpdateCheck).
	LabelComponent = "app.kubernetes.io/component"
	// LabelManagedBy is "nodeforge".
	LabelManagedBy = "app.kubernetes.io/managed-by"
)

// ErrInvalidConfig marks an error in the builder configuration (the
// manager's flags or spec.builder) that retrying cannot fix; the build
// controller stalls the build with reason InvalidSpec.
var ErrInvalidConfig = errors.New("invalid builder configuration")

// ErrNameInUse marks a builder that cannot be created because an object
// of its name exists that this build does not control: most often the
// builder of an earlier, deleted build of the same name that is still
// terminating. The build waits for the name (within its timeout) instead
// of adopting or deleting someone else's object.
var ErrNameInUse = errors.New("builder name in use")

// NameInUseError is ErrNameInUse for one object.
type NameInUseError struct {
	Kind, Name string
	// Terminating is true when the object is being deleted.
	Terminating bool
}

func (e *NameInUseError) Error() string {
	if e.Terminating {
		return fmt.Sprintf("%s %s of an earlier build of the same name is still terminating", e.Kind, e.Name)
	}
	return fmt.Sprintf("%s %s exists and is not controlled by this build", e.Kind, e.Name)
}

// Unwrap makes errors.Is(err, ErrNameInUse) true.
func (e *NameInUseError) Unwrap() error { return ErrNameInUse }

// CreateBuilder creates obj, the builder of kind of b. An object of that
// name that exists already must be b's (created by an earlier reconcile);
// one that is not is never adopted: NameInUseError. existing is an empty
// object of obj's type to read it into.
func CreateBuilder(ctx context.Context, c client.Client, r client.Reader, kind string, b *imagev1.NodeImageBuild, obj, existing client.Object) error {
	err := c.Create(ctx, obj)
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating builder %s %s: %w", kind, obj.GetName(), err)
	}
	existing.SetNamespace(obj.GetNamespace())
	existing.SetName(obj.GetName())
	if err := r.Get(ctx, client.ObjectKeyFromObject(existing), existing); err != nil {
		return fmt.Errorf("builder %s %s exists but cannot be read: %w", kind, obj.GetName(), err)
	}
	return NameInUse(kind, existing, b)
}

// Controls reads obj (a builder, by its namespace and name) and reports
// whether b controls it; false when it does not exist. Deleting only what
// Controls approves never removes an object of someone else's that holds
// a builder's name.
func Controls(ctx context.Context, r client.Reader, b *imagev1.NodeImageBuild, obj client.Object) (bool, error) {
	if err := r.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("reading %s: %w", obj.GetName(), err)
	}
	return metav1.IsControlledBy(obj, b), nil
}

// NameInUse returns a NameInUseError when obj, which has the builder's
// name, is not controlled by b; nil when it is b's.
func NameInUse(kind string, obj metav1.Object, b *imagev1.NodeImageBuild) error {
	if metav1.IsControlledBy(obj, b) {
		return nil
	}
	return &NameInUseError{Kind: kind, Name: obj.GetName(), Terminating: obj.GetDeletionTimestamp() != nil}
}

// Phase is where a builder stands.
type Phase string

// Phases.
const (
	// PhaseNotFound: the builder does not exist (never created, or deleted).
	PhaseNotFound Phase = "NotFound"
	// PhasePending: created, not running yet (scheduling, pulling images).
	PhasePending Phase = "Pending"
	// PhaseRunning: the builder runs.
	PhaseRunning Phase = "Running"
	// PhaseSucceeded: the builder exited successfully.
	PhaseSucceeded Phase = "Succeeded"
	// PhaseFailed: the builder exited with an error or was killed.
	PhaseFailed Phase = "Failed"
)

// Observation is what a backend saw of one attempt's builder.
type Observation struct {
	Phase Phase
	// Kind and Name identify the builder object.
	Kind, Name string
	// CreatedAt is the builder's creation time; the attempt deadline counts
	// from it, Pending time included.
	CreatedAt time.Time
	// FinishedAt is when the builder terminated (zero while it runs).
	FinishedAt time.Time
	// Result is the builder's result, when it wrote a valid one.
	Result *buildresult.Result
	// ResultError says why no valid result could be read.
	ResultError error
	// Progress is the last progress line seen.
	Progress *buildresult.Progress
	// LogTail is the end of the builder's output (bounded).
	LogTail string
	// Message explains a Pending or Failed phase (unschedulable, image pull
	// errors, OOMKilled, exit codes).
	Message string
	// DeadlineExceeded is true when the node killed the builder for its
	// active deadline.
	DeadlineExceeded bool
}

// Backend runs builders.
type Backend interface {
	// Kind is the builder object's kind (Pod, VirtualMachineInstance).
	Kind() string
	// Ensure creates the spec ConfigMap and the builder of attempt (1-based)
	// unless they exist.
	Ensure(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) error
	// Observe reports the builder of attempt.
	Observe(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) (Observation, error)
	// Delete deletes the builder of attempt, or with attempt 0 every builder
	// and the spec ConfigMap of the build. It reports whether they are gone
	// or being deleted: a builder on a NotReady node may stay Terminating
	// forever, and the garbage collector finishes after the build.
	Delete(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) (gone bool, err error)
}

// ActiveLister is implemented by backends that can list, from the API
// server (not a cache), the builds whose builder is live: not terminated
// and not being deleted. namespaces limits the listing to those
// namespaces (the manager's --build-namespace, where it may have no right
// to list cluster-wide); empty means cluster-wide. The build controller
// counts them against --max-concurrent-builds.
type ActiveLister interface {
	ActiveBuilds(ctx context.Context, namespaces []string) ([]client.ObjectKey, error)
}

// ListInNamespaces lists into a fresh list from newList for each of
// namespaces (or once, cluster-wide, when there are none) and hands each
// result to add.
func ListInNamespaces[L client.ObjectList](ctx context.Context, r client.Reader, namespaces []string, newList func() L, add func(L), opts ...client.ListOption) error {
	if len(namespaces) == 0 {
		namespaces = []string{""}
	}
	for _, ns := range namespaces {
		l := newList()
		o := opts
		if ns != "" {
			o = append(append([]client.ListOption(nil), opts...), client.InNamespace(ns))
		}
		if err := r.List(ctx, l, o...); err != nil {
			return err
		}
		add(l)
	}
	return nil
}

// Components (LabelComponent values).
const (
	// ComponentBuilder marks the builder of a build attempt.
	ComponentBuilder = "builder"
	// ComponentUpdateCheck marks a NodeImage's update check Pod (and its
	// spec ConfigMap): not a builder, never counted as a running build.
	ComponentUpdateCheck = "update-check"
)

// BuilderSelector selects every builder object nodeforge made.
var BuilderSelector = client.MatchingLabels{LabelComponent: ComponentBuilder, LabelManagedBy: "nodeforge"}

// UpdateCheckSelector selects every update check Pod nodeforge made.
var UpdateCheckSelector = client.MatchingLabels{LabelComponent: ComponentUpdateCheck, LabelManagedBy: "nodeforge"}

// BuildOf returns the key of the build a builder object belongs to.
func BuildOf(o metav1.Object) client.ObjectKey {
	return client.ObjectKey{Namespace: o.GetNamespace(), Name: o.GetLabels()[LabelBuild]}
}

// ActivePodBuilds lists the builds with a live builder Pod through r (the
// manager's API reader), in namespaces (empty: cluster-wide).
func ActivePodBuilds(ctx context.Context, r client.Reader, namespaces []string) ([]client.ObjectKey, error) {
	var keys []client.ObjectKey
	err := ListInNamespaces(ctx, r, namespaces, func() *corev1.PodList { return &corev1.PodList{} }, func(pods *corev1.PodList) {
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			keys = append(keys, BuildOf(p))
		}
	}, BuilderSelector)
	if err != nil {
		return nil, fmt.Errorf("listing builder Pods: %w", err)
	}
	return keys, nil
}

// BuilderName is the name of the builder of attempt.
func BuilderName(build string, attempt int32) string { return fmt.Sprintf("%s-%d", build, attempt) }

// SpecConfigMapName is the name of the ConfigMap holding the build spec.
func SpecConfigMapName(build string) string { return build + "-spec" }

// Labels returns the labels of objects made for b; attempt 0 omits the
// attempt label.
func Labels(b *imagev1.NodeImageBuild, component string, attempt int32) map[string]string {
	l := map[string]string{
		LabelBuild:     b.Name,
		LabelNodeImage: b.Spec.NodeImageName,
		LabelComponent: component,
		LabelManagedBy: "nodeforge",
	}
	if attempt > 0 {
		l[LabelAttempt] = fmt.Sprint(attempt)
	}
	return l
}

// SpecDocument is the JSON the builder reads from buildresult.SpecPath.
func SpecDocument(b *imagev1.NodeImageBuild) ([]byte, error) {
	doc := imagev1.NodeImageBuild{
		TypeMeta: metav1.TypeMeta{APIVersion: imagev1.GroupVersion.String(), Kind: imagev1.NodeImageBuildKind},
		ObjectMeta: metav1.ObjectMeta{
			Name: b.Name, Namespace: b.Namespace, UID: b.UID,
		},
		Spec: b.Spec,
	}
	return json.MarshalIndent(&doc, "", "  ")
}

// prefixAtBoundary reports whether pre is a prefix of the image reference
// ending at a component boundary of it.
func prefixAtBoundary(image, pre string) bool {
	if pre == "" || !strings.HasPrefix(image, pre) {
		return false
	}
	if len(image) == len(pre) || strings.ContainsAny(pre[len(pre)-1:], "/:@") {
		return true
	}
	return strings.ContainsAny(image[len(pre):len(pre)+1], "/:@")
}

// EnsureSpecConfigMap creates the ConfigMap with the build spec, owned by
// the build, unless it exists.
func EnsureSpecConfigMap(ctx context.Context, c client.Client, scheme *runtime.Scheme, b *imagev1.NodeImageBuild) error {
	doc, err := SpecDocument(b)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      SpecConfigMapName(b.Name),
			Namespace: b.Namespace,
			Labels:    Labels(b, "build-spec", 0),
		},
		Data:      map[string]string{buildresult.SpecFile: string(doc)},
		Immutable: ptrTo(true),
	}
	if err := controllerutil.SetControllerReference(b, cm, scheme); err != nil {
		return err
	}
	if err := c.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating spec ConfigMap %s: %w", cm.Name, err)
	}
	return nil
}

// SecretKeys is a Secret of the build's namespace and the keys of it that
// reach the builder, as files of buildresult.CredentialsDir.
type SecretKeys struct {
	// Purpose says what the Secret is for.
	Purpose SecretPurpose
	// Secret is the Secret's name.
	Secret string
	// Keys are read when present; a missing one fails the build in the
	// builder, with the key named.
	Keys []string
	// Files, when set, are the file names of Keys in CredentialsDir (the
	// same index); otherwise a key's file is named as the key.
	Files []string
}

// File is the file name of Keys[i] in buildresult.CredentialsDir.
func (s SecretKeys) File(i int) string {
	if i < len(s.Files) {
		return s.Files[i]
	}
	return s.Keys[i]
}

// SecretPurpose says what a Secret of CredentialSecrets is for.
type SecretPurpose string

// Purposes of the Secrets a builder reads.
const (
	SecretObjectStore SecretPurpose = "credentials"
	SecretRegistry    SecretPurpose = "registry credentials"
	SecretSigning     SecretPurpose = "signing key"
	SecretPush        SecretPurpose = "registry push credentials"
	SecretPushCA      SecretPurpose = "registry CA"
)

// CredentialSecrets lists what a build's builder reads into its
// credentials directory: the object store's credentials, the Docker
// configurations of the registry it pulls from and of the one it pushes
// to (and that one's CA), and the signing key, only the keys the builder
// reads of each. Whatever else the Secrets hold never reaches it.
func CredentialSecrets(b *imagev1.NodeImageBuild) []SecretKeys {
	var out []SecretKeys
	if d := b.Spec.Destination; d != nil && d.S3 != nil {
		out = append(out, SecretKeys{Purpose: SecretObjectStore, Secret: d.S3.CredentialsSecretRef.Name, Keys: storage.CredentialSecretKeys})
	}
	if r := b.Spec.Builder.RegistryCredentials; r != nil {
		out = append(out, SecretKeys{Purpose: SecretRegistry, Secret: r.Name, Keys: []string{buildresult.RegistryConfigKey}})
	}
	if d := b.Spec.Destination; d != nil && d.OCI != nil && d.OCI.CredentialsSecretRef != nil {
		out = append(out, SecretKeys{Purpose: SecretPush, Secret: d.OCI.CredentialsSecretRef.Name,
			Keys: []string{buildresult.RegistryConfigKey}, Files: []string{buildresult.PushConfigFile}})
	}
	if d := b.Spec.Destination; d != nil && d.OCI != nil && d.OCI.CASecretRef != nil {
		out = append(out, SecretKeys{Purpose: SecretPushCA, Secret: d.OCI.CASecretRef.Name,
			Keys: []string{buildresult.CAKey}, Files: []string{buildresult.PushCAFile}})
	}
	if d := b.Spec.Destination; d != nil && d.Signing != nil {
		out = append(out, SecretKeys{Purpose: SecretSigning, Secret: d.Signing.KeySecretRef.Name,
			Keys: []string{buildresult.SigningKeyFile, buildresult.SigningPasswordFile}})
	}
	return out
}

// CredentialsSecretName is the name of the Secret that holds only the
// credential keys of a build's destination Secret, for builders that can
// mount a Secret only whole (KubeVirt VMs).
func CredentialsSecretName(build string) string { return build + "-credentials" }

// DeleteSpecConfigMap deletes the build's spec ConfigMap; gone is true when
// no ConfigMap of the build's remains (one of that name that the build
// does not control is left alone). r should be an uncached reader.
func DeleteSpecConfigMap(ctx context.Context, c client.Client, r client.Reader, b *imagev1.NodeImageBuild) (bool, error) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: SpecConfigMapName(b.Name), Namespace: b.Namespace}}
	return DeleteControlled(ctx, c, r, b, cm)
}

// DeleteControlled deletes obj (name and namespace set) when b controls
// it, with a UID precondition, so an object replaced between the read and
// the delete is never deleted. gone is true when no object of b's remains
// under the name. r should be an uncached reader.
func DeleteControlled(ctx context.Context, c client.Client, r client.Reader, b *imagev1.NodeImageBuild, obj client.Object) (bool, error) {
	ours, err := Controls(ctx, r, b, obj)
	if err != nil {
		return false, err
	}
	if !ours {
		return true, nil
	}
	uid := obj.GetUID()
	if err := c.Delete(ctx, obj, client.Preconditions{UID: &uid}); err != nil {
		// Conflict: what has the name now is another object.
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return true, nil
		}
		return false, fmt.Errorf("deleting %s: %w", obj.GetName(), err)
	}
	return true, nil
}

func ptrTo[T any](v T) *T { return &v }

// ImagePolicy decides which spec.builder.image overrides may run. A builder
// runs privileged with /dev/kvm, so whoever may create a NodeImage must not
// thereby run any image they like as root on a node: by default no
// override is allowed and only the manager's configured builder image runs.
type ImagePolicy struct {
	// AllowedPrefixes lists image reference prefixes that may be used as
	// overrides, such as "registry.example.com/nodeforge/builder:". A
	// prefix matches at a boundary of the reference only: it ends in "/",
	// ":" or "@", or the image continues there with one of them (or is
	// the prefix itself), so "registry.example.com/nodeforge" admits
	// ".../nodeforge:v2" and ".../nodeforge/builder", never
	// ".../nodeforge-evil" or "registry.example.com.evil.example/...".
	AllowedPrefixes []string
}

// Check returns an error when image may not be used as an override.
func (p ImagePolicy) Check(image string) error {
	for _, pre := range p.AllowedPrefixes {
		if prefixAtBoundary(image, pre) {
			return nil
		}
	}
	if len(p.AllowedPrefixes) == 0 {
		return fmt.Errorf("%w: spec.builder.image %q: builder image overrides are disabled (the manager's --allowed-builder-images lists the prefixes it accepts)", ErrInvalidConfig, image)
	}
	return fmt.Errorf("%w: spec.builder.image %q does not start with an allowed prefix (%s)", ErrInvalidConfig, image, strings.Join(p.AllowedPrefixes, ", "))
}
