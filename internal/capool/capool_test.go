package capool_test

import (
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/nodeforge/nodeforge/internal/capool"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// The pool trusts the bundle's CA; a bundle without a certificate is an
// error.
func TestNew(t *testing.T) {
	dir := t.TempDir()
	caPEM := miniotest.WriteTestCA(t, dir)
	block, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := capool.New(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("the pool does not trust the bundle's CA: %v", err)
	}
	if _, err := capool.New([]byte("not a certificate")); err == nil {
		t.Error("a bundle without a certificate was accepted")
	}
}
