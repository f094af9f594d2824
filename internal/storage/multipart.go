package storage

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sync/errgroup"
)

// abortTimeout bounds the abort of a failed multipart upload, which runs
// even when the caller's context is already canceled.
const abortTimeout = 30 * time.Second

// partSizeFor returns the part size for a file of size bytes: the
// configured one, raised (to a MiB multiple) when the file would need more
// than 10000 parts.
func (s *S3) partSizeFor(size int64) int64 {
	ps := s.partSize
	if need := (size + maxParts - 1) / maxParts; need > ps {
		ps = (need + (1<<20 - 1)) &^ (1<<20 - 1)
	}
	return ps
}

// putMultipart uploads f as a multipart upload: parts in parallel, each
// read through its own SectionReader (so a retry rereads from the file, never
// from a consumed stream), each carrying a CRC32C the server checks, retried
// with backoff on transient errors. On any failure the upload is aborted, so
// no object appears; on success the object is verified with HEAD.
func (s *S3) putMultipart(ctx context.Context, key string, f *os.File, size, partSize int64, opts PutOptions) (info ObjectInfo, err error) {
	nParts := int((size + partSize - 1) / partSize)
	// One sequential pass computes the sha256 (stored as metadata) and the
	// part CRCs. It runs even when the caller gives the sha256: the parts
	// are not signed with it, so nothing else would catch a file that
	// changed since. With a given sha256 the pass runs alongside the upload
	// (each part waits for its own CRC) and is compared before the upload
	// is completed; without one, the sum is needed first, as metadata.
	hctx, stopHashing := context.WithCancel(ctx)
	defer stopHashing()
	hasher := startPartHasher(hctx, f, size, partSize)
	sum := opts.SHA256
	checkSum := func() error {
		got, err := hasher.wait(ctx)
		if err != nil {
			return &OpError{Op: "put", Bucket: s.bucket, Key: key, Err: fmt.Errorf("hash: %w", err)}
		}
		if sum != "" && got != sum {
			return &OpError{Op: "put", Bucket: s.bucket, Key: key, Kind: ErrChecksumMismatch,
				Err: fmt.Errorf("file has sha256 %s, caller expected %s", got, sum)}
		}
		sum = got
		return nil
	}
	if sum == "" {
		if err := checkSum(); err != nil {
			return ObjectInfo{}, err
		}
	}

	meta := map[string]string{metaSHA256: sum}
	if s.partChecksums {
		meta["x-amz-checksum-algorithm"] = "CRC32C"
	}
	var uploadID string
	err = s.retry.do(ctx, func(attempt int) error {
		var err error
		uploadID, err = s.core.NewMultipartUpload(ctx, s.bucket, key, minio.PutObjectOptions{
			UserMetadata: meta,
			ContentType:  opts.contentType(),
		})
		s.logRetry("start multipart upload", key, attempt, err)
		return err
	})
	if err != nil {
		return ObjectInfo{}, s.opError("put", key, err)
	}
	defer func() {
		if err != nil {
			err = s.abort(ctx, key, uploadID, err)
		}
	}()

	prog := newProgress(size, opts.Progress)
	parts := make([]minio.CompletePart, nParts)
	partCRCs := make([]uint32, nParts)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.concurrency)
	for i := range nParts {
		if gctx.Err() != nil {
			break
		}
		off := int64(i) * partSize
		n := min(partSize, size-off)
		g.Go(func() error {
			crc, err := hasher.part(gctx, i)
			if err != nil {
				return err
			}
			p, err := s.uploadPart(gctx, key, uploadID, i+1, f, off, n, crc, prog)
			if err != nil {
				return err
			}
			parts[i], partCRCs[i] = p, crc
			return nil
		})
	}
	if err = g.Wait(); err != nil {
		return ObjectInfo{}, s.opError("put", key, err)
	}
	if err = ctx.Err(); err != nil {
		return ObjectInfo{}, s.opError("put", key, err)
	}
	// Every part is sent; the whole file must still match the sha256 the
	// object carries, or the upload is aborted.
	if err = checkSum(); err != nil {
		return ObjectInfo{}, err
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].PartNumber < parts[j].PartNumber })

	err = s.retry.do(ctx, func(attempt int) error {
		_, err := s.core.CompleteMultipartUpload(ctx, s.bucket, key, uploadID, parts, minio.PutObjectOptions{})
		s.logRetry("complete multipart upload", key, attempt, err)
		return err
	})
	if err != nil {
		// A retried complete can find the upload already completed.
		if minio.ToErrorResponse(err).Code != "NoSuchUpload" {
			return ObjectInfo{}, s.opError("put", key, err)
		}
	}
	prog.finish()
	composite := ""
	if s.partChecksums {
		composite = compositeCRC32C(partCRCs)
	}
	info, err = s.verify(ctx, key, size, sum, composite)
	if err != nil {
		// The object is complete (and removed by verify): nothing to abort.
		return ObjectInfo{}, errVerified{err}
	}
	return info, nil
}

