package controller_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
	"github.com/nodeforge/nodeforge/internal/testenv"
)

// TestS3ArtifactStore drives the manager's view of the object store
// (controller.S3Opener, PublisherStore) against a real MinIO: credentials
// from a Secret, cache lookups, a missing bucket, deletion.
func TestS3ArtifactStore(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	srv := miniotest.Start(t, miniotest.Config{})
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s3", Namespace: "images"},
		Data:       map[string][]byte{"accessKeyID": []byte(srv.AccessKey), "secretAccessKey": []byte(srv.SecretKey)},
	}
	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).WithObjects(secret).Build()
	store := controller.PublisherStore{Open: controller.S3Opener(c)}
	digest := "sha256:" + strings.Repeat("ef", 32)
	ni := func(bucket string, create bool, secretName string) *imagev1.NodeImage {
		return &imagev1.NodeImage{
			ObjectMeta: metav1.ObjectMeta{Name: "cloud-base", Namespace: "images"},
			Spec: imagev1.NodeImageSpec{Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
				Endpoint: srv.Endpoint(), Bucket: bucket, Prefix: "nodes", Insecure: true, CreateBucket: create,
				CredentialsSecretRef: corev1.LocalObjectReference{Name: secretName},
			}}},
		}
	}
	stalled := func(err error, want string) {
		t.Helper()
		var se *controller.StallingError
		g.Expect(errors.As(err, &se)).To(BeTrue(), "want a StallingError, got %v", err)
		g.Expect(se.Reason).To(Equal(imagev1.InvalidSpecReason))
		g.Expect(err.Error()).To(ContainSubstring(want))
		g.Expect(err.Error()).NotTo(ContainSubstring(srv.SecretKey))
	}

	_, err := store.Lookup(ctx, ni("images", true, "missing"), digest)
	stalled(err, "secret images/missing does not exist")

	_, err = store.Lookup(ctx, ni("absent", false, "s3"), digest)
	stalled(err, `bucket "absent" does not exist and spec.destination.s3.createBucket is false`)

	_, err = store.Lookup(ctx, ni("images", true, "s3"), digest)
	g.Expect(err).To(MatchError(controller.ErrArtifactNotFound), "a bucket the builder will create holds nothing yet")

	// A builder publishes; the manager finds it by digest.
	pub, _, err := storage.OpenDestination(*ni("images", true, "s3").Spec.Destination.S3, ni("images", true, "s3").Namespace,
		storage.NewCredentials(srv.AccessKey, srv.SecretKey, ""), nil)
	g.Expect(err).NotTo(HaveOccurred())
	img := filepath.Join(t.TempDir(), "cloud-base.qcow2")
	g.Expect(os.WriteFile(img, []byte("qcow2 bytes"), 0o644)).To(Succeed())
	published, err := pub.Publish(ctx, storage.PublishInput{Name: "cloud-base", SpecDigest: digest, ImagePath: img, Manifest: []byte(`{}`),
		Companions: []storage.Companion{{Name: "cloud-base.spdx.json", Data: []byte(`{}`)}}})
	g.Expect(err).NotTo(HaveOccurred())

	a, err := store.Lookup(ctx, ni("images", true, "s3"), digest)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.URL).To(Equal(published.URL))
	g.Expect(a.SHA256).To(Equal(published.SHA256))
	g.Expect(a.Size).To(Equal(int64(len("qcow2 bytes"))))
	g.Expect(a.SpecDigest).To(Equal(digest))
	g.Expect(a.Format).To(Equal(imagev1.FormatQCOW2))
	// Path-style URL: bucket "images", then the key, which starts with the
	// NodeImage's namespace (also "images"), then the prefix.
	g.Expect(a.ManifestURL).To(HaveSuffix("/images/images/nodes/cloud-base/"+strings.Repeat("ef", 32)+"/1/manifest.json"), "keys are scoped to the NodeImage namespace")
	g.Expect(a.Revision).To(BeEquivalentTo(1))
	g.Expect(a.SBOMURL).To(Equal(strings.TrimSuffix(a.ManifestURL, "manifest.json") + "cloud-base.spdx.json"))
	g.Expect(a.ProvenanceURL).To(BeEmpty(), "none was published")
	// The presigned URL is the revision's image.
	u, _, err := store.Presign(ctx, ni("images", true, "s3"), a)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(u).To(ContainSubstring("/images/images/nodes/cloud-base/" + strings.Repeat("ef", 32) + "/1/cloud-base.qcow2?"))

	g.Expect(store.DeleteAll(ctx, ni("images", true, "s3"))).To(Succeed())
	_, err = store.Lookup(ctx, ni("images", true, "s3"), digest)
	g.Expect(err).To(MatchError(controller.ErrArtifactNotFound))
}

// TestArtifactStoreCallTimeout: an endpoint that accepts connections and
// never answers holds a call for CallTimeout, not for ever.
func TestArtifactStoreCallTimeout(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s3", Namespace: "images"},
		Data:       map[string][]byte{"accessKeyID": []byte("AKIDSILENT"), "secretAccessKey": []byte("silent-secret-key")},
	}
	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).WithObjects(secret).Build()
	store := controller.PublisherStore{Open: controller.S3Opener(c), CallTimeout: 500 * time.Millisecond}
	ni := &imagev1.NodeImage{
		ObjectMeta: metav1.ObjectMeta{Name: "cloud-base", Namespace: "images"},
		Spec: imagev1.NodeImageSpec{Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
			Endpoint: "http://" + ln.Addr().String(), Bucket: "images", Insecure: true,
			CredentialsSecretRef: corev1.LocalObjectReference{Name: "s3"},
		}}},
	}
	for name, call := range map[string]func() error{
		"Lookup": func() error {
			_, err := store.Lookup(context.Background(), ni, "sha256:"+strings.Repeat("ab", 32))
			return err
		},
		"Prune":     func() error { return store.Prune(context.Background(), ni, 1) },
		"DeleteAll": func() error { return store.DeleteAll(context.Background(), ni) },
	} {
		start := time.Now()
		err := call()
		g.Expect(err).To(HaveOccurred(), name)
		g.Expect(time.Since(start)).To(BeNumerically("<", 10*time.Second), "%s waited for the silent endpoint: %v", name, err)
		g.Expect(err.Error()).NotTo(ContainSubstring("silent-secret-key"))
	}
}
