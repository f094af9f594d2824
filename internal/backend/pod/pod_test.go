package pod

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
)

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := imagev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func testBuild() *imagev1.NodeImageBuild {
	return &imagev1.NodeImageBuild{
		ObjectMeta: metav1.ObjectMeta{Name: "cloud-base-abc123", Namespace: "images", UID: types.UID("u1")},
		Spec: imagev1.NodeImageBuildSpec{
			NodeImageName: "cloud-base",
			Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
				Endpoint: "http://127.0.0.1:9000", Bucket: "b",
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "s3"},
			}},
		},
	}
}

func TestPodForHostNetwork(t *testing.T) {
	for _, tc := range []struct {
		name        string
		hostNetwork bool
		wantDNS     corev1.DNSPolicy
	}{
		// The Pod network is the default: the API server's default
		// dnsPolicy (ClusterFirst) applies.
		{name: "default: pod network", hostNetwork: false, wantDNS: ""},
		// Single-node dev clusters: the node's network, cluster DNS first.
		{name: "host network", hostNetwork: true, wantDNS: corev1.DNSClusterFirstWithHostNet},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev", HostNetwork: tc.hostNetwork}
			pod, err := b.PodFor(testBuild(), 1)
			if err != nil {
				t.Fatal(err)
			}
			if pod.Spec.HostNetwork != tc.hostNetwork {
				t.Errorf("hostNetwork = %v, want %v", pod.Spec.HostNetwork, tc.hostNetwork)
			}
			if pod.Spec.DNSPolicy != tc.wantDNS {
				t.Errorf("dnsPolicy = %q, want %q", pod.Spec.DNSPolicy, tc.wantDNS)
			}
			// Host networking changes nothing else the builder relies on.
			c := pod.Spec.Containers[0]
			if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
				t.Error("builder container is not privileged")
			}
			if !hasMount(c, "kvm", "/dev/kvm") {
				t.Error("/dev/kvm is not mounted")
			}
			if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
				t.Error("the service account token is mounted")
			}
		})
	}
}

func hasMount(c corev1.Container, volume, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume && m.MountPath == path {
			return true
		}
	}
	return false
}

// TestPodForImageOverride: builders run privileged, so spec.builder.image
// runs only when the manager allows its prefix.
func TestPodForImageOverride(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allowed []string
		want    string // image, or "" for refused
	}{
		{name: "no overrides by default", want: ""},
		{name: "allowed prefix", allowed: []string{"registry.example.com/nodeforge/"}, want: "registry.example.com/nodeforge/builder:v2"},
		{name: "other prefix", allowed: []string{"registry.example.com/other/"}, want: ""},
		{name: "repository prefix at a boundary", allowed: []string{"registry.example.com/nodeforge/builder"}, want: "registry.example.com/nodeforge/builder:v2"},
		{name: "a longer repository name is not the allowed one", allowed: []string{"registry.example.com/nodeforge/build"}, want: ""},
		{name: "a longer host name is not the allowed one", allowed: []string{"registry.example"}, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev", Images: backend.ImagePolicy{AllowedPrefixes: tc.allowed}}
			build := testBuild()
			build.Spec.Builder.Image = "registry.example.com/nodeforge/builder:v2"
			pod, err := b.PodFor(build, 1)
			if tc.want == "" {
				if !errors.Is(err, backend.ErrInvalidConfig) || !strings.Contains(err.Error(), "spec.builder.image") {
					t.Fatalf("err = %v, want an invalid-configuration error naming spec.builder.image", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := pod.Spec.Containers[0].Image; got != tc.want {
				t.Errorf("image = %s, want %s", got, tc.want)
			}
		})
	}
}

// A builder Pod asks the scheduler for what it uses: its scratch emptyDir
// as ephemeral storage, and enough CPU and memory for the build and the
// boot test's guest, unless spec.builder.resources says otherwise.
func TestPodForRequests(t *testing.T) {
	b := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev"}
	pod, err := b.PodFor(testBuild(), 1)
	if err != nil {
		t.Fatal(err)
	}
	req := pod.Spec.Containers[0].Resources.Requests
	for name, want := range map[corev1.ResourceName]string{
		corev1.ResourceEphemeralStorage: DefaultScratchSize,
		corev1.ResourceCPU:              DefaultCPURequest,
		corev1.ResourceMemory:           DefaultMemoryRequest,
	} {
		if q, ok := req[name]; !ok || q.Cmp(resource.MustParse(want)) != 0 {
			t.Errorf("request %s = %v, want %s", name, req[name], want)
		}
	}

	// The spec's own values win; a limit alone is left to set the request.
	build := testBuild()
	build.Spec.Builder.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("3")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("8Gi")},
	}
	pod, err = b.PodFor(build, 1)
	if err != nil {
		t.Fatal(err)
	}
	r := pod.Spec.Containers[0].Resources
	if q := r.Requests[corev1.ResourceCPU]; q.Cmp(resource.MustParse("3")) != 0 {
		t.Errorf("cpu request %v, want the spec's 3", q)
	}
	if _, ok := r.Requests[corev1.ResourceMemory]; ok {
		t.Errorf("memory request %v set beside the spec's limit", r.Requests[corev1.ResourceMemory])
	}

	// A cache volume instead of the emptyDir: no ephemeral-storage request.
	build = testBuild()
	build.Spec.Builder.Cache = &corev1.LocalObjectReference{Name: "cache"}
	pod, err = b.PodFor(build, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pod.Spec.Containers[0].Resources.Requests[corev1.ResourceEphemeralStorage]; ok {
		t.Error("ephemeral-storage requested with a cache volume")
	}
}

