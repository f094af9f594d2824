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
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nodeforge/nodeforge/internal/checksum"
)

// Artifact layout, under the publisher's prefix:
//
//	NAME/SPECDIGEST/REV/NAME.qcow2          the image (or NAME.raw)
//	NAME/SPECDIGEST/REV/NAME.qcow2.sha256   sha256sum(1) line for the image
//	NAME/SPECDIGEST/REV/manifest.json       the build manifest (caller's bytes)
//	NAME/latest                             Pointer to the newest published revision
//
// SPECDIGEST is the hex sha256 of the NodeImage spec, so the keys are
// content-addressed: a second build of the same spec finds the artifact.
// REV is the revision, numbered 1, 2, 3, ... across every publish of NAME
// whatever its digest: a rebuild of the same spec (a requested rebuild, a
// Debian update) is a new revision beside the old one, never an overwrite.
// A failed publish removes what it wrote, so the next publish may take its
// number; a published revision's number is never given again. Objects
// published before revisions (NAME/SPECDIGEST/NAME.qcow2, ...) read as
// revision 0.
const (
	ManifestFileName = "manifest.json"
	LatestFileName   = "latest"
	// SBOMSuffix and ProvenanceSuffix end the names of the companions a
	// build publishes next to its image: NAME.spdx.json (SPDX 2.3) and
	// NAME.provenance.json (an in-toto statement, SLSA v1 provenance).
	SBOMSuffix       = ".spdx.json"
	ProvenanceSuffix = ".provenance.json"
	// SignatureSuffix ends a signature's name: FILE.sig beside FILE
	// (base64, as cosign sign-blob writes it).
	SignatureSuffix = ".sig"
)

// Image formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([-a-z0-9._]{0,251}[a-z0-9])?$`)
	specDigestRE = regexp.MustCompile(`^[0-9a-f]{12,64}$`)
	revisionRE   = regexp.MustCompile(`^[1-9][0-9]{0,8}$`)
)

// maxRevisionClaims bounds how many revision numbers one publish tries when
// others publishing the same name at the same moment take them first.
const maxRevisionClaims = 8

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
	// Companions are more files of the revision (the SBOM, the
	// provenance), put after the image and before the manifest.
	Companions []Companion
	// Progress reports image upload progress.
	Progress func(done, total int64)
}

// Companion is one more file published with an image, in its revision's
// directory.
type Companion struct {
	// Name is the file name: no "/", and none of the revision's other
	// names.
	Name        string
	Data        []byte
	ContentType string
}

// Artifact is a published (or found) image with its companions.
type Artifact struct {
	Name       string `json:"name"`
	SpecDigest string `json:"specDigest"`
	// Revision numbers the publishes of Name (0: published before
	// revisions).
	Revision    int       `json:"revision"`
	ImageKey    string    `json:"imageKey"`
	ChecksumKey string    `json:"checksumKey"`
	ManifestKey string    `json:"manifestKey"`
	SHA256      string    `json:"sha256"`
	Size        int64     `json:"size"`
	URL         string    `json:"url"`
	PublishedAt time.Time `json:"publishedAt"`
	// CompanionKeys are the keys of the companions published with the
	// image, by name.
	CompanionKeys map[string]string `json:"companionKeys,omitempty"`
}

