package pod

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/buildresult"
)

// An update check Pod is a builder Pod's sibling: same image policy,
// placement, credentials, CA and privileges, but the check entrypoint, no
// KVM, a short deadline, small requests, and not a builder's labels.
func TestUpdateCheckPod(t *testing.T) {
	be := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev", HostNetwork: true, OneBuildPerNode: true,
		Placement: backend.PlacementPolicy{NodeSelector: map[string]string{"nodeforge.dev/builder": "true"}}}
	b := testBuild()
	b.Name = "cloud-base-updates-0a1b2c3d4e"
	b.Spec.Builder.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}
	b.Spec.Builder.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4")}
	b.Spec.Builder.RegistryCredentials = &corev1.LocalObjectReference{Name: "pull"}
	b.Spec.Destination.Signing = &imagev1.SigningSpec{KeySecretRef: corev1.LocalObjectReference{Name: "cosign"}}
	pod, err := be.UpdateCheckPod(b, b.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.Secret != nil && src.Secret.Name != "s3" {
				t.Errorf("an update check gets Secret %s; it reads the object store's credentials only", src.Secret.Name)
			}
		}
	}
	if pod.Name != b.Name || pod.Namespace != "images" {
		t.Errorf("pod %s/%s", pod.Namespace, pod.Name)
	}
	want := map[string]string{backend.LabelNodeImage: "cloud-base", backend.LabelComponent: "update-check", backend.LabelManagedBy: "nodeforge"}
	if !reflect.DeepEqual(pod.Labels, want) {
		t.Errorf("labels = %v, want %v", pod.Labels, want)
	}
	if len(pod.OwnerReferences) != 0 {
		t.Errorf("owner set: %v", pod.OwnerReferences)
	}
	c := pod.Spec.Containers[0]
	if got := strings.Join(c.Args, " "); got != "run --check-updates --spec "+buildresult.SpecPath+" --result "+buildresult.ResultPath {
		t.Errorf("args = %s", got)
	}
	if c.TerminationMessagePath != buildresult.ResultPath || c.Image != "nodeforge-builder:dev" {
		t.Errorf("termination message path %s, image %s", c.TerminationMessagePath, c.Image)
	}
	if *pod.Spec.ActiveDeadlineSeconds != int64(UpdateCheckTimeout.Seconds()) {
		t.Errorf("deadline = %d", *pod.Spec.ActiveDeadlineSeconds)
	}
	if pod.Spec.Affinity != nil {
		t.Error("an update check has builder anti-affinity")
	}
	if !pod.Spec.HostNetwork || pod.Spec.NodeSelector["nodeforge.dev/builder"] != "true" {
		t.Errorf("host network %v, node selector %v", pod.Spec.HostNetwork, pod.Spec.NodeSelector)
	}
	if c.SecurityContext == nil || !*c.SecurityContext.Privileged || *pod.Spec.AutomountServiceAccountToken {
		t.Error("security settings differ from a builder's")
	}
	if hasMount(c, "kvm", "/dev/kvm") {
		t.Error("/dev/kvm is mounted")
	}
	if !hasMount(c, "credentials", buildresult.CredentialsDir) || !hasMount(c, "spec", buildresult.SpecDir) {
		t.Errorf("mounts = %v", c.VolumeMounts)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == "spec" && v.ConfigMap.Name != b.Name+"-spec" {
			t.Errorf("spec ConfigMap %s", v.ConfigMap.Name)
		}
		if v.Name == "scratch" && v.EmptyDir.SizeLimit.Cmp(resource.MustParse(UpdateCheckScratchSize)) != 0 {
			t.Errorf("scratch %v", v.EmptyDir.SizeLimit)
		}
	}
	// Small requests; spec.builder.resources' limits still apply, its
	// build-sized requests do not.
	r := c.Resources
	if r.Requests.Cpu().Cmp(resource.MustParse(UpdateCheckCPURequest)) != 0 || r.Limits.Memory().Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("resources = %v", r)
	}
	if _, ok := r.Requests[corev1.ResourceMemory]; ok {
		t.Errorf("memory request set next to a limit: %v", r.Requests)
	}
	if b.Spec.Builder.Resources.Limits.Memory().Cmp(resource.MustParse("1Gi")) != 0 {
		t.Error("the input's resources were modified")
	}

	// The image policy applies as to builders.
	b.Spec.Builder.Image = "elsewhere.example.com/tool:1"
	if _, err := be.UpdateCheckPod(b, b.Name); !errors.Is(err, backend.ErrInvalidConfig) {
		t.Errorf("image override: err = %v", err)
	}
}

func TestUpdateCheckConfigMapIsOwnedByThePod(t *testing.T) {
	be := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev"}
	b := testBuild()
	b.Name = "cloud-base-updates-0a1b2c3d4e"
	pod, err := be.UpdateCheckPod(b, b.Name)
	if err != nil {
		t.Fatal(err)
	}
	pod.UID = types.UID("pod-uid")
	cm, err := be.UpdateCheckConfigMap(b, pod)
	if err != nil {
		t.Fatal(err)
	}
	if cm.Name != b.Name+"-spec" || cm.Labels[backend.LabelComponent] != "update-check" {
		t.Errorf("ConfigMap %s labels %v", cm.Name, cm.Labels)
	}
	if o := cm.OwnerReferences; len(o) != 1 || o[0].Kind != "Pod" || o[0].UID != "pod-uid" || !*o[0].Controller {
		t.Errorf("owners = %v", o)
	}
	if !strings.Contains(cm.Data[buildresult.SpecFile], `"nodeImageName": "cloud-base"`) {
		t.Errorf("spec = %s", cm.Data[buildresult.SpecFile])
	}
}