// On nodes without KVM (--mount-kvm=false) a builder gets no /dev/kvm: a
// hostPath of type CharDevice would keep it from ever starting there.
func TestPodForWithoutKVM(t *testing.T) {
	for _, tc := range []struct {
		name    string
		b       *Backend
		wantKVM bool
	}{
		{name: "default mounts /dev/kvm", b: &Backend{}, wantKVM: true},
		{name: "no KVM", b: &Backend{NoKVM: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.b.Scheme, tc.b.Image = testScheme(t), "nodeforge-builder:dev"
			pod, err := tc.b.PodFor(testBuild(), 1)
			if err != nil {
				t.Fatal(err)
			}
			has := false
			for _, v := range pod.Spec.Volumes {
				if v.HostPath != nil && v.HostPath.Path == "/dev/kvm" {
					has = true
				}
			}
			if has != tc.wantKVM {
				t.Errorf("/dev/kvm volume = %v, want %v", has, tc.wantKVM)
			}
		})
	}
}

func TestPodForPlacement(t *testing.T) {
	b := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev"}
	build := testBuild()
	build.Spec.Builder.NodeSelector = map[string]string{"node-role.kubernetes.io/control-plane": ""}
	build.Spec.Builder.Tolerations = []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists}}
	if _, err := b.PodFor(build, 1); !errors.Is(err, backend.ErrInvalidConfig) || !strings.Contains(err.Error(), "spec.builder.nodeSelector[node-role.kubernetes.io/control-plane]") {
		t.Fatalf("a control-plane placement by default: err = %v", err)
	}
	b.Placement = backend.PlacementPolicy{
		NodeSelector: map[string]string{"nodeforge.dev/builder": "true"},
		Tolerations:  []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "builds"}},
	}
	pod, err := b.PodFor(testBuild(), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{corev1.LabelArchStable: "amd64", "nodeforge.dev/builder": "true"}
	if !reflect.DeepEqual(pod.Spec.NodeSelector, want) || len(pod.Spec.Tolerations) != 1 || pod.Spec.Tolerations[0].Key != "dedicated" {
		t.Errorf("nodeSelector %v, tolerations %v; want %v and the admin's toleration", pod.Spec.NodeSelector, pod.Spec.Tolerations, want)
	}
}

// The builder gets the credential keys it reads, never the whole Secret.
func TestPodForProjectsCredentialKeysOnly(t *testing.T) {
	b := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev"}
	pod, err := b.PodFor(testBuild(), 1)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "s3" {
			t.Fatalf("the credentials Secret is mounted whole: %+v", v)
		}
		if v.Name != "credentials" {
			continue
		}
		if v.Projected == nil {
			t.Fatalf("credentials volume %+v is not a projection", v)
		}
		for _, src := range v.Projected.Sources {
			if src.Secret == nil || src.Secret.Name != "s3" || src.Secret.Optional == nil || !*src.Secret.Optional {
				t.Errorf("source %+v: want an optional key of Secret s3", src)
				continue
			}
			for _, it := range src.Secret.Items {
				keys = append(keys, it.Key)
			}
		}
	}
	want := []string{"accessKeyID", "secretAccessKey", "sessionToken", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("projected keys %v, want %v", keys, want)
	}
}

