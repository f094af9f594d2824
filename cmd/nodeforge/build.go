package main

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/attest"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/storage"
)

type buildOptions struct {
	file     string
	outDir   string
	cacheDir string
	workDir  string
	noVerify bool
	keepWork bool
	progress string

	// Publishing: --to overrides spec.destination; credentials come from
	// --credentials-dir or the AWS_* environment.
	to             string
	createBucket   bool
	credentialsDir string
	noPublish      bool
	rebuild        bool
	signingKey     string
	presignExpiry  time.Duration
	// --oci overrides spec.destination.oci; credentials come from the
	// user's Docker configuration.
	oci ociFlags
}

func newBuildCmd() *cobra.Command {
	o := &buildOptions{}
	cmd := &cobra.Command{
		Use:   "build -f FILE",
		Short: "Build a node image from a NodeImage YAML file",
		Long: `Build a node image from a NodeImage YAML file (optionally followed, in the
same multi-document file, by the ConfigMaps it refers to). Writes
DIR/<name>.qcow2 (or .raw) and DIR/<name>.json, the build manifest, then
verifies the image and, when the spec has a destination (or --to is given),
publishes it as the next revision of its name. A published artifact of the
same spec digest is found first and nothing is built, unless --rebuild asks
for a new revision of the same spec (to take Debian's updates; see
nodeforge updates). Published revisions are never overwritten.

Runs as root: mmdebstrap builds the root filesystem in root mode. Needs
mmdebstrap, e2fsprogs, fdisk (sfdisk), dosfstools, mtools, grub-pc-bin,
grub-efi-amd64-bin and qemu-utils (hack/image.sh installs them); an arm64
image on an amd64 host also qemu-user-static and arch-test (its binaries
run under binfmt_misc, registered when missing) and, to verify by booting,
qemu-system-arm and qemu-efi-aarch64 (hack/deps.sh installs them).

Publishing reads the endpoint of --to and the credentials from the standard
AWS_* variables (see nodeforge publish --help); with spec.destination.s3 the
endpoint and bucket come from the spec and the credentials from
--credentials-dir (a directory of accessKeyID/secretAccessKey files, as a
mounted Secret) or the environment. An https endpoint trusts the CA in
AWS_CA_BUNDLE when it is set (required when the spec has caSecretRef); a
plain-HTTP one (insecure: true) ignores it. Keys of spec.destination are
scoped to the file's metadata.namespace (default "default"), as the manager
scopes them: NAMESPACE/PREFIX/NAME/DIGEST/REVISION/; a --to URL is taken
literally.

With spec.destination.oci (or --oci REPOSITORY), the verified image is also
pushed to that registry as a KubeVirt containerDisk, by digest before it is
published, and tagged r<REVISION>-<DIGEST> and with the --oci-tag tags
(default: the spec's, else latest) after. The registry credentials are the
Docker configuration of the user running nodeforge (~/.docker/config.json,
DOCKER_CONFIG).

--progress json writes one {"progress":{...}} object per line on stdout,
which is what the builder Pod does for the controller to read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBuild(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.file, "file", "f", "", "NodeImage YAML file (required)")
	f.StringVarP(&o.outDir, "output", "o", "out", "directory for the image and its manifest")
	f.StringVar(&o.cacheDir, "cache-dir", defaultCacheDir(), "package cache kept between builds")
	f.StringVar(&o.workDir, "work-dir", os.TempDir(), "directory for the build's temporary files (about 2× the image content)")
	f.BoolVar(&o.noVerify, "no-verify", false, "skip verification of the built image")
	f.BoolVar(&o.keepWork, "keep-work", false, "keep the work directory (root filesystem tree, raw disk, build log)")
	f.StringVar(&o.progress, "progress", "auto", "progress output: auto, tty, plain or json")
	f.StringVar(&o.to, "to", "", "publish to s3://BUCKET[/PREFIX] (endpoint and credentials from AWS_*), overriding spec.destination")
	f.BoolVar(&o.createBucket, "create-bucket", false, "with --to: create the bucket when it does not exist")
	f.StringVar(&o.credentialsDir, "credentials-dir", "", "with spec.destination: read credentials from this directory instead of AWS_*")
	f.BoolVar(&o.noPublish, "no-publish", false, "do not publish, even when the spec has a destination")
	f.StringVar(&o.signingKey, "signing-key", "", "sign the image, SBOM and provenance with this PEM key (a cosign key: password in COSIGN_PASSWORD); default with spec.destination.signing: cosign.key in --credentials-dir")
	f.BoolVar(&o.rebuild, "rebuild", false, "build and publish a new revision even when the spec digest is published (for package updates)")
	f.DurationVar(&o.presignExpiry, "presign-expiry", 0, "validity of the presigned URL (default: spec.destination.s3.presignExpiry, else 24h)")
	o.oci.register(f, ", overriding spec.destination.oci; needs a publish destination")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// specOCI is dst's oci when the spec's destination is used: neither --to
// nor --no-publish replaces it.
func (o *buildOptions) specOCI(dst *imagev1.DestinationSpec) *imagev1.OCIDestination {
	if dst == nil || o.to != "" || o.noPublish {
		return nil
	}
	return dst.OCI
}

// defaultCacheDir is $NODEFORGE_CACHE/apt-archives (NODEFORGE_CACHE
// defaults to ${XDG_CACHE_HOME:-~/.cache}/nodeforge), shared with make and
// the tests.
func defaultCacheDir() string {
	root := os.Getenv("NODEFORGE_CACHE")
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		root = filepath.Join(base, "nodeforge")
	}
	return filepath.Join(root, "apt-archives")
}

// signer is the key that signs the image and its attestations: --signing-key
// (its password in COSIGN_PASSWORD, as cosign reads it), else, when the spec
// asks for signing, cosign.key and cosign.password in --credentials-dir.
func (o *buildOptions) signer(dst *imagev1.DestinationSpec) (crypto.Signer, error) {
	if o.signingKey != "" {
		key, err := os.ReadFile(o.signingKey)
		if err != nil {
			return nil, fmt.Errorf("--signing-key: %w", err)
		}
		s, err := attest.LoadSigner(key, []byte(os.Getenv("COSIGN_PASSWORD")))
		if err != nil {
			return nil, fmt.Errorf("--signing-key %s: %w", o.signingKey, err)
		}
		return s, nil
	}
	if dst == nil || dst.Signing == nil {
		return nil, nil
	}
	if o.credentialsDir == "" {
		return nil, fmt.Errorf("spec.destination.signing is set: give the key with --signing-key FILE (password in COSIGN_PASSWORD) or --credentials-dir DIR (%s, %s)",
			buildresult.SigningKeyFile, buildresult.SigningPasswordFile)
	}
	return loadSigner(o.credentialsDir, "--credentials-dir "+o.credentialsDir)
}

// loadNodeImage reads a NodeImage file (strictly, defaulted, with the
// ConfigMaps it may hold) and resolves its content.
func loadNodeImage(ctx context.Context, file string) (*imagev1.NodeImage, *imagev1.ImageContent, error) {
	image, get, err := resolve.LoadFile(file)
	if err != nil {
		return nil, nil, err
	}
	content, err := resolve.Content(ctx, &image.Spec.ImageContent, get)
	if err != nil {
		return nil, nil, fmt.Errorf("resolving %s: %w", file, err)
	}
	return image, content, nil
}

func runBuild(ctx context.Context, o *buildOptions, stdout, stderr io.Writer) error {
	image, content, err := loadNodeImage(ctx, o.file)
	if err != nil {
		return err
	}
	pub, expiry, err := o.publisher(image.Spec.Destination, namespaceOf(image))
	if err != nil {
		return err
	}
	signer, err := o.signer(image.Spec.Destination)
	if err != nil {
		return err
	}
	oci, err := o.oci.destination(o.specOCI(image.Spec.Destination), pub)
	if err != nil {
		return err
	}
	p := &pipeline{
		Name:          image.Name,
		Content:       *content,
		Verification:  image.Spec.Verification,
		SkipVerify:    o.noVerify,
		Publisher:     pub,
		PresignExpiry: expiry,
		Rebuild:       o.rebuild,
		Signer:        signer,
		OCI:           oci,
		// The spec's author runs the CLI: file:// key URLs read their files.
		Builder:  builder.Options{WorkDir: o.workDir, OutDir: o.outDir, CacheDir: o.cacheDir, KeepWork: o.keepWork, LocalFiles: true},
		Progress: o.progress,
		Stdout:   stdout,
		Stderr:   stderr,
	}
	start := time.Now()
	res, err := p.run(ctx)
	if err != nil {
		return err
	}
	if o.progress == "json" {
		return json.NewEncoder(stdout).Encode(map[string]any{"result": res.summary()})
	}
	if res.Build != nil {
		fmt.Fprintf(stdout, "built %s in %s\n  image:    %s (%.1f MiB, sha256 %s)\n  manifest: %s\n",
			image.Name, time.Since(start).Round(time.Second), res.Build.ImagePath,
			float64(res.Manifest.Image.Size)/(1<<20), res.Manifest.Image.SHA256, res.Build.ManifestPath)
	}
	if a := res.Published; a != nil {
		fmt.Fprintf(stdout, "  artifact:  %s (revision %d)\n  presigned: %s\n", a.URL, a.Revision, res.Presigned)
	}
	if res.ContainerDisk != "" {
		fmt.Fprintf(stdout, "  containerDisk: %s\n", res.ContainerDisk)
	}
	if res.Build != nil && res.Manifest.Previous != nil {
		prev := res.Manifest.Previous
		changes := prev.Changes.Summary(300)
		if changes == "" {
			changes = "no package changed"
		}
		short := imagev1.DigestHex(prev.SpecDigest)
		if len(short) > 12 {
			short = short[:12]
		}
		fmt.Fprintf(stdout, "  since %s (revision %d): %s\n", short, prev.Revision, changes)
	}
	return nil
}

// namespaceOf is the namespace a NodeImage file's object would be created
// in by kubectl apply without -n: metadata.namespace, else "default".
func namespaceOf(ni *imagev1.NodeImage) string {
	if ni.Namespace != "" {
		return ni.Namespace
	}
	return "default"
}

// publisher returns where the build publishes: --to (its URL taken
// literally), else the spec's destination (its keys scoped to namespace,
// as the manager scopes them), else nowhere.
func (o *buildOptions) publisher(dst *imagev1.DestinationSpec, namespace string) (*storage.Publisher, time.Duration, error) {
	switch {
	case o.credentialsDir != "" && o.to != "":
		return nil, 0, fmt.Errorf("--credentials-dir applies to spec.destination only: with --to the credentials come from %s and %s",
			storage.EnvAccessKeyID, storage.EnvSecretAccessKey)
	case o.createBucket && o.to == "":
		return nil, 0, errors.New("--create-bucket needs --to (for spec.destination, set spec.destination.s3.createBucket)")
	}
	expiry, expiryFrom := o.presignExpiry, "--presign-expiry"
	if expiry == 0 {
		expiry, expiryFrom = imagev1.DefaultPresignExpiry, "default presign expiry"
		if dst != nil && dst.S3 != nil && dst.S3.PresignExpiry != nil {
			expiry, expiryFrom = dst.S3.PresignExpiry.Duration, "spec.destination.s3.presignExpiry"
		}
	}
	if o.noPublish || (o.to == "" && (dst == nil || dst.S3 == nil)) {
		return nil, 0, nil
	}
	// Checked before building: PresignGet runs after the upload.
	if err := checkPresignExpiry(expiryFrom, expiry); err != nil {
		return nil, 0, err
	}
	if o.to != "" {
		pub, _, err := storage.OpenS3URL(o.to, o.createBucket, nil)
		if err != nil {
			return nil, 0, fmt.Errorf("--to %s: %w", o.to, err)
		}
		return pub, expiry, nil
	}
	creds, err := o.credentials()
	if err != nil {
		return nil, 0, err
	}
	ca, err := destinationCA(*dst.S3)
	if err != nil {
		return nil, 0, err
	}
	pub, _, err := storage.OpenDestination(*dst.S3, namespace, creds, ca)
	if err != nil {
		return nil, 0, fmt.Errorf("spec.destination.s3: %w", err)
	}
	return pub, expiry, nil
}

// destinationCA returns the CA bundle for a spec destination on the CLI,
// which has no Secrets to read caSecretRef from: AWS_CA_BUNDLE, whenever it
// is set and the endpoint is https. A plain-HTTP endpoint (insecure: true)
// uses none, so a globally set AWS_CA_BUNDLE does not break it; an https
// endpoint with caSecretRef fails without AWS_CA_BUNDLE instead of
// silently trusting only the system pool.
func destinationCA(d imagev1.S3Destination) ([]byte, error) {
	ep := strings.ToLower(d.Endpoint)
	if strings.HasPrefix(ep, "http://") || (!strings.Contains(ep, "://") && d.Insecure) {
		return nil, nil
	}
	f := os.Getenv(storage.EnvCABundle)
	if f == "" {
		if d.CASecretRef != nil {
			return nil, fmt.Errorf("spec.destination.s3.caSecretRef (%s) is set, but the CLI reads the CA from %s: set it to the PEM file of that CA",
				d.CASecretRef.Name, storage.EnvCABundle)
		}
		return nil, nil
	}
	ca, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", storage.EnvCABundle, err)
	}
	return ca, nil
}

func (o *buildOptions) credentials() (storage.Credentials, error) {
	if o.credentialsDir != "" {
		return storage.CredentialsFromDir(o.credentialsDir)
	}
	c, err := storage.CredentialsFromEnv(os.LookupEnv)
	if err != nil {
		return c, fmt.Errorf("spec.destination.s3 needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --credentials-dir: %w", err)
	}
	return c, nil
}

// newReporter picks the progress output: a live step list on a terminal,
// plain lines otherwise, or JSON lines.
func newReporter(mode string, w io.Writer) (builder.Reporter, func(), error) {
	isTTY := false
	width := 0
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		isTTY = true
		width, _, _ = term.GetSize(int(f.Fd()))
	}
	switch mode {
	case "auto":
		if isTTY {
			mode = "tty"
		} else {
			mode = "plain"
		}
	case "tty", "plain", "json":
	default:
		return nil, nil, fmt.Errorf("--progress: unknown mode %q (want auto, tty, plain or json)", mode)
	}
	switch mode {
	case "tty":
		r := &builder.TerminalReporter{W: w, Width: width}
		return r, r.Close, nil
	case "json":
		return &builder.JSONReporter{W: w}, func() {}, nil
	}
	return &builder.PlainReporter{W: w}, func() {}, nil
}
