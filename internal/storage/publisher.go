package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Artifact layout, under the publisher's prefix:
//
//	NAME/SPECDIGEST/NAME.qcow2          the image (or NAME.raw)
//	NAME/SPECDIGEST/NAME.qcow2.sha256   sha256sum(1) line for the image
//	NAME/SPECDIGEST/manifest.json       the build manifest (caller's bytes)
//	NAME/latest                         Pointer to the newest published digest
//
// SPECDIGEST is the hex sha256 of the NodeImage spec, so the keys are
// content-addressed: a second build of the same spec finds the artifact.
const (
	ManifestFileName = "manifest.json"
	LatestFileName   = "latest"
)

// Image formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([-a-z0-9._]{0,251}[a-z0-9])?$`)
	specDigestRE = regexp.MustCompile(`^[0-9a-f]{12,64}$`)
)

// Publisher lays images out in a Store as content-addressed artifacts.
type Publisher struct {
	// Store receives the objects.
	Store Store
	// Prefix is prepended to every key ("" or e.g. "images").
	Prefix string
	// Now stamps the latest pointer; defaults to time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
}

// StaleUploadAge is how old an incomplete multipart upload under a name
// must be before Prune aborts it: longer than any build may run
// (spec.builder.timeout is at most 24h), so no upload in progress is cut.
const StaleUploadAge = 48 * time.Hour

// uploadAborter is a Store that can abort incomplete multipart uploads
// (S3): the parts of an upload whose builder was killed mid-way hold space
// without ever becoming an object.
type uploadAborter interface {
	AbortIncompleteUploads(ctx context.Context, prefix string, olderThan time.Duration) (int, error)
}

// abortStaleUploads aborts the incomplete uploads under name older than
// olderThan, when the store has any. It is housekeeping: credentials
// without the right to list uploads, or a failed abort, are logged and
// never fail (or block) the prune or delete that asked for it.
func (p *Publisher) abortStaleUploads(ctx context.Context, name string, olderThan time.Duration) {
	a, ok := p.Store.(uploadAborter)
	if !ok {
		return
	}
	n, err := a.AbortIncompleteUploads(ctx, p.nameDir(name), olderThan)
	if n > 0 {
		p.log().Info("aborted incomplete uploads", "name", name, "count", n)
	}
	if err != nil {
		p.log().Warn("could not abort incomplete uploads; the server's expiry rule removes them", "name", name, "error", err.Error())
	}
}

// PublishInput describes one image to publish.
type PublishInput struct {
	// Name is the NodeImage name (lowercase DNS-like).
	Name string
	// SpecDigest is the hex sha256 of the spec ("sha256:" prefix allowed).
	SpecDigest string
	// ImagePath is the local image file.
	ImagePath string
	// Format is FormatQCOW2 or FormatRaw; empty means from ImagePath's
	// extension, else qcow2.
	Format string
	// SHA256 of the image when already known (computed while building);
	// empty to compute it while reading the file.
	SHA256 string
	// Manifest is the build manifest JSON, stored as is.
	Manifest []byte
	// Progress reports image upload progress.
	Progress func(done, total int64)
}

// Artifact is a published (or found) image with its companions.
type Artifact struct {
	Name        string    `json:"name"`
	SpecDigest  string    `json:"specDigest"`
	ImageKey    string    `json:"imageKey"`
	ChecksumKey string    `json:"checksumKey"`
	ManifestKey string    `json:"manifestKey"`
	SHA256      string    `json:"sha256"`
	Size        int64     `json:"size"`
	URL         string    `json:"url"`
	PublishedAt time.Time `json:"publishedAt"`
}

// Pointer is the content of the NAME/latest object.
type Pointer struct {
	SpecDigest  string    `json:"specDigest"`
	Key         string    `json:"key"`
	ManifestKey string    `json:"manifestKey"`
	SHA256      string    `json:"sha256"`
	Size        int64     `json:"size"`
	PublishedAt time.Time `json:"publishedAt"`
}

// ArtifactNotFoundError is returned by Lookup when nothing is published for
// a spec digest (or the publication is incomplete). It wraps ErrNotFound.
type ArtifactNotFoundError struct {
	Name, SpecDigest string
	// Missing is the first key found missing.
	Missing string
}

func (e *ArtifactNotFoundError) Error() string {
	return fmt.Sprintf("storage: no published artifact for %s at spec digest %s (missing %s)", e.Name, e.SpecDigest, e.Missing)
}

