package storage

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestS3RoundTripLargeFile(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t)
	ctx := context.Background()

	const size = 300<<20 + 12345 // not a multiple of the part size
	path, sum := writeTestFile(t, t.TempDir(), size, 1)

	var mu sync.Mutex
	var calls int
	var last int64
	info, err := st.PutFile(ctx, "images/big.qcow2", path, PutOptions{Progress: func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		last = done
		if total != size {
			t.Errorf("progress total %d, want %d", total, size)
		}
	}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.Size).To(BeEquivalentTo(size))
	g.Expect(info.SHA256).To(Equal(sum))
	g.Expect(last).To(BeEquivalentTo(size), "last progress report is the total")
	g.Expect(calls).To(BeNumerically(">", 10), "progress is reported as the upload goes")

	got, err := st.Stat(ctx, "images/big.qcow2")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.SHA256).To(Equal(sum))
	g.Expect(got.Size).To(BeEquivalentTo(size))

	rc, _, err := st.Get(ctx, "images/big.qcow2")
	g.Expect(err).NotTo(HaveOccurred())
	defer rc.Close()
	gotSum, n := readAllHash(t, rc)
	g.Expect(n).To(BeEquivalentTo(size))
	g.Expect(gotSum).To(Equal(sum), "downloaded content matches the file")

	// A caller-supplied sha256 that matches the file is what gets stored.
	info, err = st.PutFile(ctx, "images/big2.qcow2", path, PutOptions{SHA256: sum})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.SHA256).To(Equal(sum))
}

func TestS3SmallObjectsListDelete(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t)
	ctx := context.Background()

	for _, k := range []string{"a/1", "a/2", "b/1"} {
		_, err := st.PutBytes(ctx, k, []byte("data "+k), PutOptions{ContentType: "text/plain"})
		g.Expect(err).NotTo(HaveOccurred())
	}
	// A small file goes up in one PUT.
	path, sum := writeTestFile(t, t.TempDir(), 3<<20, 2)
	info, err := st.PutFile(ctx, "a/file", path, PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.SHA256).To(Equal(sum))

	list, err := st.List(ctx, "a/")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(keys(list)).To(Equal([]string{"a/1", "a/2", "a/file"}))

	g.Expect(st.Delete(ctx, "a/1")).To(Succeed())
	g.Expect(st.Delete(ctx, "a/1")).To(Succeed(), "deleting a missing object is fine")
	_, err = st.Stat(ctx, "a/1")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "%v", err)
	_, _, err = st.Get(ctx, "a/1")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "%v", err)
}

func keys(objs []ObjectInfo) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.Key)
	}
	return out
}

func TestS3PresignedURLOverPlainHTTP(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t)
	ctx := context.Background()
	body := []byte("qcow2 bytes, pretend")
	_, err := st.PutBytes(ctx, "img/x.qcow2", body, PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	u, err := st.PresignGet(ctx, "img/x.qcow2", 5*time.Minute)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(u).To(HavePrefix(srv.endpoint() + "/" + st.Bucket() + "/img/x.qcow2?"))
	g.Expect(u).To(ContainSubstring("X-Amz-Signature="))
	g.Expect(u).NotTo(ContainSubstring(srv.secretKey))

	resp, err := http.Get(u)
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	got, _ := io.ReadAll(resp.Body)
	g.Expect(got).To(Equal(body))

	// The stable URL names the object but needs a policy or a signature.
	g.Expect(st.URL("img/x.qcow2")).To(Equal(srv.endpoint() + "/" + st.Bucket() + "/img/x.qcow2"))
	resp2, err := http.Get(st.URL("img/x.qcow2"))
	g.Expect(err).NotTo(HaveOccurred())
	resp2.Body.Close()
	g.Expect(resp2.StatusCode).To(Equal(http.StatusForbidden))

	_, err = st.PresignGet(ctx, "img/x.qcow2", 8*24*time.Hour)
	g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue())
}

