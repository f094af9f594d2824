package builder

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The root filesystem is built in two layers. The base holds the node's
// system from the Debian archive alone (the seed, kernel, container
// runtime, SSH, node exporter; RootfsParams.Packages without Layer), the
// same for most specs; the layer on top holds Kubernetes, what
// provisioners need and spec.packages, from every source.
// The base is cached as a tarball (CacheDir/base/<key>.tar) whose key is
// the exact closure resolve simulated for it, so a build whose base
// packages have not changed (the common case: a Kubernetes patch release,
// a package added, the same spec again) skips the minute-long mmdebstrap
// of the base and only extracts it and installs the layer.
//
// When the base cannot be keyed (no CacheDir, the simulation failed, a
// base package pinned to a version apt would not choose) the whole tree
// is built in one mmdebstrap run instead, as before the cache existed.

// phase maps an mmdebstrap progress line (by prefix) to a fraction of its
// run and a message.
type phase struct {
	prefix string
	frac   float64
	msg    string
}

// rootfsPhases are the phases of a minbase run.
var rootfsPhases = []phase{
	{"I: running apt-get update", 0.03, "apt-get update"},
	{"I: downloading packages", 0.08, "downloading packages"},
	{"I: extracting archives", 0.30, "extracting essential packages"},
	{"I: installing essential packages", 0.35, "installing essential packages"},
	{"I: installing remaining packages", 0.50, "installing packages"},
	{"I: running --customize-hook", 0.95, "saving downloaded packages to the cache"},
	{"I: cleaning package lists", 0.98, "cleaning up"},
}

// layerPhases are those of the layer's run.
var layerPhases = []phase{
	{"I: running --setup-hook", 0.05, "extracting the base layer"},
	{"I: running apt-get update", 0.15, "apt-get update"},
	{"I: running --customize-hook", 0.25, "installing the layer's packages"},
	{"I: cleaning package lists", 0.98, "cleaning up"},
}

// baseKeyVersion changes when what goes into a base layer changes in a
// way its key does not show (the hooks of the base run, the tar options).
const baseKeyVersion = "nodeforge base layer 1"

// keepBaseLayers is how many base layers the cache keeps (the newest by
// last use); each is about 500 MiB for the cloud-base sample.
const keepBaseLayers = 3

func (b *build) baseDir() string { return filepath.Join(b.cacheDir, "base") }

func (b *build) rootfs(ctx context.Context, p *RootfsParams) error {
	if err := ensureBinfmt(p.Architecture); err != nil {
		return err
	}
	if err := b.lockCache(); err != nil {
		return err
	}
	before := b.cachedDebs()
	var err error
	if key, why := b.baseKey(p); key == "" {
		b.progress(0, "base layer not cached: "+why)
		err = b.rootfsSingle(ctx, p)
	} else {
		err = b.rootfsLayered(ctx, p, key)
	}
	if err != nil {
		return err
	}
	var n int
	for name, size := range b.cachedDebs() {
		if _, ok := before[name]; !ok {
			n++
			b.downloaded += size
		}
	}
	msg := fmt.Sprintf("%d packages, %d downloaded (%.1f MiB)", len(p.Packages), n, float64(b.downloaded)/(1<<20))
	if b.baseLayer != "" {
		how := "built and cached"
		if b.baseReused {
			how = "reused"
		}
		msg += fmt.Sprintf("; base layer %s %s", b.baseLayer[:12], how)
	}
	b.progress(1, msg)
	if _, err := os.Stat(b.root + "/var/lib/dpkg/status"); err != nil {
		return fmt.Errorf("mmdebstrap produced no dpkg database: %w", err)
	}
	return nil
}

// rootfsSingle installs every package in one mmdebstrap run.
func (b *build) rootfsSingle(ctx context.Context, p *RootfsParams) error {
	args := b.minbaseArgs(p, p.Packages)
	args = append(args, b.sourceHooks(p.Sources)...)
	args = append(args,
		"--setup-hook="+b.listsSyncIn(),
		"--setup-hook="+b.archivesSyncIn(),
		"--customize-hook="+b.archivesSyncOut(),
	)
	args = append(args, p.Release, b.root)
	args = append(args, mirrorArgs(p.Mirror, p.Release)...)
	return b.runMmdebstrap(ctx, b.mmdebstrapInstalling(args...), 0, 1)
}

// rootfsLayered builds the base into the cache unless it is there, then
// the tree from it and the layer.
func (b *build) rootfsLayered(ctx context.Context, p *RootfsParams, key string) error {
	tarball := filepath.Join(b.baseDir(), key+".tar")
	b.baseLayer = key
	layerFrom := 0.05
	if _, err := os.Stat(tarball); err == nil {
		b.baseReused = true
		now := b.now()
		_ = os.Chtimes(tarball, now, now) // last use, for pruning
		b.progress(0.05, "base layer "+key[:12]+" is cached")
	} else {
		if err := b.buildBase(ctx, p, tarball); err != nil {
			return err
		}
		layerFrom = 0.75
	}

	var layer []string
	for _, r := range p.Packages {
		if r.Layer {
			layer = append(layer, b.pinned(r))
		}
	}
	args := []string{
		"--mode=root", "--format=directory", "--variant=custom",
		"--setup-hook=" + extractBase(tarball),
	}
	args = append(args, architectureArgs(p.Architecture)...)
	for _, o := range p.AptOptions {
		args = append(args, "--aptopt="+o)
	}
	for _, o := range p.DpkgOptions {
		args = append(args, "--dpkgopt="+o)
	}
	args = append(args, b.sourceHooks(p.Sources)...)
	args = append(args, "--setup-hook="+b.listsSyncIn(), "--setup-hook="+b.archivesSyncIn())
	if len(layer) > 0 {
		args = append(args, "--customize-hook="+installLayer(layer))
	}
	args = append(args, "--customize-hook="+b.archivesSyncOut())
	args = append(args, p.Release, b.root)
	args = append(args, mirrorArgs(p.Mirror, p.Release)...)
	return b.runMmdebstrapPhases(ctx, b.mmdebstrapInstalling(args...), layerFrom, 1, layerPhases)
}

