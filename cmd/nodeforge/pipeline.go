package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/attest"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/verify"
)

// pipeline is one build → verify → publish run, shared by `nodeforge build`
// on a workstation and `nodeforge run` in the builder Pod.
type pipeline struct {
	// Name of the image (the NodeImage's name).
	Name string
	// Content is resolved and defaulted.
	Content imagev1.ImageContent
	// Verification selects the checks; Skip disables them all.
	Verification imagev1.VerificationSpec
	SkipVerify   bool
	// Publisher, when set, receives the verified image. A published
	// artifact of the same spec digest is found before building, and the
	// build is skipped, unless Rebuild is set.
	Publisher     *storage.Publisher
	PresignExpiry time.Duration
	// Rebuild builds and publishes a new revision even when the spec
	// digest is published: a requested rebuild, or one for Debian updates.
	Rebuild bool
	// Invocation names the run in the provenance (the NodeImageBuild's
	// namespace/name in a cluster).
	Invocation string
	// Signer, when set, signs the image and its attestations.
	Signer crypto.Signer
	// OCI, when set with Publisher, also receives the verified image as a
	// KubeVirt containerDisk: pushed by digest before the publish, tagged
	// after it.
	OCI *ociDestination

	Builder  builder.Options
	Progress string // auto, tty, plain or json
	Stdout   io.Writer
	Stderr   io.Writer
}

// pipelineResult is what a pipeline produced.
type pipelineResult struct {
	// Reused is true when a published artifact of the same digest was
	// found and nothing was built.
	Reused    bool
	Build     *builder.Result
	Report    *verify.Report
	Published *storage.Artifact
	Presigned string
	// ManifestURL is the published manifest's URL.
	ManifestURL string
	// ContainerDisk is the image in the OCI destination, by digest.
	ContainerDisk string
	Manifest      *manifest.Manifest
	// Attestations are the local SBOM and provenance files.
	Attestations []string
}

// stageError is a pipeline failure with the builder contract's reason.
type stageError struct {
	Reason string // buildresult.Reason*
	Step   string
	Err    error
}

func (e *stageError) Error() string { return e.Err.Error() }
func (e *stageError) Unwrap() error { return e.Err }

