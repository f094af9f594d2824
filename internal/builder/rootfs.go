package builder

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// rootfsPhases maps mmdebstrap's progress lines to a fraction of the step.
var rootfsPhases = []struct {
	prefix string
	frac   float64
	msg    string
}{
	{"I: running apt-get update", 0.03, "apt-get update"},
	{"I: downloading packages", 0.08, "downloading packages"},
	{"I: extracting archives", 0.30, "extracting essential packages"},
	{"I: installing essential packages", 0.35, "installing essential packages"},
	{"I: installing remaining packages", 0.50, "installing packages"},
	{"I: running --customize-hook", 0.95, "saving downloaded packages to the cache"},
	{"I: cleaning package lists", 0.98, "cleaning up"},
}

func (b *build) rootfs(ctx context.Context, p *RootfsParams) error {
	if err := b.lockCache(); err != nil {
		return err
	}
	before := b.cachedDebs()
	include := make([]string, 0, len(p.Packages))
	for _, r := range p.Packages {
		if v, ok := b.pins[r.Name]; ok {
			include = append(include, r.Name+"="+v)
		} else {
			include = append(include, r.Name)
		}
	}
	args := []string{
		"--mode=root", "--format=directory", "--variant=" + p.Variant,
		"--skip=essential/unlink",
		"--include=" + strings.Join(include, ","),
	}
	for _, o := range p.AptOptions {
		args = append(args, "--aptopt="+o)
	}
	for _, o := range p.DpkgOptions {
		args = append(args, "--dpkgopt="+o)
	}
	args = append(args, b.sourceHooks(p.Sources)...)
	args = append(args,
		"--setup-hook="+b.listsSyncIn(),
		"--setup-hook="+b.archivesSyncIn(),
		"--customize-hook="+b.archivesSyncOut(),
	)
	args = append(args, p.Release, b.root)
	args = append(args, mirrorArgs(p.Mirror, p.Release)...)

	cmd := b.mmdebstrap(args...)
	cmd.OnLine = func(line string) {
		for _, ph := range rootfsPhases {
			if strings.HasPrefix(line, ph.prefix) {
				b.progress(ph.frac, ph.msg)
				return
			}
		}
	}
	if err := b.runner.Run(ctx, cmd); err != nil {
		return fmt.Errorf("mmdebstrap: %w", err)
	}
	var n int
	for name, size := range b.cachedDebs() {
		if _, ok := before[name]; !ok {
			n++
			b.downloaded += size
		}
	}
	b.progress(1, fmt.Sprintf("%d packages, %d downloaded (%.1f MiB)", len(p.Packages), n, float64(b.downloaded)/(1<<20)))
	if _, err := os.Stat(b.root + "/var/lib/dpkg/status"); err != nil {
		return fmt.Errorf("mmdebstrap produced no dpkg database: %w", err)
	}
	return nil
}
