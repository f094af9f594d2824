package pod

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
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
