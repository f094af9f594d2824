package manifest

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeforge/nodeforge/internal/debian"
)

// PackageChange is one package that differs between two manifests. From is
// empty for an added package, To for a removed one.
type PackageChange struct {
	Name         string `json:"name"`
	Architecture string `json:"architecture"`
	From         string `json:"from,omitempty"`
	To           string `json:"to,omitempty"`
}

// PackageDiff is what changed in the installed packages from one image to
// the next, each list sorted by package name and architecture. Versions
// are ordered as dpkg orders them, so an epoch or a "~" counts.
type PackageDiff struct {
	Upgraded   []PackageChange `json:"upgraded,omitempty"`
	Downgraded []PackageChange `json:"downgraded,omitempty"`
	Added      []PackageChange `json:"added,omitempty"`
	Removed    []PackageChange `json:"removed,omitempty"`
}

// Empty reports whether both package lists were the same.
func (d PackageDiff) Empty() bool {
	return d.count() == 0
}

// DiffPackages compares the packages of an older image with those of a
// newer one. A package is the same package when its name and architecture
// match (a multi-arch image may hold a library twice).
func DiffPackages(older, newer []Package) PackageDiff {
	type key struct{ name, arch string }
	was := make(map[key]string, len(older))
	for _, p := range older {
		was[key{p.Name, p.Architecture}] = p.Version
	}
	var d PackageDiff
	seen := make(map[key]bool, len(newer))
	for _, p := range newer {
		k := key{p.Name, p.Architecture}
		seen[k] = true
		from, ok := was[k]
		c := PackageChange{Name: p.Name, Architecture: p.Architecture, From: from, To: p.Version}
		switch order := debian.Compare(p.Version, from); {
		case !ok:
			d.Added = append(d.Added, c)
		case order > 0:
			d.Upgraded = append(d.Upgraded, c)
		case order < 0:
			d.Downgraded = append(d.Downgraded, c)
		}
	}
	for _, p := range older {
		if !seen[key{p.Name, p.Architecture}] {
			d.Removed = append(d.Removed, PackageChange{Name: p.Name, Architecture: p.Architecture, From: p.Version})
		}
	}
	for _, l := range [][]PackageChange{d.Upgraded, d.Downgraded, d.Added, d.Removed} {
		slices.SortFunc(l, func(a, b PackageChange) int {
			return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Architecture, b.Architecture))
		})
	}
	return d
}

// Summary names the changes with their versions, kind by kind (upgraded,
// downgraded, added, removed), in at most limit bytes: what does not fit
// is counted ("and 12 more"). Empty when nothing changed.
func (d PackageDiff) Summary(limit int) string {
	kinds := []struct {
		label string
		list  []PackageChange
		show  func(PackageChange) string
	}{
		{"upgraded", d.Upgraded, func(c PackageChange) string { return c.Name + " " + c.From + " → " + c.To }},
		{"downgraded", d.Downgraded, func(c PackageChange) string { return c.Name + " " + c.From + " → " + c.To }},
		{"added", d.Added, func(c PackageChange) string { return c.Name + " " + c.To }},
		{"removed", d.Removed, func(c PackageChange) string { return c.Name + " " + c.From }},
	}
	var parts []string
	left := d.count()
	used, full := 0, false
	for _, k := range kinds {
		if len(k.list) == 0 || full {
			continue
		}
		part := k.label
		for i, c := range k.list {
			sep := " "
			if i > 0 {
				sep = ", "
			}
			item := sep + k.show(c)
			// Room for this item, the parts' separators and a final
			// "; and N more".
			if used+len(part)+len(item)+2*len(parts)+len("; and 99999 more") > limit {
				full = true
				break
			}
			part += item
			left--
		}
		if part != k.label {
			parts = append(parts, part)
			used += len(part)
		}
	}
	s := strings.Join(parts, "; ")
	if left > 0 {
		if s != "" {
			s += "; "
		}
		s += "and " + strconv.Itoa(left) + " more"
	}
	return s
}

func (d PackageDiff) count() int {
	return len(d.Upgraded) + len(d.Downgraded) + len(d.Added) + len(d.Removed)
}
