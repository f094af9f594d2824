package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/nodeforge/nodeforge/internal/attest"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
)

type publishOptions struct {
	manifestPath  string
	to            string
	createBucket  bool
	presignExpiry time.Duration
	oci           ociFlags
}

func newPublishCmd() *cobra.Command {
	o := publishOptions{}
	cmd := &cobra.Command{
		Use:   "publish IMAGE --to s3://BUCKET/PREFIX",
		Short: "Upload a built image, its checksum and manifest to S3-compatible storage",
		Long: `Publish uploads an image built earlier as the next revision of its name,
to PREFIX/NAME/DIGEST/REVISION/ in the bucket, with a NAME.qcow2.sha256 file
and the build manifest, verifies size and checksum of the upload, and only
then moves the NAME/latest pointer. Revisions number every publish of NAME
(1, 2, 3, ...); a published revision is never written again.

The endpoint and credentials come from the standard environment variables:
AWS_ENDPOINT_URL (required; an http:// URL allows plain HTTP), AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_CA_BUNDLE.

With --oci REPOSITORY the image is also pushed there as a KubeVirt
containerDisk: by digest before the upload, then tagged r<REVISION>-<DIGEST>
and with the --oci-tag tags (default latest) once the revision is
published. The registry credentials are the Docker configuration of the
user running nodeforge (~/.docker/config.json, DOCKER_CONFIG).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPublish(cmd.Context(), args[0], o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.manifestPath, "manifest", "", "build manifest (default: IMAGE with .json instead of its extension)")
	f.StringVar(&o.to, "to", "", "destination, s3://BUCKET[/PREFIX]")
	f.BoolVar(&o.createBucket, "create-bucket", false, "create the bucket when it does not exist")
	f.DurationVar(&o.presignExpiry, "presign-expiry", 24*time.Hour, "validity of the printed presigned download URL (at most 168h)")
	o.oci.register(f, "")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func runPublish(ctx context.Context, image string, o publishOptions, stdout, stderr io.Writer) error {
	if o.manifestPath == "" {
		o.manifestPath = strings.TrimSuffix(image, filepath.Ext(image)) + ".json"
	}
	if err := checkPresignExpiry("--presign-expiry", o.presignExpiry); err != nil {
		return err
	}
	if _, err := os.Stat(image); err != nil {
		return err
	}
	m, raw, err := readManifest(o.manifestPath)
	if err != nil {
		return err
	}
	pub, _, err := storage.OpenS3URL(o.to, o.createBucket, nil)
	if err != nil {
		return fmt.Errorf("--to %s: %w", o.to, err)
	}
	oci, err := o.oci.destination(nil, pub)
	if err != nil {
		return err
	}
	companions, err := attestations(m, attest.Run{})
	if err != nil {
		return err
	}
	// As a build publishes (pipeline.run): the containerDisk by digest,
	// recorded in the manifest, then the revision, then the tags.
	p := &pipeline{OCI: oci, Stderr: stderr}
	var disk name.Digest
	if oci != nil {
		if disk, err = p.pushContainerDisk(ctx, image, m); err != nil {
			return err
		}
		// The manifest file records it too, as a build's does.
		if raw, err = m.Store(o.manifestPath); err != nil {
			return err
		}
	}
	art, presigned, err := publishImage(ctx, pub, image, m, raw, companions, o.presignExpiry, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "artifact:  %s\nrevision:  %d\nsha256:    %s\nsize:      %d\nmanifest:  %s\npresigned: %s\n",
		art.URL, art.Revision, art.SHA256, art.Size, pub.Store.URL(art.ManifestKey), presigned)
	if oci != nil {
		if err := p.tagContainerDisk(ctx, disk, art); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "containerDisk: %s\n", disk)
	}
	return nil
}

// checkPresignExpiry rejects an expiry S3 cannot presign (1s to 7 days),
// so that it fails before anything is built or uploaded; what names the
// setting.
func checkPresignExpiry(what string, d time.Duration) error {
	if d < time.Second || d > 7*24*time.Hour {
		return fmt.Errorf("%s %s: must be between 1s and 168h", what, d)
	}
	return nil
}

// readManifest returns the build manifest at path, parsed and as stored.
func readManifest(path string) (*manifest.Manifest, []byte, error) {
	m, err := manifest.Read(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the build manifest: %w", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return m, raw, nil
}

// publishImage uploads image and its build manifest (m, stored as raw) with
// pub, reporting progress on w, and returns the artifact and a presigned
// download URL. The sha256 the manifest records is what the upload is
// verified against.
func publishImage(ctx context.Context, pub *storage.Publisher, image string, m *manifest.Manifest, raw []byte, companions []storage.Companion, expiry time.Duration, w io.Writer) (storage.Artifact, string, error) {
	progress := newUploadProgress(w, filepath.Base(image))
	art, err := pub.Publish(ctx, storage.PublishInput{
		Name:       m.Name,
		SpecDigest: m.SpecDigest,
		ImagePath:  image,
		Format:     string(m.Image.Format),
		SHA256:     m.Image.SHA256,
		Manifest:   raw,
		Companions: companions,
		Progress:   progress.update,
	})
	progress.done(err)
	if err != nil {
		if errors.Is(err, storage.ErrChecksumMismatch) {
			return storage.Artifact{}, "", fmt.Errorf("publishing %s: the image does not match the sha256 in its manifest (was it rebuilt?): %w", image, err)
		}
		return storage.Artifact{}, "", fmt.Errorf("publishing %s: %w", image, err)
	}
	presigned, err := pub.Store.PresignGet(ctx, art.ImageKey, expiry)
	if err != nil {
		return art, "", fmt.Errorf("presigning %s: %w", art.ImageKey, err)
	}
	return art, presigned, nil
}

// uploadProgress prints one line per 10% of an upload.
type uploadProgress struct {
	w     io.Writer
	name  string
	last  int64
	start time.Time
}

func newUploadProgress(w io.Writer, name string) *uploadProgress {
	return &uploadProgress{w: w, name: name, last: -1, start: time.Now()}
}

func (p *uploadProgress) update(done, total int64) {
	if total <= 0 {
		return
	}
	pct := done * 100 / total
	if pct/10 == p.last/10 && pct != 100 {
		return
	}
	p.last = pct
	fmt.Fprintf(p.w, "uploading %s: %3d%% (%d/%d MiB)\n", p.name, pct, done>>20, total>>20)
}

func (p *uploadProgress) done(err error) {
	if err == nil {
		fmt.Fprintf(p.w, "uploaded %s in %s\n", p.name, time.Since(p.start).Round(time.Millisecond))
	}
}
