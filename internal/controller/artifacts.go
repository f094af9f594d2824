package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// ErrArtifactNotFound is returned by ArtifactStore.Lookup when nothing is
// published for a spec digest.
var ErrArtifactNotFound = errors.New("artifact not found")

// ArtifactStore is what the NodeImage controller needs of the object store
// named by a NodeImage's destination: find the artifact of a spec digest
// (the cache), prune old digests, and delete everything (deletionPolicy
// Delete). Calls are short HEAD/LIST/DELETE requests; uploads happen in the
// builder.
type ArtifactStore interface {
	Lookup(ctx context.Context, ni *imagev1.NodeImage, specDigest string) (*imagev1.Artifact, error)
	Prune(ctx context.Context, ni *imagev1.NodeImage, keep int) error
	DeleteAll(ctx context.Context, ni *imagev1.NodeImage) error
	// Presign returns a fresh time-limited download URL of the artifact's
	// image, valid for the destination's presignExpiry, and when it
	// expires. Signing happens locally with the destination's credentials.
	Presign(ctx context.Context, ni *imagev1.NodeImage, a *imagev1.Artifact) (string, time.Time, error)
}

// PublisherOpener returns the storage.Publisher for a NodeImage's
// destination.
type PublisherOpener func(ctx context.Context, ni *imagev1.NodeImage) (*storage.Publisher, error)

// DefaultStoreCallTimeout bounds one ArtifactStore call of PublisherStore.
const DefaultStoreCallTimeout = time.Minute

// PublisherStore implements ArtifactStore with storage.Publisher.
type PublisherStore struct {
	Open PublisherOpener
	// CallTimeout bounds each Lookup, Prune and DeleteAll, opening the
	// destination included: a tenant's slow or silent endpoint holds one
	// reconcile worker for at most this long and the NodeImage is retried
	// with backoff, instead of stalling the workers every NodeImage shares.
	// DefaultStoreCallTimeout when zero.
	CallTimeout time.Duration
}

func (s PublisherStore) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	d := s.CallTimeout
	if d <= 0 {
		d = DefaultStoreCallTimeout
	}
	return context.WithTimeout(ctx, d)
}

var _ ArtifactStore = PublisherStore{}

// Lookup implements ArtifactStore.
func (s PublisherStore) Lookup(ctx context.Context, ni *imagev1.NodeImage, digest string) (*imagev1.Artifact, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	p, err := s.Open(ctx, ni)
	if err != nil {
		return nil, err
	}
	a, err := p.Lookup(ctx, ni.Name, digest)
	if errors.Is(err, storage.ErrBucketNotFound) {
		// Nothing can be published in a bucket that does not exist. The
		// builder creates it when the spec allows; otherwise no build
		// could ever publish, so the user must act before one runs.
		if d := ni.Spec.Destination; d != nil && d.S3 != nil && !d.S3.CreateBucket {
			return nil, &StallingError{Reason: imagev1.InvalidSpecReason,
				Err: fmt.Errorf("bucket %q does not exist and spec.destination.s3.createBucket is false", d.S3.Bucket)}
		}
		return nil, fmt.Errorf("%w: the bucket does not exist yet", ErrArtifactNotFound)
	}
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", ErrArtifactNotFound, err)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up the artifact of %s: %w", imagev1.DigestHex(digest)[:12], err)
	}
	format := imagev1.FormatQCOW2
	if strings.HasSuffix(a.ImageKey, "."+storage.FormatRaw) {
		format = imagev1.FormatRaw
	}
	out := &imagev1.Artifact{
		URL:         a.URL,
		ManifestURL: p.Store.URL(a.ManifestKey),
		SHA256:      a.SHA256,
		Size:        a.Size,
		Format:      format,
		BuiltAt:     metav1.NewTime(a.PublishedAt),
		SpecDigest:  "sha256:" + imagev1.DigestHex(digest),
		Revision:    int32(a.Revision),
	}
	urls := map[string]string{}
	for name, key := range a.CompanionKeys {
		urls[name] = p.Store.URL(key)
	}
	setAttestationURLs(out, urls)
	return out, nil
}

// setAttestationURLs sets the SBOM's, the provenance's and the image's
// signature's URLs from an artifact's companions, given by file name.
func setAttestationURLs(a *imagev1.Artifact, urls map[string]string) {
	for name, u := range urls {
		switch {
		case strings.HasSuffix(name, storage.SBOMSuffix):
			a.SBOMURL = u
		case strings.HasSuffix(name, storage.ProvenanceSuffix):
			a.ProvenanceURL = u
		case strings.HasSuffix(name, "."+string(a.Format)+storage.SignatureSuffix):
			a.SignatureURL = u
		}
	}
}

// companionURLs are the URLs of a build result's companions, which lie in
// the directory of its manifest.
func companionURLs(a *buildresult.Artifact) map[string]string {
	dir, ok := strings.CutSuffix(a.ManifestURL, storage.ManifestFileName)
	if !ok || len(a.Companions) == 0 {
		return nil
	}
	urls := map[string]string{}
	for _, name := range a.Companions {
		urls[name] = dir + name
	}
	return urls
}

