package debian

import (
	"testing"
)

func TestParseStatus(t *testing.T) {
	status := `Package: kubelet
Status: hold ok installed
Priority: optional
Version: 1.37.2-1.1
Architecture: amd64
Description: node agent
 continued description line
 .

Package: containerd
Status: install ok installed
Version: 1.7.24~ds1-6+deb13u1
Architecture: amd64

Package: broken
Status: install reinstreq half-installed
Version: 1.0

Package: removed
Status: deinstall ok config-files
Version: 2.0
`
	pkgs, err := ParseStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name            string
		version         string
		installed, held bool
	}{
		{"kubelet", "1.37.2-1.1", true, true},
		{"containerd", "1.7.24~ds1-6+deb13u1", true, false},
		{"broken", "1.0", false, false},
		{"removed", "2.0", false, false},
	}
	for _, tt := range tests {
		p, ok := pkgs[tt.name]
		if !ok {
			t.Fatalf("%s missing", tt.name)
		}
		if p.Version != tt.version || p.Installed() != tt.installed || p.Held() != tt.held {
			t.Errorf("%s = %+v, want version %s installed %v held %v", tt.name, p, tt.version, tt.installed, tt.held)
		}
	}
	if _, err := ParseStatus([]byte("Package: x\nStatus: install ok\n")); err == nil {
		t.Error("malformed Status accepted")
	}
}

func TestCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.1", -1},
		{"1.10", "1.9", 1},
		{"1.0~rc1", "1.0", -1},
		{"1:0.9", "2.0", 1},
		{"1.7.24~ds1-6", "1.7.24~ds1-10", -1},
		{"1.0a", "1.0", 1},
		{"1.0+b1", "1.0", 1},
		{"1.37.2-1.1", "1.37.2-1.1", 0},
	}
	for _, tt := range tests {
		if got := Compare(tt.a, tt.b); got != tt.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := Compare(tt.b, tt.a); got != -tt.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
}

func TestSatisfies(t *testing.T) {
	tests := []struct {
		installed, constraint string
		want                  bool
	}{
		{"1.7.24~ds1-6+deb13u1", ">=1.7.23", true},
		{"1.7.22-1", ">=1.7.23", false},
		{"1.7.24~ds1-6", "=1.7.24", true},
		{"1.7.24~ds1-6", "=1.7", true},
		{"1.7.24~ds1-6", "=1.7.2", false},
		{"2.0.1-1", "~1.7.23", false},
		{"1.7.30-1", "~1.7.23", true},
		{"1.37.2-1.1", "=1.37.2", true},
		{"1.37.20-1.1", "=1.37.2", false},
		{"1.7.24-1", "<=1.7.24", true},
	}
	for _, tt := range tests {
		got, err := Satisfies(tt.installed, tt.constraint)
		if err != nil || got != tt.want {
			t.Errorf("Satisfies(%q, %q) = %v, %v; want %v", tt.installed, tt.constraint, got, err, tt.want)
		}
	}
}

// TestVersionEdgeCases holds the cases the builder and verify used to
// answer differently, and dpkg's ordering details.
func TestVersionEdgeCases(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1.7.24~ds1-6+deb13u1", "1.7.24~ds1-6", 1},
		{"1.7.24~ds1-6", "1.7.24-1", -1},
		{"2:9.1", "9.2", 1},
		{"1.37.2-1.1", "1.37.10-1.1", -1},
	} {
		if got := Compare(tc.a, tc.b); got != tc.want {
			t.Errorf("Compare(%s, %s) = %d; want %d", tc.a, tc.b, got, tc.want)
		}
	}
	for _, tc := range []struct {
		v, c string
		want bool
	}{
		// A bare version is an exact match (like "="), never a minimum.
		{"1.7.24-1", "1.7", true},
		{"1.7.24-1", "1.7.23", false},
		{"1.7.24~ds1-6", "~1.7", true},
		{"1.8.0-1", "~1.7", false},
		{"2.0.0-1", "<=1.7.23", false},
	} {
		got, err := Satisfies(tc.v, tc.c)
		if err != nil || got != tc.want {
			t.Errorf("Satisfies(%s, %s) = %v, %v; want %v", tc.v, tc.c, got, err, tc.want)
		}
	}
	if _, err := Satisfies("1.0", ">="); err == nil {
		t.Error("an empty constraint version must be an error")
	}
}
