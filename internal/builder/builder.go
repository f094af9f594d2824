// Package builder turns a resolved NodeImage content spec into a bootable
// Debian disk image without an installer VM, SSH, loop devices or mounts of
// the image: mmdebstrap builds the root filesystem tree, provisioning edits
// it in place (tools run in the sandbox of package sandbox), and
// the disk is assembled straight into a file (sfdisk, mkfs.ext4 -d,
// mkfs.fat + mtools, GRUB images written by hand), then converted.
//
// The pipeline is an explicit plan (Plan) of named steps run in order by
// Build, each timed and reported through a Reporter. The same code runs in
// the builder Pod and on a workstation through `nodeforge build`.
//
// Privileges: the builder runs as root (mmdebstrap --mode=root; the builder
// Pod and `make image` are root). Everything that runs code of the image
// or of the NodeImage author (mmdebstrap with every maintainer script,
// commands in the tree, shell and Ansible provisioners) runs in a sandbox
// (package sandbox) with its own namespaces, /dev, /proc and a reduced
// capability bounding set; the builder's own Go code writes the tree only
// through inRoot, which resolves the tree's symlinks inside the tree.
package builder

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/version"
)

// Options configure one build.
type Options struct {
	// Name is the image name: the output files are OutDir/Name.<format>
	// and OutDir/Name.json.
	Name string
	// WorkDir holds the root filesystem tree and the raw disk while
	// building; it is created if needed and emptied afterwards (unless
	// KeepWork). It needs room for about twice the image's content.
	WorkDir string
	// OutDir receives the image and its manifest. Nothing else is written
	// there, and a failed build leaves no partial file behind.
	OutDir string
	// CacheDir keeps downloaded packages and apt lists between builds, so
	// a second build downloads nothing. Empty means a throwaway cache in
	// WorkDir.
	CacheDir string
	// KeepWork keeps WorkDir's contents (the tree, the raw disk, the build
	// log) for debugging.
	KeepWork bool
	// LocalFiles lets file:// signing-key URLs read the builder's own
	// files. Only the CLI on the spec author's machine sets it: in a
	// builder Pod a file:// URL would copy any file the builder can read
	// (the mounted S3 credentials among them) into the published image.
	LocalFiles bool

	// Runner runs external tools; nil means an ExecRunner logging to
	// WorkDir/build.log.
	Runner Runner
	// Reporter receives progress; nil means none.
	Reporter Reporter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Result is a finished build.
type Result struct {
	Manifest     *manifest.Manifest
	ImagePath    string
	ManifestPath string
}

// build is the state shared by the steps of one build.
type build struct {
	opts    Options
	content *imagev1.ImageContent
	runner  Runner
	rep     Reporter
	now     func() time.Time

	work      string // the build's private dir inside WorkDir
	root      string // the root filesystem tree
	raw       string // the raw disk image
	aptDir    string // build-time apt sources and keys
	cacheDir  string
	cacheLock *os.File

	// Set by steps.
	pins            map[string]string // package -> exact version (from resolve)
	queryVersions   []string          // more packages whose versions resolve asks for (CheckUpdates)
	available       madison           // the versions the repositories offer (from resolve)
	baseClosure     []string          // the base layer's simulated install (from resolve)
	baseUncached    string            // why the base layer cannot be cached, if so
	baseLayer       string            // the base layer's key, when the rootfs step used the cache
	baseReused      bool              // the base layer came from the cache
	mirror          string
	suites          []string // the suites installed from mirror
	kernelVersion   string
	containerImages []manifest.ContainerImage // preloaded (from images)
	treeBytes       int64
	downloaded      int64
	partImage       string // OUT/.name.format.partial
	partManifest    string
	imagePath       string
	manifestPath    string
	manifest        *manifest.Manifest
	timings         []manifest.Step

	// progress bookkeeping
	doneWeight, totalWeight, stepWeight int
	stepName                            string
	stepStart                           time.Time
}

// Build runs the whole pipeline for content and writes the image and its
// manifest into opts.OutDir. On failure it returns a *StepError (joined
// with a "cleanup" one when the work dir could not be removed either),
// removes the partial output, and leaves nothing mounted.
func Build(ctx context.Context, opts Options, content imagev1.ImageContent) (res *Result, err error) {
	if opts.Name == "" || strings.ContainsAny(opts.Name, "/\x00") || strings.HasPrefix(opts.Name, ".") {
		return nil, fmt.Errorf("invalid image name %q", opts.Name)
	}
	if opts.WorkDir == "" || opts.OutDir == "" {
		return nil, errors.New("work dir and output dir are required")
	}
	steps, err := Plan(content)
	if err != nil {
		return nil, &StepError{Step: "plan", Cause: err}
	}
	b := newBuild(opts, content)
	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return nil, &StepError{Step: "plan", Cause: err}
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, &StepError{Step: "plan", Cause: err}
	}
	work, err := os.MkdirTemp(opts.WorkDir, opts.Name+".build-")
	if err != nil {
		return nil, &StepError{Step: "plan", Cause: err}
	}
	b.work = work
	// Cleanup runs however Build returns, even when ctx is canceled.
	defer func() {
		if b.cacheLock != nil {
			b.cacheLock.Close()
		}
		if err != nil {
			b.removePartial()
		}
		if !opts.KeepWork {
			if cerr := b.cleanupWork(); cerr != nil {
				cleanup := &StepError{Step: "cleanup", Cause: cerr}
				if err == nil {
					err = cleanup
				} else {
					err = errors.Join(err, cleanup)
				}
			}
		}
	}()
	// MkdirTemp makes it 0700; apt's _apt user must reach the chroots in it.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, &StepError{Step: "plan", Cause: err}
	}
	b.root = filepath.Join(work, "rootfs")
	b.raw = filepath.Join(work, "disk.raw")
	b.aptDir = filepath.Join(work, "apt")
	b.cacheDir = opts.CacheDir
	if b.cacheDir == "" {
		b.cacheDir = filepath.Join(work, "cache")
	}
	var logFile *os.File
	b.runner = opts.Runner
	if b.runner == nil {
		logFile, err = os.Create(filepath.Join(work, "build.log"))
		if err != nil {
			return nil, &StepError{Step: "plan", Cause: err}
		}
		defer logFile.Close()
		b.runner = &ExecRunner{Log: logFile}
	}
	format := string(b.content.Output.Format)
	b.imagePath = filepath.Join(opts.OutDir, opts.Name+"."+format)
	b.manifestPath = filepath.Join(opts.OutDir, opts.Name+".json")
	b.partImage = filepath.Join(opts.OutDir, "."+opts.Name+"."+format+".partial")
	b.partManifest = filepath.Join(opts.OutDir, "."+opts.Name+".json.partial")

	return b.run(ctx, steps)
}

