// Package miniotest starts a real MinIO server for tests: the binary
// hack/tools.sh builds (or $NODEFORGE_MINIO), on a free 127.0.0.1 port, with
// a temp data dir and random credentials. It is stopped by PID in
// t.Cleanup, also when the test fails.
package miniotest

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeforge/nodeforge/internal/freeport"
	"github.com/nodeforge/nodeforge/internal/testenv/reporoot"
)

// RequireIntegrationEnv, when "1", turns a missing MinIO binary into a test
// failure instead of a skip.
const RequireIntegrationEnv = "NODEFORGE_REQUIRE_INTEGRATION"

// Binary finds the MinIO binary without building it. When it is missing the
// test fails if NODEFORGE_REQUIRE_INTEGRATION=1, else skips.
func Binary(t testing.TB) string {
	t.Helper()
	var bin, origin string
	if v := os.Getenv("NODEFORGE_MINIO"); v != "" {
		bin, origin = v, "$NODEFORGE_MINIO"
		if st, err := os.Stat(v); err == nil && st.IsDir() {
			bin = filepath.Join(v, "minio")
		}
	} else {
		root, err := reporoot.Dir()
		var out []byte
		if err == nil {
			out, err = exec.Command("bash", filepath.Join(root, "hack", "tools.sh"), "path", "minio").Output()
		}
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
		"(2-5 minutes cold; prints the dir) or point NODEFORGE_MINIO at a minio binary or its dir", bin, origin)
	if os.Getenv(RequireIntegrationEnv) == "1" {
		t.Fatal(msg + " (" + RequireIntegrationEnv + "=1, so this is a failure, not a skip)")
	}
	t.Skip(msg)
	return ""
}

// Config adjusts the server.
type Config struct {
	// CertsDir holds public.crt and private.key to serve TLS; empty: plain HTTP.
	CertsDir string
	// CAPEM is the CA that signed public.crt, to probe readiness over TLS.
	CAPEM []byte
	// Args are extra `minio server` flags, for example --no-compat.
	Args []string
}

// Server is one MinIO process a test started.
type Server struct {
	Addr      string
	AccessKey string
	SecretKey string
	CertsDir  string
	CAPEM     []byte

	t       testing.TB
	args    []string
	bin     string
	dataDir string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *bytes.Buffer
}

// Start starts a server and registers its stop with t.Cleanup.
func Start(t testing.TB, cfg Config) *Server {
	t.Helper()
	s := &Server{
		t:         t,
		bin:       Binary(t),
		dataDir:   t.TempDir(),
		CertsDir:  cfg.CertsDir,
		CAPEM:     cfg.CAPEM,
		args:      cfg.Args,
		Addr:      FreeAddr(t),
		AccessKey: "AK" + RandHex(9),
		SecretKey: "SK" + RandHex(19),
	}
	t.Cleanup(s.Stop)
	s.Start()
	return s
}

// RandHex returns 2n random hex digits.
func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// FreeAddr returns a free 127.0.0.1 address (internal/freeport: outside
// the ephemeral range, so no outgoing connection takes it before the
// server binds it, or between a Kill and the next Start).
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Scheme is http or https.
func (s *Server) Scheme() string {
	if s.CertsDir != "" {
		return "https"
	}
	return "http"
}

// Endpoint is the server URL.
func (s *Server) Endpoint() string { return s.Scheme() + "://" + s.Addr }

// Env returns the standard AWS_* variables pointing at this server. The
// others a client reads are set empty, so a CA bundle or session token in
// the test's environment cannot leak into it.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + s.Endpoint(), "AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=",
		"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_SESSION_TOKEN=", "AWS_CA_BUNDLE=", "NODEFORGE_S3_ADDRESSING=",
	}
}

// Start runs the server (again, after Kill) and waits until it is ready.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	args := []string{"server", "--quiet", "--address", s.Addr}
	if s.CertsDir != "" {
		args = append(args, "--certs-dir", s.CertsDir)
	}
	args = append(args, s.args...)
	args = append(args, s.dataDir)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
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
	if s.CAPEM != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(s.CAPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	client := &http.Client{Timeout: time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if s.ready(client) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.Stop()
	s.t.Fatalf("minio on %s not ready after 60s; log:\n%s", s.Addr, s.log.String())
}

// ready reports whether the server answers S3 requests. The health
// endpoint alone is not enough: MinIO reports ready before its object layer
// is initialized, and for a moment after answers every S3 request with 503
// XMinioServerNotInitialized (seen on a loaded CI host). An unsigned bucket
// listing answers 403 once requests are served.
func (s *Server) ready(client *http.Client) bool {
	status := func(path string) int {
		resp, err := client.Get(s.Endpoint() + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status("/minio/health/ready") != http.StatusOK {
		return false
	}
	code := status("/")
	return code != 0 && code != http.StatusServiceUnavailable
}

// Kill stops the server abruptly (SIGKILL to its PID), as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Stop ends the server by PID: SIGTERM, then SIGKILL after 10s.
func (s *Server) Stop() {
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

// Log returns what the server printed so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}