// Unwrap makes errors.Is(err, ErrNotFound) true.
func (e *ArtifactNotFoundError) Unwrap() error { return ErrNotFound }

func (p *Publisher) now() time.Time {
	if p.Now != nil {
		return p.Now().UTC()
	}
	return time.Now().UTC()
}

func (p *Publisher) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (p *Publisher) nameDir(name string) string {
	return path.Join(p.Prefix, name) + "/"
}

func (p *Publisher) digestDir(name, digest string) string {
	return p.nameDir(name) + digest + "/"
}

// ImageKey returns the key of the image for name, digest and format.
func (p *Publisher) ImageKey(name, digest, format string) string {
	return p.digestDir(name, digest) + name + "." + format
}

// LatestKey returns the key of the latest pointer for name.
func (p *Publisher) LatestKey(name string) string { return p.nameDir(name) + LatestFileName }

func normalizeDigest(d string) string {
	return strings.ToLower(strings.TrimPrefix(d, "sha256:"))
}

func validateNameDigest(name, digest string) error {
	if !nameRE.MatchString(name) {
		return errorf(ErrInvalidArgument, "name %q: want lowercase letters, digits, '-', '.', '_'", name)
	}
	if !specDigestRE.MatchString(digest) {
		return errorf(ErrInvalidArgument, "spec digest %q: want 12 to 64 hex digits", digest)
	}
	return nil
}

// Publish uploads the image, its .sha256 file and the manifest, each
// verified by the store, and only then moves the latest pointer. On error
// nothing published earlier is touched: older digests and the previous
// latest pointer stay as they were. Republishing the same digest first
// removes its manifest, so a failure half-way leaves the digest not
// published (Lookup finds nothing) rather than inconsistent.
func (p *Publisher) Publish(ctx context.Context, in PublishInput) (Artifact, error) {
	digest := normalizeDigest(in.SpecDigest)
	if err := validateNameDigest(in.Name, digest); err != nil {
		return Artifact{}, err
	}
	format := in.Format
	if format == "" {
		format = FormatQCOW2
		if strings.HasSuffix(in.ImagePath, ".raw") || strings.HasSuffix(in.ImagePath, ".img") {
			format = FormatRaw
		}
	}
	if format != FormatQCOW2 && format != FormatRaw {
		return Artifact{}, errorf(ErrInvalidArgument, "format %q: want qcow2 or raw", format)
	}
	if len(in.Manifest) == 0 || !json.Valid(in.Manifest) {
		return Artifact{}, errorf(ErrInvalidArgument, "manifest must be a JSON document")
	}
	if err := p.EnsureDestination(ctx); err != nil {
		return Artifact{}, err
	}

	fileName := in.Name + "." + format
	imageKey := p.ImageKey(in.Name, digest, format)
	manifestKey := p.digestDir(in.Name, digest) + ManifestFileName
	log := p.log().With("name", in.Name, "specDigest", digest)
	// Republishing a digest (a rebuild of the same spec) takes its
	// manifest, which marks the digest as published, away first: until the
	// new image, its .sha256 and the manifest are all in place, the digest
	// reads as not published, never as one image with another's checksum.
	switch _, err := p.Store.Stat(ctx, manifestKey); {
	case err == nil:
		log.Info("republishing: the digest is unpublished until its new objects are in place", "key", manifestKey)
		if err := p.Store.Delete(ctx, manifestKey); err != nil {
			return Artifact{}, fmt.Errorf("publish %s: unpublishing the earlier upload: %w", in.Name, err)
		}
	case !errors.Is(err, ErrNotFound):
		return Artifact{}, fmt.Errorf("publish %s: %w", in.Name, err)
	}
	log.Info("uploading image", "key", imageKey)
	img, err := p.Store.PutFile(ctx, imageKey, in.ImagePath, PutOptions{
		SHA256: in.SHA256, Progress: in.Progress, ContentType: "application/octet-stream",
	})
	if err != nil {
		return Artifact{}, fmt.Errorf("publish %s: image: %w", in.Name, err)
	}
	a := Artifact{
		Name: in.Name, SpecDigest: digest, ImageKey: imageKey,
		ChecksumKey: imageKey + ".sha256", ManifestKey: manifestKey,
		SHA256: img.SHA256, Size: img.Size, URL: p.Store.URL(imageKey),
	}
	if _, err := p.Store.PutBytes(ctx, a.ChecksumKey, []byte(SHA256SumLine(img.SHA256, fileName)), PutOptions{ContentType: "text/plain"}); err != nil {
		return Artifact{}, fmt.Errorf("publish %s: checksum file: %w", in.Name, err)
	}
	// The manifest goes last among the digest's objects: its presence marks
	// the digest as published (Lookup, Prune).
	if _, err := p.Store.PutBytes(ctx, a.ManifestKey, in.Manifest, PutOptions{ContentType: "application/json"}); err != nil {
		return Artifact{}, fmt.Errorf("publish %s: manifest: %w", in.Name, err)
	}
	a.PublishedAt = p.now()
	ptr, _ := json.Marshal(Pointer{
		SpecDigest: digest, Key: imageKey, ManifestKey: a.ManifestKey,
		SHA256: a.SHA256, Size: a.Size, PublishedAt: a.PublishedAt,
	})
	if _, err := p.Store.PutBytes(ctx, p.LatestKey(in.Name), ptr, PutOptions{ContentType: "application/json"}); err != nil {
		return Artifact{}, fmt.Errorf("publish %s: latest pointer: %w", in.Name, err)
	}
	log.Info("published", "key", imageKey, "sha256", a.SHA256, "size", a.Size)
	return a, nil
}

