package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var fastRetry = RetryPolicy{Attempts: 3, Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond}

// The server dies in the middle of a multipart upload: the publish fails
// with ErrUnavailable, no object and no new latest pointer is visible, the
// older artifact is intact; after a restart a retry succeeds. Everything
// logged meanwhile is free of credentials.
func TestS3ServerKilledDuringMultipartUpload(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st := srv.bucketStore(t, func(o *S3Options) {
		o.PartSize = 5 << 20
		o.Concurrency = 2
		o.Retry = fastRetry
		o.Logger = logger
	})
	pub := &Publisher{Store: st, Prefix: "images", Logger: logger}
	ctx := context.Background()
	dir := t.TempDir()

	// An older, good artifact.
	oldPath, oldSum := writeTestFile(t, dir, 7<<20, 10)
	digestA, digestB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	_, err := pub.Publish(ctx, PublishInput{Name: "node", SpecDigest: digestA, ImagePath: oldPath, Manifest: []byte(`{"v":"a"}`)})
	g.Expect(err).NotTo(HaveOccurred())

	bigPath, bigSum := writeTestFile(t, dir, 200<<20, 11)
	var killed atomic.Bool
	_, err = pub.Publish(ctx, PublishInput{
		Name: "node", SpecDigest: digestB, ImagePath: bigPath, SHA256: bigSum, Manifest: []byte(`{"v":"b"}`),
		Progress: func(done, total int64) {
			if done > 20<<20 && killed.CompareAndSwap(false, true) {
				srv.kill()
			}
		},
	})
	g.Expect(killed.Load()).To(BeTrue(), "the server was killed mid-upload")
	g.Expect(err).To(HaveOccurred())
	g.Expect(errors.Is(err, ErrUnavailable)).To(BeTrue(), "%v", err)
	g.Expect(err.Error()).To(ContainSubstring("storage server unavailable"))

	srv.start()
	// Nothing of the failed publish is visible: no image, and the
	// revision it claimed (its .sha256, which the dead server kept from
	// being removed) reads as not published until Prune removes it.
	_, err = st.Stat(ctx, pub.ImageKey("node", digestB, 2, FormatQCOW2))
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "%v", err)
	_, err = pub.Lookup(ctx, "node", digestB)
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "%v", err)
	objs, err := st.List(ctx, "images/node/"+digestB)
	g.Expect(err).NotTo(HaveOccurred())
	for _, o := range objs {
		g.Expect(o.Key).To(Equal(pub.ImageKey("node", digestB, 2, FormatQCOW2)+".sha256"), "only the claim may remain")
	}
	// The older artifact and the latest pointer are untouched.
	a, err := pub.Lookup(ctx, "node", digestA)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.SHA256).To(Equal(oldSum))
	ptr, err := pub.Latest(ctx, "node")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ptr.SpecDigest).To(Equal(digestA))

	// The abort could not reach the dead server: its parts linger as an
	// (invisible) incomplete upload until cleaned.
	_, err = st.AbortIncompleteUploads(ctx, "images/", 0)
	g.Expect(err).NotTo(HaveOccurred())
	// The whole bucket (MinIO answers a key prefix with nothing).
	for u := range st.client.ListIncompleteUploads(ctx, st.Bucket(), "", true) {
		t.Errorf("incomplete upload left: %+v", u)
	}

	// Retry after the restart.
	b, err := pub.Publish(ctx, PublishInput{Name: "node", SpecDigest: digestB, ImagePath: bigPath, Manifest: []byte(`{"v":"b"}`)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(b.SHA256).To(Equal(bigSum))
	ptr, err = pub.Latest(ctx, "node")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ptr.SpecDigest).To(Equal(digestB))
	g.Expect(ptr.SHA256).To(Equal(bigSum))

	// Logs: the retries were logged, without credentials.
	logger.Info("store configured", "credentials", srv.creds())
	out := logs.String()
	g.Expect(out).To(ContainSubstring("retrying"))
	g.Expect(out).To(ContainSubstring(`"secretAccessKeySet":true`))
	g.Expect(out).NotTo(ContainSubstring(srv.secretKey))
	g.Expect(out).NotTo(ContainSubstring(srv.accessKey))
}

