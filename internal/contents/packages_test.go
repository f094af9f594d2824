package contents

import (
	"slices"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// TestPackagesLaterSpecificRequestWins: a pin in spec.packages overrides the
// feature's constraint, for the builder and for verify alike.
func TestPackagesLaterSpecificRequestWins(t *testing.T) {
	c := imagev1.ImageContent{Packages: []string{"containerd=1.7.24~ds1-6", "jq"}}
	c.Default()
	got := map[string]PackageRequest{}
	for _, r := range Packages(&c) {
		got[r.Name] = r
	}
	if r := got["containerd"]; r.Match != MatchExact || r.Version != "1.7.24~ds1-6" || r.Why != "packages" {
		t.Errorf("containerd = %+v, want the exact pin from spec.packages", r)
	}
	if r := got["jq"]; r.Match != MatchAny {
		t.Errorf("jq = %+v", r)
	}
	for _, name := range []string{"cloud-init", "openssh-server", "runc", "containernetworking-plugins", "prometheus-node-exporter", "linux-image-cloud-amd64"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing from the default content's packages", name)
		}
	}
}

// TestPackagesLayer: Kubernetes (its packages and the kubelet's
// recommends), a provisioner's python3 and spec.packages go on top of the
// builder's cached base layer; the seed and the runtime's packages are the
// base, unless spec.packages pins one of them. A spec without Kubernetes or
// provisioners has the same base as one with them.
func TestPackagesLayer(t *testing.T) {
	c := imagev1.ImageContent{
		Packages:     []string{"containerd=1.7.24~ds1-6", "jq", "openssh-server"},
		Kubernetes:   &imagev1.KubernetesSpec{Version: "v1.37.2"},
		Provisioners: []imagev1.Provisioner{{Name: "site", Ansible: &imagev1.AnsibleProvisioner{Playbook: "- hosts: all"}}},
	}
	c.Default()
	got := map[string]bool{}
	for _, r := range Packages(&c) {
		got[r.Name] = r.Layer
	}
	for name, layer := range map[string]bool{
		"kubeadm": true, "kubelet": true, "kubectl": true, "cri-tools": true, "conntrack": true, "python3": true,
		"jq": true, "containerd": true,
		"openssh-server": false, "runc": false, "cloud-init": false, "linux-image-cloud-amd64": false,
	} {
		if l, ok := got[name]; !ok || l != layer {
			t.Errorf("%s: requested %v, layer %v; want requested, layer %v", name, ok, l, layer)
		}
	}

	base := func(c imagev1.ImageContent) []string {
		c.Default()
		var out []string
		for _, r := range Packages(&c) {
			if !r.Layer {
				out = append(out, r.String())
			}
		}
		return out
	}
	plain := imagev1.ImageContent{}
	withAll := imagev1.ImageContent{
		Packages:     []string{"jq"},
		Kubernetes:   &imagev1.KubernetesSpec{Version: "v1.37.2"},
		Provisioners: c.Provisioners,
	}
	if a, b := base(plain), base(withAll); !slices.Equal(a, b) {
		t.Errorf("base requests differ:\nplain %v\nwith Kubernetes, a provisioner, a package %v", a, b)
	}
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		r       PackageRequest
		version string
		want    bool
		wantStr string
	}{
		{PackageRequest{Name: "kubeadm", Match: MatchPrefix, Version: "1.37.2-"}, "1.37.2-1.1", true, "1.37.2-*"},
		{PackageRequest{Name: "kubeadm", Match: MatchPrefix, Version: "1.37.2-"}, "1.37.20-1.1", false, "1.37.2-*"},
		{PackageRequest{Name: "containerd", Match: MatchConstraint, Version: ">=1.7.23"}, "1.7.24~ds1-6", true, ">=1.7.23"},
		{PackageRequest{Name: "containerd", Match: MatchConstraint, Version: ">=1.7.23"}, "1.7.22-1", false, ">=1.7.23"},
		{PackageRequest{Name: "jq", Match: MatchExact, Version: "1.7.1-3"}, "1.7.1-3", true, "1.7.1-3"},
		{PackageRequest{Name: "jq", Match: MatchExact, Version: "1.7.1-3"}, "1.7.1-4", false, "1.7.1-3"},
		{PackageRequest{Name: "jq"}, "anything", true, "any"},
	} {
		got, err := tc.r.Matches(tc.version)
		if err != nil || got != tc.want || tc.r.Want() != tc.wantStr {
			t.Errorf("%s.Matches(%s) = %v, %v (want %v); Want() = %q", tc.r, tc.version, got, err, tc.want, tc.r.Want())
		}
	}
}