// EnsureDestination makes sure the store can take artifacts: an S3 bucket
// must exist, and is created when the store allows it (CreateBucket); a
// missing one fails with ErrBucketNotFound. A directory store needs
// nothing. Publish calls it; a build calls it before its lookup, so that a
// new bucket is made and a missing one fails before anything is built.
func (p *Publisher) EnsureDestination(ctx context.Context) error {
	if e, ok := p.Store.(interface{ EnsureBucket(context.Context) error }); ok {
		return e.EnsureBucket(ctx)
	}
	return nil
}

// Lookup returns the artifact published for name at specDigest, or an
// *ArtifactNotFoundError (errors.Is ErrNotFound) when the image, its
// checksum or its manifest is missing, or the image has no sha256.
func (p *Publisher) Lookup(ctx context.Context, name, specDigest string) (Artifact, error) {
	digest := normalizeDigest(specDigest)
	if err := validateNameDigest(name, digest); err != nil {
		return Artifact{}, err
	}
	manifestKey := p.digestDir(name, digest) + ManifestFileName
	man, err := p.Store.Stat(ctx, manifestKey)
	if err != nil {
		return Artifact{}, p.notFound(name, digest, manifestKey, err)
	}
	for _, format := range []string{FormatQCOW2, FormatRaw} {
		key := p.ImageKey(name, digest, format)
		img, err := p.Store.Stat(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return Artifact{}, err
		}
		if img.SHA256 == "" {
			return Artifact{}, &ArtifactNotFoundError{Name: name, SpecDigest: digest, Missing: key + " (sha256 metadata)"}
		}
		if _, err := p.Store.Stat(ctx, key+".sha256"); err != nil {
			return Artifact{}, p.notFound(name, digest, key+".sha256", err)
		}
		return Artifact{
			Name: name, SpecDigest: digest, ImageKey: key, ChecksumKey: key + ".sha256",
			ManifestKey: manifestKey, SHA256: img.SHA256, Size: img.Size,
			URL: p.Store.URL(key), PublishedAt: man.LastModified.UTC(),
		}, nil
	}
	return Artifact{}, &ArtifactNotFoundError{Name: name, SpecDigest: digest, Missing: p.ImageKey(name, digest, FormatQCOW2)}
}

func (p *Publisher) notFound(name, digest, key string, err error) error {
	if errors.Is(err, ErrNotFound) {
		return &ArtifactNotFoundError{Name: name, SpecDigest: digest, Missing: key}
	}
	return err
}

// Latest reads the latest pointer of name (errors.Is ErrNotFound when
// nothing was published).
func (p *Publisher) Latest(ctx context.Context, name string) (Pointer, error) {
	if !nameRE.MatchString(name) {
		return Pointer{}, errorf(ErrInvalidArgument, "name %q", name)
	}
	rc, _, err := p.Store.Get(ctx, p.LatestKey(name))
	if err != nil {
		return Pointer{}, err
	}
	defer rc.Close()
	var ptr Pointer
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return Pointer{}, err
	}
	if err := json.Unmarshal(b, &ptr); err != nil {
		return Pointer{}, fmt.Errorf("storage: latest pointer of %s is not valid JSON: %w", name, err)
	}
	return ptr, nil
}