// tamperTransport lets a test corrupt requests or responses.
type tamperTransport struct {
	base     http.RoundTripper
	request  func(*http.Request)
	response func(*http.Request, *http.Response)
}

func (tt *tamperTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if tt.request != nil {
		tt.request(r)
	}
	resp, err := tt.base.RoundTrip(r)
	if err == nil && tt.response != nil {
		tt.response(r, resp)
	}
	return resp, err
}

func newBaseTransport(t testing.TB) http.RoundTripper {
	tr, err := newTransport(false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// flipReader corrupts one byte of a request body.
type flipReader struct {
	r    io.Reader
	done bool
}

func (f *flipReader) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if n > 0 && !f.done {
		b[n/2] ^= 0xff
		f.done = true
	}
	return n, err
}

func TestS3CorruptedPartIsRejectedAndAborted(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	good := srv.bucketStore(t)
	var once sync.Once
	tr := &tamperTransport{base: newBaseTransport(t), request: func(r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "2" && r.Body != nil {
			once.Do(func() { r.Body = io.NopCloser(&flipReader{r: r.Body}) })
		}
	}}
	st := srv.store(t, good.Bucket(), func(o *S3Options) { o.Transport = tr; o.PartSize = 5 << 20; o.Retry = fastRetry })
	path, _ := writeTestFile(t, t.TempDir(), 16<<20, 20)

	_, err := st.PutFile(context.Background(), "img/corrupt.qcow2", path, PutOptions{})
	g.Expect(errors.Is(err, ErrChecksumMismatch)).To(BeTrue(), "%v", err)
	_, err = good.Stat(context.Background(), "img/corrupt.qcow2")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "no partial object: %v", err)
	for u := range good.client.ListIncompleteUploads(context.Background(), good.Bucket(), "", true) { // the whole bucket: MinIO answers a key prefix with nothing
		t.Errorf("the failed upload was not aborted: %+v", u)
	}
}

func TestS3ChecksumMismatchAfterUploadRemovesObject(t *testing.T) {
	srv := startMinio(t, minioConfig{})
	good := srv.bucketStore(t)
	for name, size := range map[string]int64{"single PUT": 1 << 20, "multipart": 12 << 20} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			// A server (or proxy) that loses the metadata: HEAD reports
			// another sha256 than the one uploaded.
			tr := &tamperTransport{base: newBaseTransport(t), response: func(r *http.Request, resp *http.Response) {
				if r.Method == http.MethodHead {
					resp.Header.Set("X-Amz-Meta-Sha256", strings.Repeat("0", 64))
				}
			}}
			st := srv.store(t, good.Bucket(), func(o *S3Options) { o.Transport = tr; o.PartSize = 5 << 20 })
			path, sum := writeTestFile(t, t.TempDir(), size, 21)
			key := "img/" + strings.ReplaceAll(name, " ", "-")
			_, err := st.PutFile(context.Background(), key, path, PutOptions{})
			g.Expect(errors.Is(err, ErrChecksumMismatch)).To(BeTrue(), "%v", err)
			g.Expect(err.Error()).To(ContainSubstring(sum), "names the uploaded checksum")
			_, err = good.Stat(context.Background(), key)
			g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "the unverified object is removed: %v", err)
		})
	}
}

func TestS3WrongCallerChecksumSinglePut(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t)
	path, _ := writeTestFile(t, t.TempDir(), 2<<20, 22)
	wrong := strings.Repeat("1", 64)
	_, err := st.PutFile(context.Background(), "img/x", path, PutOptions{SHA256: wrong})
	g.Expect(errors.Is(err, ErrChecksumMismatch)).To(BeTrue(), "the server checks the signed sha256: %v", err)
	_, err = st.Stat(context.Background(), "img/x")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())

	_, err = st.PutBytes(context.Background(), "img/y", []byte("abc"), PutOptions{SHA256: wrong})
	g.Expect(errors.Is(err, ErrChecksumMismatch)).To(BeTrue(), "%v", err)
}

