// Package pod runs NodeImageBuild attempts as privileged Pods with /dev/kvm.
//
// The Pod of attempt N of build B is named B-N, owned by the build, labeled
// for selection (backend.Labels), runs as a ServiceAccount without API
// rights and without a mounted token, and never restarts: a failed attempt
// is retried by the controller with a new Pod. See package buildresult for
// what the builder container reads and writes.
package pod

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// Defaults.
const (
	// ContainerName is the builder container's name.
	ContainerName = "builder"
	// DefaultServiceAccount is the builder ServiceAccount (no API rights).
	DefaultServiceAccount = "nodeforge-builder"
	// DefaultScratchSize bounds the emptyDir scratch volume.
	DefaultScratchSize = "40Gi"
	// KVMResource is the extended resource KubeVirt's device plugin exposes.
	KVMResource corev1.ResourceName = "devices.kubevirt.io/kvm"
	// DefaultLogTailLines is how many log lines Observe reads.
	DefaultLogTailLines = 200
	// MaxLogTail bounds Observation.LogTail.
	MaxLogTail = 4096
)

// LogReader returns the tail of a container's log.
type LogReader interface {
	TailLogs(ctx context.Context, namespace, pod, container string, lines int64) ([]byte, error)
}

// ClientsetLogs reads logs through the Kubernetes API (pods/log get).
type ClientsetLogs struct{ Clientset kubernetes.Interface }

// TailLogs implements LogReader.
func (l ClientsetLogs) TailLogs(ctx context.Context, ns, pod, container string, lines int64) ([]byte, error) {
	req := l.Clientset.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{
		Container: container, TailLines: &lines, LimitBytes: ptr.To[int64](256 * 1024),
	})
	rc, err := req.Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	return io.ReadAll(io.LimitReader(rc, 256*1024))
}

// Backend creates builder Pods.
type Backend struct {
	// Client creates and deletes Pods and ConfigMaps.
	Client client.Client
	// Reader reads Pods; use the manager's API reader so that a Pod just
	// created is never mistaken for a deleted one. Defaults to Client.
	Reader client.Reader
	// Scheme knows NodeImageBuild, for owner references.
	Scheme *runtime.Scheme
	// Logs reads the builder's log tail for progress and failure excerpts;
	// nil skips log reading.
	Logs LogReader
	// Image is the default builder image (spec.builder.image overrides it).
	Image string
	// ServiceAccount runs the builder; DefaultServiceAccount when empty.
	ServiceAccount string
	// UseKVMResource requests devices.kubevirt.io/kvm instead of mounting
	// /dev/kvm from the host.
	UseKVMResource bool
	// NoKVM gives builders no KVM device at all, for nodes without one:
	// their boot test runs under TCG.
	NoKVM bool
	// ScratchSize limits the emptyDir scratch volume; DefaultScratchSize
	// when empty.
	ScratchSize string
	// OneBuildPerNode adds anti-affinity so that no two builders share a node.
	OneBuildPerNode bool
	// HostNetwork runs builder Pods in the node's network namespace (with
	// dnsPolicy ClusterFirstWithHostNet), so they reach services listening
	// on the node's loopback address and whatever the node can reach. Meant
	// for single-node development clusters such as hack/local-cluster.sh,
	// whose Pods have no default route; leave it off elsewhere.
	HostNetwork bool
	// Images decides which spec.builder.image overrides may run; none by
	// default.
	Images backend.ImagePolicy
	// Placement decides the builder's node selector and tolerations;
	// spec.builder.nodeSelector and tolerations are refused by default.
	Placement backend.PlacementPolicy
}

var _ backend.Backend = &Backend{}

// Kind implements backend.Backend.
func (*Backend) Kind() string { return "Pod" }

func (p *Backend) reader() client.Reader {
	if p.Reader != nil {
		return p.Reader
	}
	return p.Client
}

// Ensure implements backend.Backend.
func (p *Backend) Ensure(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) error {
	if err := backend.EnsureSpecConfigMap(ctx, p.Client, p.Scheme, b); err != nil {
		return err
	}
	pod, err := p.PodFor(b, attempt)
	if err != nil {
		return err
	}
	return backend.CreateBuilder(ctx, p.Client, p.reader(), p.Kind(), b, pod, &corev1.Pod{})
}

