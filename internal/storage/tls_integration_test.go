package storage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

func TestS3TLSWithCustomCA(t *testing.T) {
	g := NewWithT(t)
	certs := t.TempDir()
	caPEM := miniotest.WriteTestCA(t, certs)
	srv := startMinio(t, minioConfig{certsDir: certs, caPEM: caPEM})
	ctx := context.Background()
	g.Expect(srv.endpoint()).To(HavePrefix("https://127.0.0.1:"))

	st := srv.bucketStore(t, func(o *S3Options) { o.PartSize = 5 << 20 })
	path, sum := writeTestFile(t, t.TempDir(), 12<<20, 40)
	info, err := st.PutFile(ctx, "tls/img.qcow2", path, PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.SHA256).To(Equal(sum))

	u, err := st.PresignGet(ctx, "tls/img.qcow2", time.Minute)
	g.Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	resp, err := client.Get(u)
	g.Expect(err).NotTo(HaveOccurred())
	got, _ := readAllHash(t, resp.Body)
	resp.Body.Close()
	g.Expect(got).To(Equal(sum))

	// Without the CA the certificate is refused at once (no retry storm),
	// with an error that says so.
	untrusted := srv.store(t, st.Bucket(), func(o *S3Options) { o.CACertPEM = nil })
	start := time.Now()
	err = untrusted.EnsureBucket(ctx)
	g.Expect(err).To(MatchError(ContainSubstring("certificate")))
	g.Expect(errors.Is(err, ErrUnavailable)).To(BeFalse())
	g.Expect(time.Since(start)).To(BeNumerically("<", 3*time.Second))

	// Plain HTTP must be asked for.
	_, err = NewS3(S3Options{Endpoint: "http://127.0.0.1:1", Bucket: "b"})
	g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue())
}
