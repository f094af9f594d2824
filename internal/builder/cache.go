package builder

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// The package cache (CacheDir) holds three directories:
//
//	archives/  every .deb a build downloaded, hard-linked into the chroot's
//	           /var/cache/apt/archives before apt runs (copied when the
//	           cache is on another filesystem) and back out after, so apt
//	           finds them and downloads only what is new;
//	lists/     the apt package lists of the last resolution pass, so apt-get
//	           update only revalidates them (HTTP 304s);
//	base/      the base layers (rootfs.go), <key>.tar each, the few most
//	           recently used kept.
//
// mmdebstrap keeps the essential packages it extracted (--skip=essential/
// unlink) until the customize hook has copied them out, then removes the
// chroot's cache as usual: the image never contains .debs. A lock file
// serializes builds sharing a cache.

func (b *build) archivesDir() string { return filepath.Join(b.cacheDir, "archives") }
func (b *build) listsDir() string    { return filepath.Join(b.cacheDir, "lists") }

// lockCache takes an exclusive lock on the cache for the rest of the build;
// Build releases it at the end.
func (b *build) lockCache() error {
	if b.cacheLock != nil {
		return nil
	}
	for _, d := range []string{b.archivesDir(), b.listsDir(), b.baseDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("package cache: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(b.cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return fmt.Errorf("locking the package cache: %w", err)
	}
	b.cacheLock = f
	return nil
}

// listsSyncIn is a setup hook copying cached package lists into the chroot.
func (b *build) listsSyncIn() string {
	return fmt.Sprintf(`set -e
mkdir -p "$1/var/lib/apt/lists"
if [ -n "$(ls -A %[1]s 2>/dev/null)" ]; then cp -a %[1]s/. "$1/var/lib/apt/lists/"; fi`, shq(b.listsDir()))
}

// listsSyncOut replaces the cached package lists with the chroot's.
func (b *build) listsSyncOut() string {
	d := b.listsDir()
	return fmt.Sprintf(`rm -rf %[1]s.new && cp -a "$1/var/lib/apt/lists" %[1]s.new && rm -f %[1]s.new/lock && rm -rf %[1]s.new/partial && rm -rf %[1]s && mv %[1]s.new %[1]s`, shq(d))
}

// archivesSyncIn is a setup hook linking cached .debs into the chroot.
func (b *build) archivesSyncIn() string {
	return fmt.Sprintf(`set -e
d="$1/var/cache/apt/archives"
mkdir -p "$d/partial"
set -- %[1]s/*.deb
if [ -e "$1" ]; then cp -l -t "$d" "$@" 2>/dev/null || cp -t "$d" "$@"; fi`, shq(b.archivesDir()))
}

// archivesSyncOut is a customize hook linking new .debs back into the cache.
func (b *build) archivesSyncOut() string {
	return fmt.Sprintf(`set -e
c=%[1]s
for f in "$1"/var/cache/apt/archives/*.deb; do
  [ -e "$f" ] || break
  n=${f##*/}
  [ -e "$c/$n" ] && continue
  ln "$f" "$c/.$n.tmp" 2>/dev/null || cp "$f" "$c/.$n.tmp"
  mv "$c/.$n.tmp" "$c/$n"
done`, shq(b.archivesDir()))
}

// cachedDebs returns the cached .deb files and their sizes.
func (b *build) cachedDebs() map[string]int64 {
	out := map[string]int64{}
	entries, _ := os.ReadDir(b.archivesDir())
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".deb") {
			continue
		}
		if info, err := e.Info(); err == nil {
			out[e.Name()] = info.Size()
		}
	}
	return out
}

// baseKey is the cache key of p's base layer: the sha256 of everything
// that decides what it holds, the exact closure of its install first.
// It is empty, with the reason, when the base cannot be cached.
func (b *build) baseKey(p *RootfsParams) (key, why string) {
	switch {
	case b.opts.CacheDir == "":
		return "", "no package cache dir"
	case b.baseUncached != "":
		return "", b.baseUncached
	case len(b.baseClosure) == 0:
		return "", "its install was not simulated"
	}
	var reqs []string
	for _, r := range p.Packages {
		if !r.Layer {
			reqs = append(reqs, b.pinned(r))
		}
	}
	slices.Sort(reqs)
	in, err := json.Marshal(struct {
		Version, Release, Architecture, Variant, Mirror string
		Suites, AptOptions, DpkgOptions, Requests       []string
		Closure                                         []string
	}{
		baseKeyVersion, p.Release, p.Architecture, p.Variant, b.mirror,
		b.suites, p.AptOptions, p.DpkgOptions, reqs,
		b.baseClosure,
	})
	if err != nil {
		return "", err.Error()
	}
	sum := sha256.Sum256(in)
	return hex.EncodeToString(sum[:]), ""
}