// PodFor returns the builder Pod of attempt.
func (p *Backend) PodFor(b *imagev1.NodeImageBuild, attempt int32) (*corev1.Pod, error) {
	timeout := imagev1.DefaultBuildTimeout
	if t := b.Spec.Builder.Timeout; t != nil {
		timeout = t.Duration
	}
	scratch := p.ScratchSize
	if scratch == "" {
		scratch = DefaultScratchSize
	}
	pod, err := p.pod(b, podShape{
		name:      backend.BuilderName(b.Name, attempt),
		labels:    backend.Labels(b, backend.ComponentBuilder, attempt),
		args:      []string{"run", "--spec", buildresult.SpecPath, "--result", buildresult.ResultPath},
		env:       []corev1.EnvVar{{Name: "NODEFORGE_BUILD", Value: b.Name}, {Name: "NODEFORGE_ATTEMPT", Value: fmt.Sprint(attempt)}},
		configMap: backend.SpecConfigMapName(b.Name),
		timeout:   timeout,
		scratch:   scratch,
		// What a build needs at least (mmdebstrap, mkfs, qemu-img, and the
		// boot test's 2 GiB, 2 vCPU guest), unless spec.builder.resources says.
		cpu: DefaultCPURequest, memory: DefaultMemoryRequest,
		requests: true,
		kvm:      true,
	})
	if err != nil {
		return nil, err
	}
	if p.OneBuildPerNode {
		pod.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
					backend.LabelComponent: backend.ComponentBuilder, backend.LabelManagedBy: "nodeforge",
				}},
				NamespaceSelector: &metav1.LabelSelector{},
				TopologyKey:       corev1.LabelHostname,
			}},
		}}
	}
	if err := controllerutil.SetControllerReference(b, pod, p.Scheme); err != nil {
		return nil, err
	}
	return pod, nil
}

// Update check Pods (see package buildresult) are sized for the build's
// resolve step alone: apt-get update of the image's repositories in a
// throwaway chroot.
const (
	// UpdateCheckTimeout is an update check Pod's active deadline.
	UpdateCheckTimeout = 10 * time.Minute
	// UpdateCheckScratchSize bounds its emptyDir scratch volume.
	UpdateCheckScratchSize = "2Gi"
	// UpdateCheckCPURequest and UpdateCheckMemoryRequest are its requests.
	UpdateCheckCPURequest    = "100m"
	UpdateCheckMemoryRequest = "512Mi"
)

// UpdateCheckPod returns the Pod named name that checks the artifact of
// b's spec digest for newer packages: b is a NodeImageBuild-shaped input
// that is never created (its name is the Pod's), carrying the NodeImage's
// resolved content, destination and builder settings. The Pod is made like
// a builder Pod (the builder image and image policy, placement, the
// credential keys and CA, service account, privileges, host network), but
// runs `nodeforge run --check-updates`, has no KVM device, a short
// deadline (UpdateCheckTimeout), small requests (spec.builder.resources'
// limits still apply), the build cache volume when spec.builder.cache
// names one and an UpdateCheckScratchSize emptyDir otherwise, and is
// labeled as component update-check, not builder: it is not counted
// against --max-concurrent-builds and never keeps a builder off its node.
// Its spec ConfigMap is UpdateCheckConfigMap's. The caller sets the owner.
func (p *Backend) UpdateCheckPod(b *imagev1.NodeImageBuild, name string) (*corev1.Pod, error) {
	return p.pod(b, podShape{
		name: name,
		labels: map[string]string{
			backend.LabelNodeImage: b.Spec.NodeImageName,
			backend.LabelComponent: backend.ComponentUpdateCheck,
			backend.LabelManagedBy: "nodeforge",
		},
		args:      []string{"run", "--check-updates", "--spec", buildresult.SpecPath, "--result", buildresult.ResultPath},
		env:       []corev1.EnvVar{{Name: "NODEFORGE_UPDATE_CHECK", Value: name}},
		configMap: backend.SpecConfigMapName(name),
		timeout:   UpdateCheckTimeout,
		scratch:   UpdateCheckScratchSize,
		cpu:       UpdateCheckCPURequest, memory: UpdateCheckMemoryRequest,
	})
}

