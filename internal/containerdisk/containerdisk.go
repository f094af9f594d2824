// Package containerdisk publishes a node image to an OCI registry as a
// KubeVirt containerDisk: a single-layer image whose only file is the qcow2
// under /disk/, owned by the qemu user (107:107) KubeVirt runs guests as.
// KubeVirt VMs boot it as a containerDisk volume, Cluster API's KubeVirt
// provider takes it as a machine template's disk, and CDI imports it into
// a PVC (a DataVolume with a registry source, or a DataImportCron that
// polls a tag).
//
// A push happens in two phases, so that a consumer following a tag never
// sees a half-written image: Push uploads the layer, the config and the
// manifest and addresses the result by its digest only; Tag then points
// tags at that digest, each a single manifest PUT of bytes the registry
// already holds. A registry that fails or dies during Push leaves every tag
// where it was, and the retry uploads what is missing.
package containerdisk

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nodeforge/nodeforge/internal/capool"
)

// DiskDir is where KubeVirt and CDI look for the disk in the image.
const DiskDir = "/disk"

// layerDir is DiskDir as the layer's tar names it.
const layerDir = "disk/"

// QEMUID is the user and group id KubeVirt's virt-launcher runs QEMU as;
// the disk belongs to it and is readable by it only (0440).
const QEMUID = 107

// Image returns the containerDisk of the disk image at diskPath, stored as
// DiskDir/fileName, for the Debian architecture arch (amd64, arm64). The
// layer is read from diskPath each time it is needed (digest, upload), not
// held in memory, and compressed with gzip at its fastest level: a qcow2 is
// compressed already, and every consumer reads gzip layers.
func Image(diskPath, fileName, arch string, created time.Time) (v1.Image, error) {
	if fileName == "" || strings.ContainsRune(fileName, '/') {
		return nil, fmt.Errorf("disk file name %q: must be a plain file name", fileName)
	}
	fi, err := os.Stat(diskPath)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", diskPath)
	}
	size, mtime := fi.Size(), created.UTC()
	opener := func() (io.ReadCloser, error) { return diskTar(diskPath, fileName, size, mtime) }
	layer, err := tarball.LayerFromOpener(opener,
		tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(emptyOCIImage(), mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: mtime}, CreatedBy: "nodeforge: " + path.Join(DiskDir, fileName), Comment: "KubeVirt containerDisk"},
	})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Created = "linux", arch, v1.Time{Time: mtime}
	return mutate.ConfigFile(img, cfg)
}

// emptyOCIImage is an image without layers in OCI media types, which
// KubeVirt, CDI and cosign all read.
func emptyOCIImage() v1.Image {
	return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
}

