// Package kubevirt runs NodeImageBuild attempts in KubeVirt
// VirtualMachineInstances that boot a builder appliance (a containerDisk
// image whose init runs `nodeforge run` and powers off when done).
//
// The contract is the one of package buildresult, adapted to a VM:
//
//   - The spec ConfigMap "<build>-spec" is attached as a disk with serial
//     "nfspec" (the appliance mounts it at buildresult.SpecDir); the
//     credential keys of the destination's Secret, copied into a Secret of
//     the build's own ("<build>-credentials"), as a disk with serial
//     "nfcreds"; scratch space as an emptyDisk (or the cache PVC) with
//     serial "nfscratch".
//   - The appliance prints {"progress":...} and {"result":...} lines on its
//     serial console and powers off: a clean power-off makes the VMI
//     Succeeded, a crash Failed.
//   - The manager has no access to the console (it would need KubeVirt's
//     subresource API), so the result is taken from the VMI's
//     ResultAnnotation when something relays it (a console-reading sidecar,
//     or a test), and otherwise, for a Succeeded VMI, from the published
//     artifact: ArtifactLookup finds the image and manifest the appliance
//     uploaded for the build's spec digest.
package kubevirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// ResultAnnotation on a VMI carries the builder's Result as JSON.
const ResultAnnotation = "image.nodeforge.dev/result"

// ProgressAnnotation on a VMI carries the last Progress as JSON.
const ProgressAnnotation = "image.nodeforge.dev/progress"

// Defaults.
const (
	DefaultMemory  = "4Gi"
	DefaultCores   = 2
	DefaultScratch = "40Gi"
)

// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstances,verbs=get;list;watch;create;delete

// Backend creates builder VMIs.
type Backend struct {
	Client client.Client
	// Reader reads VMIs; the manager's API reader. Defaults to Client.
	Reader client.Reader
	Scheme *runtime.Scheme
	// Image is the builder appliance containerDisk image.
	Image string
	// Images decides which spec.builder.image overrides may run; none by
	// default.
	Images backend.ImagePolicy
	// Placement decides the VM's node selector and tolerations, as for
	// builder Pods.
	Placement backend.PlacementPolicy
	// ArtifactLookup returns the artifact published for the build's spec
	// digest and when it was published; used when a VMI Succeeded without
	// a relayed result. Nil makes such a VMI a failure.
	ArtifactLookup func(ctx context.Context, b *imagev1.NodeImageBuild) (*buildresult.Artifact, time.Time, error)
}

// ClockSkewAllowance is how much earlier than its VMI's creation an
// artifact may carry a publish time and still count as that VMI's output:
// the object store's clock and the API server's are different clocks.
const ClockSkewAllowance = time.Minute

var _ backend.Backend = &Backend{}

// Kind implements backend.Backend.
func (*Backend) Kind() string { return "VirtualMachineInstance" }

func (k *Backend) reader() client.Reader {
	if k.Reader != nil {
		return k.Reader
	}
	return k.Client
}

// Ensure implements backend.Backend.
func (k *Backend) Ensure(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) error {
	if err := backend.EnsureSpecConfigMap(ctx, k.Client, k.Scheme, b); err != nil {
		return err
	}
	if secrets := backend.CredentialSecrets(b); len(secrets) > 0 {
		if err := k.ensureCredentials(ctx, b, secrets); err != nil {
			return err
		}
	}
	vmi, err := k.VMIFor(b, attempt)
	if err != nil {
		return err
	}
	return backend.CreateBuilder(ctx, k.Client, k.reader(), k.Kind(), b, vmi, &kubevirtv1.VirtualMachineInstance{})
}