// UpdateCheckConfigMap returns the ConfigMap with b's spec for the update
// check Pod pod (created), owned by the Pod so that it goes with it.
func (*Backend) UpdateCheckConfigMap(b *imagev1.NodeImageBuild, pod *corev1.Pod) (*corev1.ConfigMap, error) {
	doc, err := backend.SpecDocument(b)
	if err != nil {
		return nil, err
	}
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      backend.SpecConfigMapName(pod.Name),
			Namespace: pod.Namespace,
			Labels: map[string]string{
				backend.LabelNodeImage: b.Spec.NodeImageName,
				backend.LabelComponent: backend.ComponentUpdateCheck,
				backend.LabelManagedBy: "nodeforge",
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
				Controller: ptr.To(true),
			}},
		},
		Data:      map[string]string{buildresult.SpecFile: string(doc)},
		Immutable: ptr.To(true),
	}, nil
}

// podShape is what differs between a builder Pod and an update check Pod.
type podShape struct {
	name      string
	labels    map[string]string
	args      []string
	env       []corev1.EnvVar
	configMap string
	timeout   time.Duration
	// scratch is the emptyDir size limit when spec.builder.cache is unset.
	scratch string
	// cpu and memory are the default requests.
	cpu, memory string
	// requests keeps spec.builder.resources' requests (builders); without
	// it only its limits apply (update checks).
	requests bool
	// kvm gives the Pod the KVM device (unless the backend gives none).
	kvm bool
}

// pod makes the Pod of shape for b, without owner.
func (p *Backend) pod(b *imagev1.NodeImageBuild, shape podShape) (*corev1.Pod, error) {
	spec := b.Spec.Builder
	image := p.Image
	if spec.Image != "" {
		if err := p.Images.Check(spec.Image); err != nil {
			return nil, err
		}
		image = spec.Image
	}
	if image == "" {
		return nil, fmt.Errorf("%w: no builder image: set --builder-image or spec.builder.image", backend.ErrInvalidConfig)
	}
	sa := p.ServiceAccount
	if sa == "" {
		sa = DefaultServiceAccount
	}
	scratchSize, err := resource.ParseQuantity(shape.scratch)
	if err != nil {
		return nil, fmt.Errorf("%w: scratch size %q: %w", backend.ErrInvalidConfig, shape.scratch, err)
	}

	resources := corev1.ResourceRequirements{Limits: spec.Resources.Limits.DeepCopy()}
	if shape.requests {
		resources = *spec.Resources.DeepCopy()
	}
	volumes := []corev1.Volume{{
		Name: "spec",
		VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: shape.configMap},
			DefaultMode:          ptr.To[int32](0o444),
		}},
	}}
	mounts := []corev1.VolumeMount{
		{Name: "spec", MountPath: buildresult.SpecDir, ReadOnly: true},
		{Name: "scratch", MountPath: buildresult.ScratchDir},
	}
	if spec.Cache != nil {
		volumes = append(volumes, corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: spec.Cache.Name},
		}})
	} else {
		volumes = append(volumes, corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &scratchSize},
		}})
		// The scheduler sees the scratch space only as a request: place
		// the Pod where it fits, not on a node it would fill.
		setDefault(&resources, corev1.ResourceEphemeralStorage, scratchSize)
	}
	setDefault(&resources, corev1.ResourceCPU, resource.MustParse(shape.cpu))
	setDefault(&resources, corev1.ResourceMemory, resource.MustParse(shape.memory))
	secrets := backend.CredentialSecrets(b)
	if !shape.kvm {
		// Only builds pull images and sign: an update check reads the
		// published manifest with the object store's credentials alone.
		secrets = slices.DeleteFunc(secrets, func(s backend.SecretKeys) bool { return s.Purpose != backend.SecretObjectStore })
	}
	if len(secrets) > 0 {
		volumes = append(volumes, credentialsVolume(secrets))
		mounts = append(mounts, corev1.VolumeMount{Name: "credentials", MountPath: buildresult.CredentialsDir, ReadOnly: true})
	}
	if d := b.Spec.Destination; d != nil && d.S3 != nil {
		if d.S3.CASecretRef != nil {
			volumes = append(volumes, corev1.Volume{Name: "ca", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{
					SecretName: d.S3.CASecretRef.Name, DefaultMode: ptr.To[int32](0o444),
					Items: []corev1.KeyToPath{{Key: buildresult.CAKey, Path: buildresult.CAKey}},
				},
			}})
			mounts = append(mounts, corev1.VolumeMount{Name: "ca", MountPath: buildresult.CADir, ReadOnly: true})
		}
	}
	switch {
	case !shape.kvm:
	case p.NoKVM:
		// Nodes without KVM: no device to mount (a hostPath of type
		// CharDevice would keep the Pod from starting); the boot test
		// runs under TCG and its report says why.
	case p.UseKVMResource:
		if resources.Limits == nil {
			resources.Limits = corev1.ResourceList{}
		}
		resources.Limits[KVMResource] = resource.MustParse("1")
		if resources.Requests != nil {
			resources.Requests[KVMResource] = resource.MustParse("1")
		}
	default:
		volumes = append(volumes, corev1.Volume{Name: "kvm", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: "/dev/kvm", Type: ptr.To(corev1.HostPathCharDev)},
		}})
		mounts = append(mounts, corev1.VolumeMount{Name: "kvm", MountPath: "/dev/kvm"})
	}

	placed, tolerations, err := p.Placement.Place(spec)
	if err != nil {
		return nil, err
	}
	nodeSelector := map[string]string{corev1.LabelArchStable: string(imagev1.ArchitectureAMD64)}
	maps.Copy(nodeSelector, placed)

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      shape.name,
			Namespace: b.Namespace,
			Labels:    shape.labels,
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			ActiveDeadlineSeconds:         ptr.To(int64(shape.timeout.Seconds())),
			ServiceAccountName:            sa,
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			NodeSelector:                  nodeSelector,
			Tolerations:                   tolerations,
			TerminationGracePeriodSeconds: ptr.To[int64](30),
			Volumes:                       volumes,
			Containers: []corev1.Container{{
				Name:                     ContainerName,
				Image:                    image,
				Args:                     shape.args,
				Env:                      shape.env,
				Resources:                resources,
				VolumeMounts:             mounts,
				TerminationMessagePath:   buildresult.ResultPath,
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
				ImagePullPolicy:          corev1.PullIfNotPresent,
				SecurityContext: &corev1.SecurityContext{
					// Loop devices, mounts, chroot package installs and KVM
					// need a privileged container.
					Privileged: ptr.To(true),
				},
			}},
		},
	}
	if p.HostNetwork {
		pod.Spec.HostNetwork = true
		pod.Spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
	}
	return pod, nil
}

