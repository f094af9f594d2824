package storage

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/nodeforge/nodeforge/internal/capool"
)

// Addressing selects how the bucket appears in request URLs.
type Addressing string

const (
	// AddressingAuto uses virtual-host style where the endpoint is known to
	// support it (AWS, some clouds) and path style elsewhere.
	AddressingAuto Addressing = "auto"
	// AddressingPath puts the bucket in the path: https://host/bucket/key.
	// MinIO, Ceph RGW, versitygw and Garage accept it.
	AddressingPath Addressing = "path"
	// AddressingVirtualHost puts the bucket in the host name:
	// https://bucket.host/key.
	AddressingVirtualHost Addressing = "virtual-host"
)

// Defaults for large uploads, chosen by measurement against a local MinIO
// (docs/benchmarks.md, "Upload to S3").
const (
	DefaultPartSize    = 64 << 20
	DefaultConcurrency = 4
	minPartSize        = 5 << 20
	maxParts           = 10000
)

// S3Options configure an S3 store.
type S3Options struct {
	// Endpoint is the server URL, for example http://127.0.0.1:9000 or
	// https://s3.example.com. A bare host[:port] means HTTPS unless
	// PlainHTTP is set. Required: there is no default server, so nothing
	// (credentials, images) goes to a provider the caller did not name.
	Endpoint string
	// Bucket is required.
	Bucket string
	// Region is the bucket's region; empty lets the client discover it.
	Region string
	// Credentials; the zero value means anonymous requests.
	Credentials Credentials
	// Addressing defaults to AddressingAuto.
	Addressing Addressing
	// PlainHTTP allows an http:// endpoint (and makes a bare host mean
	// HTTP). Without it an http:// endpoint is refused, so credentials are
	// not sent in clear text by accident.
	PlainHTTP bool
	// CACertPEM, when set, holds PEM CA certificates trusted in addition to
	// the system pool (a private CA in front of Ceph or MinIO).
	CACertPEM []byte
	// CreateBucket lets EnsureBucket create a missing bucket.
	CreateBucket bool
	// PartSize is the multipart part size; default DefaultPartSize. It is
	// raised when a file would need more than 10000 parts.
	PartSize int64
	// Concurrency is the number of parts uploaded in parallel; default
	// DefaultConcurrency.
	Concurrency int
	// Retry governs retries of transient errors; zero means
	// DefaultRetryPolicy.
	Retry RetryPolicy
	// DisablePartChecksums stops sending a CRC32C per part, for servers
	// that reject x-amz-checksum-* headers. Size and sha256 metadata are
	// still verified after each upload.
	DisablePartChecksums bool
	// Logger receives retry and cleanup messages; nil discards them.
	// Messages never contain credentials.
	Logger *slog.Logger
	// Transport overrides the HTTP transport (tests).
	Transport http.RoundTripper
}

// S3 is a Store backed by an S3-compatible bucket.
type S3 struct {
	client     *minio.Client
	core       minio.Core
	bucket     string
	region     string
	creds      Credentials
	endpoint   url.URL // scheme and host only
	addressing Addressing
	create     bool

	partSize      int64
	concurrency   int
	retry         RetryPolicy
	partChecksums bool
	log           *slog.Logger
}

var _ Store = (*S3)(nil)

// NewS3 validates opts and returns a store. It makes no request; call
// EnsureBucket to check the bucket and the credentials up front.
func NewS3(opts S3Options) (*S3, error) {
	if err := s3utils.CheckValidBucketName(opts.Bucket); err != nil {
		return nil, errorf(ErrInvalidArgument, "bucket %q: %v", opts.Bucket, err)
	}
	ep, err := parseEndpoint(opts.Endpoint, opts.PlainHTTP)
	if err != nil {
		return nil, err
	}
	lookup := minio.BucketLookupAuto
	switch opts.Addressing {
	case "", AddressingAuto:
		opts.Addressing = AddressingAuto
	case AddressingPath:
		lookup = minio.BucketLookupPath
	case AddressingVirtualHost, "dns": // "dns" is the NodeImage API's spelling
		opts.Addressing = AddressingVirtualHost
		lookup = minio.BucketLookupDNS
	default:
		return nil, errorf(ErrInvalidArgument, "addressing %q: want auto, path or virtual-host (dns)", opts.Addressing)
	}
	secure := ep.Scheme == "https"
	tr := opts.Transport
	if tr == nil {
		t, err := newTransport(secure, opts.CACertPEM)
		if err != nil {
			return nil, err
		}
		tr = t
	}
	c := opts.Credentials
	client, err := minio.New(ep.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(c.AccessKeyID(), c.SecretAccessKey(), c.SessionToken()),
		Secure:       secure,
		Transport:    tr,
		Region:       opts.Region,
		BucketLookup: lookup,
		// Control requests retry inside minio-go a few times; part
		// uploads retry in this package with a fresh reader.
		MaxRetries: 3,
	})
	if err != nil {
		return nil, errorf(ErrInvalidArgument, "endpoint %s: %s", ep.Host, c.redact(err.Error()))
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &S3{
		client:        client,
		core:          minio.Core{Client: client},
		bucket:        opts.Bucket,
		region:        opts.Region,
		creds:         c,
		endpoint:      *ep,
		addressing:    opts.Addressing,
		create:        opts.CreateBucket,
		partSize:      opts.PartSize,
		concurrency:   opts.Concurrency,
		retry:         opts.Retry.withDefaults(),
		partChecksums: !opts.DisablePartChecksums,
		log:           log,
	}
	if s.partSize <= 0 {
		s.partSize = DefaultPartSize
	}
	s.partSize = max(s.partSize, minPartSize)
	if s.concurrency <= 0 {
		s.concurrency = DefaultConcurrency
	}
	return s, nil
}

