package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// The publishing options of `nodeforge build` are checked before anything
// is built: runBuild opens the publisher before the pipeline runs.
func TestBuildPublisherRejectsBadOptions(t *testing.T) {
	t.Setenv(storage.EnvEndpointURL, "http://127.0.0.1:1")
	t.Setenv(storage.EnvAccessKeyID, "AKIATEST")
	t.Setenv(storage.EnvSecretAccessKey, "secret-test")
	t.Setenv(storage.EnvCABundle, "")
	spec := func(expiry time.Duration) *imagev1.DestinationSpec {
		d := &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: "http://127.0.0.1:1", Bucket: "images", Insecure: true,
			CredentialsSecretRef: corev1LocalRef}}
		if expiry != 0 {
			d.S3.PresignExpiry = &metav1.Duration{Duration: expiry}
		}
		return d
	}
	cases := map[string]struct {
		o    buildOptions
		dst  *imagev1.DestinationSpec
		want string // "" means no error
	}{
		"--to":                              {o: buildOptions{to: "s3://images", createBucket: true}},
		"spec destination":                  {dst: spec(0)},
		"--presign-expiry above 168h":       {o: buildOptions{to: "s3://images", presignExpiry: 200 * time.Hour}, want: "--presign-expiry 200h0m0s: must be between 1s and 168h"},
		"--presign-expiry below 1s":         {o: buildOptions{to: "s3://images", presignExpiry: 500 * time.Millisecond}, want: "--presign-expiry"},
		"negative --presign-expiry":         {o: buildOptions{presignExpiry: -time.Hour}, dst: spec(0), want: "--presign-expiry"},
		"spec presignExpiry above 168h":     {dst: spec(30 * 24 * time.Hour), want: "spec.destination.s3.presignExpiry 720h0m0s"},
		"--presign-expiry overrides spec":   {o: buildOptions{presignExpiry: time.Hour}, dst: spec(30 * 24 * time.Hour)},
		"--no-publish ignores the expiry":   {o: buildOptions{noPublish: true}, dst: spec(30 * 24 * time.Hour)},
		"--credentials-dir with --to":       {o: buildOptions{to: "s3://images", credentialsDir: "/creds"}, want: "--credentials-dir applies to spec.destination only"},
		"--create-bucket without --to":      {o: buildOptions{createBucket: true}, dst: spec(0), want: "--create-bucket needs --to"},
		"--create-bucket, no destination":   {o: buildOptions{createBucket: true}, want: "--create-bucket needs --to"},
		"no destination, nothing to verify": {},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			_, _, err := tc.o.publisher(tc.dst, "default")
			if tc.want == "" {
				g.Expect(err).NotTo(HaveOccurred())
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tc.want)))
		})
	}
}

// run reads the spec's presignExpiry, which the API does not bound: an
// out-of-range value fails before the build, as a publish failure.
func TestRunRejectsAnOutOfRangePresignExpiry(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	spec := writeBuild(t, dir, func(b *imagev1.NodeImageBuild) {
		b.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: "http://127.0.0.1:1", Bucket: "images",
			Insecure: true, CredentialsSecretRef: corev1LocalRef, PresignExpiry: &metav1.Duration{Duration: 8 * 24 * time.Hour}}}
	})
	o := &runOptions{spec: spec, result: filepath.Join(dir, "result"), scratch: filepath.Join(dir, "scratch"),
		credentialsDir: filepath.Join(dir, "no-credentials"), caDir: dir}
	err := runRun(context.Background(), o, &nopWriter{}, &nopWriter{})
	g.Expect(err).To(MatchError(errRunFailed))
	r := readResult(t, o.result)
	g.Expect(r.Step).To(Equal("publish"))
	g.Expect(r.Message).To(ContainSubstring("spec.destination.s3.presignExpiry 192h0m0s: must be between 1s and 168h"))
	g.Expect(filepath.Join(dir, "scratch", "work")).NotTo(BeADirectory(), "nothing was built")
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// On the CLI a spec destination's CA comes from AWS_CA_BUNDLE: used for an
// https endpoint whether or not the spec has caSecretRef, required when it
// has, and ignored for a plain-HTTP endpoint (the variable may be set for
// the whole machine).
func TestBuildPublisherCABundle(t *testing.T) {
	certs := t.TempDir()
	caPEM := miniotest.WriteTestCA(t, certs)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tlsSrv := miniotest.Start(t, miniotest.Config{CertsDir: certs, CAPEM: caPEM})
	plainSrv := miniotest.Start(t, miniotest.Config{})
	dest := func(srv *miniotest.Server, mutate func(*imagev1.S3Destination)) *imagev1.DestinationSpec {
		d := &imagev1.S3Destination{Endpoint: srv.Endpoint(), Bucket: "images", CreateBucket: true, CredentialsSecretRef: corev1LocalRef}
		if mutate != nil {
			mutate(d)
		}
		return &imagev1.DestinationSpec{S3: d}
	}
	ensure := func(dst *imagev1.DestinationSpec) error {
		pub, _, err := (&buildOptions{}).publisher(dst, "default")
		if err != nil {
			return err
		}
		return pub.Store.(*storage.S3).EnsureBucket(context.Background())
	}
	withCARef := func(d *imagev1.S3Destination) { d.CASecretRef = &corev1.LocalObjectReference{Name: "ca"} }

	t.Run("https without caSecretRef uses AWS_CA_BUNDLE", func(t *testing.T) {
		g := NewWithT(t)
		useServer(t, tlsSrv)
		t.Setenv(storage.EnvCABundle, caFile)
		g.Expect(ensure(dest(tlsSrv, nil))).To(Succeed())
	})
	t.Run("https with caSecretRef uses AWS_CA_BUNDLE", func(t *testing.T) {
		g := NewWithT(t)
		useServer(t, tlsSrv)
		t.Setenv(storage.EnvCABundle, caFile)
		g.Expect(ensure(dest(tlsSrv, withCARef))).To(Succeed())
	})
	t.Run("https with caSecretRef and no AWS_CA_BUNDLE fails", func(t *testing.T) {
		g := NewWithT(t)
		useServer(t, tlsSrv) // sets AWS_CA_BUNDLE empty
		err := ensure(dest(tlsSrv, withCARef))
		g.Expect(err).To(MatchError(And(ContainSubstring("caSecretRef"), ContainSubstring(storage.EnvCABundle))))
	})
	t.Run("an unreadable AWS_CA_BUNDLE fails for https", func(t *testing.T) {
		g := NewWithT(t)
		useServer(t, tlsSrv)
		t.Setenv(storage.EnvCABundle, filepath.Join(t.TempDir(), "missing.pem"))
		g.Expect(ensure(dest(tlsSrv, nil))).To(MatchError(ContainSubstring(storage.EnvCABundle)))
	})
	t.Run("http with insecure ignores AWS_CA_BUNDLE", func(t *testing.T) {
		g := NewWithT(t)
		useServer(t, plainSrv)
		t.Setenv(storage.EnvCABundle, caFile)
		g.Expect(ensure(dest(plainSrv, func(d *imagev1.S3Destination) { d.Insecure = true }))).To(Succeed())
	})
	t.Run("--to over http ignores AWS_CA_BUNDLE", func(t *testing.T) {
		g := NewWithT(t)
		useServer(t, plainSrv)
		t.Setenv(storage.EnvCABundle, caFile)
		pub, _, err := (&buildOptions{to: "s3://images2", createBucket: true}).publisher(nil, "default")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(pub.Store.(*storage.S3).EnsureBucket(context.Background())).To(Succeed())
	})
}
