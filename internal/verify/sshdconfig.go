package verify

import (
	"path"
	"sort"
	"strings"
)

// SSHDConfig is the effective global sshd configuration of an image,
// evaluated the way sshd reads it: the first value of a keyword wins,
// Include expands (sorted) globs in place, and Match blocks apply only to
// some connections, so they are ignored for the global settings.
type SSHDConfig struct {
	values map[string]string
	// Sources records which file set each keyword.
	Sources map[string]string
}

// Get returns the effective value of a keyword (case-insensitive) and
// whether it was set at all.
func (c *SSHDConfig) Get(keyword string) (string, bool) {
	v, ok := c.values[strings.ToLower(keyword)]
	return v, ok
}

// FileLister reads files and lists directory entries of the image.
type FileLister interface {
	ReadFile(p string) ([]byte, error)
	ReadDir(p string) ([]DirEntry, error)
}

// EvaluateSSHDConfig reads /etc/ssh/sshd_config (and what it includes)
// from fs.
func EvaluateSSHDConfig(fs FileLister) (*SSHDConfig, error) {
	c := &SSHDConfig{values: map[string]string{}, Sources: map[string]string{}}
	if err := c.readFile(fs, "/etc/ssh/sshd_config", 0); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *SSHDConfig) readFile(fs FileLister, file string, depth int) error {
	if depth > 8 {
		return nil
	}
	b, err := fs.ReadFile(file)
	if err != nil {
		return err
	}
	inMatch := false
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		kw, rest := splitSSHDLine(l)
		kw = strings.ToLower(kw)
		switch kw {
		case "match":
			inMatch = !(strings.EqualFold(strings.TrimSpace(rest), "all"))
			continue
		case "include":
			for _, pat := range strings.Fields(rest) {
				if !path.IsAbs(pat) {
					pat = path.Join("/etc/ssh", pat)
				}
				for _, f := range c.glob(fs, pat) {
					if err := c.readFile(fs, f, depth+1); err != nil {
						return err
					}
				}
			}
			continue
		}
		if inMatch {
			continue
		}
		if _, set := c.values[kw]; !set {
			c.values[kw] = strings.Trim(strings.TrimSpace(rest), `"`)
			c.Sources[kw] = file
		}
	}
	return nil
}

func splitSSHDLine(l string) (string, string) {
	i := strings.IndexAny(l, " \t=")
	if i < 0 {
		return l, ""
	}
	rest := strings.TrimLeft(l[i:], " \t")
	rest = strings.TrimPrefix(rest, "=")
	return l[:i], strings.TrimSpace(rest)
}

// glob expands a pattern whose last element may hold wildcards.
func (c *SSHDConfig) glob(fs FileLister, pat string) []string {
	dir, base := path.Split(pat)
	if !strings.ContainsAny(base, "*?[") {
		return []string{pat}
	}
	ents, err := fs.ReadDir(path.Clean(dir))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if ok, _ := path.Match(base, e.Name); ok && !e.IsDir {
			out = append(out, path.Join(dir, e.Name))
		}
	}
	sort.Strings(out)
	return out
}