// ensureCredentials copies the keys the builder reads of each Secret
// (backend.CredentialSecrets), under their file names, and nothing else of
// them, into a Secret of the build's own (backend.CredentialsSecretName),
// which the VM gets as a
// disk: a KubeVirt Secret volume has no item selection, and the VM must
// not receive whatever else the user keeps in that Secret. The copy is
// controlled by the build, so it goes with it.
func (k *Backend) ensureCredentials(ctx context.Context, b *imagev1.NodeImageBuild, secrets []backend.SecretKeys) error {
	data := map[string][]byte{}
	for _, s := range secrets {
		var src corev1.Secret
		if err := k.reader().Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: s.Secret}, &src); err != nil {
			return fmt.Errorf("reading the %s Secret %s: %w", s.Purpose, s.Secret, err)
		}
		for i, key := range s.Keys {
			if v, ok := src.Data[key]; ok {
				data[s.File(i)] = v
			}
		}
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      backend.CredentialsSecretName(b.Name),
			Namespace: b.Namespace,
			Labels:    backend.Labels(b, "credentials", 0),
		},
		Data:      data,
		Immutable: ptr.To(true),
	}
	if err := controllerutil.SetControllerReference(b, s, k.Scheme); err != nil {
		return err
	}
	err := k.Client.Create(ctx, s)
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the credentials Secret %s: %w", s.Name, err)
	}
	// An earlier attempt's copy is reused; anything else of that name is
	// not ours to use.
	ours, err := backend.Controls(ctx, k.reader(), b, &corev1.Secret{ObjectMeta: s.ObjectMeta})
	if err != nil {
		return err
	}
	if !ours {
		return fmt.Errorf("secret %s exists and is not this build's", s.Name)
	}
	return nil
}

func disk(name, serial string) kubevirtv1.Disk {
	return kubevirtv1.Disk{Name: name, Serial: serial, DiskDevice: kubevirtv1.DiskDevice{
		Disk: &kubevirtv1.DiskTarget{Bus: kubevirtv1.DiskBusVirtio},
	}}
}

// VMIFor returns the builder VMI of attempt.
func (k *Backend) VMIFor(b *imagev1.NodeImageBuild, attempt int32) (*kubevirtv1.VirtualMachineInstance, error) {
	spec := b.Spec.Builder
	image := k.Image
	if spec.Image != "" {
		if err := k.Images.Check(spec.Image); err != nil {
			return nil, err
		}
		image = spec.Image
	}
	if image == "" {
		return nil, fmt.Errorf("%w: no builder appliance image: set --builder-appliance-image or spec.builder.image", backend.ErrInvalidConfig)
	}
	nodeSelector, tolerations, err := k.Placement.Place(spec)
	if err != nil {
		return nil, err
	}
	requests := corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(DefaultMemory)}
	if m, ok := spec.Resources.Requests[corev1.ResourceMemory]; ok {
		requests[corev1.ResourceMemory] = m
	}
	cores := uint32(DefaultCores)
	if c, ok := spec.Resources.Requests[corev1.ResourceCPU]; ok && c.Value() > 0 {
		cores = uint32(c.Value())
	}

	disks := []kubevirtv1.Disk{disk("appliance", ""), disk("spec", "nfspec"), disk("scratch", "nfscratch")}
	volumes := []kubevirtv1.Volume{
		{Name: "appliance", VolumeSource: kubevirtv1.VolumeSource{ContainerDisk: &kubevirtv1.ContainerDiskSource{Image: image}}},
		{Name: "spec", VolumeSource: kubevirtv1.VolumeSource{ConfigMap: &kubevirtv1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: backend.SpecConfigMapName(b.Name)},
		}}},
	}
	if spec.Cache != nil {
		volumes = append(volumes, kubevirtv1.Volume{Name: "scratch", VolumeSource: kubevirtv1.VolumeSource{
			PersistentVolumeClaim: &kubevirtv1.PersistentVolumeClaimVolumeSource{
				PersistentVolumeClaimVolumeSource: corev1.PersistentVolumeClaimVolumeSource{ClaimName: spec.Cache.Name},
			},
		}})
	} else {
		volumes = append(volumes, kubevirtv1.Volume{Name: "scratch", VolumeSource: kubevirtv1.VolumeSource{
			EmptyDisk: &kubevirtv1.EmptyDiskSource{Capacity: resource.MustParse(DefaultScratch)},
		}})
	}
	if len(backend.CredentialSecrets(b)) > 0 {
		disks = append(disks, disk("credentials", "nfcreds"))
		volumes = append(volumes, kubevirtv1.Volume{Name: "credentials", VolumeSource: kubevirtv1.VolumeSource{
			Secret: &kubevirtv1.SecretVolumeSource{SecretName: backend.CredentialsSecretName(b.Name)},
		}})
	}
	if d := b.Spec.Destination; d != nil && d.S3 != nil {
		if d.S3.CASecretRef != nil {
			disks = append(disks, disk("ca", "nfca"))
			volumes = append(volumes, kubevirtv1.Volume{Name: "ca", VolumeSource: kubevirtv1.VolumeSource{
				Secret: &kubevirtv1.SecretVolumeSource{SecretName: d.S3.CASecretRef.Name},
			}})
		}
	}
	vmi := &kubevirtv1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{
			Name:      backend.BuilderName(b.Name, attempt),
			Namespace: b.Namespace,
			Labels:    backend.Labels(b, "builder", attempt),
		},
		Spec: kubevirtv1.VirtualMachineInstanceSpec{
			Domain: kubevirtv1.DomainSpec{
				CPU:       &kubevirtv1.CPU{Cores: cores},
				Resources: kubevirtv1.ResourceRequirements{Requests: requests},
				Devices:   kubevirtv1.Devices{Disks: disks},
			},
			Volumes:                       volumes,
			NodeSelector:                  nodeSelector,
			Tolerations:                   tolerations,
			TerminationGracePeriodSeconds: ptr.To[int64](30),
		},
	}
	if err := controllerutil.SetControllerReference(b, vmi, k.Scheme); err != nil {
		return nil, err
	}
	return vmi, nil
}