// parseEndpoint turns an endpoint setting into a scheme://host URL. Errors
// show the endpoint with any userinfo redacted.
func parseEndpoint(raw string, plainHTTP bool) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, errorf(ErrInvalidArgument, "no S3 endpoint: set %s (CLI) or spec.destination.s3.endpoint to the server's URL", EnvEndpointURL)
	}
	if !strings.Contains(raw, "://") {
		scheme := "https"
		if plainHTTP {
			scheme = "http"
		}
		raw = scheme + "://" + raw
	}
	shown := raw
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		shown = raw[:strings.Index(raw, "://")+3] + redacted + raw[i:]
		return nil, errorf(ErrInvalidArgument, "endpoint %q must not carry credentials; use the credential settings", shown)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errorf(ErrInvalidArgument, "endpoint %q is not a URL", shown)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errorf(ErrInvalidArgument, "endpoint %q: scheme must be http or https", shown)
	case u.Scheme == "http" && !plainHTTP:
		return nil, errorf(ErrInvalidArgument, "endpoint %q is plain HTTP; allow it explicitly (PlainHTTP)", shown)
	case u.Host == "":
		return nil, errorf(ErrInvalidArgument, "endpoint %q has no host", shown)
	case u.Path != "" && u.Path != "/", u.RawQuery != "":
		return nil, errorf(ErrInvalidArgument, "endpoint %q: a path or query is not supported", shown)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

func newTransport(secure bool, caPEM []byte) (*http.Transport, error) {
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	// Larger socket-side buffers cut syscalls on multi-GB uploads.
	tr.WriteBufferSize = 256 << 10
	tr.ReadBufferSize = 256 << 10
	tr.MaxIdleConnsPerHost = 64
	if len(caPEM) > 0 {
		if !secure {
			return nil, errorf(ErrInvalidArgument, "a CA certificate is set but the endpoint is plain HTTP")
		}
		pool, err := capool.New(caPEM)
		if err != nil {
			return nil, errorf(ErrInvalidArgument, "CA certificate: %v", err)
		}
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return tr, nil
}

// Bucket returns the bucket name.
func (s *S3) Bucket() string { return s.bucket }

// EnsureBucket checks that the bucket exists and the credentials work,
// creating the bucket when the options allow it. It fails with
// ErrBucketNotFound or ErrAccessDenied otherwise.
func (s *S3) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.opError("check bucket", "", err)
	}
	if ok {
		return nil
	}
	if !s.create {
		return &OpError{Op: "check bucket", Bucket: s.bucket, Kind: ErrBucketNotFound,
			Err: errors.New("create it, or allow its creation (--create-bucket / createBucket: true)")}
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.region})
	if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
		// Created concurrently by someone else; BucketExists tells if it
		// is usable.
		err = nil
	}
	if err != nil {
		return s.opError("create bucket", "", err)
	}
	s.log.Info("created bucket", "bucket", s.bucket)
	return nil
}