// buildBase runs mmdebstrap for the base alone, from the Debian sources,
// and stores its tree as tarball (atomically), then prunes old layers.
func (b *build) buildBase(ctx context.Context, p *RootfsParams, tarball string) error {
	var base []PackageRequest
	for _, r := range p.Packages {
		if !r.Layer {
			base = append(base, r)
		}
	}
	dir := filepath.Join(b.work, "base")
	args := b.minbaseArgs(p, base)
	args = append(args,
		"--setup-hook="+b.listsSyncIn(),
		"--setup-hook="+b.archivesSyncIn(),
		"--customize-hook="+b.archivesSyncOut(),
	)
	args = append(args, p.Release, dir)
	args = append(args, mirrorArgs(p.Mirror, p.Release)...)
	if err := b.runMmdebstrap(ctx, b.mmdebstrapInstalling(args...), 0.05, 0.7); err != nil {
		return fmt.Errorf("base layer: %w", err)
	}
	b.progress(0.7, "saving the base layer "+b.baseLayer[:12])
	if err := os.MkdirAll(b.baseDir(), 0o755); err != nil {
		return fmt.Errorf("base layer cache: %w", err)
	}
	tmp := filepath.Join(b.baseDir(), "."+filepath.Base(tarball)+".tmp")
	err := b.runner.Run(ctx, Command{Name: "tar", Args: []string{
		"-C", dir, "--numeric-owner", "--xattrs", "--xattrs-include=*",
		// The layer's mmdebstrap run fills /dev and gives apt the
		// builder's resolv.conf (the image's own, systemd-resolved's
		// stub, cannot resolve during a build; hygiene puts it back).
		"--exclude=./dev/*", "--exclude=./etc/resolv.conf", "-cf", tmp, ".",
	}})
	if err == nil {
		err = os.Rename(tmp, tarball)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("saving the base layer: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing the base tree: %w", err)
	}
	b.pruneBaseLayers(tarball)
	return nil
}

// pruneBaseLayers keeps the keepBaseLayers most recently used layers
// (keep among them) and removes the rest, and any leftover temporary file.
func (b *build) pruneBaseLayers(keep string) {
	entries, err := os.ReadDir(b.baseDir())
	if err != nil {
		return
	}
	type layer struct {
		path string
		used int64
	}
	var layers []layer
	for _, e := range entries {
		path := filepath.Join(b.baseDir(), e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			_ = os.Remove(path)
			continue
		}
		info, err := e.Info()
		if err != nil || !strings.HasSuffix(e.Name(), ".tar") || path == keep {
			continue
		}
		layers = append(layers, layer{path, info.ModTime().UnixNano()})
	}
	slices.SortFunc(layers, func(a, b layer) int { return cmp.Compare(b.used, a.used) })
	for i, l := range layers {
		if i >= keepBaseLayers-1 {
			_ = os.Remove(l.path)
		}
	}
}

// minbaseArgs are the arguments of a minbase run installing reqs.
func (b *build) minbaseArgs(p *RootfsParams, reqs []PackageRequest) []string {
	include := make([]string, 0, len(reqs))
	for _, r := range reqs {
		include = append(include, b.pinned(r))
	}
	args := []string{
		"--mode=root", "--format=directory", "--variant=" + p.Variant,
		"--skip=essential/unlink",
		"--include=" + strings.Join(include, ","),
	}
	args = append(args, architectureArgs(p.Architecture)...)
	for _, o := range p.AptOptions {
		args = append(args, "--aptopt="+o)
	}
	for _, o := range p.DpkgOptions {
		args = append(args, "--dpkgopt="+o)
	}
	return args
}

// pinned is an install argument: name=version when resolve pinned it.
func (b *build) pinned(r PackageRequest) string {
	if v, ok := b.pins[r.Name]; ok {
		return r.Name + "=" + v
	}
	return r.Name
}

// extractBase is a setup hook extracting a base layer into the tree.
func extractBase(tarball string) string {
	return fmt.Sprintf(`tar -C "$1" --numeric-owner --xattrs --xattrs-include='*' -xf %s`, shq(tarball))
}

// installLayer is a customize hook installing the layer's packages in the
// tree with the tree's apt (its configuration came with the base: no
// recommends, the dpkg path excludes).
func installLayer(pkgs []string) string {
	return `chroot "$1" env DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true apt-get install --yes --no-install-recommends --allow-downgrades -o Dpkg::Use-Pty=0 ` +
		strings.Join(quoteAll(pkgs), " ")
}

func (b *build) runMmdebstrap(ctx context.Context, cmd Command, from, to float64) error {
	return b.runMmdebstrapPhases(ctx, cmd, from, to, rootfsPhases)
}

// runMmdebstrapPhases runs cmd, reporting its phases between fractions
// from and to of the step.
func (b *build) runMmdebstrapPhases(ctx context.Context, cmd Command, from, to float64, phases []phase) error {
	cmd.OnLine = func(line string) {
		for _, ph := range phases {
			if strings.HasPrefix(line, ph.prefix) {
				b.progress(from+ph.frac*(to-from), ph.msg)
				return
			}
		}
	}
	if err := b.runner.Run(ctx, cmd); err != nil {
		return fmt.Errorf("mmdebstrap: %w", err)
	}
	return nil
}
