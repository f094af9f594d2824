package debian

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Package is one stanza of /var/lib/dpkg/status.
type Package struct {
	Name         string
	Version      string
	Architecture string
	// InstalledSizeKiB is the Installed-Size field.
	InstalledSizeKiB int64
	// Want, Flag and State are the three words of the Status field, such as
	// "install ok installed" or "hold ok installed".
	Want, Flag, State string
}

// Installed reports whether dpkg considers the package fully installed.
func (p Package) Installed() bool { return p.Flag == "ok" && p.State == "installed" }

// Held reports whether the package is on hold (apt-mark hold).
func (p Package) Held() bool { return p.Want == "hold" }

// ParseStatus parses the dpkg status database (/var/lib/dpkg/status) into
// packages by name.
// Multi-arch packages installed for several architectures keep the first
// stanza.
func ParseStatus(b []byte) (map[string]Package, error) {
	out := map[string]Package{}
	var cur Package
	flush := func() {
		if _, dup := out[cur.Name]; cur.Name != "" && !dup {
			out[cur.Name] = cur
		}
		cur = Package{}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		l := sc.Text()
		if strings.TrimSpace(l) == "" {
			flush()
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue // continuation of a multi-line field
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("dpkg status line %d: no field name in %q", line, l)
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			cur.Name = v
		case "Version":
			cur.Version = v
		case "Architecture":
			cur.Architecture = v
		case "Installed-Size":
			cur.InstalledSizeKiB, _ = strconv.ParseInt(v, 10, 64)
		case "Status":
			f := strings.Fields(v)
			if len(f) != 3 {
				return nil, fmt.Errorf("dpkg status line %d: malformed Status %q", line, v)
			}
			cur.Want, cur.Flag, cur.State = f[0], f[1], f[2]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	return out, nil
}
