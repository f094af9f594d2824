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

	"github.com/spf13/cobra"
	"golang.org/x/term"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/verify"
)

type buildOptions struct {
	file     string
	outDir   string
	cacheDir string
	workDir  string
	noVerify bool
	keepWork bool
	progress string
}

func newBuildCmd() *cobra.Command {
	o := &buildOptions{}
	cmd := &cobra.Command{
		Use:   "build -f FILE",
		Short: "Build a node image from a NodeImage YAML file",
		Long: `Build a node image from a NodeImage YAML file (optionally followed, in the
same multi-document file, by the ConfigMaps it refers to). Writes
DIR/<name>.qcow2 (or .raw) and DIR/<name>.json, the build manifest.

Runs as root: mmdebstrap builds the root filesystem in root mode. Needs
mmdebstrap, e2fsprogs, fdisk (sfdisk), dosfstools, mtools, grub-pc-bin,
grub-efi-amd64-bin and qemu-utils (hack/image.sh installs them).

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
	_ = cmd.MarkFlagRequired("file")
	return cmd
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

func runBuild(ctx context.Context, o *buildOptions, stdout, stderr io.Writer) error {
	image, get, err := resolve.LoadFile(o.file)
	if err != nil {
		return err
	}
	content, err := resolve.Content(ctx, &image.Spec.ImageContent, get)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", o.file, err)
	}
	if image.Name == "" {
		return fmt.Errorf("%s: the NodeImage has no metadata.name", o.file)
	}

	rep, closeRep, err := newReporter(o.progress, stdout)
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := builder.Build(ctx, builder.Options{
		Name:     image.Name,
		WorkDir:  o.workDir,
		OutDir:   o.outDir,
		CacheDir: o.cacheDir,
		KeepWork: o.keepWork,
		Reporter: rep,
	}, *content)
	closeRep()
	if err != nil {
		var se *builder.StepError
		if errors.As(err, &se) {
			return fmt.Errorf("building %s: %w", image.Name, err)
		}
		return err
	}

	if !o.noVerify {
		vspec := image.Spec.Verification
		vspec.Default()
		report, err := verifyBuilt(ctx, o, res, *content, vspec, stdout, stderr)
		if report != nil {
			// The manifest records the outcome, passed or not.
			res.Manifest.Verification = report
			if werr := res.Manifest.Write(res.ManifestPath); werr != nil {
				return werr
			}
		}
		if err != nil {
			return fmt.Errorf("verifying %s: %w", res.ImagePath, err)
		}
	}
	if o.progress != "json" {
		fmt.Fprintf(stdout, "built %s in %s\n  image:    %s (%.1f MiB, sha256 %s)\n  manifest: %s\n",
			image.Name, time.Since(start).Round(time.Second), res.ImagePath,
			float64(res.Manifest.Image.Size)/(1<<20), res.Manifest.Image.SHA256, res.ManifestPath)
	} else {
		fmt.Fprintf(stdout, `{"result":{"image":%q,"manifest":%q,"sha256":%q,"size":%d}}`+"\n",
			res.ImagePath, res.ManifestPath, res.Manifest.Image.SHA256, res.Manifest.Image.Size)
	}
	return nil
}

// verifyBuilt runs internal/verify on a freshly built image: the offline
// checks and, when spec.verification.boot.enabled, the QEMU boot test. It
// returns the report for the manifest, and an error when a required check
// failed.
func verifyBuilt(ctx context.Context, o *buildOptions, res *builder.Result, content imagev1.ImageContent,
	vspec imagev1.VerificationSpec, stdout, stderr io.Writer) (*verify.Report, error) {
	opts := verify.OptionsFromSpec(vspec)
	opts.WorkDir = o.workDir
	if o.progress == "json" {
		rep := &builder.JSONReporter{W: stdout}
		opts.Progress = func(c verify.Check) {
			rep.Report(builder.Event{Step: "verify", Percent: 100, State: builder.StateRunning,
				Message: fmt.Sprintf("%s %s", status(c), c.Name), ElapsedSeconds: c.DurationSeconds})
		}
	} else {
		fmt.Fprintf(stderr, "verifying %s (boot test: %t)\n", res.ImagePath, opts.Boot)
		opts.Progress = func(c verify.Check) {
			fmt.Fprintf(stderr, "  %-4s %s\n", status(c), c.Name)
		}
	}
	r, err := verify.Verify(ctx, res.ImagePath, content, opts)
	if err != nil {
		return nil, err
	}
	if o.progress != "json" {
		fmt.Fprintf(stderr, "verification: %d passed, %d failed, %d skipped\n", r.Summary.Passed, r.Summary.Failed, r.Summary.Skipped)
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