// Pointer is the content of the NAME/latest object.
type Pointer struct {
	SpecDigest  string    `json:"specDigest"`
	Revision    int       `json:"revision,omitempty"`
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

// revisionDir is the "directory" of one revision's objects; revision 0 is
// the layout from before revisions.
func (p *Publisher) revisionDir(name, digest string, rev int) string {
	if rev == 0 {
		return p.digestDir(name, digest)
	}
	return p.digestDir(name, digest) + strconv.Itoa(rev) + "/"
}

// ImageKey returns the key of the image for name, digest, revision and
// format.
func (p *Publisher) ImageKey(name, digest string, rev int, format string) string {
	return p.revisionDir(name, digest, rev) + name + "." + format
}

// revision is one revision's objects as listed.
type revision struct {
	Digest string
	Number int
	// Manifest is the manifest's listing; nil while the revision is not
	// published (a publish in progress or one that failed).
	Manifest *ObjectInfo
	// Objects are every object of the revision, the manifest included.
	Objects []ObjectInfo
}

// parseKey splits a key of name's layout; ok is false for every other key
// (the latest pointer, or another name's keys below a nested prefix).
func (p *Publisher) parseKey(name, key string) (digest string, rev int, file string, ok bool) {
	rest, found := strings.CutPrefix(key, p.nameDir(name))
	if !found {
		return "", 0, "", false
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 2:
		digest, file = parts[0], parts[1]
	case len(parts) == 3 && revisionRE.MatchString(parts[1]):
		digest, file = parts[0], parts[2]
		rev, _ = strconv.Atoi(parts[1])
	default:
		return "", 0, "", false
	}
	if !specDigestRE.MatchString(digest) || file == "" {
		return "", 0, "", false
	}
	return digest, rev, file, true
}

// revisions lists the revisions of name (of one digest when digest is not
// empty), newest first: by number, then revision 0 by manifest time.
func (p *Publisher) revisions(ctx context.Context, name, digest string) ([]*revision, error) {
	prefix := p.nameDir(name)
	if digest != "" {
		prefix = p.digestDir(name, digest)
	}
	objs, err := p.Store.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	type id struct {
		digest string
		rev    int
	}
	byID := map[id]*revision{}
	var out []*revision
	for _, o := range objs {
		d, rev, file, ok := p.parseKey(name, o.Key)
		if !ok {
			continue
		}
		r := byID[id{d, rev}]
		if r == nil {
			r = &revision{Digest: d, Number: rev}
			byID[id{d, rev}] = r
			out = append(out, r)
		}
		r.Objects = append(r.Objects, o)
		if file == ManifestFileName {
			m := o
			r.Manifest = &m
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Number != b.Number {
			return a.Number > b.Number
		}
		at, bt := a.newest(), b.newest()
		if !at.Equal(bt) {
			return at.After(bt)
		}
		return a.Digest < b.Digest
	})
	return out, nil
}

// newest is the time of the revision's latest object: its manifest's when
// published.
func (r *revision) newest() time.Time {
	if r.Manifest != nil {
		return r.Manifest.LastModified
	}
	var t time.Time
	for _, o := range r.Objects {
		if o.LastModified.After(t) {
			t = o.LastModified
		}
	}
	return t
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

// Publish uploads the image as the next revision of its name: first the
// .sha256 file, put only if absent, which claims the revision number; then
// the image and the manifest, each verified by the store; and only then
// moves the latest pointer, unless it names a higher revision already.
// Nothing published earlier is ever written: a rebuild of the same spec
// is a new revision beside the old one. On error, older revisions and the
// latest pointer stay as they were, and the failed revision's objects are
// removed (when the store cannot be reached, Prune removes them once
// stale); without a manifest it never reads as published.
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
	for _, c := range in.Companions {
		if c.Name == "" || strings.ContainsAny(c.Name, "/\\") || c.Name == "." || c.Name == ".." || c.Name == ManifestFileName ||
			c.Name == in.Name+"."+format || c.Name == in.Name+"."+format+".sha256" {
			return Artifact{}, errorf(ErrInvalidArgument, "companion %q: want a file name other than the image's, its .sha256 and the manifest", c.Name)
		}
	}
	if in.SHA256 != "" && !validSHA256(in.SHA256) {
		return Artifact{}, errorf(ErrInvalidArgument, "sha256 %q is not lowercase hex", in.SHA256)
	}
	if err := p.EnsureDestination(ctx); err != nil {
		return Artifact{}, err
	}
	sum := in.SHA256
	if sum == "" {
		// The .sha256 file goes first, so the sum is needed before the
		// upload (the builder passes the sum it computed while writing).
		var err error
		if sum, _, err = checksum.File(in.ImagePath); err != nil {
			return Artifact{}, fmt.Errorf("publish %s: %w", in.Name, err)
		}
	}
	rev, err := p.claimRevision(ctx, in.Name, digest, format, sum)
	if err != nil {
		return Artifact{}, err
	}
	imageKey := p.ImageKey(in.Name, digest, rev, format)
	a := Artifact{
		Name: in.Name, SpecDigest: digest, Revision: rev, ImageKey: imageKey,
		ChecksumKey: imageKey + ".sha256", ManifestKey: p.revisionDir(in.Name, digest, rev) + ManifestFileName,
	}
	log := p.log().With("name", in.Name, "specDigest", digest, "revision", rev)
	log.Info("uploading image", "key", imageKey)
	img, err := p.Store.PutFile(ctx, imageKey, in.ImagePath, PutOptions{
		SHA256: sum, Progress: in.Progress, ContentType: "application/octet-stream",
	})
	if err != nil {
		p.abandon(ctx, a)
		return Artifact{}, fmt.Errorf("publish %s revision %d: image: %w", in.Name, rev, err)
	}
	a.SHA256, a.Size, a.URL = img.SHA256, img.Size, p.Store.URL(imageKey)
	for _, c := range in.Companions {
		key := p.revisionDir(in.Name, digest, rev) + c.Name
		if a.CompanionKeys == nil {
			a.CompanionKeys = map[string]string{}
		}
		a.CompanionKeys[c.Name] = key
		if _, err := p.Store.PutBytes(ctx, key, c.Data, PutOptions{ContentType: c.ContentType, IfAbsent: true}); err != nil {
			p.abandon(ctx, a)
			return Artifact{}, fmt.Errorf("publish %s revision %d: %s: %w", in.Name, rev, c.Name, err)
		}
	}
	// The manifest goes last among the revision's objects: its presence
	// marks the revision as published (Lookup, Prune).
	if _, err := p.Store.PutBytes(ctx, a.ManifestKey, in.Manifest, PutOptions{ContentType: "application/json", IfAbsent: true}); err != nil {
		p.abandon(ctx, a)
		return Artifact{}, fmt.Errorf("publish %s revision %d: manifest: %w", in.Name, rev, err)
	}
	a.PublishedAt = p.now()
	if err := p.moveLatest(ctx, a); err != nil {
		return Artifact{}, err
	}
	log.Info("published", "key", imageKey, "sha256", a.SHA256, "size", a.Size)
	return a, nil
}

// abandon removes what a failed publish wrote of its revision (never the
// manifest: the publish failed before it), so that the revision does not
// linger unpublished; its number is free again. When the store cannot be
// reached, Prune removes the leftovers once they are stale.
func (p *Publisher) abandon(ctx context.Context, a Artifact) {
	ctx = context.WithoutCancel(ctx)
	keys := []string{a.ImageKey, a.ChecksumKey}
	for _, key := range a.CompanionKeys {
		keys = append(keys, key)
	}
	for _, key := range keys {
		if err := p.Store.Delete(ctx, key); err != nil {
			p.log().Warn("could not remove an object of a failed publish; prune removes it later", "key", key, "error", err.Error())
		}
	}
}

// claimRevision takes the next free revision number of name by putting the
// revision's .sha256 file only if absent: of two publishes racing for a
// number, one gets it and the other tries the next.
func (p *Publisher) claimRevision(ctx context.Context, name, digest, format, sum string) (int, error) {
	revs, err := p.revisions(ctx, name, "")
	if err != nil {
		return 0, fmt.Errorf("publish %s: listing revisions: %w", name, err)
	}
	next := 1
	for _, r := range revs {
		next = max(next, r.Number+1)
	}
	line := []byte(SHA256SumLine(sum, name+"."+format))
	for rev := next; rev < next+maxRevisionClaims; rev++ {
		key := p.ImageKey(name, digest, rev, format) + ".sha256"
		_, err := p.Store.PutBytes(ctx, key, line, PutOptions{ContentType: "text/plain", IfAbsent: true})
		if err == nil {
			return rev, nil
		}
		if !errors.Is(err, ErrExists) {
			return 0, fmt.Errorf("publish %s revision %d: checksum file: %w", name, rev, err)
		}
		p.log().Info("revision taken by another publish; trying the next", "name", name, "revision", rev)
	}
	return 0, fmt.Errorf("publish %s: revisions %d to %d were all taken by other publishes", name, next, next+maxRevisionClaims-1)
}

// moveLatest points NAME/latest at a, unless it names a higher revision
// already (a publish that finished first with a later number): latest never
// goes back. An unreadable pointer is replaced.
func (p *Publisher) moveLatest(ctx context.Context, a Artifact) error {
	if cur, err := p.Latest(ctx, a.Name); err == nil && cur.Revision > a.Revision {
		p.log().Info("latest names a later revision; left as is", "name", a.Name, "revision", a.Revision, "latest", cur.Revision)
		return nil
	}
	ptr, _ := json.Marshal(Pointer{
		SpecDigest: a.SpecDigest, Revision: a.Revision, Key: a.ImageKey, ManifestKey: a.ManifestKey,
		SHA256: a.SHA256, Size: a.Size, PublishedAt: a.PublishedAt,
	})
	if _, err := p.Store.PutBytes(ctx, p.LatestKey(a.Name), ptr, PutOptions{ContentType: "application/json"}); err != nil {
		return fmt.Errorf("publish %s revision %d: latest pointer: %w", a.Name, a.Revision, err)
	}
	return nil
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

// Lookup returns the newest revision published for name at specDigest, or
// an *ArtifactNotFoundError (errors.Is ErrNotFound) when there is none, or
// when that revision's image or checksum is missing, or the image has no
// sha256.
func (p *Publisher) Lookup(ctx context.Context, name, specDigest string) (Artifact, error) {
	digest := normalizeDigest(specDigest)
	if err := validateNameDigest(name, digest); err != nil {
		return Artifact{}, err
	}
	revs, err := p.revisions(ctx, name, digest)
	if err != nil {
		return Artifact{}, err
	}
	i := slices.IndexFunc(revs, func(r *revision) bool { return r.Manifest != nil })
	if i < 0 {
		return Artifact{}, &ArtifactNotFoundError{Name: name, SpecDigest: digest, Missing: p.revisionDir(name, digest, 1) + ManifestFileName}
	}
	r := revs[i]
	for _, format := range []string{FormatQCOW2, FormatRaw} {
		key := p.ImageKey(name, digest, r.Number, format)
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
		a := Artifact{
			Name: name, SpecDigest: digest, Revision: r.Number, ImageKey: key, ChecksumKey: key + ".sha256",
			ManifestKey: r.Manifest.Key, SHA256: img.SHA256, Size: img.Size,
			URL: p.Store.URL(key), PublishedAt: r.Manifest.LastModified.UTC(),
		}
		// The revision's other objects are its companions.
		dir := p.revisionDir(name, digest, r.Number)
		for _, o := range r.Objects {
			if o.Key != key && o.Key != a.ChecksumKey && o.Key != a.ManifestKey {
				if a.CompanionKeys == nil {
					a.CompanionKeys = map[string]string{}
				}
				a.CompanionKeys[strings.TrimPrefix(o.Key, dir)] = o.Key
			}
		}
		return a, nil
	}
	return Artifact{}, &ArtifactNotFoundError{Name: name, SpecDigest: digest, Missing: p.ImageKey(name, digest, r.Number, FormatQCOW2)}
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

// Published lists the published revisions of name, newest first.
func (p *Publisher) Published(ctx context.Context, name string) ([]Artifact, error) {
	if !nameRE.MatchString(name) {
		return nil, errorf(ErrInvalidArgument, "name %q", name)
	}
	revs, err := p.revisions(ctx, name, "")
	if err != nil {
		return nil, err
	}
	var out []Artifact
	for _, r := range revs {
		if r.Manifest != nil {
			out = append(out, Artifact{Name: name, SpecDigest: r.Digest, Revision: r.Number,
				ManifestKey: r.Manifest.Key, PublishedAt: r.Manifest.LastModified.UTC()})
		}
	}
	return out, nil
}

// Prune keeps the keep newest published revisions of name and deletes the
// others, never the one the latest pointer names. A revision without a
// manifest (a publish in progress, or one that failed) is deleted only
// once it is older than StaleUploadAge, longer than any build runs;
// incomplete multipart uploads that old are aborted too. It returns the
// deleted revisions, published or not.
func (p *Publisher) Prune(ctx context.Context, name string, keep int) ([]Artifact, error) {
	if keep < 0 {
		return nil, errorf(ErrInvalidArgument, "keep %d: must be >= 0", keep)
	}
	if !nameRE.MatchString(name) {
		return nil, errorf(ErrInvalidArgument, "name %q", name)
	}
	revs, err := p.revisions(ctx, name, "")
	if err != nil {
		return nil, err
	}
	var latest Pointer
	if latest, err = p.Latest(ctx, name); err != nil && !errors.Is(err, ErrNotFound) {
		// Without knowing what latest names, deleting anything is unsafe.
		return nil, fmt.Errorf("prune %s: read latest pointer: %w", name, err)
	}
	var deleted []Artifact
	published := 0
	for _, r := range revs {
		if r.Manifest != nil {
			published++
			if published <= keep || (r.Digest == latest.SpecDigest && r.Number == latest.Revision) {
				continue
			}
		} else if p.now().Sub(r.newest()) < StaleUploadAge {
			continue
		}
		if err := p.deleteRevision(ctx, r); err != nil {
			return deleted, fmt.Errorf("prune %s: %w", name, err)
		}
		p.log().Info("pruned artifact", "name", name, "specDigest", r.Digest, "revision", r.Number, "published", r.Manifest != nil)
		deleted = append(deleted, Artifact{Name: name, SpecDigest: r.Digest, Revision: r.Number})
	}
	p.abortStaleUploads(ctx, name, StaleUploadAge)
	return deleted, nil
}

// deleteRevision removes one revision's objects, the manifest first so
// that a half-deleted revision no longer counts as published.
func (p *Publisher) deleteRevision(ctx context.Context, r *revision) error {
	if r.Manifest != nil {
		if err := p.Store.Delete(ctx, r.Manifest.Key); err != nil {
			return err
		}
	}
	for _, o := range r.Objects {
		if err := p.Store.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}

// DeleteAll removes every object of name (the Delete deletion policy):
// the latest pointer first, then each revision, published or not. Only keys
// of the layout are touched (NAME/latest and NAME/DIGEST/[REV/]FILE):
// another name's keys below NAME/ (another prefix nested under this one)
// are never deleted.
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
	revs, err := p.revisions(ctx, name, "")
	if err != nil {
		return err
	}
	for _, r := range revs {
		if err := p.deleteRevision(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