func TestS3WrongCredentials(t *testing.T) {
	srv := startMinio(t, minioConfig{})
	good := srv.bucketStore(t)
	ctx := context.Background()
	for name, creds := range map[string]Credentials{
		"wrong secret":     NewCredentials(srv.accessKey, "wrong-secret-"+randHex(8), ""),
		"unknown key":      NewCredentials("nosuchkey"+randHex(4), srv.secretKey, ""),
		"bogus session":    NewCredentials(srv.accessKey, srv.secretKey, "tok-"+randHex(8)),
		"anonymous access": {},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			st := srv.store(t, good.Bucket(), func(o *S3Options) { o.Credentials = creds })
			err := st.EnsureBucket(ctx)
			g.Expect(errors.Is(err, ErrAccessDenied)).To(BeTrue(), "EnsureBucket: %v", err)
			assertNoSecrets(t, err.Error(), creds)

			_, err = st.PutBytes(ctx, "x", []byte("x"), PutOptions{})
			g.Expect(errors.Is(err, ErrAccessDenied)).To(BeTrue(), "PutBytes: %v", err)
			g.Expect(err.Error()).To(ContainSubstring("access denied"))
			assertNoSecrets(t, err.Error(), creds)

			path, _ := writeTestFile(t, t.TempDir(), 12<<20, 3)
			st = srv.store(t, good.Bucket(), func(o *S3Options) { o.Credentials = creds; o.PartSize = 5 << 20 })
			_, err = st.PutFile(ctx, "big", path, PutOptions{})
			g.Expect(errors.Is(err, ErrAccessDenied)).To(BeTrue(), "PutFile: %v", err)
			assertNoSecrets(t, err.Error(), creds)

			_, err = good.Stat(ctx, "big")
			g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())
		})
	}
}

func TestS3MissingBucket(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	ctx := context.Background()
	st := srv.store(t, "nf-missing", func(o *S3Options) { o.CreateBucket = false })

	err := st.EnsureBucket(ctx)
	g.Expect(errors.Is(err, ErrBucketNotFound)).To(BeTrue(), "%v", err)
	g.Expect(err.Error()).To(ContainSubstring("nf-missing"))
	_, err = st.PutBytes(ctx, "k", []byte("v"), PutOptions{})
	g.Expect(errors.Is(err, ErrBucketNotFound)).To(BeTrue(), "%v", err)

	pub := &Publisher{Store: st}
	path, _ := writeTestFile(t, t.TempDir(), 1<<20, 4)
	_, err = pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: strings.Repeat("a", 64), ImagePath: path, Manifest: []byte(`{}`)})
	g.Expect(errors.Is(err, ErrBucketNotFound)).To(BeTrue(), "%v", err)

	created := srv.store(t, "nf-missing", func(o *S3Options) { o.CreateBucket = true })
	g.Expect(created.EnsureBucket(ctx)).To(Succeed())
	g.Expect(created.EnsureBucket(ctx)).To(Succeed(), "idempotent")
	g.Expect(st.EnsureBucket(ctx)).To(Succeed(), "exists now")
}

// assertNoSecrets fails when s contains any credential value.
func assertNoSecrets(t testing.TB, s string, creds ...Credentials) {
	t.Helper()
	for _, c := range creds {
		for _, v := range []string{c.SecretAccessKey(), c.SessionToken()} {
			if v != "" && strings.Contains(s, v) {
				t.Errorf("secret value leaked into: %s", s)
			}
		}
	}
}

var _ = os.Getenv

// If-None-Match: * against the real server; a file that needs a multipart
// upload cannot be put conditionally and says so.
func TestS3ConditionalPut(t *testing.T) {
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t, func(o *S3Options) { o.PartSize = 5 << 20 })
	testConditionalPut(t, st)

	g := NewWithT(t)
	path, _ := writeTestFile(t, t.TempDir(), 6<<20, 2)
	_, err := st.PutFile(context.Background(), "claims/big", path, PutOptions{IfAbsent: true})
	g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue(), "%v", err)
}
