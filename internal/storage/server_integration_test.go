package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// This file starts a real MinIO server for the integration tests: the
// binary hack/tools.sh builds (or $NODEFORGE_MINIO), on a free 127.0.0.1
// port, with a temp data dir and random credentials. It is stopped by PID
// in t.Cleanup, also when the test fails.

const requireIntegrationEnv = "NODEFORGE_REQUIRE_INTEGRATION"

// minioBinary finds the MinIO binary without building it. When it is
// missing the test fails if NODEFORGE_REQUIRE_INTEGRATION=1, else skips.
func minioBinary(t testing.TB) string {
	t.Helper()
	var bin, origin string
	if v := os.Getenv("NODEFORGE_MINIO"); v != "" {
		bin, origin = v, "$NODEFORGE_MINIO"
		if st, err := os.Stat(v); err == nil && st.IsDir() {
			bin = filepath.Join(v, "minio")
		}
	} else {
		out, err := exec.Command("bash", filepath.Join("..", "..", "hack", "tools.sh"), "path", "minio").Output()
		if err == nil {
			bin, origin = filepath.Join(strings.TrimSpace(string(out)), "minio"), "hack/tools.sh path minio"
		}
	}
	if bin != "" {
		if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return bin
		}
	}
	msg := fmt.Sprintf("MinIO binary not found (looked at %q from %s). Build it with `hack/tools.sh minio` "+
		"(4-11 minutes cold; prints the dir) or point NODEFORGE_MINIO at a minio binary or its dir", bin, origin)
	if os.Getenv(requireIntegrationEnv) == "1" {
		t.Fatal(msg + " (" + requireIntegrationEnv + "=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return ""
}

// minioServer is one MinIO process we started.
type minioServer struct {
	t         testing.TB
	bin       string
	dataDir   string
	certsDir  string // empty: plain HTTP
	caPEM     []byte
	addr      string
	accessKey string
	secretKey string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *bytes.Buffer
}

type minioConfig struct {
	certsDir string // holds public.crt and private.key for TLS
	caPEM    []byte // the CA that signed public.crt
}

func startMinio(t testing.TB, cfg minioConfig) *minioServer {
	t.Helper()
	s := &minioServer{
		t:         t,
		bin:       minioBinary(t),
		dataDir:   t.TempDir(),
		certsDir:  cfg.certsDir,
		caPEM:     cfg.caPEM,
		addr:      freeAddr(t),
		accessKey: "AK" + randHex(9),
		secretKey: "SK" + randHex(19),
	}
	t.Cleanup(s.stop)
	s.start()
	return s
}

func newBenchRand() *mrand.ChaCha8 { return mrand.NewChaCha8([32]byte{7}) }

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (s *minioServer) scheme() string {
	if s.certsDir != "" {
		return "https"
	}
	return "http"
}

// endpoint is the server URL.
func (s *minioServer) endpoint() string { return s.scheme() + "://" + s.addr }

func (s *minioServer) creds() Credentials { return NewCredentials(s.accessKey, s.secretKey, "") }

// start runs the server (again, after kill) and waits until it is ready.
func (s *minioServer) start() {
	s.t.Helper()
	s.mu.Lock()
	args := []string{"server", "--quiet", "--address", s.addr}
	if s.certsDir != "" {
		args = append(args, "--certs-dir", s.certsDir)
	}
	args = append(args, s.dataDir)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.accessKey, "MINIO_ROOT_PASSWORD="+s.secretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	s.log = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		s.t.Fatalf("start minio: %v", err)
	}
	s.cmd = cmd
	s.mu.Unlock()

	tr := &http.Transport{}
	if s.caPEM != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(s.caPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	client := &http.Client{Timeout: time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(s.endpoint() + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	s.t.Fatalf("minio on %s not ready after 60s; log:\n%s", s.addr, s.log.String())
}

// kill stops the server abruptly (SIGKILL to its PID), as a crash would.
func (s *minioServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// stop ends the server by PID: SIGTERM, then SIGKILL after 10s.
func (s *minioServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

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
	sum, _, err := FileSHA256(p)
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