// newBuild is the state of a build of content (defaulted, copied) with
// opts, before any directory is made.
func newBuild(opts Options, content imagev1.ImageContent) *build {
	c := content.DeepCopy()
	c.Default()
	b := &build{opts: opts, content: c, now: opts.Now, rep: opts.Reporter, pins: map[string]string{}}
	if b.now == nil {
		b.now = time.Now
	}
	if b.rep == nil {
		b.rep = NopReporter{}
	}
	return b
}

func (b *build) run(ctx context.Context, steps []Step) (*Result, error) {
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.Name
		b.totalWeight += s.Weight
	}
	b.rep.Plan(names)
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return nil, stepError(s.Name, err)
		}
		b.stepName, b.stepWeight, b.stepStart = s.Name, s.Weight, b.now()
		b.progress(0, "")
		err := b.runStep(ctx, s)
		elapsed := b.now().Sub(b.stepStart).Seconds()
		b.timings = append(b.timings, manifest.Step{Name: s.Name, DurationSeconds: roundSeconds(elapsed)})
		if err != nil {
			se := stepError(s.Name, err)
			b.rep.Report(Event{Step: s.Name, Percent: b.percent(0), State: StateFailed, Message: firstLine(se.Cause.Error()), ElapsedSeconds: elapsed})
			return nil, se
		}
		b.doneWeight += s.Weight
		b.rep.Report(Event{Step: s.Name, Percent: b.percent(0), State: StateDone, ElapsedSeconds: elapsed})
	}
	// Publish: write the manifest beside the partial image, then rename
	// the image and the manifest that names it. Once the image has its
	// final name, a failure removes it again: no partial output.
	b.manifest.Steps = b.timings
	if err := b.manifest.Write(b.partManifest); err != nil {
		return nil, stepError(StepManifest, err)
	}
	if err := os.Rename(b.partImage, b.imagePath); err != nil {
		return nil, stepError(StepManifest, err)
	}
	if err := os.Rename(b.partManifest, b.manifestPath); err != nil {
		_ = os.Remove(b.imagePath)
		return nil, stepError(StepManifest, err)
	}
	return &Result{Manifest: b.manifest, ImagePath: b.imagePath, ManifestPath: b.manifestPath}, nil
}

func (b *build) runStep(ctx context.Context, s Step) error {
	switch {
	case s.Resolve != nil:
		return b.resolve(ctx, s.Resolve)
	case s.Rootfs != nil:
		return b.rootfs(ctx, s.Rootfs)
	case s.Provision != nil:
		return b.provision(ctx, s.Provision)
	case s.Images != nil:
		return b.images(ctx, s.Images)
	case s.Provisioner != nil:
		return b.provisioner(ctx, s.Provisioner)
	case s.Hygiene != nil:
		return b.hygiene(ctx, s.Hygiene)
	case s.Disk != nil:
		return b.disk(ctx, s.Disk)
	case s.Convert != nil:
		return b.convert(ctx, s.Convert)
	case s.Manifest != nil:
		return b.writeManifest(ctx, s.Manifest)
	}
	return fmt.Errorf("step %s has no parameters", s.Name)
}

// progress reports the running step at fraction frac (0..1) of its work.
func (b *build) progress(frac float64, msg string) {
	b.rep.Report(Event{
		Step: b.stepName, Percent: b.percent(frac), State: StateRunning, Message: msg,
		ElapsedSeconds: b.now().Sub(b.stepStart).Seconds(),
	})
}

func (b *build) percent(frac float64) int {
	if b.totalWeight == 0 {
		return 0
	}
	frac = min(max(frac, 0), 1)
	return int((float64(b.doneWeight) + frac*float64(b.stepWeight)) * 100 / float64(b.totalWeight))
}

func (b *build) removePartial() {
	for _, p := range []string{b.partImage, b.partManifest} {
		if p != "" {
			_ = os.Remove(p)
		}
	}
}

// cleanupWork removes the build's private work dir, after making sure
// nothing is mounted below it (removing a tree with /dev bound into it
// would delete the host's device nodes).
func (b *build) cleanupWork() error {
	if b.work == "" {
		return nil
	}
	mounts, err := mountsBelow(b.work)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %s", b.work, strings.Join(mounts, ", "))
	}
	return os.RemoveAll(b.work)
}

// mountInfoPath is the mount table cleanupWork checks (a test sets a fake).
var mountInfoPath = "/proc/self/mountinfo"

// mountsBelow lists mount points at or below dir.
func mountsBelow(dir string) ([]string, error) {
	f, err := os.Open(mountInfoPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	return parseMountsBelow(f, dir)
}

func parseMountsBelow(r io.Reader, dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMount decodes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// builderVersion is recorded in the manifest.
func builderVersion() string { return version.String() }