// diskTar streams a tar of DiskDir and the disk in it. Its bytes depend on
// the disk's contents, name, size and mtime only, so the layer's digest is
// the same every time it is made.
func diskTar(diskPath, fileName string, size int64, mtime time.Time) (io.ReadCloser, error) {
	f, err := os.Open(diskPath)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		defer f.Close()
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerDir, Mode: 0o555,
			Uid: QEMUID, Gid: QEMUID, ModTime: mtime, Format: tar.FormatPAX})
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: layerDir + fileName, Mode: 0o440,
				Uid: QEMUID, Gid: QEMUID, Size: size, ModTime: mtime, Format: tar.FormatPAX})
		}
		if err == nil {
			var n int64
			n, err = io.Copy(tw, f)
			if err == nil && n != size {
				err = fmt.Errorf("%s changed while it was read (%d bytes, expected %d)", diskPath, n, size)
			}
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// ReadDisk copies the disk of the containerDisk img to w, as KubeVirt
// finds it: the one regular file under DiskDir in the image's one layer.
// It returns the file's tar header (name, owner, mode, size).
func ReadDisk(img v1.Image, w io.Writer) (*tar.Header, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	if len(layers) != 1 {
		return nil, fmt.Errorf("a containerDisk has one layer, this image %d", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var disk *tar.Header
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch {
		case h.Typeflag == tar.TypeDir && h.Name == layerDir:
		case h.Typeflag == tar.TypeReg && path.Dir(h.Name)+"/" == layerDir && disk == nil:
			if _, err := io.Copy(w, tr); err != nil {
				return nil, err
			}
			disk = h
		default:
			return nil, fmt.Errorf("unexpected %s in the containerDisk (only %s and one disk in it)", h.Name, layerDir)
		}
	}
	if disk == nil {
		return nil, fmt.Errorf("no disk under %s", DiskDir)
	}
	return disk, nil
}

// Target is a repository and how to reach it.
type Target struct {
	// Repository is host[:port]/path, without tag or digest.
	Repository name.Repository
	// Keychain authenticates to the registry (Anonymous when nil).
	Keychain authn.Keychain
	// Transport, when set, replaces the default HTTP transport (a CA
	// bundle, tests).
	Transport http.RoundTripper
}

// ParseRepository parses a repository reference, host[:port]/path, with no
// tag or digest. insecure allows plain HTTP.
func ParseRepository(repo string, insecure bool) (name.Repository, error) {
	opts := []name.Option{name.StrictValidation}
	if insecure {
		opts = append(opts, name.Insecure)
	}
	if strings.ContainsAny(repo, "@") || strings.Contains(repo[strings.LastIndex(repo, "/")+1:], ":") {
		return name.Repository{}, fmt.Errorf("repository %q: name the repository only, without a tag or digest", repo)
	}
	if !strings.Contains(repo, "/") {
		return name.Repository{}, fmt.Errorf("repository %q: must start with the registry's host (host[:port]/path)", repo)
	}
	r, err := name.NewRepository(repo, opts...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("repository %q: %w", repo, err)
	}
	return r, nil
}

// tagPattern is a tag as the OCI distribution specification defines it.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ValidateTag reports whether tag is a valid OCI tag.
func ValidateTag(tag string) error {
	if !tagPattern.MatchString(tag) {
		return fmt.Errorf("tag %q: must match %s", tag, tagPattern)
	}
	return nil
}

// keychain is the target's Keychain, anonymous when unset.
func (t Target) keychain() authn.Keychain {
	if t.Keychain == nil {
		return authn.NewMultiKeychain()
	}
	return t.Keychain
}

// TransportWithCA is the default registry transport trusting the CAs of
// the PEM bundle caPEM besides the system's, for a registry whose
// certificate a private CA signs.
func TransportWithCA(caPEM []byte) (http.RoundTripper, error) {
	pool, err := capool.New(caPEM)
	if err != nil {
		return nil, err
	}
	base, ok := remote.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("go-containerregistry's default transport is a %T, not an *http.Transport", remote.DefaultTransport)
	}
	tr := base.Clone()
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr.TLSClientConfig.RootCAs = pool
	return tr, nil
}

func (t Target) options(ctx context.Context, progress chan<- v1.Update) []remote.Option {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(t.keychain()), remote.WithUserAgent("nodeforge")}
	if t.Transport != nil {
		opts = append(opts, remote.WithTransport(t.Transport))
	}
	if progress != nil {
		opts = append(opts, remote.WithProgress(progress))
	}
	return opts
}

