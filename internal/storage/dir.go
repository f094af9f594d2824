package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// dirMetaDir holds, under a Dir's root, one JSON file per object with the
// metadata S3 keeps in headers (sha256, content type). Keys may not start
// with it.
const dirMetaDir = ".nodeforge-meta"

// Dir is a Store in a local directory: the CLI's default destination when
// none is given. Writes are atomic (temp file, fsync, rename), so a reader
// never sees a partial file under a key.
type Dir struct {
	root string
}

var _ Store = (*Dir)(nil)

// NewDir returns a store rooted at root, creating the directory.
func NewDir(root string) (*Dir, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("storage: dir store: %w", err)
	}
	return &Dir{root: abs}, nil
}

// Root returns the absolute root directory.
func (d *Dir) Root() string { return d.root }

type dirMeta struct {
	SHA256      string `json:"sha256"`
	ContentType string `json:"contentType,omitempty"`
}

func (d *Dir) path(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	if key == dirMetaDir || strings.HasPrefix(key, dirMetaDir+"/") {
		return "", errorf(ErrInvalidArgument, "object key %q: prefix %s is reserved", key, dirMetaDir)
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

func (d *Dir) metaPath(key string) string {
	return filepath.Join(d.root, dirMetaDir, filepath.FromSlash(key)+".json")
}

// PutFile copies the file at path to key, hashing it on the way.
func (d *Dir) PutFile(ctx context.Context, key, path string, opts PutOptions) (ObjectInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return ObjectInfo{}, &OpError{Op: "put", Key: key, Err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ObjectInfo{}, &OpError{Op: "put", Key: key, Err: err}
	}
	return d.put(ctx, key, f, st.Size(), opts)
}

// PutBytes writes data to key.
func (d *Dir) PutBytes(ctx context.Context, key string, data []byte, opts PutOptions) (ObjectInfo, error) {
	return d.put(ctx, key, bytes.NewReader(data), int64(len(data)), opts)
}

func (d *Dir) put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) (ObjectInfo, error) {
	dst, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if opts.SHA256 != "" && !validSHA256(opts.SHA256) {
		return ObjectInfo{}, errorf(ErrInvalidArgument, "sha256 %q is not lowercase hex", opts.SHA256)
	}
	fail := func(kind, err error) (ObjectInfo, error) {
		return ObjectInfo{}, &OpError{Op: "put", Key: key, Kind: kind, Err: err}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fail(nil, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fail(nil, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()

	h := sha256.New()
	prog := newProgress(size, opts.Progress)
	w := io.MultiWriter(tmp, h)
	n, err := io.CopyBuffer(w, &ctxReader{ctx: ctx, r: &countingReader{r: r, p: prog}}, make([]byte, 1<<20))
	if err != nil {
		return fail(classify(err), err)
	}
	prog.finish()
	sum := hex.EncodeToString(h.Sum(nil))
	switch {
	case n != size:
		return fail(ErrChecksumMismatch, fmt.Errorf("copied %d bytes, source had %d", n, size))
	case opts.SHA256 != "" && opts.SHA256 != sum:
		return fail(ErrChecksumMismatch, fmt.Errorf("content has sha256 %s, caller expected %s", sum, opts.SHA256))
	}
	if err := tmp.Sync(); err != nil {
		return fail(nil, err)
	}
	if err := tmp.Close(); err != nil {
		return fail(nil, err)
	}
	meta, _ := json.Marshal(dirMeta{SHA256: sum, ContentType: opts.contentType()})
	if opts.IfAbsent {
		// A hard link never replaces an existing name: of two racing
		// writers one gets EEXIST. The metadata follows the link, so an
		// object that exists already keeps its own.
		if err := os.Link(tmp.Name(), dst); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fail(ErrExists, errors.New("an object exists at the key"))
			}
			return fail(nil, err)
		}
		if err := writeFileAtomic(d.metaPath(key), meta); err != nil {
			return fail(nil, err)
		}
	} else {
		if err := writeFileAtomic(d.metaPath(key), meta); err != nil {
			return fail(nil, err)
		}
		if err := os.Rename(tmp.Name(), dst); err != nil {
			return fail(nil, err)
		}
	}
	syncDir(filepath.Dir(dst))
	info, err := d.Stat(ctx, key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if info.Size != size || info.SHA256 != sum {
		return fail(ErrChecksumMismatch, fmt.Errorf("stored size %d sha256 %s, wrote %d bytes sha256 %s", info.Size, info.SHA256, size, sum))
	}
	return info, nil
}

// writeFileAtomic writes data to path through a temp file and rename.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}

// Stat returns the object's info.
func (d *Dir) Stat(_ context.Context, key string) (ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return ObjectInfo{}, d.opError("stat", key, err)
	}
	if !st.Mode().IsRegular() {
		return ObjectInfo{}, &OpError{Op: "stat", Key: key, Kind: ErrNotFound, Err: errors.New("not a regular file")}
	}
	return d.info(key, st), nil
}

func (d *Dir) info(key string, st fs.FileInfo) ObjectInfo {
	info := ObjectInfo{Key: key, Size: st.Size(), LastModified: st.ModTime(), ContentType: defaultContentType}
	if b, err := os.ReadFile(d.metaPath(key)); err == nil {
		var m dirMeta
		if json.Unmarshal(b, &m) == nil {
			info.SHA256, info.ContentType = m.SHA256, m.ContentType
		}
	}
	return info
}

func (d *Dir) opError(op, key string, err error) error {
	kind := classify(err)
	if errors.Is(err, fs.ErrNotExist) {
		kind = ErrNotFound
	}
	return &OpError{Op: op, Key: key, Kind: kind, Err: err}
}

// Get opens the object's file.
func (d *Dir) Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, ObjectInfo{}, d.opError("get", key, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, ObjectInfo{}, d.opError("get", key, err)
	}
	return f, d.info(key, st), nil
}

// List walks the directory for files under prefix (temp files excluded).
func (d *Dir) List(_ context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	err := filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(d.root, p)
		key := filepath.ToSlash(rel)
		if e.IsDir() {
			if key == dirMetaDir || (key != "." && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) || strings.Contains(filepath.Base(p), ".tmp-") && strings.HasPrefix(filepath.Base(p), ".") {
			return nil
		}
		st, err := e.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		out = append(out, d.info(key, st))
		return nil
	})
	if err != nil {
		return nil, &OpError{Op: "list", Key: prefix, Err: err}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the object and its metadata, and empty parent dirs.
func (d *Dir) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return d.opError("delete", key, err)
	}
	_ = os.Remove(d.metaPath(key))
	for _, base := range []string{d.root, filepath.Join(d.root, dirMetaDir)} {
		dir := filepath.Dir(filepath.Join(base, filepath.FromSlash(key)))
		for dir != base && strings.HasPrefix(dir, base) {
			if os.Remove(dir) != nil { // not empty
				break
			}
			dir = filepath.Dir(dir)
		}
	}
	return nil
}

// URL returns the object's file:// URL.
func (d *Dir) URL(key string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(filepath.Join(d.root, filepath.FromSlash(key)))}).String()
}

// PresignGet returns the file:// URL: a local file needs no signature, and
// expiry does not apply.
func (d *Dir) PresignGet(ctx context.Context, key string, _ time.Duration) (string, error) {
	if _, err := d.Stat(ctx, key); err != nil {
		return "", err
	}
	return d.URL(key), nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