func (p *pipeline) run(ctx context.Context) (*pipelineResult, error) {
	start := time.Now()
	digest, err := p.Content.Digest()
	if err != nil {
		return nil, &stageError{Reason: buildresult.ReasonBuildFailed, Step: "resolve", Err: err}
	}
	if !p.SkipVerify {
		// A misspelled optional/skip name fails now, not after the build.
		vspec := p.Verification
		vspec.Default()
		if err := verify.CheckSelection(p.Content, verify.OptionsFromSpec(vspec)); err != nil {
			return nil, &stageError{Reason: buildresult.ReasonVerificationFailed, Step: "verify", Err: err}
		}
	}
	if p.Publisher != nil {
		if err := p.Publisher.EnsureDestination(ctx); err != nil {
			return nil, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "lookup", Err: fmt.Errorf("checking the destination: %w", err)}
		}
		if p.OCI != nil {
			// Wrong credentials or a typo in the repository fail now, not
			// after the build.
			if err := p.OCI.CheckPush(ctx); err != nil {
				return nil, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "lookup", Err: fmt.Errorf("checking the OCI destination: %w", err)}
			}
		}
		art, err := p.Publisher.Lookup(ctx, p.Name, digest)
		switch {
		case p.Rebuild:
			if err == nil {
				fmt.Fprintf(p.Stderr, "%s is published for spec digest %s as revision %d: rebuilding as a new revision\n", p.Name, digest, art.Revision)
			}
		case err == nil:
			fmt.Fprintf(p.Stderr, "%s is already published for spec digest %s: nothing to build\n", p.Name, digest)
			return p.reuse(ctx, art)
		case !errors.Is(err, storage.ErrNotFound):
			return nil, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "lookup", Err: fmt.Errorf("looking for a published artifact: %w", err)}
		}
	}

	rep, closeRep, err := newReporter(p.Progress, p.Stdout)
	if err != nil {
		return nil, err
	}
	opts := p.Builder
	opts.Name, opts.Reporter = p.Name, rep
	res, err := builder.Build(ctx, opts, p.Content)
	closeRep()
	if err != nil {
		step := "build"
		var se *builder.StepError
		if errors.As(err, &se) {
			step = se.Step
		}
		return nil, &stageError{Reason: buildresult.ReasonBuildFailed, Step: step, Err: fmt.Errorf("building %s: %w", p.Name, err)}
	}
	out := &pipelineResult{Build: res, Manifest: res.Manifest}

	if !p.SkipVerify {
		report, err := p.verify(ctx, res)
		if report != nil {
			// The manifest records the outcome, passed or not.
			res.Manifest.Verification = report
			out.Report = report
			if werr := res.Manifest.Write(res.ManifestPath); werr != nil {
				return out, &stageError{Reason: buildresult.ReasonBuildFailed, Step: "manifest", Err: werr}
			}
		}
		if err != nil {
			return out, &stageError{Reason: buildresult.ReasonVerificationFailed, Step: "verify",
				Err: fmt.Errorf("verifying %s: %w", res.ImagePath, err)}
		}
	}

	// The SBOM and the provenance describe the image as built and
	// verified; they are written next to it and published with it.
	companions, err := attestations(res.Manifest, attest.Run{InvocationID: p.Invocation, StartedOn: start, FinishedOn: time.Now()})
	if err == nil && p.Signer != nil {
		var sigs []storage.Companion
		if sigs, err = signatures(p.Signer, res.Manifest, companions); err == nil {
			companions = append(companions, sigs...)
		}
	}
	if err == nil {
		out.Attestations, err = writeCompanions(filepath.Dir(res.ImagePath), companions)
	}
	if err != nil {
		return out, &stageError{Reason: buildresult.ReasonBuildFailed, Step: "attest", Err: err}
	}

	if p.Publisher != nil {
		// The containerDisk goes first, by digest, so that the published
		// manifest records it; its tags move only once the revision is
		// published.
		var disk name.Digest
		if p.OCI != nil {
			if disk, err = p.pushContainerDisk(ctx, res.ImagePath, res.Manifest); err != nil {
				return out, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "push", Err: err}
			}
			out.ContainerDisk = disk.String()
		}
		p.recordPrevious(ctx, res.Manifest)
		// The manifest is complete: published as the file beside the
		// image holds it.
		raw, err := res.Manifest.Store(res.ManifestPath)
		if err != nil {
			return out, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "publish", Err: err}
		}
		art, presigned, err := publishImage(ctx, p.Publisher, res.ImagePath, res.Manifest, raw, companions, p.PresignExpiry, p.Stderr)
		if err != nil {
			return out, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "publish", Err: err}
		}
		out.Published, out.Presigned = &art, presigned
		out.ManifestURL = p.Publisher.Store.URL(art.ManifestKey)
		if p.OCI != nil {
			if err := p.tagContainerDisk(ctx, disk, art); err != nil {
				return out, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "tag", Err: err}
			}
		}
	}
	return out, nil
}

// recordPrevious records in m, the new image's manifest, which image was
// published under the same name before it (the latest pointer) and how the
// packages changed since. Nothing published yet: nothing to record. A
// pointer or manifest that cannot be read (deleted or damaged by hand) is
// reported and the image published without it (publishing writes a new
// pointer): it must not keep every later image from being published.
func (p *pipeline) recordPrevious(ctx context.Context, m *manifest.Manifest) {
	ptr, err := p.Publisher.Latest(ctx, p.Name)
	if errors.Is(err, storage.ErrNotFound) {
		return
	}
	var prev *manifest.Manifest
	if err == nil {
		prev, err = p.readPublishedManifest(ctx, ptr.ManifestKey)
	}
	if err != nil {
		fmt.Fprintf(p.Stderr, "warning: the previously published image of %s cannot be read, so this one records no package changes: %v\n", p.Name, err)
		return
	}
	m.Previous = &manifest.Previous{SpecDigest: prev.SpecDigest, Revision: ptr.Revision, SHA256: prev.Image.SHA256, CreatedAt: prev.CreatedAt,
		Changes: manifest.DiffPackages(prev.Packages, m.Packages)}
}

func (p *pipeline) readPublishedManifest(ctx context.Context, key string) (*manifest.Manifest, error) {
	rc, _, err := p.Publisher.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return manifest.Decode(rc)
}