// Observe implements backend.Backend.
func (k *Backend) Observe(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) (backend.Observation, error) {
	name := backend.BuilderName(b.Name, attempt)
	obs := backend.Observation{Kind: k.Kind(), Name: name, Phase: backend.PhaseNotFound}
	var vmi kubevirtv1.VirtualMachineInstance
	if err := k.reader().Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: name}, &vmi); err != nil {
		if apierrors.IsNotFound(err) {
			return obs, nil
		}
		return obs, fmt.Errorf("reading builder VirtualMachineInstance %s: %w", name, err)
	}
	if err := backend.NameInUse(k.Kind(), &vmi, b); err != nil {
		obs.Phase, obs.Message = backend.PhasePending, err.Error()
		return obs, nil
	}
	obs.CreatedAt = vmi.CreationTimestamp.Time
	switch vmi.Status.Phase {
	case kubevirtv1.Running:
		obs.Phase = backend.PhaseRunning
	case kubevirtv1.Succeeded:
		obs.Phase = backend.PhaseSucceeded
	case kubevirtv1.Failed:
		obs.Phase = backend.PhaseFailed
		obs.Message = "the builder VM failed"
	default:
		obs.Phase = backend.PhasePending
		if vmi.Status.Phase != "" {
			obs.Message = "VirtualMachineInstance is " + string(vmi.Status.Phase)
		}
	}
	for _, t := range vmi.Status.PhaseTransitionTimestamps {
		if t.Phase == kubevirtv1.Succeeded || t.Phase == kubevirtv1.Failed {
			obs.FinishedAt = t.PhaseTransitionTimestamp.Time
		}
	}
	if vmi.DeletionTimestamp != nil && obs.Phase != backend.PhaseSucceeded {
		obs.Phase = backend.PhaseFailed
		obs.Message = "builder VirtualMachineInstance was deleted before it finished"
	}
	if s := vmi.Annotations[ProgressAnnotation]; s != "" {
		var p buildresult.Progress
		if json.Unmarshal([]byte(s), &p) == nil && p.Step != "" {
			obs.Progress = &p
		}
	}
	if s := vmi.Annotations[ResultAnnotation]; s != "" {
		obs.Result, obs.ResultError = buildresult.Decode([]byte(s))
	} else if obs.Phase == backend.PhaseSucceeded {
		obs.Result, obs.ResultError = k.resultFromArtifact(ctx, b, vmi.CreationTimestamp.Time)
	}
	return obs, nil
}