// credentialsVolume projects only the keys the builder reads
// (backend.CredentialSecrets): the object-store credentials, each key
// optional because either spelling may be used, the Docker configurations
// of the registries pulled from and pushed to, and the signing key. Whatever else the Secrets hold never
// reaches the builder. A missing key fails the build with the key named
// (storage.CredentialsFromDir, the run's registry configuration and
// signing key).
func credentialsVolume(secrets []backend.SecretKeys) corev1.Volume {
	var sources []corev1.VolumeProjection
	for _, s := range secrets {
		for i, k := range s.Keys {
			sources = append(sources, corev1.VolumeProjection{Secret: &corev1.SecretProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: s.Secret},
				Items:                []corev1.KeyToPath{{Key: k, Path: s.File(i)}},
				Optional:             ptr.To(true),
			}})
		}
	}
	return corev1.Volume{Name: "credentials", VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{Sources: sources, DefaultMode: ptr.To[int32](0o400)},
	}}
}

// Requests a builder gets unless spec.builder.resources sets them.
const (
	DefaultCPURequest    = "1"
	DefaultMemoryRequest = "3Gi"
)

// setDefault sets a request of r unless the request or a limit of that
// resource is set (a limit alone makes the request equal it).
func setDefault(r *corev1.ResourceRequirements, name corev1.ResourceName, q resource.Quantity) {
	if _, ok := r.Requests[name]; ok {
		return
	}
	if _, ok := r.Limits[name]; ok {
		return
	}
	if r.Requests == nil {
		r.Requests = corev1.ResourceList{}
	}
	r.Requests[name] = q
}