// PutFile uploads the file at path. Files larger than the part size go up
// as a multipart upload with parallel parts; see the package doc.
func (s *S3) PutFile(ctx context.Context, key, path string, opts PutOptions) (ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return ObjectInfo{}, err
	}
	if opts.SHA256 != "" && !validSHA256(opts.SHA256) {
		return ObjectInfo{}, errorf(ErrInvalidArgument, "sha256 %q is not lowercase hex", opts.SHA256)
	}
	f, err := os.Open(path)
	if err != nil {
		return ObjectInfo{}, &OpError{Op: "put", Bucket: s.bucket, Key: key, Err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ObjectInfo{}, &OpError{Op: "put", Bucket: s.bucket, Key: key, Err: err}
	}
	if !st.Mode().IsRegular() {
		return ObjectInfo{}, &OpError{Op: "put", Bucket: s.bucket, Key: key, Kind: ErrInvalidArgument, Err: fmt.Errorf("%s is not a regular file", path)}
	}
	size := st.Size()
	partSize := s.partSizeFor(size)
	if size <= partSize {
		sum := opts.SHA256
		if sum == "" {
			if sum, err = hashReader(f, size); err != nil {
				return ObjectInfo{}, &OpError{Op: "put", Bucket: s.bucket, Key: key, Err: err}
			}
		}
		return s.putSingle(ctx, key, f, size, sum, opts)
	}
	if opts.IfAbsent {
		return ObjectInfo{}, &OpError{Op: "put", Bucket: s.bucket, Key: key, Kind: ErrInvalidArgument,
			Err: fmt.Errorf("a conditional put (IfAbsent) takes one request, and %d bytes need a multipart upload", size)}
	}
	return s.putMultipart(ctx, key, f, size, partSize, opts)
}

// PutBytes uploads data in a single request.
func (s *S3) PutBytes(ctx context.Context, key string, data []byte, opts PutOptions) (ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return ObjectInfo{}, err
	}
	sum, _ := hashReader(bytes.NewReader(data), int64(len(data)))
	if opts.SHA256 != "" && opts.SHA256 != sum {
		return ObjectInfo{}, &OpError{Op: "put", Bucket: s.bucket, Key: key, Kind: ErrChecksumMismatch,
			Err: fmt.Errorf("content has sha256 %s, caller expected %s", sum, opts.SHA256)}
	}
	return s.putSingle(ctx, key, bytes.NewReader(data), int64(len(data)), sum, opts)
}

// putSingle uploads size bytes of r in one PUT whose signed
// x-amz-content-sha256 makes the server check the content, then verifies.
func (s *S3) putSingle(ctx context.Context, key string, r io.ReaderAt, size int64, sum string, opts PutOptions) (ObjectInfo, error) {
	prog := newProgress(size, opts.Progress)
	attempts := 0
	err := s.retry.do(ctx, func(attempt int) error {
		attempts++
		// A fresh reader per attempt: never resend a consumed one.
		cr := &countingReader{r: io.NewSectionReader(r, 0, size), p: prog}
		po := minio.PutObjectOptions{
			UserMetadata:         map[string]string{metaSHA256: sum},
			ContentType:          opts.contentType(),
			DisableContentSha256: true,
		}
		if opts.IfAbsent {
			po.SetMatchETagExcept("*")
		}
		_, err := s.core.PutObject(ctx, s.bucket, key, cr, size, "", sum, po)
		if err != nil {
			cr.rollback()
			s.logRetry("put", key, attempt, err)
		}
		return err
	})
	if err != nil && opts.IfAbsent && attempts > 1 && errors.Is(classify(err), ErrExists) {
		// An earlier attempt may have written the object before its
		// response was lost: then the object is this put's own.
		// (Stat, not verify: an object that is another's is never
		// removed.)
		if info, serr := s.Stat(ctx, key); serr == nil && info.Size == size && info.SHA256 == sum {
			prog.finish()
			return info, nil
		}
	}
	if err != nil {
		return ObjectInfo{}, s.opError("put", key, err)
	}
	prog.finish()
	return s.verify(ctx, key, size, sum, "")
}

// verify checks with HEAD that the object has the expected size, sha256
// metadata and (when the server reports one) composite CRC32C. A mismatching
// object is deleted so that nothing unverified stays visible.
func (s *S3) verify(ctx context.Context, key string, size int64, sum, crc32c string) (ObjectInfo, error) {
	oi, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{Checksum: crc32c != ""})
	if err != nil {
		return ObjectInfo{}, s.opError("verify", key, err)
	}
	info := s.objectInfo(oi)
	var problem string
	switch {
	case info.Size != size:
		problem = fmt.Sprintf("stored size %d, uploaded %d bytes", info.Size, size)
	case info.SHA256 != sum:
		problem = fmt.Sprintf("stored sha256 metadata %q, uploaded %s", info.SHA256, sum)
	case crc32c != "" && oi.ChecksumCRC32C != "" && strings.SplitN(oi.ChecksumCRC32C, "-", 2)[0] != crc32c:
		problem = fmt.Sprintf("stored composite CRC32C %s, uploaded parts give %s", oi.ChecksumCRC32C, crc32c)
	}
	if problem == "" {
		return info, nil
	}
	if derr := s.client.RemoveObject(context.WithoutCancel(ctx), s.bucket, key, minio.RemoveObjectOptions{}); derr != nil {
		problem += "; removing the bad object failed too: " + s.creds.redact(derr.Error())
	}
	return ObjectInfo{}, &OpError{Op: "verify", Bucket: s.bucket, Key: key, Kind: ErrChecksumMismatch, Err: errors.New(problem)}
}

