package resolve

import (
	"context"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

const file = `apiVersion: v1
kind: ConfigMap
metadata: {name: extras}
data:
  motd: hello
  key: "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n"
  play.yml: "- hosts: all\n"
---
apiVersion: image.nodeforge.dev/v1alpha1
kind: NodeImage
metadata: {name: img}
spec:
  kubernetes:
    version: v1.37.2
    aptRepository:
      url: http://127.0.0.1:1/
      signingKey: {configMapKeyRef: {name: extras, key: key}}
  files:
    - {path: /etc/motd, configMapKeyRef: {name: extras, key: motd}}
  provisioners:
    - name: play
      ansible: {playbookRef: {name: extras, key: play.yml}}
`

func TestLoadAndResolve(t *testing.T) {
	g := NewWithT(t)
	ni, get, err := Load(strings.NewReader(file), "test.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ni.Name).To(Equal("img"))

	_, err = ni.Spec.ImageContent.Digest()
	g.Expect(err).To(MatchError(imagev1.ErrUnresolvedReference))

	c, err := Content(context.Background(), &ni.Spec.ImageContent, get)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.References()).To(BeEmpty())
	g.Expect(c.Files[0].Content).To(Equal("hello"))
	g.Expect(c.Files[0].Mode).To(Equal("0644"), "resolved content is defaulted")
	g.Expect(c.Kubernetes.AptRepository.SigningKey.Armored).To(HavePrefix("-----BEGIN PGP"))
	g.Expect(c.Provisioners[0].Ansible.Playbook).To(Equal("- hosts: all\n"))
	g.Expect(ni.Spec.Files[0].ConfigMapKeyRef).NotTo(BeNil(), "the input is not modified")
	_, err = c.Digest()
	g.Expect(err).NotTo(HaveOccurred())
}

func TestResolveErrorsNameTheField(t *testing.T) {
	g := NewWithT(t)
	c := &imagev1.ImageContent{Files: []imagev1.FileSpec{{Path: "/a"}, {Path: "/b", ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Key: "k"}}}}
	_, err := Content(context.Background(), c, FromConfigMaps(nil))
	g.Expect(err).To(MatchError(ErrMissingReference))
	g.Expect(err.Error()).To(ContainSubstring("spec.files[1].configMapKeyRef"))
	g.Expect(err.Error()).To(ContainSubstring("gone"))

	cms := []corev1.ConfigMap{{Data: map[string]string{"x": "y"}}}
	cms[0].Name = "present"
	c.Files[1].ConfigMapKeyRef.Name = "present"
	_, err = Content(context.Background(), c, FromConfigMaps(cms))
	g.Expect(err).To(MatchError(ContainSubstring(`has no key "k"`)))
}

func TestLoadRejectsBadFiles(t *testing.T) {
	cases := map[string]string{
		"unknown field":   "apiVersion: image.nodeforge.dev/v1alpha1\nkind: NodeImage\nmetadata: {name: a}\nspec: {pakages: [vim]}\n",
		"no NodeImage":    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
		"two NodeImages":  strings.Repeat("apiVersion: image.nodeforge.dev/v1alpha1\nkind: NodeImage\nmetadata: {name: a}\nspec: {}\n---\n", 2),
		"unexpected kind": "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n",
	}
	want := map[string]string{
		"unknown field": "spec.pakages: unknown field", "no NodeImage": "no image.nodeforge.dev/v1alpha1 NodeImage",
		"two NodeImages": "more than one NodeImage", "unexpected kind": "unexpected v1 Secret",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := Load(strings.NewReader(in), "f.yaml")
			NewWithT(t).Expect(err).To(MatchError(ContainSubstring(want[name])))
		})
	}
}

// TestLoadAppliesTheCRDSchema checks that the CLI path rejects and defaults
// like the API server, from the same generated schema.
func TestLoadAppliesTheCRDSchema(t *testing.T) {
	g := NewWithT(t)
	_, _, err := Load(strings.NewReader(`apiVersion: image.nodeforge.dev/v1alpha1
kind: NodeImage
metadata: {name: bad}
spec:
  disk: {bootMode: coreboot, size: 1Gi}
  output: {format: raw, compression: zstd}
  provisioners: [{name: x}]
`), "bad.yaml")
	g.Expect(err).To(HaveOccurred())
	for _, want := range []string{"spec.disk.bootMode", "disk.size must be at least 2Gi", "compression must be none when format is raw",
		"spec.provisioners[0]: Invalid value", "exactly one of shell or ansible"} {
		g.Expect(err.Error()).To(ContainSubstring(want))
	}

	ni, _, err := Load(strings.NewReader("apiVersion: image.nodeforge.dev/v1alpha1\nkind: NodeImage\nmetadata: {name: min}\nspec: {}\n"), "min.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ni.Spec.Disk.BootMode).To(Equal(imagev1.BootModeHybrid), "schema defaults are applied")
	g.Expect(ni.Spec.Kernel.Modules).To(ConsistOf("br_netfilter", "overlay"))
}

func TestSamplesLoad(t *testing.T) {
	for _, s := range []string{"cloudbase", "minimal", "minimal_arm64", "gpuworker"} {
		t.Run(s, func(t *testing.T) {
			g := NewWithT(t)
			ni, get, err := LoadFile("../../config/samples/image_v1alpha1_nodeimage_" + s + ".yaml")
			g.Expect(err).NotTo(HaveOccurred())
			c, err := Content(context.Background(), &ni.Spec.ImageContent, get)
			g.Expect(err).NotTo(HaveOccurred())
			_, err = c.Digest()
			g.Expect(err).NotTo(HaveOccurred())
		})
	}
}