// TestPodForProjectsOnlyTheKeysTheBuilderReads: spec.builder.
// registryCredentials reaches the builder as its .dockerconfigjson key
// only, spec.destination.oci's credentials as the same key under a file
// name of their own (and their CA's ca.crt likewise), and
// spec.destination.signing as cosign.key and
// cosign.password only (not cosign.pub or anything else of the Secret), in the
// credentials volume, with or without an S3 destination.
func TestPodForProjectsOnlyTheKeysTheBuilderReads(t *testing.T) {
	for name, tc := range map[string]struct {
		set    func(*imagev1.NodeImageBuild)
		secret string
		want   []string
	}{
		"registry": {func(b *imagev1.NodeImageBuild) {
			b.Spec.Builder.RegistryCredentials = &corev1.LocalObjectReference{Name: "pull"}
		}, "pull", []string{".dockerconfigjson->.dockerconfigjson"}},
		"signing": {func(b *imagev1.NodeImageBuild) {
			if b.Spec.Destination == nil {
				b.Spec.Destination = &imagev1.DestinationSpec{}
			}
			b.Spec.Destination.Signing = &imagev1.SigningSpec{KeySecretRef: corev1.LocalObjectReference{Name: "cosign"}}
		}, "cosign", []string{"cosign.key->cosign.key", "cosign.password->cosign.password"}},
		// The push credentials have a file of their own: the pull
		// credentials' may be another Secret's .dockerconfigjson.
		"push": {func(b *imagev1.NodeImageBuild) {
			if b.Spec.Destination == nil {
				b.Spec.Destination = &imagev1.DestinationSpec{}
			}
			b.Spec.Builder.RegistryCredentials = &corev1.LocalObjectReference{Name: "pull"}
			b.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/node",
				CredentialsSecretRef: &corev1.LocalObjectReference{Name: "push"}}
		}, "push", []string{".dockerconfigjson->oci-push.dockerconfigjson"}},
		// The registry's CA likewise: the object store's CA Secret may
		// have its own ca.crt.
		"push CA": {func(b *imagev1.NodeImageBuild) {
			if b.Spec.Destination == nil {
				b.Spec.Destination = &imagev1.DestinationSpec{}
			}
			b.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: "registry.example.com/images/node",
				CASecretRef: &corev1.LocalObjectReference{Name: "registry-ca"}}
		}, "registry-ca", []string{"ca.crt->oci-ca.crt"}},
	} {
		for _, withS3 := range []bool{true, false} {
			b := &Backend{Scheme: testScheme(t), Image: "nodeforge-builder:dev"}
			build := testBuild()
			if !withS3 {
				build.Spec.Destination = nil
			}
			tc.set(build)
			pod, err := b.PodFor(build, 1)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range pod.Spec.Volumes {
				if v.Secret != nil && v.Secret.SecretName == tc.secret {
					t.Fatalf("%s: the Secret is mounted whole: %+v", name, v)
				}
				if v.Name != "credentials" || v.Projected == nil {
					continue
				}
				for _, src := range v.Projected.Sources {
					if src.Secret != nil && src.Secret.Name == tc.secret {
						for _, it := range src.Secret.Items {
							got = append(got, it.Key+"->"+it.Path)
						}
					}
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s with S3 %v: projected %v, want %v", name, withS3, got, tc.want)
			}
			mounted := false
			for _, m := range pod.Spec.Containers[0].VolumeMounts {
				mounted = mounted || (m.Name == "credentials" && m.MountPath == "/etc/nodeforge/credentials" && m.ReadOnly)
			}
			if !mounted {
				t.Errorf("%s with S3 %v: the credentials volume is not mounted read-only at /etc/nodeforge/credentials", name, withS3)
			}
		}
	}
}
