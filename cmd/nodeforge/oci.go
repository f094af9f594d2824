package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/attest"
	"github.com/nodeforge/nodeforge/internal/checksum"
	"github.com/nodeforge/nodeforge/internal/containerdisk"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// ociDestination is a registry repository the verified image is pushed to
// as a KubeVirt containerDisk, and the tags moved to it.
type ociDestination struct {
	containerdisk.Target
	Tags []string
}

// openOCI checks a destination.oci (or the CLI's flags) and opens it with
// the Docker configuration dockerConfig (nil: anonymous) and the transport
// tr (nil: the default; containerdisk.TransportWithCA for a private CA).
// what names the setting in errors.
func openOCI(what string, d imagev1.OCIDestination, dockerConfig []byte, tr http.RoundTripper) (*ociDestination, error) {
	repo, err := containerdisk.ParseRepository(d.Repository, d.Insecure)
	if err != nil {
		return nil, fmt.Errorf("%s.repository: %w", what, err)
	}
	for _, t := range d.Tags {
		if err := containerdisk.ValidateTag(t); err != nil {
			return nil, fmt.Errorf("%s.tags: %w", what, err)
		}
	}
	if tr != nil && d.Insecure {
		return nil, fmt.Errorf("%s: a CA for the registry cannot be combined with insecure", what)
	}
	o := &ociDestination{Target: containerdisk.Target{Repository: repo, Transport: tr}, Tags: d.Tags}
	if dockerConfig != nil {
		if o.Keychain, err = containerdisk.Keychain(dockerConfig); err != nil {
			return nil, fmt.Errorf("%s.credentialsSecretRef: %w", what, err)
		}
	}
	return o, nil
}

// ociFlags are the --oci flags of nodeforge build and publish: a registry
// the image is also pushed to, with the user's Docker credentials.
type ociFlags struct {
	repository string
	tags       []string
	insecure   bool
	caFile     string
}

// register adds the flags to fs; overriding ends --oci's usage line.
func (f *ociFlags) register(fs *pflag.FlagSet, overriding string) {
	fs.StringVar(&f.repository, "oci", "", "also push the image as a KubeVirt containerDisk to this repository (host[:port]/path)"+overriding)
	fs.StringSliceVar(&f.tags, "oci-tag", nil, "with --oci: tags moved to the image once it is published (default latest)")
	fs.BoolVar(&f.insecure, "oci-insecure", false, "with --oci: the registry speaks plain HTTP")
	fs.StringVar(&f.caFile, "oci-ca-file", "", "PEM CA bundle the registry's certificate is checked against, besides the system's CAs (--oci, or spec.destination.oci with caSecretRef)")
}

// destination is the registry the verified image is also pushed to: --oci,
// else spec (a NodeImage's destination.oci, nil when there is none or it
// does not apply), else nil. It needs pub, which keeps the revisions the
// tags name.
func (f ociFlags) destination(spec *imagev1.OCIDestination, pub *storage.Publisher) (*ociDestination, error) {
	what, d := "--oci", imagev1.OCIDestination{Repository: f.repository, Tags: f.tags, Insecure: f.insecure}
	switch {
	case f.repository != "":
		if len(d.Tags) == 0 {
			d.Tags = []string{"latest"}
		}
	case len(f.tags) > 0 || f.insecure:
		return nil, errors.New("--oci-tag and --oci-insecure need --oci REPOSITORY")
	case spec != nil:
		what, d = "spec.destination.oci", *spec
		if d.CASecretRef != nil && f.caFile == "" {
			// The CLI reads no Secrets.
			return nil, fmt.Errorf("spec.destination.oci.caSecretRef (%s) is set, but the CLI reads the registry's CA from --oci-ca-file: set it to the PEM file of that CA", d.CASecretRef.Name)
		}
	case f.caFile != "":
		return nil, errors.New("--oci-ca-file needs --oci REPOSITORY or spec.destination.oci")
	default:
		return nil, nil
	}
	if pub == nil {
		return nil, fmt.Errorf("%s needs an object store to publish to (--to, or spec.destination.s3): it keeps the revisions the tags name", what)
	}
	var tr http.RoundTripper
	if f.caFile != "" {
		ca, err := os.ReadFile(f.caFile)
		if err == nil {
			tr, err = containerdisk.TransportWithCA(ca)
		}
		if err != nil {
			return nil, fmt.Errorf("--oci-ca-file: %w", err)
		}
	}
	od, err := openOCI(what, d, nil, tr)
	if err != nil {
		return nil, err
	}
	od.Keychain = authn.DefaultKeychain
	return od, nil
}