// CheckPush fails when the target's credentials may not push to its
// repository: a quick check before minutes of building.
func (t Target) CheckPush(ctx context.Context) error {
	kc := t.keychain()
	tr := t.Transport
	if tr == nil {
		tr = remote.DefaultTransport
	}
	// CheckPushPermission takes no context: ctx bounds the wait for it.
	ref := t.Repository.Tag("nodeforge-check")
	done := make(chan error, 1)
	go func() { done <- remote.CheckPushPermission(ref, kc, tr) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("no push access to %s: %w", t.Repository, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Push uploads img to the target's repository, addressed by its digest
// alone: no tag moves. progress, when not nil, receives upload updates
// and is closed when Push returns.
func (t Target) Push(ctx context.Context, img v1.Image, progress chan<- v1.Update) (name.Digest, error) {
	d, err := img.Digest()
	if err != nil {
		if progress != nil {
			close(progress)
		}
		return name.Digest{}, err
	}
	ref := t.Repository.Digest(d.String())
	if err := remote.Write(ref, img, t.options(ctx, progress)...); err != nil {
		return name.Digest{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	return ref, nil
}

// Tag points each tag of the target's repository at the manifest digest,
// which must have been pushed there. Tags already at it are left alone.
func (t Target) Tag(ctx context.Context, digest name.Digest, tags ...string) error {
	opts := t.options(ctx, nil)
	desc, err := remote.Get(digest, opts...)
	if err != nil {
		return fmt.Errorf("reading %s: %w", digest, err)
	}
	for _, tag := range tags {
		ref := t.Repository.Tag(tag)
		if cur, err := remote.Head(ref, opts...); err == nil && cur.Digest == desc.Digest {
			continue
		}
		if err := remote.Tag(ref, desc, opts...); err != nil {
			return fmt.Errorf("tagging %s as %s: %w", digest.DigestStr(), ref, err)
		}
	}
	return nil
}

// Signatures are stored as cosign stores them, so that `cosign verify
// --key cosign.pub REPOSITORY@DIGEST` finds and checks them.
const (
	// SignatureMediaType is the media type of a signature image's layer:
	// the signed payload itself.
	SignatureMediaType types.MediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation is the layer annotation that holds the
	// signature, base64.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// signatureType is the payload's critical.type.
	signatureType = "cosign container image signature"
)

// SignaturePayload is what a signature of the image at ref signs: a
// "simple signing" document (the containers-signature JSON format) naming
// the repository and the manifest digest.
func SignaturePayload(ref name.Digest) ([]byte, error) {
	var doc struct {
		Critical struct {
			Identity struct {
				DockerReference string `json:"docker-reference"`
			} `json:"identity"`
			Image struct {
				DockerManifestDigest string `json:"docker-manifest-digest"`
			} `json:"image"`
			Type string `json:"type"`
		} `json:"critical"`
		Optional map[string]string `json:"optional"`
	}
	doc.Critical.Identity.DockerReference = ref.Context().Name()
	doc.Critical.Image.DockerManifestDigest = ref.DigestStr()
	doc.Critical.Type = signatureType
	return json.Marshal(doc)
}

// SignatureTag is the tag under which cosign looks for the signatures of
// the manifest digest: sha256-HEX.sig.
func SignatureTag(digest string) string {
	return strings.Replace(digest, ":", "-", 1) + ".sig"
}

// PushSignature stores signature (base64, over payload, which names ref)
// in the target's repository at ref's SignatureTag: an image whose one
// layer is payload, with the signature in its SignatureAnnotation. An
// earlier signature image at that tag is replaced.
func (t Target) PushSignature(ctx context.Context, ref name.Digest, payload, signature []byte) error {
	layer := static.NewLayer(payload, SignatureMediaType)
	img, err := mutate.Append(emptyOCIImage(), mutate.Addendum{Layer: layer, Annotations: map[string]string{SignatureAnnotation: string(signature)}})
	if err != nil {
		return err
	}
	tag := t.Repository.Tag(SignatureTag(ref.DigestStr()))
	if err := remote.Write(tag, img, t.options(ctx, nil)...); err != nil {
		return fmt.Errorf("pushing the signature of %s: %w", ref.DigestStr(), err)
	}
	return nil
}

// Resolve returns the digest a tag of the target's repository points at.
func (t Target) Resolve(ctx context.Context, tag string) (v1.Hash, error) {
	desc, err := remote.Head(t.Repository.Tag(tag), t.options(ctx, nil)...)
	if err != nil {
		return v1.Hash{}, err
	}
	return desc.Digest, nil
}

// Keychain reads a Docker configuration (a kubernetes.io/dockerconfigjson
// Secret's .dockerconfigjson, or ~/.docker/config.json): its auths, by
// registry host. Credential helpers are not run.
func Keychain(dockerConfig []byte) (authn.Keychain, error) {
	cf, err := config.LoadFromReader(strings.NewReader(string(dockerConfig)))
	if err != nil {
		return nil, fmt.Errorf("not a Docker configuration: %w", err)
	}
	if len(cf.AuthConfigs) == 0 {
		return nil, errors.New("the Docker configuration has no auths")
	}
	return dockerKeychain{cf}, nil
}

type dockerKeychain struct{ cf *configfile.ConfigFile }

func (k dockerKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	key := target.RegistryStr()
	if key == name.DefaultRegistry {
		key = authn.DefaultAuthKey
	}
	// Entries may be keyed host, https://host or https://host/v1/.
	for _, k2 := range []string{key, "https://" + key, "http://" + key, "https://" + key + "/v1/"} {
		if ac, ok := k.cf.AuthConfigs[k2]; ok {
			if ac.Username == "" && ac.Password == "" && ac.Auth != "" {
				// config.LoadFromReader decodes auth; an entry it could not
				// decode keeps it, and authn decodes it again.
				return authn.FromConfig(authn.AuthConfig{Auth: ac.Auth}), nil
			}
			return authn.FromConfig(authn.AuthConfig{Username: ac.Username, Password: ac.Password,
				IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}), nil
		}
	}
	return authn.Anonymous, nil
}
