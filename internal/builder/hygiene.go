package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// hygiene removes everything that is specific to the build machine or to
// one instance, so that every VM booted from the image is a new machine:
// no SSH host keys (generated at first boot), an empty machine-id, no
// cloud-init instance state, no apt lists or caches, no logs, no build-time
// resolv.conf, no policy-rc.d.
func (b *build) hygiene(_ context.Context, p *HygieneParams) error {
	steps := []struct {
		name string
		run  func() error
	}{
		{"policy-rc.d", func() error { return b.removeTree(PolicyRCPath) }},
		{"build-only dpkg options", b.dropBuildDpkgOptions},
		{"resolv.conf", b.restoreResolvConf},
		{"ssh host keys", func() error {
			if p.KeepHostKeys {
				return nil
			}
			return b.removeGlob("/etc/ssh/ssh_host_*")
		}},
		{"machine-id", func() error {
			if err := b.writeTreeFile("/etc/machine-id", nil, 0o444); err != nil {
				return err
			}
			hp := filepath.Join(b.root, "var/lib/dbus/machine-id")
			if fi, err := os.Lstat(hp); err == nil && fi.Mode().IsRegular() {
				return os.Remove(hp)
			}
			return nil
		}},
		{"hostname", func() error { return b.writeTreeFile("/etc/hostname", []byte("localhost\n"), 0o644) }},
		{"cloud-init state", func() error { return b.emptyDir("/var/lib/cloud") }},
		{"apt lists and caches", func() error {
			for _, g := range aptCacheGlobs {
				if err := b.removeGlob(g); err != nil {
					return err
				}
			}
			return os.MkdirAll(filepath.Join(b.root, "var/lib/apt/lists/partial"), 0o700)
		}},
		{"logs", b.removeLogs},
		{"temporary files", func() error {
			for _, g := range tempGlobs {
				if err := b.removeGlob(g); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for i, s := range steps {
		b.progress(float64(i)/float64(len(steps)), s.name)
		if err := s.run(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// What hygiene removes (globs in the image; a match is removed whole).
// Plan refuses spec.files below them.
var (
	aptCacheGlobs = []string{"/var/lib/apt/lists/*", "/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb", "/var/cache/apt/archives/partial/*", "/var/cache/debconf/*-old", "/var/lib/dpkg/*-old"}
	tempGlobs     = []string{"/tmp/*", "/tmp/.[!.]*", "/var/tmp/*", "/var/tmp/.[!.]*", "/root/.bash_history", "/root/.ansible", "/root/.cache", "/var/cache/ldconfig/aux-cache", "/var/lib/systemd/random-seed", "/var/lib/systemd/credential.secret", "/var/lib/dhcp/*.leases"}
)

// restoreResolvConf puts back the image's resolv.conf: the symlink a
// package installed (systemd-resolved's stub), else a link to the stub when
// systemd-resolved is installed, else nothing.
func (b *build) restoreResolvConf() error {
	saved := filepath.Join(b.root, savedResolvConf)
	target := filepath.Join(b.root, "etc/resolv.conf")
	if _, err := os.Lstat(saved); err == nil {
		_ = os.Remove(target)
		return os.Rename(saved, target)
	}
	_ = os.Remove(target)
	if _, err := os.Stat(filepath.Join(b.root, "usr/lib/systemd/systemd-resolved")); err == nil {
		return os.Symlink("../run/systemd/resolve/stub-resolv.conf", target)
	}
	return nil
}

// emptyDir removes the contents of a directory in the image.
func (b *build) emptyDir(p string) error {
	hp, err := inRoot(b.root, p, false)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(hp)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(hp, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// removeLogs deletes every file below /var/log, keeping the directories
// (services expect them, with their owners and modes).
func (b *build) removeLogs() error {
	hp, err := inRoot(b.root, "/var/log", false)
	if err != nil {
		return err
	}
	return filepath.WalkDir(hp, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		return os.Remove(p)
	})
}

// dropBuildDpkgOptions removes options meant for the build only from the
// dpkg configuration mmdebstrap wrote into the image.
func (b *build) dropBuildDpkgOptions() error {
	const cfg = "/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
	data, err := b.readTreeFile(cfg)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var keep []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) != DpkgUnsafeIO {
			keep = append(keep, l)
		}
	}
	return b.writeTreeFile(cfg, []byte(strings.Join(keep, "\n")), 0o644)
}
