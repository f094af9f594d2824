package debian

import (
	"fmt"
	"strings"
	"unicode"
)

// Compare compares two Debian version strings
// ([epoch:]upstream[-revision]) the way dpkg does: it returns -1, 0 or 1.
func Compare(a, b string) int {
	ea, ua, ra := splitVersion(a)
	eb, ub, rb := splitVersion(b)
	if ea != eb {
		if ea < eb {
			return -1
		}
		return 1
	}
	if c := comparePart(ua, ub); c != 0 {
		return c
	}
	return comparePart(ra, rb)
}

func splitVersion(v string) (epoch int, upstream, revision string) {
	if e, rest, ok := strings.Cut(v, ":"); ok {
		for _, r := range e {
			if r < '0' || r > '9' {
				epoch = 0
				break
			}
			epoch = epoch*10 + int(r-'0')
		}
		v = rest
	}
	if i := strings.LastIndex(v, "-"); i >= 0 {
		return epoch, v[:i], v[i+1:]
	}
	return epoch, v, ""
}

// debOrder is dpkg's character weight: '~' sorts before everything, even
// the end of the string; letters sort before other characters.
func debOrder(c byte) int {
	switch {
	case c == '~':
		return -1
	case unicode.IsDigit(rune(c)):
		return 0
	case c == 0:
		return 0
	case unicode.IsLetter(rune(c)):
		return int(c)
	default:
		return int(c) + 256
	}
}

func comparePart(a, b string) int {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		firstDiff := 0
		for (i < len(a) && !isDigit(a[i])) || (j < len(b) && !isDigit(b[j])) {
			var ac, bc int
			if i < len(a) {
				ac = debOrder(a[i])
			}
			if j < len(b) {
				bc = debOrder(b[j])
			}
			if ac != bc {
				return sign(ac - bc)
			}
			i++
			j++
		}
		for i < len(a) && a[i] == '0' {
			i++
		}
		for j < len(b) && b[j] == '0' {
			j++
		}
		for i < len(a) && isDigit(a[i]) && j < len(b) && isDigit(b[j]) {
			if firstDiff == 0 {
				firstDiff = int(a[i]) - int(b[j])
			}
			i++
			j++
		}
		if i < len(a) && isDigit(a[i]) {
			return 1
		}
		if j < len(b) && isDigit(b[j]) {
			return -1
		}
		if firstDiff != 0 {
			return sign(firstDiff)
		}
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// Upstream strips the epoch and the Debian revision, and a
// repack suffix such as "~ds1" or "+dfsg", from a Debian version:
// "1:1.7.24~ds1-10" gives "1.7.24".
func Upstream(v string) string {
	_, u, _ := splitVersion(v)
	if i := strings.IndexAny(u, "~+"); i >= 0 {
		u = u[:i]
	}
	return u
}

// Satisfies reports whether an installed Debian version satisfies
// a spec constraint: ">=X", "<=X", "=X" (the upstream version equals X, or
// starts with X followed by a dot when X has fewer components) or "~X.Y"
// (same major.minor, at least X.Y[.Z]). A bare version means "=".
func Satisfies(installed, constraint string) (bool, error) {
	op, want := "=", constraint
	for _, p := range []string{">=", "<=", "=", "~"} {
		if strings.HasPrefix(constraint, p) {
			op, want = p, strings.TrimPrefix(constraint, p)
			break
		}
	}
	if want == "" {
		return false, fmt.Errorf("empty version in constraint %q", constraint)
	}
	up := Upstream(installed)
	switch op {
	case ">=":
		return Compare(up, want) >= 0, nil
	case "<=":
		return Compare(up, want) <= 0, nil
	case "=":
		return up == want || strings.HasPrefix(up, want+"."), nil
	case "~":
		wp := strings.SplitN(want, ".", 3)
		if len(wp) < 2 {
			return false, fmt.Errorf("constraint %q needs major.minor", constraint)
		}
		if !strings.HasPrefix(up, wp[0]+"."+wp[1]+".") && up != wp[0]+"."+wp[1] {
			return false, nil
		}
		return Compare(up, want) >= 0, nil
	}
	return false, fmt.Errorf("unknown operator in constraint %q", constraint)
}
