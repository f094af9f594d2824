package manifest

import (
	"cmp"
	"slices"

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
	return len(d.Upgraded)+len(d.Downgraded)+len(d.Added)+len(d.Removed) == 0
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
