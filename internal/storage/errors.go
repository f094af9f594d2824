package storage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"
)

// Sentinel errors. Every error returned by this package that has one of
// these causes wraps it, so callers test with errors.Is.
var (
	// ErrNotFound: the object (or artifact) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrBucketNotFound: the bucket does not exist and the store was not
	// asked to create it.
	ErrBucketNotFound = errors.New("bucket does not exist")
	// ErrAccessDenied: the server rejected the credentials (unknown access
	// key, wrong secret, expired session token) or they lack permission.
	ErrAccessDenied = errors.New("access denied: check the credentials")
	// ErrUnavailable: the server could not be reached or kept failing with
	// transient errors after all retries.
	ErrUnavailable = errors.New("storage server unavailable")
	// ErrChecksumMismatch: the stored object's size or checksum differs
	// from what was uploaded. The object is removed before this is returned.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrInvalidArgument: a key, name, digest, URL or option is malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrExists: a put with PutOptions.IfAbsent found an object at the key.
	ErrExists = errors.New("object exists")
)

// OpError describes a failed store operation. Its message names the
// operation, the object and the cause; it never contains credentials (the
// server's message is passed through a redactor first).
type OpError struct {
	Op     string // "put", "stat", "get", "list", "delete", "presign", ...
	Bucket string // empty for the Dir store
	Key    string
	// Kind is one of the sentinel errors above, or nil when unclassified.
	Kind error
	// Err is the underlying error.
	Err error

	redact func(string) string
}

func (e *OpError) Error() string {
	var b strings.Builder
	b.WriteString("storage: ")
	b.WriteString(e.Op)
	if e.Bucket != "" || e.Key != "" {
		b.WriteString(" ")
		if e.Bucket != "" {
			b.WriteString(e.Bucket)
			b.WriteString("/")
		}
		b.WriteString(e.Key)
	}
	if e.Kind != nil {
		b.WriteString(": ")
		b.WriteString(e.Kind.Error())
	}
	if e.Err != nil {
		msg := e.Err.Error()
		if e.redact != nil {
			msg = e.redact(msg)
		}
		b.WriteString(": ")
		b.WriteString(msg)
	}
	return b.String()
}

// Unwrap exposes both the sentinel kind and the underlying error.
func (e *OpError) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// classify maps an error from minio-go or the network to one of the
// sentinel errors, or nil when none fits.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, k := range []error{ErrNotFound, ErrBucketNotFound, ErrAccessDenied, ErrUnavailable, ErrChecksumMismatch, ErrInvalidArgument, ErrExists} {
		if errors.Is(err, k) {
			return k
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code != "" {
		switch resp.Code {
		case "NoSuchKey", "NoSuchUpload":
			return ErrNotFound
		case "NoSuchBucket":
			return ErrBucketNotFound
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
			"ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "AllAccessDisabled":
			return ErrAccessDenied
		case "BadDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch", "InvalidDigest", "InvalidChecksum":
			return ErrChecksumMismatch
		case "InvalidBucketName", "InvalidObjectName", "KeyTooLongError", "EntityTooSmall", "EntityTooLarge":
			return ErrInvalidArgument
		case "PreconditionFailed":
			return ErrExists
		}
	}
	if errors.As(err, &resp) {
		switch resp.StatusCode {
		case http.StatusNotFound:
			// HEAD responses carry no body, hence no code.
			return ErrNotFound
		case http.StatusForbidden, http.StatusUnauthorized:
			return ErrAccessDenied
		case http.StatusPreconditionFailed:
			return ErrExists
		}
	}
	if transient(err) {
		return ErrUnavailable
	}
	return nil
}

// transient reports whether err is worth retrying: network failures and
// server-side errors that S3 documents as retryable.
func transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if tlsError(err) {
		return false
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && (resp.Code != "" || resp.StatusCode != 0) {
		switch resp.Code {
		case "RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "InternalError", "ServiceUnavailable",
			"XMinioServerNotInitialized", "XMinioStorageFull", "OperationAborted", "ExpiredToken":
			return resp.Code != "ExpiredToken"
		}
		return resp.StatusCode >= 500
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return true
	}
	var nerr net.Error
	if errors.As(err, &nerr) {
		return true
	}
	return minio.IsNetworkOrHostDown(err, true)
}

// tlsError reports whether err is a certificate verification failure:
// retrying cannot fix it.
func tlsError(err error) bool {
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		header    tls.RecordHeaderError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &header)
}

// opError builds an *OpError, classifying err.
func (s *S3) opError(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var oe *OpError
	if errors.As(err, &oe) {
		return err
	}
	return &OpError{Op: op, Bucket: s.bucket, Key: key, Kind: classify(err), Err: err, redact: s.creds.redact}
}

// errorf is fmt.Errorf for messages built here: they carry no secrets.
func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}