// Stat returns the object's info, with its sha256 metadata.
func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return ObjectInfo{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.opError("stat", key, err)
	}
	return s.objectInfo(oi), nil
}

func (s *S3) objectInfo(oi minio.ObjectInfo) ObjectInfo {
	info := ObjectInfo{Key: oi.Key, Size: oi.Size, ContentType: oi.ContentType, LastModified: oi.LastModified}
	for k, v := range oi.UserMetadata {
		if strings.EqualFold(k, metaSHA256) || strings.EqualFold(k, "X-Amz-Meta-"+metaSHA256) {
			info.SHA256 = v
		}
	}
	if info.SHA256 == "" {
		info.SHA256 = oi.Metadata.Get("X-Amz-Meta-" + metaSHA256)
	}
	return info
}

// Get opens the object for reading.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return nil, ObjectInfo{}, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, ObjectInfo{}, s.opError("get", key, err)
	}
	oi, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, ObjectInfo{}, s.opError("get", key, err)
	}
	return obj, s.objectInfo(oi), nil
}

// List returns the objects under prefix, sorted by key. SHA256 is empty:
// listings carry no user metadata.
func (s *S3) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []ObjectInfo
	for oi := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			return nil, s.opError("list", prefix, oi.Err)
		}
		out = append(out, s.objectInfo(oi))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the object; a missing object is not an error.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code == "NoSuchKey" {
		err = nil
	}
	return s.opError("delete", key, err)
}

// URL returns the object's unsigned URL, in the store's addressing style.
func (s *S3) URL(key string) string {
	u := s.endpoint
	virtual := s.addressing == AddressingVirtualHost ||
		(s.addressing == AddressingAuto && s3utils.IsVirtualHostSupported(s.endpoint, s.bucket))
	if virtual {
		u.Host = s.bucket + "." + u.Host
		u.Path = "/" + key
	} else {
		u.Path = "/" + s.bucket + "/" + key
	}
	return u.String()
}

// PresignGet returns a presigned GET URL valid for expiry (1s to 7 days).
func (s *S3) PresignGet(ctx context.Context, key string, expiry time.Duration) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	if expiry < time.Second || expiry > 7*24*time.Hour {
		return "", errorf(ErrInvalidArgument, "presign expiry %s: want 1s to 168h", expiry)
	}
	u, err := s.client.PresignedGetObject(ctx, s.bucket, key, expiry, nil)
	if err != nil {
		return "", s.opError("presign", key, err)
	}
	return u.String(), nil
}

// AbortIncompleteUploads aborts multipart uploads under prefix started more
// than olderThan ago: leftovers of uploads whose abort could not reach the
// server (it was down). They are never visible as objects, but hold space
// until aborted. Give olderThan a margin longer than any upload, since an
// upload in progress elsewhere would be aborted too; 0 aborts every one
// (whatever the server's clock says of its start).
func (s *S3) AbortIncompleteUploads(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	n := 0
	cutoff := time.Now().Add(-olderThan)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The whole bucket's uploads, filtered here: MinIO lists uploads for
	// an exact key or the whole bucket only, and answers a shorter prefix
	// with nothing.
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, "", true) {
		if u.Err != nil {
			return n, s.opError("list uploads", prefix, u.Err)
		}
		if !strings.HasPrefix(u.Key, prefix) {
			continue
		}
		if olderThan > 0 && u.Initiated.After(cutoff) {
			continue
		}
		if err := s.core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID); err != nil {
			return n, s.opError("abort upload", u.Key, err)
		}
		s.log.Info("aborted incomplete upload", "bucket", s.bucket, "key", u.Key, "initiated", u.Initiated)
		n++
	}
	return n, nil
}

func (s *S3) logRetry(op, key string, attempt int, err error) {
	if attempt < s.retry.Attempts && transient(err) {
		s.log.Warn("transient storage error, retrying", "op", op, "bucket", s.bucket, "key", key,
			"attempt", attempt, "error", s.opError(op, key, err).Error())
	}
}

// checkKey rejects keys S3 or a directory would mangle.
func checkKey(key string) error {
	switch {
	case key == "", strings.HasPrefix(key, "/"), strings.HasSuffix(key, "/"):
		return errorf(ErrInvalidArgument, "object key %q: must be non-empty, without leading or trailing slash", key)
	case len(key) > 1024:
		return errorf(ErrInvalidArgument, "object key too long (%d bytes)", len(key))
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return errorf(ErrInvalidArgument, "object key %q: empty, . or .. segment", key)
		}
	}
	return nil
}