// revisionTag is the tag that names one published revision for good:
// r<REVISION>-<first 12 hex digits of the spec digest>.
func revisionTag(revision int, specDigest string) string {
	hexDigest := imagev1.DigestHex(specDigest)
	if len(hexDigest) > 12 {
		hexDigest = hexDigest[:12]
	}
	return fmt.Sprintf("r%d-%s", revision, hexDigest)
}

// pushContainerDisk uploads the image at imagePath (described by m) to the
// OCI destination by digest, moving no tag, signs it there as cosign does
// when the pipeline signs, and records where in m.
func (p *pipeline) pushContainerDisk(ctx context.Context, imagePath string, m *manifest.Manifest) (name.Digest, error) {
	arch := string(m.Content.Base.Architecture)
	if arch == "" {
		arch = string(imagev1.ArchitectureAMD64)
	}
	img, err := containerdisk.Image(imagePath, m.Name+"."+string(m.Image.Format), arch, m.CreatedAt)
	if err != nil {
		return name.Digest{}, err
	}
	start := time.Now()
	progress := make(chan v1.Update, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bar := newUploadProgress(p.Stderr, "containerDisk "+m.Name)
		for u := range progress {
			bar.update(u.Complete, u.Total)
		}
	}()
	ref, err := p.OCI.Push(ctx, img, progress)
	<-done
	if err != nil {
		return name.Digest{}, err
	}
	fmt.Fprintf(p.Stderr, "pushed containerDisk %s in %s\n", ref, time.Since(start).Round(time.Millisecond))
	if p.Signer != nil {
		// Before any tag points at it: `cosign verify --key` checks it.
		payload, err := containerdisk.SignaturePayload(ref)
		if err != nil {
			return name.Digest{}, err
		}
		sig, err := attest.SignBlob(p.Signer, payload)
		if err != nil {
			return name.Digest{}, err
		}
		if err := p.OCI.PushSignature(ctx, ref, payload, sig); err != nil {
			return name.Digest{}, err
		}
	}
	m.ContainerDisk = &manifest.ContainerDisk{Repository: ref.Context().Name(), Digest: ref.DigestStr()}
	return ref, nil
}

// tagContainerDisk points the revision's own tag and the moving tags at
// the pushed containerDisk: the last step of a publish.
func (p *pipeline) tagContainerDisk(ctx context.Context, ref name.Digest, art storage.Artifact) error {
	tags := append([]string{revisionTag(art.Revision, art.SpecDigest)}, p.OCI.Tags...)
	if err := p.OCI.Tag(ctx, ref, tags...); err != nil {
		return err
	}
	fmt.Fprintf(p.Stderr, "tagged %s as %s\n", ref.DigestStr(), strings.Join(tags, ", "))
	return nil
}

// deliverPublished makes an already published artifact (m, its manifest)
// the one the OCI destination's tags point at: by the digest its manifest
// recorded when the repository still has it, or else by pushing the
// published image, downloaded and checked against its sha256.
func (p *pipeline) deliverPublished(ctx context.Context, art storage.Artifact, m *manifest.Manifest) (name.Digest, error) {
	if cd := m.ContainerDisk; cd != nil && cd.Repository == p.OCI.Repository.Name() {
		ref := p.OCI.Repository.Digest(cd.Digest)
		err := p.tagContainerDisk(ctx, ref, art)
		if err == nil {
			return ref, nil
		}
		fmt.Fprintf(p.Stderr, "the published containerDisk %s cannot be tagged (%v): pushing the published image again\n", ref, err)
	}
	work := p.Builder.WorkDir
	if work == "" {
		work = os.TempDir()
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return name.Digest{}, err
	}
	dir, err := os.MkdirTemp(work, "published-")
	if err != nil {
		return name.Digest{}, err
	}
	defer os.RemoveAll(dir)
	local := filepath.Join(dir, m.Name+"."+string(m.Image.Format))
	if err := download(ctx, p.Publisher.Store, art.ImageKey, local, m.Image.SHA256); err != nil {
		return name.Digest{}, fmt.Errorf("downloading the published image to push it: %w", err)
	}
	ref, err := p.pushContainerDisk(ctx, local, m)
	if err != nil {
		return name.Digest{}, err
	}
	return ref, p.tagContainerDisk(ctx, ref, art)
}

// download copies key of store to path and checks its sha256.
func download(ctx context.Context, store storage.Store, key, path, sha string) error {
	rc, _, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	got, _, err := checksum.Copy(f, rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got != sha {
		return errors.Join(storage.ErrChecksumMismatch, fmt.Errorf("%s has sha256 %s, its manifest says %s", key, got, sha))
	}
	return nil
}
