package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	. "github.com/onsi/gomega"
)

func TestClassifyAndTransient(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		kind      error
		transient bool
	}{
		{"no such key", minio.ErrorResponse{Code: "NoSuchKey", StatusCode: 404}, ErrNotFound, false},
		{"HEAD 404 without body", minio.ErrorResponse{StatusCode: 404}, ErrNotFound, false},
		{"no such bucket", minio.ErrorResponse{Code: "NoSuchBucket", StatusCode: 404}, ErrBucketNotFound, false},
		{"bad signature", minio.ErrorResponse{Code: "SignatureDoesNotMatch", StatusCode: 403}, ErrAccessDenied, false},
		{"unknown key", minio.ErrorResponse{Code: "InvalidAccessKeyId", StatusCode: 403}, ErrAccessDenied, false},
		{"bad digest", minio.ErrorResponse{Code: "BadDigest", StatusCode: 400}, ErrChecksumMismatch, false},
		{"slow down", minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}, ErrUnavailable, true},
		{"500", minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, ErrUnavailable, true},
		{"refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), ErrUnavailable, true},
		{"reset", fmt.Errorf("write: %w", syscall.ECONNRESET), ErrUnavailable, true},
		{"short body", io.ErrUnexpectedEOF, ErrUnavailable, true},
		{"canceled", context.Canceled, nil, false},
		{"plain", errors.New("boom"), nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			//nolint:errorlint // classify returns the sentinel itself: identity is what is tested
			g.Expect(classify(tc.err) == tc.kind).To(BeTrue(), "classify: %v", classify(tc.err))
			g.Expect(transient(tc.err)).To(Equal(tc.transient))
		})
	}
}

func TestRetryPolicy(t *testing.T) {
	g := NewWithT(t)
	p := RetryPolicy{Attempts: 4, Initial: time.Millisecond, Max: 2 * time.Millisecond}
	calls := 0
	err := p.do(context.Background(), func(int) error { calls++; return syscall.ECONNRESET })
	g.Expect(err).To(MatchError(syscall.ECONNRESET))
	g.Expect(calls).To(Equal(4), "transient errors use every attempt")

	calls = 0
	err = p.do(context.Background(), func(int) error {
		calls++
		return minio.ErrorResponse{Code: "AccessDenied", StatusCode: http.StatusForbidden}
	})
	g.Expect(err).To(HaveOccurred())
	g.Expect(calls).To(Equal(1), "permanent errors are not retried")

	calls = 0
	err = p.do(context.Background(), func(a int) error {
		calls++
		if a < 3 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(calls).To(Equal(3))

	for a := 1; a < 10; a++ {
		d := DefaultRetryPolicy.backoff(a)
		g.Expect(d).To(BeNumerically(">", 0))
		g.Expect(d).To(BeNumerically("<=", DefaultRetryPolicy.Max))
	}
}

func TestPartSizeAndComposite(t *testing.T) {
	g := NewWithT(t)
	s := &S3{partSize: DefaultPartSize}
	g.Expect(s.partSizeFor(1 << 30)).To(BeEquivalentTo(DefaultPartSize))
	big := int64(1) << 40 // 1 TiB needs larger parts to stay within 10000
	ps := s.partSizeFor(big)
	g.Expect((big + ps - 1) / ps).To(BeNumerically("<=", maxParts))
	g.Expect(ps % (1 << 20)).To(BeZero())

	// The S3 composite of one part is the CRC32C of that part's CRC32C.
	g.Expect(compositeCRC32C([]uint32{0})).To(Equal(crc32cBase64(0x48674bc7)))
}

func TestProgressIsSerializedAndFinal(t *testing.T) {
	g := NewWithT(t)
	var reports []int64
	p := newProgress(10<<20, func(done, total int64) { reports = append(reports, done) })
	for range 10 {
		p.add(1 << 20)
	}
	p.finish()
	g.Expect(reports).To(Equal([]int64{4 << 20, 8 << 20, 10 << 20}))
}
