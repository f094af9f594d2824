package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeforge/nodeforge/internal/checksum"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// The integration tests run against a real MinIO server started by
// miniotest; minioServer adds the S3 stores these tests open on it.

type minioConfig struct {
	certsDir string // holds public.crt and private.key for TLS
	caPEM    []byte // the CA that signed public.crt
	args     []string
}

type minioServer struct {
	*miniotest.Server
	certsDir  string
	caPEM     []byte
	accessKey string
	secretKey string
}

func startMinio(t testing.TB, cfg minioConfig) *minioServer {
	t.Helper()
	srv := miniotest.Start(t, miniotest.Config{CertsDir: cfg.certsDir, CAPEM: cfg.caPEM, Args: cfg.args})
	return &minioServer{Server: srv, certsDir: cfg.certsDir, caPEM: cfg.caPEM, accessKey: srv.AccessKey, secretKey: srv.SecretKey}
}

func newBenchRand() *mrand.ChaCha8 { return mrand.NewChaCha8([32]byte{7}) }

func randHex(n int) string { return miniotest.RandHex(n) }

func (s *minioServer) endpoint() string { return s.Endpoint() }

func (s *minioServer) creds() Credentials { return NewCredentials(s.accessKey, s.secretKey, "") }

func (s *minioServer) start() { s.Start() }

func (s *minioServer) kill() { s.Kill() }

// store returns an S3 store on this server for bucket.
func (s *minioServer) store(t testing.TB, bucket string, mutate ...func(*S3Options)) *S3 {
	t.Helper()
	opts := S3Options{
		Endpoint:     s.endpoint(),
		Bucket:       bucket,
		Region:       "us-east-1",
		Credentials:  s.creds(),
		Addressing:   AddressingPath,
		PlainHTTP:    s.certsDir == "",
		CACertPEM:    s.caPEM,
		CreateBucket: true,
	}
	for _, m := range mutate {
		m(&opts)
	}
	st, err := NewS3(opts)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// bucketStore returns a store on a fresh, existing bucket.
func (s *minioServer) bucketStore(t testing.TB, mutate ...func(*S3Options)) *S3 {
	t.Helper()
	st := s.store(t, "nf-"+strings.ToLower(randHex(6)), mutate...)
	if err := st.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

// writeTestFile writes a size-byte file of pseudo-random data with holes
// (every fourth MiB left sparse), and returns its path and sha256.
func writeTestFile(t testing.TB, dir string, size int64, seed uint64) (string, string) {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("image-%d.qcow2", seed))
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 42})
	buf := make([]byte, 1<<20)
	for off, i := int64(0), 0; off < size; off, i = off+int64(len(buf)), i+1 {
		n := min(int64(len(buf)), size-off)
		if i%4 == 3 {
			continue // hole
		}
		_, _ = rng.Read(buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	sum, _, err := checksum.File(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, sum
}

// readAllHash returns the sha256 of everything r yields.
func readAllHash(t testing.TB, r io.Reader) (string, int64) {
	t.Helper()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}