// errVerified marks an error after the upload completed, so the deferred
// abort leaves it alone.
type errVerified struct{ error }

func (e errVerified) Unwrap() error { return e.error }

// uploadPart uploads one part with retries; crc is its CRC32C, sent for
// the server to check when part checksums are on.
func (s *S3) uploadPart(ctx context.Context, key, uploadID string, num int, f *os.File, off, n int64, crc uint32, prog *progress) (minio.CompletePart, error) {
	var hdr http.Header
	if s.partChecksums {
		hdr = http.Header{"X-Amz-Checksum-Crc32c": {crc32cBase64(crc)}}
	}
	var part minio.ObjectPart
	err := s.retry.do(ctx, func(attempt int) error {
		cr := &countingReader{r: io.NewSectionReader(f, off, n), p: prog}
		var err error
		part, err = s.core.PutObjectPart(ctx, s.bucket, key, uploadID, num, cr, n, minio.PutObjectPartOptions{
			CustomHeader:         hdr,
			DisableContentSha256: true,
		})
		if err != nil {
			cr.rollback()
			s.logRetry(fmt.Sprintf("upload part %d", num), key, attempt, err)
			return err
		}
		if hdr != nil && part.ChecksumCRC32C != "" && part.ChecksumCRC32C != crc32cBase64(crc) {
			cr.rollback()
			return errorf(ErrChecksumMismatch, "part %d: server computed CRC32C %s, sent %s", num, part.ChecksumCRC32C, crc32cBase64(crc))
		}
		return nil
	})
	if err != nil {
		return minio.CompletePart{}, fmt.Errorf("part %d: %w", num, err)
	}
	return minio.CompletePart{PartNumber: num, ETag: part.ETag, ChecksumCRC32C: part.ChecksumCRC32C}, nil
}

// abort aborts a failed multipart upload with its own deadline (the
// caller's context may be the reason of the failure) and returns cause,
// noting if the abort failed too.
func (s *S3) abort(ctx context.Context, key, uploadID string, cause error) error {
	var v errVerified
	if errors.As(cause, &v) {
		return v.error
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	err := s.retry.do(actx, func(int) error { return s.core.AbortMultipartUpload(actx, s.bucket, key, uploadID) })
	if err != nil && minio.ToErrorResponse(err).Code != "NoSuchUpload" {
		s.log.Warn("could not abort failed multipart upload; its parts stay invisible until aborted or expired",
			"bucket", s.bucket, "key", key, "uploadID", uploadID, "error", s.opError("abort", key, err).Error())
		return fmt.Errorf("%w (the upload could not be aborted either: %s; no object is visible, "+
			"AbortIncompleteUploads or the server's expiry removes its parts)", cause, s.creds.redact(err.Error()))
	}
	return cause
}

func crc32cBase64(c uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], c)
	return base64.StdEncoding.EncodeToString(b[:])
}

// compositeCRC32C is S3's checksum of a multipart object: the CRC32C of the
// concatenated big-endian part CRC32Cs, base64 (without the "-N" suffix).
func compositeCRC32C(parts []uint32) string {
	c := crc32.New(castagnoli)
	var b [4]byte
	for _, p := range parts {
		binary.BigEndian.PutUint32(b[:], p)
		c.Write(b[:])
	}
	return crc32cBase64(c.Sum32())
}
