package storage

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// writeTestCA writes a CA and a 127.0.0.1 server certificate it signed into
// dir as MinIO expects them (public.crt, private.key), and returns the CA.
func writeTestCA(t testing.TB, dir string) []byte {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nodeforge test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("public.crt", "CERTIFICATE", der)
	write("private.key", "EC PRIVATE KEY", keyDER)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

func TestS3TLSWithCustomCA(t *testing.T) {
	g := NewWithT(t)
	certs := t.TempDir()
	caPEM := writeTestCA(t, certs)
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
