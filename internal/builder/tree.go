package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// inRoot maps an absolute path inside the image to a host path under root,
// following symlinks the way the image would (an absolute link target is
// relative to root), so that a link in the image can never redirect a
// write to the host. The last component is not followed when it is itself
// a symlink and nofollow is set.
func inRoot(root, p string, nofollow bool) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("path %q is not absolute", p)
	}
	resolved := "/"
	rest := strings.Split(strings.Trim(path.Clean(p), "/"), "/")
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		if c == "" || c == "." {
			continue
		}
		if c == ".." {
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, c)
		if len(rest) == 0 && nofollow {
			resolved = next
			break
		}
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		hops++
		if hops > 40 {
			return "", fmt.Errorf("too many symlinks resolving %s in the image", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if !path.IsAbs(target) {
			target = path.Join(resolved, target)
		}
		rest = append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), rest...)
		resolved = "/"
	}
	return filepath.Join(root, resolved), nil
}

// writeTreeFile writes a file into the image, creating parent directories.
func (b *build) writeTreeFile(p string, data []byte, mode os.FileMode) error {
	hp, err := inRoot(b.root, p, true)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
		return err
	}
	// Replace rather than write through an existing symlink.
	if fi, err := os.Lstat(hp); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if err := os.Remove(hp); err != nil {
			return err
		}
	}
	if err := os.WriteFile(hp, data, mode); err != nil {
		return err
	}
	return os.Chmod(hp, mode)
}

// readTreeFile reads a file from the image.
func (b *build) readTreeFile(p string) ([]byte, error) {
	hp, err := inRoot(b.root, p, false)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(hp)
}

// removeTree removes a path in the image (not following a final symlink).
func (b *build) removeTree(p string) error {
	hp, err := inRoot(b.root, p, true)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(hp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// globTree removes every match of a glob in the image.
func (b *build) removeGlob(pattern string) error {
	matches, err := filepath.Glob(filepath.Join(b.root, pattern))
	if err != nil {
		return err
	}
	for _, m := range matches {
		if err := os.RemoveAll(m); err != nil {
			return err
		}
	}
	return nil
}

// treeSize sums the sizes of the tree's files (hard links once), in bytes
// rounded up to 4 KiB blocks, and counts inodes.
func treeSize(root string) (bytes int64, inodes int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		inodes++
		if st, ok := sysStat(info); ok && st.nlink > 1 && !info.IsDir() {
			if seen[st.ino] {
				return nil
			}
			seen[st.ino] = true
		}
		sz := info.Size()
		if info.Mode()&fs.ModeSymlink != 0 && sz < 60 {
			return nil // fast symlink, stored in the inode
		}
		bytes += (sz + 4095) &^ 4095
		return nil
	})
	return bytes, inodes, err
}
