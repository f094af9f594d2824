package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/containerdisk"
	"github.com/nodeforge/nodeforge/internal/containerdisk/registrytest"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

func resolveTag(t *testing.T, repo, tag string, opts ...remote.Option) string {
	t.Helper()
	ref, err := name.NewTag(repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref, opts...)
	if err != nil {
		return ""
	}
	return desc.Digest.String()
}

// nodeforge publish --oci: the containerDisk is pushed, recorded in the
// published manifest and tagged with the revision's tag and the moving
// ones.
func TestPublishPushesAContainerDisk(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	useServer(t, srv)
	repo := registrytest.Start(t, registrytest.Options{}) + "/nodeforge/demo"
	image, manPath := writeImage(t, t.TempDir(), "")

	var out, log bytes.Buffer
	err := runPublish(context.Background(), image, publishOptions{to: "s3://images/team", createBucket: true, presignExpiry: time.Hour,
		oci: ociFlags{repository: repo, tags: []string{"stable", "1.37"}, insecure: true}}, &out, &log)
	g.Expect(err).NotTo(HaveOccurred(), log.String())
	g.Expect(out.String()).To(MatchRegexp(`containerDisk: ` + repo + `@sha256:[0-9a-f]{64}\n`))
	digest := out.String()[strings.Index(out.String(), "@")+1 : len(out.String())-1]
	for _, tag := range []string{"r1-" + strings.Repeat("cd", 6), "stable", "1.37"} {
		g.Expect(resolveTag(t, repo, tag)).To(Equal(digest), tag)
	}
	g.Expect(log.String()).To(ContainSubstring("pushed containerDisk"))

	// The published manifest records the containerDisk.
	pub, _, err := (&buildOptions{to: "s3://images/team"}).publisher(nil, "default")
	g.Expect(err).NotTo(HaveOccurred())
	art, err := pub.Lookup(context.Background(), "demo", "sha256:"+strings.Repeat("cd", 32))
	g.Expect(err).NotTo(HaveOccurred())
	rc, _, err := pub.Store.Get(context.Background(), art.ManifestKey)
	g.Expect(err).NotTo(HaveOccurred())
	m, err := manifest.Decode(rc)
	rc.Close()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.ContainerDisk).To(Equal(&manifest.ContainerDisk{Repository: repo, Digest: digest}))
	local, err := manifest.Read(manPath)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(local.ContainerDisk).To(Equal(m.ContainerDisk), "the local manifest records it too")
}

func TestOCIOptionErrors(t *testing.T) {
	g := NewWithT(t)
	pub := &storage.Publisher{}
	_, err := ociFlags{tags: []string{"stable"}}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("need --oci REPOSITORY")))
	_, err = ociFlags{repository: "127.0.0.1:5000/x"}.destination(nil, nil)
	g.Expect(err).To(MatchError(ContainSubstring("--oci needs an object store")))
	_, err = ociFlags{repository: "x"}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("--oci.repository")))
	_, err = ociFlags{repository: "127.0.0.1:5000/x", tags: []string{"-bad"}}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("--oci.tags")))
	o, err := ociFlags{repository: "127.0.0.1:5000/x"}.destination(nil, pub)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(o.Tags).To(Equal([]string{"latest"}))
	// The spec's destination, unless --to or --no-publish replace it.
	spec := &imagev1.DestinationSpec{OCI: &imagev1.OCIDestination{Repository: "127.0.0.1:5000/y", Tags: []string{"stable"}}}
	o, err = ociFlags{}.destination((&buildOptions{}).specOCI(spec), pub)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(o.Repository.Name()).To(Equal("127.0.0.1:5000/y"))
	g.Expect((&buildOptions{to: "s3://b"}).specOCI(spec)).To(BeNil())
	g.Expect((&buildOptions{noPublish: true}).specOCI(spec)).To(BeNil())
	// --oci replaces the spec's.
	o, err = ociFlags{repository: "127.0.0.1:5000/x"}.destination(spec.OCI, pub)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(o.Repository.Name()).To(Equal("127.0.0.1:5000/x"))
	g.Expect(revisionTag(3, "sha256:"+strings.Repeat("ab", 32))).To(Equal("r3-abababababab"))

	// The registry's CA: a file for the CLI, which reads no Secrets.
	_, err = ociFlags{caFile: "ca.pem"}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("--oci-ca-file needs --oci REPOSITORY or spec.destination.oci")))
	withCA := &imagev1.OCIDestination{Repository: "127.0.0.1:5000/y", CASecretRef: &corev1LocalRef}
	_, err = ociFlags{}.destination(withCA, pub)
	g.Expect(err).To(MatchError(ContainSubstring("caSecretRef (creds) is set, but the CLI reads the registry's CA from --oci-ca-file")))
	_, err = ociFlags{repository: "127.0.0.1:5000/x", caFile: filepath.Join(t.TempDir(), "missing.pem")}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("--oci-ca-file:")))
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	g.Expect(os.WriteFile(notPEM, []byte("not a certificate"), 0o600)).To(Succeed())
	_, err = ociFlags{repository: "127.0.0.1:5000/x", caFile: notPEM}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("--oci-ca-file: no PEM certificate")))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	g.Expect(os.WriteFile(caFile, miniotest.WriteTestCA(t, t.TempDir()), 0o600)).To(Succeed())
	_, err = ociFlags{repository: "127.0.0.1:5000/x", insecure: true, caFile: caFile}.destination(nil, pub)
	g.Expect(err).To(MatchError(ContainSubstring("cannot be combined with insecure")))
}