// reuse loads the manifest of an already published artifact.
func (p *pipeline) reuse(ctx context.Context, art storage.Artifact) (*pipelineResult, error) {
	out := &pipelineResult{Reused: true, Published: &art, ManifestURL: p.Publisher.Store.URL(art.ManifestKey)}
	m, err := p.readPublishedManifest(ctx, art.ManifestKey)
	if err != nil {
		return nil, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "lookup", Err: err}
	}
	out.Manifest, out.Report = m, m.Verification
	if out.Presigned, err = p.Publisher.Store.PresignGet(ctx, art.ImageKey, p.PresignExpiry); err != nil {
		return nil, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "lookup", Err: err}
	}
	if p.OCI != nil {
		ref, err := p.deliverPublished(ctx, art, m)
		if err != nil {
			return nil, &stageError{Reason: buildresult.ReasonPublishFailed, Step: "tag", Err: err}
		}
		out.ContainerDisk = ref.String()
	}
	return out, nil
}

// verify runs internal/verify on a freshly built image: the offline checks
// and, when enabled, the QEMU boot test. It returns the report, and an
// error when a required check failed.
func (p *pipeline) verify(ctx context.Context, res *builder.Result) (*verify.Report, error) {
	vspec := p.Verification
	vspec.Default()
	opts := verify.OptionsFromSpec(vspec)
	opts.WorkDir = p.Builder.WorkDir
	if p.Progress != "json" {
		fmt.Fprintf(p.Stderr, "verifying %s (boot test: %t)\n", res.ImagePath, opts.Boot)
	}
	opts.Progress = checkProgress(p.Progress == "json", false, p.Stdout, p.Stderr)
	r, err := verify.Verify(ctx, res.ImagePath, p.Content, opts)
	if err != nil {
		return nil, err
	}
	if p.Progress != "json" {
		fmt.Fprintf(p.Stderr, "verification: %d passed, %d failed, %d skipped\n", r.Summary.Passed, r.Summary.Failed, r.Summary.Skipped)
	}
	if fails := r.RequiredFailures(); len(fails) > 0 {
		names := make([]string, 0, len(fails))
		for _, c := range fails {
			names = append(names, c.Name)
		}
		return r, fmt.Errorf("%d required check(s) failed: %s", len(fails), strings.Join(names, ", "))
	}
	return r, nil
}

// checkProgress reports each check as it ends: as a progress event on
// stdout (asJSON, the builder Pod's protocol) or a line on stderr (with
// quiet, failed checks only). Why a check failed always goes to stderr,
// in full, so that it is in the builder Pod's log (kubectl logs) and not
// only in the report.
func checkProgress(asJSON, quiet bool, stdout, stderr io.Writer) func(verify.Check) {
	rep := &builder.JSONReporter{W: stdout}
	return func(c verify.Check) {
		failed := !c.Passed && !c.Skipped
		if asJSON {
			rep.Report(builder.Event{Step: "verify", Percent: 100, State: builder.StateRunning,
				Message: fmt.Sprintf("%s %s", status(c), c.Name), ElapsedSeconds: c.DurationSeconds})
			if failed {
				fmt.Fprintf(stderr, "%s %s:\n%s\n", status(c), c.Name, indent(c.Message, "  | "))
			}
			return
		}
		if !quiet || failed {
			fmt.Fprintf(stderr, "  %-4s %s\n", status(c), c.Name)
		}
		if failed {
			fmt.Fprintln(stderr, indent(c.Message, "       | "))
		}
	}
}

// summary is the result line `nodeforge build --progress json` prints.
func (r *pipelineResult) summary() map[string]any {
	out := map[string]any{"reused": r.Reused}
	if r.Build != nil {
		out["image"], out["manifest"] = r.Build.ImagePath, r.Build.ManifestPath
	}
	if r.Manifest != nil {
		out["sha256"], out["size"] = r.Manifest.Image.SHA256, r.Manifest.Image.Size
	}
	if r.Published != nil {
		out["artifact"] = r.Published.URL
	}
	if r.ContainerDisk != "" {
		out["containerDisk"] = r.ContainerDisk
	}
	return out
}
