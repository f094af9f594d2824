package builder

import (
	"fmt"
	"strconv"
	"strings"
)

// compareDebVersions compares Debian versions as dpkg does: <0, 0, >0.
func compareDebVersions(a, b string) int {
	ea, ua, ra := splitDebVersion(a)
	eb, ub, rb := splitDebVersion(b)
	if ea != eb {
		if ea < eb {
			return -1
		}
		return 1
	}
	if c := compareDebPart(ua, ub); c != 0 {
		return c
	}
	return compareDebPart(ra, rb)
}

func splitDebVersion(v string) (epoch int, upstream, revision string) {
	if i := strings.IndexByte(v, ':'); i >= 0 {
		epoch, _ = strconv.Atoi(v[:i])
		v = v[i+1:]
	}
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		return epoch, v[:i], v[i+1:]
	}
	return epoch, v, ""
}

func debOrder(c byte) int {
	switch {
	case isDigit(c):
		return 0
	case (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
		return int(c)
	case c == '~':
		return -1
	}
	return int(c) + 256
}

// compareDebPart is dpkg's verrevcmp.
func compareDebPart(a, b string) int {
	for len(a) > 0 || len(b) > 0 {
		for (len(a) > 0 && !isDigit(a[0])) || (len(b) > 0 && !isDigit(b[0])) {
			ac, bc := 0, 0
			if len(a) > 0 {
				ac = debOrder(a[0])
			}
			if len(b) > 0 {
				bc = debOrder(b[0])
			}
			if ac != bc {
				return sign(ac - bc)
			}
			if len(a) > 0 {
				a = a[1:]
			}
			if len(b) > 0 {
				b = b[1:]
			}
		}
		for len(a) > 0 && a[0] == '0' {
			a = a[1:]
		}
		for len(b) > 0 && b[0] == '0' {
			b = b[1:]
		}
		firstDiff := 0
		for len(a) > 0 && isDigit(a[0]) && len(b) > 0 && isDigit(b[0]) {
			if firstDiff == 0 {
				firstDiff = int(a[0]) - int(b[0])
			}
			a, b = a[1:], b[1:]
		}
		if len(a) > 0 && isDigit(a[0]) {
			return 1
		}
		if len(b) > 0 && isDigit(b[0]) {
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

// upstreamNumbers returns the leading dotted numbers of a Debian version's
// upstream part: "1:1.7.24~ds1-6+deb13u1" -> [1 7 24].
func upstreamNumbers(v string) []int {
	_, up, _ := splitDebVersion(v)
	var out []int
	for _, f := range strings.Split(up, ".") {
		end := 0
		for end < len(f) && isDigit(f[end]) {
			end++
		}
		if end == 0 {
			break
		}
		n, _ := strconv.Atoi(f[:end])
		out = append(out, n)
		if end < len(f) {
			break
		}
	}
	return out
}

// satisfies reports whether a Debian version's upstream part meets a
// constraint of the form [>=|<=|=|~]X.Y[.Z] (no operator means >=; "~"
// means the same X.Y and at least X.Y.Z).
func satisfies(version, constraint string) (bool, error) {
	op := ">="
	for _, o := range []string{">=", "<=", "=", "~"} {
		if strings.HasPrefix(constraint, o) {
			op, constraint = o, strings.TrimPrefix(constraint, o)
			break
		}
	}
	want := upstreamNumbers(constraint)
	if len(want) < 2 {
		return false, fmt.Errorf("bad version constraint %q", constraint)
	}
	have := upstreamNumbers(version)
	cmp := 0
	for i := range want {
		h := 0
		if i < len(have) {
			h = have[i]
		}
		if h != want[i] {
			cmp = sign(h - want[i])
			break
		}
	}
	switch op {
	case ">=":
		return cmp >= 0, nil
	case "<=":
		return cmp <= 0, nil
	case "=":
		return cmp == 0, nil
	default: // "~"
		return len(have) >= 2 && have[0] == want[0] && have[1] == want[1] && cmp >= 0, nil
	}
}
