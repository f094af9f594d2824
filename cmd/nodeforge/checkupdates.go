package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// errCheckFailed makes the process exit non-zero after the update check's
// result was written; the result says why.
var errCheckFailed = errors.New("update check failed; see the result")

// maxUpdateChanges bounds the upgrades named in an update check's result
// (Encode drops more when they do not fit the termination message).
const maxUpdateChanges = 40

// runCheckUpdates is `nodeforge run --check-updates`, the update check
// Pod's entrypoint (see package buildresult): it compares the packages of
// the artifact published for the spec digest with what a build now would
// install, and writes an UpdatesResult to --result.
func runCheckUpdates(ctx context.Context, o *runOptions, stdout, stderr io.Writer) error {
	res := o.checkUpdates(ctx, stderr)
	b, err := res.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.result, b, 0o644); err != nil {
		return fmt.Errorf("writing the result: %w", err)
	}
	if _, err := fmt.Fprintf(stdout, "{\"updates\":%s}\n", b); err != nil {
		return err
	}
	if res.Outcome != buildresult.OutcomeSucceeded {
		return errCheckFailed
	}
	return nil
}

// checkUpdates runs the check and turns every outcome into a result.
func (o *runOptions) checkUpdates(ctx context.Context, stderr io.Writer) *buildresult.UpdatesResult {
	res := &buildresult.UpdatesResult{Outcome: buildresult.OutcomeFailed}
	fail := func(err error) *buildresult.UpdatesResult {
		res.Message = err.Error()
		fmt.Fprintln(stderr, "update check failed:", err)
		return res
	}
	b, err := readBuild(o.spec)
	if err != nil {
		return fail(err)
	}
	res.SpecDigest = b.Spec.SpecDigest
	digest, err := b.Spec.Image.Digest()
	if err != nil {
		return fail(err)
	}
	if digest != b.Spec.SpecDigest {
		return fail(fmt.Errorf("spec digest %s does not match the content (%s): the manager and this builder (%s) disagree on %s",
			b.Spec.SpecDigest, digest, imagev1.DigestSchema, "how content is addressed"))
	}
	if b.Spec.Destination == nil || b.Spec.Destination.S3 == nil {
		return fail(errors.New("spec.destination is not set: no published manifest to compare with"))
	}
	open := o.openPublisher
	if open == nil {
		open = o.publisher
	}
	pub, _, err := open(b.Spec.Destination, b.Namespace)
	if err != nil {
		return fail(err)
	}
	m, err := publishedManifest(ctx, pub, b.Spec.NodeImageName, b.Spec.SpecDigest)
	if err != nil {
		return fail(err)
	}
	start := time.Now()
	u, err := builder.CheckUpdates(ctx, builder.Options{
		Name:     b.Spec.NodeImageName,
		WorkDir:  filepath.Join(o.scratch, "work"),
		CacheDir: filepath.Join(o.scratch, "cache"),
		Runner:   o.runner,
	}, b.Spec.Image, m.Packages)
	if err != nil {
		return fail(fmt.Errorf("resolving the image's packages: %w", err))
	}
	fmt.Fprintf(stderr, "checked %d packages in %s: %s\n", u.Checked, time.Since(start).Round(100*time.Millisecond), u.Summary())
	res.Outcome = buildresult.OutcomeSucceeded
	res.Checked, res.Upgrades, res.Unavailable = int32(u.Checked), int32(len(u.Upgrades)), int32(len(u.Unavailable))
	res.Digest = u.Digest
	for _, c := range u.Upgrades[:min(len(u.Upgrades), maxUpdateChanges)] {
		res.Changes = append(res.Changes, fmt.Sprintf("%s %s → %s", c.Name, c.From, c.To))
	}
	return res
}

// publishedManifest reads the build manifest published for name at
// digest.
func publishedManifest(ctx context.Context, pub *storage.Publisher, name, digest string) (*manifest.Manifest, error) {
	a, err := pub.Lookup(ctx, name, digest)
	if err != nil {
		return nil, fmt.Errorf("finding the published artifact of %s: %w", digest, err)
	}
	rc, _, err := pub.Store.Get(ctx, a.ManifestKey)
	if err != nil {
		return nil, fmt.Errorf("reading the published manifest %s: %w", a.ManifestKey, err)
	}
	defer rc.Close()
	m, err := manifest.Decode(io.LimitReader(rc, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("the published manifest %s: %w", a.ManifestKey, err)
	}
	if len(m.Packages) == 0 {
		return nil, fmt.Errorf("the published manifest %s lists no packages", a.ManifestKey)
	}
	return m, nil
}