// resultFromArtifact reads the outcome of a VM that relayed none from the
// object store. Only an artifact published after the VM was created counts:
// an older one at the same spec digest is another run's output and says
// nothing about whether this VM built and verified anything.
func (k *Backend) resultFromArtifact(ctx context.Context, b *imagev1.NodeImageBuild, vmCreated time.Time) (*buildresult.Result, error) {
	if k.ArtifactLookup == nil {
		return nil, errors.New("the VM relayed no result and no artifact lookup is configured")
	}
	a, publishedAt, err := k.ArtifactLookup(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("the VM powered off but no artifact is published: %w", err)
	}
	if publishedAt.Before(vmCreated.Add(-ClockSkewAllowance)) {
		return nil, fmt.Errorf("the VM powered off without relaying a result, and the artifact at its spec digest was published at %s, before the VM was created at %s: it is not this VM's output",
			publishedAt.UTC().Format(time.RFC3339), vmCreated.UTC().Format(time.RFC3339))
	}
	return &buildresult.Result{Outcome: buildresult.OutcomeSucceeded, Artifact: a}, nil
}

var _ backend.ActiveLister = &Backend{}

// ActiveBuilds implements backend.ActiveLister.
func (k *Backend) ActiveBuilds(ctx context.Context, namespaces []string) ([]client.ObjectKey, error) {
	var keys []client.ObjectKey
	err := backend.ListInNamespaces(ctx, k.reader(), namespaces, func() *kubevirtv1.VirtualMachineInstanceList { return &kubevirtv1.VirtualMachineInstanceList{} },
		func(list *kubevirtv1.VirtualMachineInstanceList) {
			for i := range list.Items {
				v := &list.Items[i]
				if v.DeletionTimestamp != nil || v.Status.Phase == kubevirtv1.Succeeded || v.Status.Phase == kubevirtv1.Failed {
					continue
				}
				keys = append(keys, backend.BuildOf(v))
			}
		}, backend.BuilderSelector)
	if err != nil {
		return nil, fmt.Errorf("listing builder VirtualMachineInstances: %w", err)
	}
	return keys, nil
}

// Delete implements backend.Backend.
func (k *Backend) Delete(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) (bool, error) {
	if attempt > 0 {
		vmi := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: backend.BuilderName(b.Name, attempt)}}
		if ours, err := backend.Controls(ctx, k.reader(), b, vmi); err != nil || !ours {
			return err == nil, err
		}
		return k.deleteVMI(ctx, b.Namespace, vmi.Name)
	}
	var list kubevirtv1.VirtualMachineInstanceList
	if err := k.Client.List(ctx, &list, client.InNamespace(b.Namespace), client.MatchingLabels{backend.LabelBuild: b.Name}); err != nil {
		return false, fmt.Errorf("listing builder VirtualMachineInstances: %w", err)
	}
	gone := true
	for i := range list.Items {
		if !metav1.IsControlledBy(&list.Items[i], b) {
			continue
		}
		g, err := k.deleteVMI(ctx, b.Namespace, list.Items[i].Name)
		if err != nil {
			return false, err
		}
		gone = gone && g
	}
	cmGone, err := backend.DeleteSpecConfigMap(ctx, k.Client, k.reader(), b)
	if err != nil {
		return false, err
	}
	// Only the build's own copy: a Secret of that name someone else made
	// stays.
	creds := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: backend.CredentialsSecretName(b.Name)}}
	if _, err := backend.DeleteControlled(ctx, k.Client, k.reader(), b, creds); err != nil {
		return false, fmt.Errorf("the credentials Secret: %w", err)
	}
	return gone && cmGone, nil
}

func (k *Backend) deleteVMI(ctx context.Context, ns, name string) (bool, error) {
	vmi := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	err := k.Client.Delete(ctx, vmi)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("deleting builder VirtualMachineInstance %s: %w", name, err)
	}
	// A VMI being deleted counts as gone: on a NotReady node it may stay
	// Terminating forever; the garbage collector finishes once the build
	// is gone.
	err = k.reader().Get(ctx, client.ObjectKeyFromObject(vmi), vmi)
	if err == nil {
		return vmi.DeletionTimestamp != nil, nil
	}
	return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
}
