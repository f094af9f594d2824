package builder

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/debian"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

// Updates is what CheckUpdates found: how a build of the same spec now
// would differ from the image it compared.
type Updates struct {
	// Checked is how many installed packages were compared.
	Checked int `json:"checked"`
	// Upgrades are the installed packages a build now would install in a
	// newer version (From: installed, To: the new version), by name.
	Upgrades []manifest.PackageChange `json:"upgrades,omitempty"`
	// Unavailable are installed packages that none of the configured
	// repositories offers any more (From: installed).
	Unavailable []manifest.PackageChange `json:"unavailable,omitempty"`
	// Digest identifies Upgrades ("sha256:" and 64 hex digits over the
	// sorted name, architecture and new version of each); empty without
	// upgrades. The same set of new versions has the same digest, however
	// often it is found.
	Digest string `json:"digest,omitempty"`
}

// CheckUpdates tells whether a build of content now would install newer
// packages than the image whose installed packages (its manifest's full
// package list, the base closure and everything added to it) are given.
// It runs the build's resolve step alone, with the same mirror,
// repositories, signing keys and package cache: apt-get update in a
// throwaway chroot and apt-cache madison for every installed package,
// nothing installed, a few seconds. A package the spec pins (an exact or
// constrained version, the Kubernetes packages) is compared with its pin,
// any other with the newest version the repositories offer, which is what
// apt installs when every source has the same priority.
func CheckUpdates(ctx context.Context, opts Options, content imagev1.ImageContent, installed []manifest.Package) (*Updates, error) {
	if len(installed) == 0 {
		return nil, errors.New("the image's package list is empty: nothing to compare")
	}
	if opts.WorkDir == "" {
		return nil, errors.New("a work dir is required")
	}
	steps, err := Plan(content)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(steps, func(s Step) bool { return s.Resolve != nil })
	if i < 0 {
		return nil, errors.New("the plan has no resolve step")
	}
	b := newBuild(opts, content)
	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return nil, err
	}
	if b.work, err = os.MkdirTemp(opts.WorkDir, "updates-"); err != nil {
		return nil, err
	}
	defer func() {
		if b.cacheLock != nil {
			b.cacheLock.Close()
		}
		_ = os.RemoveAll(b.work)
	}()
	// apt's _apt user must reach the throwaway chroot's lists.
	if err := os.Chmod(b.work, 0o755); err != nil {
		return nil, err
	}
	b.aptDir = filepath.Join(b.work, "apt")
	b.cacheDir = opts.CacheDir
	if b.cacheDir == "" {
		b.cacheDir = filepath.Join(b.work, "cache")
	}
	b.runner = opts.Runner
	if b.runner == nil {
		log, err := os.Create(filepath.Join(b.work, "updates.log"))
		if err != nil {
			return nil, err
		}
		defer log.Close()
		b.runner = &ExecRunner{Log: log}
	}
	for _, p := range installed {
		b.queryVersions = append(b.queryVersions, p.Name)
	}
	b.rep.Plan([]string{StepResolve})
	b.stepName, b.stepWeight, b.stepStart, b.totalWeight = StepResolve, 1, b.now(), 1
	if err := b.resolve(ctx, steps[i].Resolve); err != nil {
		return nil, stepError(StepResolve, err)
	}
	return compareInstalled(installed, b.available, b.pins), nil
}

// compareInstalled compares every installed package with the version a
// build would install: its pin, else the newest one offered.
func compareInstalled(installed []manifest.Package, offered madison, pins map[string]string) *Updates {
	u := &Updates{Checked: len(installed)}
	for _, p := range installed {
		want, pinned := pins[p.Name]
		if !pinned {
			if vs := offered[p.Name]; len(vs) > 0 {
				want = vs[0]
			}
		}
		c := manifest.PackageChange{Name: p.Name, Architecture: p.Architecture, From: p.Version, To: want}
		switch {
		case want == "":
			u.Unavailable = append(u.Unavailable, c)
		case debian.Compare(want, p.Version) > 0:
			u.Upgrades = append(u.Upgrades, c)
		}
	}
	byName := func(a, b manifest.PackageChange) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Architecture, b.Architecture))
	}
	slices.SortFunc(u.Upgrades, byName)
	slices.SortFunc(u.Unavailable, byName)
	if len(u.Upgrades) > 0 {
		h := sha256.New()
		for _, c := range u.Upgrades {
			fmt.Fprintf(h, "%s %s %s\n", c.Name, c.Architecture, c.To)
		}
		u.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	return u
}

// Summary is one line: how many packages have newer versions, the first
// few of them, and how many are gone from the repositories.
func (u *Updates) Summary() string {
	if len(u.Upgrades) == 0 && len(u.Unavailable) == 0 {
		return fmt.Sprintf("all %d packages are current", u.Checked)
	}
	var parts []string
	if n := len(u.Upgrades); n > 0 {
		var names []string
		for _, c := range u.Upgrades[:min(n, 3)] {
			names = append(names, fmt.Sprintf("%s %s → %s", c.Name, c.From, c.To))
		}
		more := ""
		if n > 3 {
			more = fmt.Sprintf(" and %d more", n-3)
		}
		parts = append(parts, fmt.Sprintf("%d of %d packages have newer versions: %s%s", n, u.Checked, strings.Join(names, ", "), more))
	}
	if n := len(u.Unavailable); n > 0 {
		parts = append(parts, fmt.Sprintf("%d no longer offered by any repository", n))
	}
	return strings.Join(parts, "; ")
}