// A builder that finds the spec's artifact published (a retried build, or
// a spec changed back) pushes it to destination.oci, a registry with a
// private CA, with the push credentials and the CA from their Secrets and
// tags it, building nothing; without a Secret's key it fails before
// anything else.
func TestRunPushesAReusedArtifact(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	host, caPEM := registrytest.StartTLS(t, registrytest.Options{User: "robot", Password: "s3cret"})
	repo := host + "/team/demo"
	caTransport, err := containerdisk.TransportWithCA(caPEM)
	g.Expect(err).NotTo(HaveOccurred())
	tlsOpt := remote.WithTransport(caTransport)
	dir := t.TempDir()
	dest := func(b *imagev1.NodeImageBuild) {
		b.Spec.Destination = &imagev1.DestinationSpec{
			S3: &imagev1.S3Destination{Endpoint: srv.Endpoint(), Bucket: "images",
				Prefix: "nodes", Insecure: true, CreateBucket: true, CredentialsSecretRef: corev1LocalRef},
			OCI: &imagev1.OCIDestination{Repository: repo, Tags: []string{"stable"},
				CredentialsSecretRef: &corev1LocalRef, CASecretRef: &corev1LocalRef},
			Signing: &imagev1.SigningSpec{KeySecretRef: corev1LocalRef},
		}
	}
	spec := writeBuild(t, dir, dest)
	b, err := readBuild(spec)
	g.Expect(err).NotTo(HaveOccurred())
	creds := credentialsDir(t, dir, srv)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	der, err := x509.MarshalECPrivateKey(key)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(os.WriteFile(filepath.Join(creds, buildresult.SigningKeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)).To(Succeed())

	// Published earlier, without destination.oci.
	publishEarlier(t, srv, b)

	// No push credentials mounted: fails naming the Secret and the key.
	o := &runOptions{spec: spec, result: filepath.Join(dir, "result"), scratch: filepath.Join(dir, "scratch"),
		credentialsDir: creds, caDir: dir}
	var out bytes.Buffer
	g.Expect(runRun(context.Background(), o, &out, &out)).To(MatchError(errRunFailed))
	r := readResult(t, o.result)
	g.Expect(r.Reason).To(Equal(buildresult.ReasonPublishFailed))
	g.Expect(r.Message).To(ContainSubstring("spec.destination.oci.credentialsSecretRef: Secret creds has no .dockerconfigjson key"))

	auth := base64.StdEncoding.EncodeToString([]byte("robot:s3cret"))
	g.Expect(os.WriteFile(filepath.Join(creds, buildresult.PushConfigFile),
		[]byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600)).To(Succeed())
	// No CA mounted: fails naming the Secret and the key.
	out.Reset()
	g.Expect(runRun(context.Background(), o, &out, &out)).To(MatchError(errRunFailed))
	r = readResult(t, o.result)
	g.Expect(r.Message).To(ContainSubstring("spec.destination.oci.caSecretRef: Secret creds has no ca.crt key"))

	g.Expect(os.WriteFile(filepath.Join(creds, buildresult.PushCAFile), caPEM, 0o600)).To(Succeed())
	out.Reset()
	g.Expect(runRun(context.Background(), o, &out, &out)).To(Succeed(), out.String())
	r = readResult(t, o.result)
	g.Expect(r.Artifact.ContainerDisk).To(MatchRegexp(`^` + repo + `@sha256:[0-9a-f]{64}$`))
	g.Expect(out.String()).To(ContainSubstring("nothing to build"))
	g.Expect(out.String()).NotTo(ContainSubstring("s3cret"))
	digest := strings.SplitN(r.Artifact.ContainerDisk, "@", 2)[1]
	basic := remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: "robot", Password: "s3cret"}))
	g.Expect(resolveTag(t, repo, "stable", basic, tlsOpt)).To(Equal(digest))
	g.Expect(resolveTag(t, repo, revisionTag(1, b.Spec.SpecDigest), basic, tlsOpt)).To(Equal(digest))
	g.Expect(resolveTag(t, repo, "stable", tlsOpt)).To(BeEmpty(), "the registry lets anonymous requests in")

	// Signed as cosign signs an image: the payload names the digest and
	// verifies with the public key.
	sigRef, err := name.NewTag(repo+":"+containerdisk.SignatureTag(digest), name.Insecure)
	g.Expect(err).NotTo(HaveOccurred())
	sigImg, err := remote.Image(sigRef, basic, tlsOpt)
	g.Expect(err).NotTo(HaveOccurred())
	sm, err := sigImg.Manifest()
	g.Expect(err).NotTo(HaveOccurred())
	layers, err := sigImg.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	lr, err := layers[0].Compressed()
	g.Expect(err).NotTo(HaveOccurred())
	payload, _ := io.ReadAll(lr)
	lr.Close()
	g.Expect(string(payload)).To(ContainSubstring(`"docker-manifest-digest":"` + digest + `"`))
	sig, err := base64.StdEncoding.DecodeString(sm.Layers[0].Annotations[containerdisk.SignatureAnnotation])
	g.Expect(err).NotTo(HaveOccurred())
	sum := sha256.Sum256(payload)
	g.Expect(ecdsa.VerifyASN1(&key.PublicKey, sum[:], sig)).To(BeTrue(), "the signature does not verify")
	g.Expect(filepath.Join(dir, "scratch", "out")).NotTo(BeADirectory(), "nothing was built")
}
