package verify

import (
	"strings"
)

// FstabEntry is one line of /etc/fstab.
type FstabEntry struct {
	Spec, File, Type, Options string
}

// ParseFstab parses fstab, skipping comments and blank lines.
func ParseFstab(b []byte) []FstabEntry {
	var out []FstabEntry
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		e := FstabEntry{Spec: f[0]}
		if len(f) > 1 {
			e.File = f[1]
		}
		if len(f) > 2 {
			e.Type = f[2]
		}
		if len(f) > 3 {
			e.Options = f[3]
		}
		out = append(out, e)
	}
	return out
}

// IsSwap reports whether the entry activates swap.
func (e FstabEntry) IsSwap() bool { return e.Type == "swap" || e.File == "swap" }

// SwapEntries returns the swap entries of an fstab.
func SwapEntries(entries []FstabEntry) []FstabEntry {
	var out []FstabEntry
	for _, e := range entries {
		if e.IsSwap() {
			out = append(out, e)
		}
	}
	return out
}