// Published lists the published digests of name, newest first (by the
// manifest's modification time).
func (p *Publisher) Published(ctx context.Context, name string) ([]Artifact, error) {
	if !nameRE.MatchString(name) {
		return nil, errorf(ErrInvalidArgument, "name %q", name)
	}
	objs, err := p.Store.List(ctx, p.nameDir(name))
	if err != nil {
		return nil, err
	}
	var out []Artifact
	for _, o := range objs {
		rest := strings.TrimPrefix(o.Key, p.nameDir(name))
		digest, file, ok := strings.Cut(rest, "/")
		if !ok || file != ManifestFileName || !specDigestRE.MatchString(digest) {
			continue
		}
		out = append(out, Artifact{Name: name, SpecDigest: digest, ManifestKey: o.Key, PublishedAt: o.LastModified.UTC()})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].PublishedAt.Equal(out[j].PublishedAt) {
			return out[i].PublishedAt.After(out[j].PublishedAt)
		}
		return out[i].SpecDigest < out[j].SpecDigest
	})
	return out, nil
}

// Prune keeps the keep newest published digests of name and deletes the
// others, never the one the latest pointer names. Digests without a
// manifest (a publish in progress, or one that failed) are left alone;
// incomplete multipart uploads older than StaleUploadAge are aborted. It
// returns the deleted digests.
func (p *Publisher) Prune(ctx context.Context, name string, keep int) ([]string, error) {
	if keep < 0 {
		return nil, errorf(ErrInvalidArgument, "keep %d: must be >= 0", keep)
	}
	published, err := p.Published(ctx, name)
	if err != nil {
		return nil, err
	}
	latest := ""
	if ptr, err := p.Latest(ctx, name); err == nil {
		latest = ptr.SpecDigest
	} else if !errors.Is(err, ErrNotFound) {
		// Without knowing what latest names, deleting anything is unsafe.
		return nil, fmt.Errorf("prune %s: read latest pointer: %w", name, err)
	}
	var deleted []string
	for i, a := range published {
		if i < keep || a.SpecDigest == latest {
			continue
		}
		if err := p.deleteDigest(ctx, name, a.SpecDigest); err != nil {
			return deleted, fmt.Errorf("prune %s: %w", name, err)
		}
		p.log().Info("pruned artifact", "name", name, "specDigest", a.SpecDigest)
		deleted = append(deleted, a.SpecDigest)
	}
	p.abortStaleUploads(ctx, name, StaleUploadAge)
	return deleted, nil
}

// deleteDigest removes one digest's objects, the manifest first so that a
// half-deleted digest no longer counts as published.
func (p *Publisher) deleteDigest(ctx context.Context, name, digest string) error {
	dir := p.digestDir(name, digest)
	if err := p.Store.Delete(ctx, dir+ManifestFileName); err != nil {
		return err
	}
	objs, err := p.Store.List(ctx, dir)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := p.Store.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}

// DeleteAll removes every object of name (the Delete deletion policy):
// the latest pointer first, then each digest. Only keys of the layout are
// touched (NAME/latest and NAME/DIGEST/...): another name's keys below
// NAME/ (another prefix nested under this one) are never deleted.
func (p *Publisher) DeleteAll(ctx context.Context, name string) error {
	if !nameRE.MatchString(name) {
		return errorf(ErrInvalidArgument, "name %q", name)
	}
	if err := p.Store.Delete(ctx, p.LatestKey(name)); err != nil {
		return err
	}
	// The NodeImage and its builders are gone: every upload of the name
	// is a leftover.
	p.abortStaleUploads(ctx, name, 0)
	published, err := p.Published(ctx, name)
	if err != nil {
		return err
	}
	for _, a := range published {
		if err := p.deleteDigest(ctx, name, a.SpecDigest); err != nil {
			return err
		}
	}
	// Leftovers of unfinished publishes (a digest without a manifest).
	objs, err := p.Store.List(ctx, p.nameDir(name))
	if err != nil {
		return err
	}
	for _, o := range objs {
		digest, _, ok := strings.Cut(strings.TrimPrefix(o.Key, p.nameDir(name)), "/")
		if !ok || !specDigestRE.MatchString(digest) {
			continue
		}
		if err := p.Store.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}