// Observe implements backend.Backend.
func (p *Backend) Observe(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) (backend.Observation, error) {
	name := backend.BuilderName(b.Name, attempt)
	obs := backend.Observation{Kind: "Pod", Name: name, Phase: backend.PhaseNotFound}
	var pod corev1.Pod
	if err := p.reader().Get(ctx, client.ObjectKey{Namespace: b.Namespace, Name: name}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return obs, nil
		}
		return obs, fmt.Errorf("reading builder Pod %s: %w", name, err)
	}
	if err := backend.NameInUse(p.Kind(), &pod, b); err != nil {
		// Not ours (it replaced ours, or ours was never created): the
		// attempt waits, under its deadline, and never reads its result.
		obs.Phase, obs.Message = backend.PhasePending, err.Error()
		return obs, nil
	}
	obs.CreatedAt = pod.CreationTimestamp.Time
	state := containerState(&pod)

	switch pod.Status.Phase {
	case corev1.PodSucceeded:
		obs.Phase = backend.PhaseSucceeded
	case corev1.PodFailed:
		obs.Phase = backend.PhaseFailed
	case corev1.PodRunning:
		obs.Phase = backend.PhaseRunning
	default:
		obs.Phase = backend.PhasePending
		obs.Message = pendingMessage(&pod)
	}
	if pod.DeletionTimestamp != nil && obs.Phase != backend.PhaseSucceeded {
		// Deleted while running (by a person, eviction or node drain):
		// the attempt cannot finish.
		obs.Phase = backend.PhaseFailed
		obs.Message = "builder Pod was deleted before it finished"
	}

	if t := state.Terminated; t != nil {
		obs.FinishedAt = t.FinishedAt.Time
		obs.Result, obs.ResultError = buildresult.Decode([]byte(t.Message))
		if obs.Message == "" {
			obs.Message = fmt.Sprintf("builder exited with code %d", t.ExitCode)
			if t.Reason != "" && t.Reason != "Error" && t.Reason != "Completed" {
				obs.Message += " (" + t.Reason + ")"
			}
		}
	}
	if obs.Phase == backend.PhaseFailed && pod.Status.Reason == "DeadlineExceeded" {
		obs.DeadlineExceeded = true
		obs.Message = pod.Status.Message
	}
	if obs.Phase == backend.PhaseFailed && obs.FinishedAt.IsZero() {
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady || c.Type == corev1.DisruptionTarget {
				obs.FinishedAt = c.LastTransitionTime.Time
			}
		}
	}

	if p.Logs != nil && (obs.Phase == backend.PhaseRunning || (obs.Phase != backend.PhasePending && state.Terminated != nil)) {
		// Logs are best effort: a missing log never fails a reconcile.
		if log, err := p.Logs.TailLogs(ctx, b.Namespace, name, ContainerName, DefaultLogTailLines); err == nil {
			if pr, ok := buildresult.LastProgress(log); ok {
				obs.Progress = &pr
			}
			obs.LogTail = buildresult.TailBytes(string(log), MaxLogTail)
		}
	}
	return obs, nil
}

func containerState(pod *corev1.Pod) corev1.ContainerState {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == ContainerName {
			return cs.State
		}
	}
	return corev1.ContainerState{}
}

func pendingMessage(pod *corev1.Pod) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" {
			return strings.TrimSpace(w.Reason + ": " + w.Message)
		}
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return strings.TrimSpace(c.Reason + ": " + c.Message)
		}
	}
	return ""
}

// Delete implements backend.Backend.
func (p *Backend) Delete(ctx context.Context, b *imagev1.NodeImageBuild, attempt int32) (bool, error) {
	if attempt > 0 {
		// Only ours: a Pod of the name that another owner controls is left
		// alone (and is no builder of this build).
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: backend.BuilderName(b.Name, attempt)}}
		if ours, err := backend.Controls(ctx, p.reader(), b, pod); err != nil || !ours {
			return err == nil, err
		}
		return p.deletePod(ctx, b.Namespace, pod.Name)
	}
	var pods corev1.PodList
	if err := p.Client.List(ctx, &pods, client.InNamespace(b.Namespace), client.MatchingLabels{backend.LabelBuild: b.Name}); err != nil {
		return false, fmt.Errorf("listing builder Pods: %w", err)
	}
	gone := true
	for i := range pods.Items {
		if !metav1.IsControlledBy(&pods.Items[i], b) {
			continue
		}
		g, err := p.deletePod(ctx, b.Namespace, pods.Items[i].Name)
		if err != nil {
			return false, err
		}
		gone = gone && g
	}
	cmGone, err := backend.DeleteSpecConfigMap(ctx, p.Client, p.reader(), b)
	return gone && cmGone, err
}

func (p *Backend) deletePod(ctx context.Context, ns, name string) (bool, error) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	err := p.Client.Delete(ctx, pod, client.PropagationPolicy(metav1.DeletePropagationBackground))
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("deleting builder Pod %s: %w", name, err)
	}
	// A Pod on a node goes away when the kubelet confirms, which a NotReady
	// node never does: a Pod being deleted counts as gone, and the
	// garbage collector finishes once the build is gone.
	err = p.reader().Get(ctx, client.ObjectKeyFromObject(pod), pod)
	if err == nil {
		return pod.DeletionTimestamp != nil, nil
	}
	return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
}
