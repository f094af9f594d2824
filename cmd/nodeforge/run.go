package main

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/containerdisk"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/verify"
)

type runOptions struct {
	spec           string
	result         string
	scratch        string
	credentialsDir string
	caDir          string
	// updates runs the update check instead of a build.
	updates bool

	// openPublisher and runner replace the destination and the commands
	// the update check runs (mmdebstrap) in tests.
	openPublisher func(*imagev1.DestinationSpec, string) (*storage.Publisher, time.Duration, error)
	runner        builder.Runner
}

// errRunFailed makes the process exit non-zero after the result was
// written; the result says why.
var errRunFailed = errors.New("build failed; see the result")

func newRunCmd() *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run one NodeImageBuild: the builder Pod's entrypoint",
		Long: `Run builds, verifies and publishes the NodeImageBuild in --spec, prints
progress as JSON lines on stdout, and writes the outcome to --result (the
Pod's termination message). The contract with the manager is documented in
internal/buildresult.

With --check-updates it builds nothing: it reads the manifest published for
the spec digest from the destination, compares its installed packages with
the versions a build now would install (as 'nodeforge updates' does), and
writes an update check result to --result: the update check Pod's
entrypoint.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.updates {
				return runCheckUpdates(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			return runRun(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.spec, "spec", buildresult.SpecPath, "the NodeImageBuild, as JSON")
	f.StringVar(&o.result, "result", buildresult.ResultPath, "where the result is written")
	f.StringVar(&o.scratch, "scratch", buildresult.ScratchDir, "work, package cache and output directory")
	f.StringVar(&o.credentialsDir, "credentials-dir", buildresult.CredentialsDir, "the mounted credentials Secret")
	f.StringVar(&o.caDir, "ca-dir", buildresult.CADir, "the mounted CA Secret")
	f.BoolVar(&o.updates, "check-updates", false, "check the published artifact of the spec digest for newer packages instead of building")
	return cmd
}

func runRun(ctx context.Context, o *runOptions, stdout, stderr io.Writer) error {
	res := o.execute(ctx, stdout, stderr)
	b, err := res.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.result, b, 0o644); err != nil {
		return fmt.Errorf("writing the result: %w", err)
	}
	// The same result on stdout, as the line a builder without a
	// termination message (the KubeVirt appliance) relays.
	line, err := buildresult.ResultLine(res)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(line); err != nil {
		return err
	}
	if res.Outcome != buildresult.OutcomeSucceeded {
		return errRunFailed
	}
	return nil
}

// execute runs the build and turns every outcome into a Result.
func (o *runOptions) execute(ctx context.Context, stdout, stderr io.Writer) *buildresult.Result {
	b, err := readBuild(o.spec)
	if err != nil {
		return failed(buildresult.ReasonBuildFailed, "spec", err)
	}
	digest, err := b.Spec.Image.Digest()
	if err != nil {
		return failed(buildresult.ReasonBuildFailed, "spec", err)
	}
	if digest != b.Spec.SpecDigest {
		return failed(buildresult.ReasonBuildFailed, "spec", fmt.Errorf(
			"spec digest %s does not match the content (%s): the manager and this builder (%s) disagree on %s",
			b.Spec.SpecDigest, digest, imagev1.DigestSchema, "how content is addressed"))
	}
	pub, expiry, err := o.publisher(b.Spec.Destination, b.Namespace)
	if err != nil {
		return failed(buildresult.ReasonPublishFailed, "publish", err)
	}
	if r := b.Spec.Builder.RegistryCredentials; r != nil {
		done, err := o.registryConfig(r.Name)
		if err != nil {
			return failed(buildresult.ReasonBuildFailed, "images", err)
		}
		defer done()
	}
	var oci *ociDestination
	if d := b.Spec.Destination; d != nil && d.OCI != nil {
		if oci, err = o.ociDestination(*d.OCI); err != nil {
			return failed(buildresult.ReasonPublishFailed, "lookup", err)
		}
	}
	var signer crypto.Signer
	if d := b.Spec.Destination; d != nil && d.Signing != nil {
		// Before anything is built: a missing or wrong key fails at once.
		if signer, err = loadSigner(o.credentialsDir, "spec.destination.signing.keySecretRef: Secret "+d.Signing.KeySecretRef.Name); err != nil {
			return failed(buildresult.ReasonPublishFailed, "sign", err)
		}
	}
	p := &pipeline{
		Name:          b.Spec.NodeImageName,
		Content:       b.Spec.Image,
		Verification:  b.Spec.Verification,
		Publisher:     pub,
		PresignExpiry: expiry,
		// The spec is unchanged: the build is for what changed around
		// it, so a published revision of the digest is no reason to stop.
		Rebuild:    b.Spec.Reason == imagev1.BuildReasonRebuildRequested || b.Spec.Reason == imagev1.BuildReasonBaseUpdated,
		Invocation: b.Namespace + "/" + b.Name,
		Signer:     signer,
		OCI:        oci,
		Builder: builder.Options{
			WorkDir:  filepath.Join(o.scratch, "work"),
			OutDir:   filepath.Join(o.scratch, "out"),
			CacheDir: filepath.Join(o.scratch, "cache"),
		},
		Progress: "json",
		Stdout:   stdout,
		Stderr:   stderr,
	}
	out, err := p.run(ctx)
	res := resultOf(out)
	if err != nil {
		var se *stageError
		if !errors.As(err, &se) {
			se = &stageError{Reason: buildresult.ReasonBuildFailed, Step: "build", Err: err}
		}
		res.Outcome, res.Reason, res.Step, res.Message = buildresult.OutcomeFailed, se.Reason, se.Step, se.Err.Error()
		return res
	}
	res.Outcome = buildresult.OutcomeSucceeded
	if res.Artifact == nil {
		// Without a destination the image stays on the scratch volume.
		res.Artifact = &buildresult.Artifact{}
	}
	if res.Artifact.SHA256 == "" && out.Manifest != nil {
		res.Artifact.SHA256 = out.Manifest.Image.SHA256
	}
	return res
}

// registryConfig makes the mounted Docker configuration of the registry
// credentials Secret (spec.builder.registryCredentials) the one the builder
// pulls kubernetes.images with: a private copy as config.json in a new
// temp dir named by DOCKER_CONFIG, which go-containerregistry's default
// keychain reads. The builder's /tmp is hidden from every sandboxed
// command. done removes the copy.
func (o *runOptions) registryConfig(secret string) (done func(), err error) {
	raw, err := os.ReadFile(filepath.Join(o.credentialsDir, buildresult.RegistryConfigKey))
	if err != nil {
		return nil, fmt.Errorf("spec.builder.registryCredentials: Secret %s has no %s key (a kubernetes.io/dockerconfigjson Secret): %w",
			secret, buildresult.RegistryConfigKey, err)
	}
	var cfg struct {
		Auths map[string]json.RawMessage `json:"auths"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil || len(cfg.Auths) == 0 {
		return nil, fmt.Errorf("spec.builder.registryCredentials: the %s of Secret %s is not a Docker configuration with auths", buildresult.RegistryConfigKey, secret)
	}
	dir, err := os.MkdirTemp("", "nodeforge-registry-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	old, had := os.LookupEnv("DOCKER_CONFIG")
	if err := os.Setenv("DOCKER_CONFIG", dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return func() {
		if had {
			_ = os.Setenv("DOCKER_CONFIG", old)
		} else {
			_ = os.Unsetenv("DOCKER_CONFIG")
		}
		os.RemoveAll(dir)
	}, nil
}

// ociDestination opens spec.destination.oci with the mounted push
// credentials (buildresult.PushConfigFile) and registry CA
// (buildresult.PushCAFile), when it names their Secrets.
func (o *runOptions) ociDestination(d imagev1.OCIDestination) (*ociDestination, error) {
	var cfg []byte
	if r := d.CredentialsSecretRef; r != nil {
		var err error
		if cfg, err = os.ReadFile(filepath.Join(o.credentialsDir, buildresult.PushConfigFile)); err != nil {
			return nil, fmt.Errorf("spec.destination.oci.credentialsSecretRef: Secret %s has no %s key (a kubernetes.io/dockerconfigjson Secret)",
				r.Name, buildresult.RegistryConfigKey)
		}
	}
	var tr http.RoundTripper
	if r := d.CASecretRef; r != nil {
		ca, err := os.ReadFile(filepath.Join(o.credentialsDir, buildresult.PushCAFile))
		if err != nil {
			return nil, fmt.Errorf("spec.destination.oci.caSecretRef: Secret %s has no %s key", r.Name, buildresult.CAKey)
		}
		if tr, err = containerdisk.TransportWithCA(ca); err != nil {
			return nil, fmt.Errorf("spec.destination.oci.caSecretRef: Secret %s key %s: %w", r.Name, buildresult.CAKey, err)
		}
	}
	return openOCI("spec.destination.oci", d, cfg, tr)
}

func readBuild(path string) (*imagev1.NodeImageBuild, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var b imagev1.NodeImageBuild
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	if b.Spec.NodeImageName == "" {
		return nil, fmt.Errorf("%s: spec.nodeImageName is empty", path)
	}
	if refs := b.Spec.Image.References(); len(refs) > 0 {
		return nil, fmt.Errorf("%s: unresolved references: %s", path, strings.Join(refs, ", "))
	}
	return &b, nil
}

// publisher opens the build's destination with the mounted Secrets, its
// keys scoped to the build's namespace.
func (o *runOptions) publisher(dst *imagev1.DestinationSpec, namespace string) (*storage.Publisher, time.Duration, error) {
	if dst == nil || dst.S3 == nil {
		return nil, 0, nil
	}
	d := *dst.S3
	d.Default()
	// The API sets no maximum; PresignGet would fail after the upload.
	if err := checkPresignExpiry("spec.destination.s3.presignExpiry", d.PresignExpiry.Duration); err != nil {
		return nil, 0, err
	}
	creds, err := storage.CredentialsFromDir(o.credentialsDir)
	if err != nil {
		return nil, 0, fmt.Errorf("credentials Secret %s: %w", d.CredentialsSecretRef.Name, err)
	}
	var ca []byte
	if d.CASecretRef != nil {
		if ca, err = os.ReadFile(filepath.Join(o.caDir, buildresult.CAKey)); err != nil {
			return nil, 0, fmt.Errorf("CA Secret %s: %w", d.CASecretRef.Name, err)
		}
	}
	pub, _, err := storage.OpenDestination(d, namespace, creds, ca)
	if err != nil {
		return nil, 0, err
	}
	return pub, d.PresignExpiry.Duration, nil
}

func failed(reason, step string, err error) *buildresult.Result {
	return &buildresult.Result{Outcome: buildresult.OutcomeFailed, Reason: reason, Step: step, Message: err.Error()}
}

// resultOf fills a Result's artifact and verification from what the
// pipeline produced so far.
func resultOf(out *pipelineResult) *buildresult.Result {
	res := &buildresult.Result{}
	if out == nil {
		return res
	}
	if m := out.Manifest; m != nil {
		res.Artifact = &buildresult.Artifact{SHA256: m.Image.SHA256, Size: m.Image.Size,
			VirtualSize: m.Image.VirtualSize, Format: string(m.Image.Format)}
		if p := m.Previous; p != nil {
			c := p.Changes
			res.Changes = &buildresult.Changes{Previous: p.SpecDigest,
				Upgraded: int32(len(c.Upgraded)), Downgraded: int32(len(c.Downgraded)),
				Added: int32(len(c.Added)), Removed: int32(len(c.Removed)),
				Summary: c.Summary(buildresult.ChangesSummaryLimit)}
		}
	}
	if a := out.Published; a != nil && res.Artifact != nil {
		res.Artifact.URL, res.Artifact.PresignedURL = a.URL, out.Presigned
		res.Artifact.ManifestURL = out.ManifestURL
		res.Artifact.Revision = int32(a.Revision)
		res.Artifact.ContainerDisk = out.ContainerDisk
		for name := range a.CompanionKeys {
			res.Artifact.Companions = append(res.Artifact.Companions, name)
		}
		slices.Sort(res.Artifact.Companions)
	}
	if r := out.Report; r != nil {
		v := &buildresult.Verification{Passed: int32(r.Summary.Passed), Failed: int32(r.Summary.Failed), Skipped: int32(r.Summary.Skipped)}
		for _, c := range r.RequiredFailures() {
			v.FailedChecks = append(v.FailedChecks, c.Name)
		}
		for _, c := range r.Checks {
			e := buildresult.CheckEntry{Name: c.Name, Category: string(c.Category), Passed: c.Passed, Skipped: c.Skipped, Required: c.Required}
			// Offline checks take milliseconds; the boot's and the
			// cluster's durations are what status readers look at, and the
			// termination message has room for those only.
			if c.Category != verify.Offline {
				e.Duration = time.Duration(c.DurationSeconds * float64(time.Second))
			}
			v.Checks = append(v.Checks, buildresult.EncodeCheck(e))
		}
		res.Verification, res.Accelerator, res.AcceleratorNote = v, r.Accelerator, r.AcceleratorNote
	}
	return res
}