// Presign implements ArtifactStore.
func (s PublisherStore) Presign(ctx context.Context, ni *imagev1.NodeImage, a *imagev1.Artifact) (string, time.Time, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	p, err := s.Open(ctx, ni)
	if err != nil {
		return "", time.Time{}, err
	}
	expiry := presignExpiry(ni)
	key := p.ImageKey(ni.Name, imagev1.DigestHex(a.SpecDigest), int(a.Revision), string(a.Format))
	now := time.Now()
	u, err := p.Store.PresignGet(ctx, key, expiry)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("presigning %s: %w", key, err)
	}
	return u, now.Add(expiry), nil
}

// presignExpiry is the NodeImage's presignExpiry, defaulted.
func presignExpiry(ni *imagev1.NodeImage) time.Duration {
	if d := ni.Spec.Destination; d != nil && d.S3 != nil && d.S3.PresignExpiry != nil && d.S3.PresignExpiry.Duration > 0 {
		return d.S3.PresignExpiry.Duration
	}
	return imagev1.DefaultPresignExpiry
}

// Prune implements ArtifactStore.
func (s PublisherStore) Prune(ctx context.Context, ni *imagev1.NodeImage, keep int) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	p, err := s.Open(ctx, ni)
	if err != nil {
		return err
	}
	_, err = p.Prune(ctx, ni.Name, keep)
	return err
}

// DeleteAll implements ArtifactStore.
func (s PublisherStore) DeleteAll(ctx context.Context, ni *imagev1.NodeImage) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	p, err := s.Open(ctx, ni)
	if err != nil {
		return err
	}
	return p.DeleteAll(ctx, ni.Name)
}

// S3Opener opens a NodeImage's S3 destination with the credentials of its
// Secret. r should be an uncached reader (the manager's API reader) so the
// manager needs only get on Secrets, not list or watch. Secret values stay
// inside storage.Credentials, which redacts them in every textual form.
func S3Opener(r client.Reader) PublisherOpener {
	return func(ctx context.Context, ni *imagev1.NodeImage) (*storage.Publisher, error) {
		if ni.Spec.Destination == nil || ni.Spec.Destination.S3 == nil {
			return nil, errors.New("the NodeImage has no S3 destination")
		}
		d := ni.Spec.Destination.S3.DeepCopy()
		d.Default()
		data, err := secretData(ctx, r, ni.Namespace, d.CredentialsSecretRef.Name)
		if err != nil {
			return nil, err
		}
		creds, err := storage.CredentialsFromSecretData(data)
		if err != nil {
			return nil, &StallingError{Reason: imagev1.InvalidSpecReason,
				Err: fmt.Errorf("secret %s: %w", d.CredentialsSecretRef.Name, err)}
		}
		var ca []byte
		if d.CASecretRef != nil {
			data, err := secretData(ctx, r, ni.Namespace, d.CASecretRef.Name)
			if err != nil {
				return nil, err
			}
			ca = data[buildresult.CAKey]
		}
		pub, _, err := storage.OpenDestination(*d, ni.Namespace, creds, ca)
		if err != nil {
			return nil, &StallingError{Reason: imagev1.InvalidSpecReason, Err: err}
		}
		return pub, nil
	}
}

func secretData(ctx context.Context, r client.Reader, ns, name string) (map[string][]byte, error) {
	var s corev1.Secret
	if err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
		if apierrors.IsNotFound(err) {
			// The NotFound stays in the chain (apierrors.IsNotFound): a
			// finalizer gives up when the Secret is gone.
			return nil, &StallingError{Reason: imagev1.InvalidSpecReason, Err: fmt.Errorf("secret %s/%s does not exist: %w", ns, name, err)}
		}
		return nil, fmt.Errorf("reading Secret %s/%s: %w", ns, name, err)
	}
	return s.Data, nil
}

// BuildArtifactLookup finds the artifact a build published, and when, for
// backends that cannot return a result themselves (KubeVirt).
func BuildArtifactLookup(store ArtifactStore) func(ctx context.Context, b *imagev1.NodeImageBuild) (*buildresult.Artifact, time.Time, error) {
	return func(ctx context.Context, b *imagev1.NodeImageBuild) (*buildresult.Artifact, time.Time, error) {
		if b.Spec.Destination == nil {
			return nil, time.Time{}, errors.New("the build has no destination")
		}
		ni := &imagev1.NodeImage{
			ObjectMeta: metav1.ObjectMeta{Name: b.Spec.NodeImageName, Namespace: b.Namespace},
			Spec:       imagev1.NodeImageSpec{Destination: b.Spec.Destination},
		}
		a, err := store.Lookup(ctx, ni, b.Spec.SpecDigest)
		if err != nil {
			return nil, time.Time{}, err
		}
		return &buildresult.Artifact{URL: a.URL, ManifestURL: a.ManifestURL, SHA256: a.SHA256, Size: a.Size, Format: string(a.Format), Revision: a.Revision}, a.BuiltAt.Time, nil
	}
}
