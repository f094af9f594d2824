package storage

import (
	"context"
	"io"
	"time"
)

// Store is an object store: S3-compatible (S3) or a local directory (Dir).
// Keys are slash-separated paths without a leading slash.
//
// Every put is verified: when it returns nil, the object is visible with the
// uploaded size and its sha256 recorded as metadata. When it fails, no
// partial object is visible under the key.
type Store interface {
	// PutFile uploads the file at path to key, reading it through a fresh
	// file handle (never a reader someone else consumed).
	PutFile(ctx context.Context, key, path string, opts PutOptions) (ObjectInfo, error)
	// PutBytes uploads a small object held in memory.
	PutBytes(ctx context.Context, key string, data []byte, opts PutOptions) (ObjectInfo, error)
	// Stat returns the object's info, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// Get opens the object for reading; the caller closes it.
	Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error)
	// List returns every object whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Delete removes the object; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// URL is the object's stable (unsigned) URL.
	URL(key string) string
	// PresignGet returns a URL that allows anyone holding it to GET the
	// object until expiry passes.
	PresignGet(ctx context.Context, key string, expiry time.Duration) (string, error)
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key  string
	Size int64
	// SHA256 is the lowercase hex sha256 recorded when the object was
	// put by this package; empty for objects put by others. List may leave
	// it empty (S3 listings carry no user metadata); Stat fills it.
	SHA256       string
	ContentType  string
	LastModified time.Time
}

// PutOptions tune one put.
type PutOptions struct {
	// SHA256 is the content's lowercase hex sha256 when the caller already
	// knows it (the builder computes it while writing the image). Empty:
	// the store computes it while reading the content. When set, a content
	// with another sha256 fails with ErrChecksumMismatch.
	SHA256 string
	// ContentType defaults to application/octet-stream.
	ContentType string
	// IfAbsent makes the put fail with ErrExists, writing nothing, when an
	// object exists at the key: a conditional write (If-None-Match: * on
	// S3, a link that never replaces on a directory), so that of two
	// writers racing for a key exactly one wins. On S3 only puts of one
	// request take it (PutBytes, and PutFile up to the part size); a
	// larger file fails with ErrInvalidArgument.
	IfAbsent bool
	// Progress, when set, is called with the bytes sent so far and the
	// total, at most every few MiB and once at the end. Calls come from one
	// goroutine at a time. done can go back when a part is retried.
	Progress func(done, total int64)
}

// metaSHA256 is the user metadata key that holds the content's sha256
// (x-amz-meta-sha256 on S3).
const metaSHA256 = "sha256"

const defaultContentType = "application/octet-stream"

func (o PutOptions) contentType() string {
	if o.ContentType == "" {
		return defaultContentType
	}
	return o.ContentType
}