// Credentials never show in errors, logs or formatted values, including the
// server's own error messages.
func TestS3CredentialsNeverLeak(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	wrong := NewCredentials(srv.accessKey, "wrong-"+randHex(10), "token-"+randHex(10))
	ctx := context.Background()

	var texts []string
	good := srv.bucketStore(t, func(o *S3Options) { o.Logger = logger })
	bad := srv.store(t, good.Bucket(), func(o *S3Options) { o.Credentials = wrong; o.Logger = logger; o.Retry = fastRetry })
	for _, err := range []error{
		bad.EnsureBucket(ctx),
		func() error { _, err := bad.PutBytes(ctx, "k", []byte("v"), PutOptions{}); return err }(),
		func() error { _, err := bad.Stat(ctx, "k"); return err }(),
		func() error { _, err := bad.List(ctx, ""); return err }(),
		bad.Delete(ctx, "k"),
	} {
		g.Expect(err).To(HaveOccurred())
		texts = append(texts, err.Error(), fmt.Sprintf("%+v %#v", err, err))
	}
	_, err := CredentialsFromEnv(func(k string) (string, bool) {
		if k == EnvSecretAccessKey {
			return wrong.SecretAccessKey(), true
		}
		return "", false
	})
	g.Expect(err).To(MatchError(ContainSubstring(EnvAccessKeyID)))
	texts = append(texts, err.Error())

	opts := S3Options{Bucket: "b", Credentials: wrong}
	texts = append(texts, fmt.Sprintf("%v|%+v|%#v|%s|%q", wrong, opts, opts, wrong, wrong),
		fmt.Sprintf("%v|%+v", good, bad))
	logger.Info("creds", "credentials", wrong, "options", opts)

	// Presigned URLs carry the access key ID by design (X-Amz-Credential),
	// never the secret.
	_, err = good.PutBytes(ctx, "k", []byte("v"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	u, err := good.PresignGet(ctx, "k", time.Minute)
	g.Expect(err).NotTo(HaveOccurred())
	texts = append(texts, logs.String(), u)

	all := strings.Join(texts, "\n")
	for _, secret := range []string{wrong.SecretAccessKey(), wrong.SessionToken(), srv.secretKey} {
		g.Expect(all).NotTo(ContainSubstring(secret))
	}
	g.Expect(strings.Join(texts[:len(texts)-1], "\n")).NotTo(ContainSubstring(srv.accessKey))
}

// A multipart upload hashes the file even when the caller gives a sha256,
// and never completes the upload of a file that does not match it: the
// upload is aborted and no object appears.
func TestS3WrongCallerChecksumMultipart(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	var mu sync.Mutex
	var requests []string
	tr := &tamperTransport{base: newBaseTransport(t), request: func(r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		requests = append(requests, r.Method+" "+r.URL.RawQuery)
	}}
	st := srv.bucketStore(t, func(o *S3Options) { o.Transport = tr; o.PartSize = 5 << 20 })
	path, sum := writeTestFile(t, t.TempDir(), 12<<20, 23) // three parts
	wrong := strings.Repeat("1", 64)
	mu.Lock()
	requests = nil
	mu.Unlock()

	_, err := st.PutFile(context.Background(), "img/changed.qcow2", path, PutOptions{SHA256: wrong})
	g.Expect(errors.Is(err, ErrChecksumMismatch)).To(BeTrue(), "%v", err)
	g.Expect(err.Error()).To(ContainSubstring(sum), "names the file's sha256")
	mu.Lock()
	g.Expect(requests).NotTo(BeEmpty())
	for _, r := range requests {
		g.Expect(r).NotTo(HavePrefix("POST uploadId="), "the upload is never completed")
	}
	g.Expect(requests[len(requests)-1]).To(HavePrefix("DELETE uploadId="), "the upload is aborted")
	mu.Unlock()
	_, err = st.Stat(context.Background(), "img/changed.qcow2")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "no object: %v", err)
	for u := range st.client.ListIncompleteUploads(context.Background(), st.Bucket(), "", true) { // the whole bucket: MinIO answers a key prefix with nothing
		t.Errorf("a multipart upload was left: %+v", u)
	}

	// The right sha256 still uploads.
	info, err := st.PutFile(context.Background(), "img/changed.qcow2", path, PutOptions{SHA256: sum})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.SHA256).To(Equal(sum))
}
