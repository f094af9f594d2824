package manifest

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestDiffPackages(t *testing.T) {
	g := NewWithT(t)
	older := []Package{
		{Name: "openssl", Version: "3.5.1-1", Architecture: "amd64"},
		{Name: "kubeadm", Version: "1.37.2-1.1", Architecture: "amd64"},
		{Name: "vim", Version: "2:9.1.1230-2", Architecture: "amd64"},
		{Name: "libc6", Version: "2.41-12", Architecture: "amd64"},
		{Name: "libc6", Version: "2.41-12", Architecture: "i386"},
		{Name: "zlib1g", Version: "1:1.3.dfsg+really1.3.1-1+b1", Architecture: "amd64"},
		{Name: "old-tool", Version: "1.0-1", Architecture: "all"},
	}
	newer := []Package{
		{Name: "zlib1g", Version: "1:1.3.dfsg+really1.3.1-1+b1", Architecture: "amd64"},
		// 1.37.10 is newer than 1.37.2: dpkg compares digit runs as numbers.
		{Name: "kubeadm", Version: "1.37.10-1.1", Architecture: "amd64"},
		{Name: "openssl", Version: "3.5.1-1+deb13u1", Architecture: "amd64"},
		// Without its epoch 9.2 would look newer; with it, it is older.
		{Name: "vim", Version: "9.2.0-1", Architecture: "amd64"},
		{Name: "libc6", Version: "2.41-12", Architecture: "amd64"},
		{Name: "jq", Version: "1.7.1-6", Architecture: "amd64"},
	}
	d := DiffPackages(older, newer)
	g.Expect(d.Upgraded).To(Equal([]PackageChange{
		{Name: "kubeadm", Architecture: "amd64", From: "1.37.2-1.1", To: "1.37.10-1.1"},
		{Name: "openssl", Architecture: "amd64", From: "3.5.1-1", To: "3.5.1-1+deb13u1"},
	}))
	g.Expect(d.Downgraded).To(Equal([]PackageChange{{Name: "vim", Architecture: "amd64", From: "2:9.1.1230-2", To: "9.2.0-1"}}))
	g.Expect(d.Added).To(Equal([]PackageChange{{Name: "jq", Architecture: "amd64", To: "1.7.1-6"}}))
	g.Expect(d.Removed).To(Equal([]PackageChange{
		{Name: "libc6", Architecture: "i386", From: "2.41-12"},
		{Name: "old-tool", Architecture: "all", From: "1.0-1"},
	}))
	g.Expect(d.Empty()).To(BeFalse())

	g.Expect(DiffPackages(older, older).Empty()).To(BeTrue())
	g.Expect(DiffPackages(nil, nil).Empty()).To(BeTrue())
	g.Expect(DiffPackages(nil, newer[:1]).Added).To(HaveLen(1))
}

func TestPackageDiffSummary(t *testing.T) {
	d := PackageDiff{
		Upgraded: []PackageChange{{Name: "libc6", Architecture: "amd64", From: "2.41-12", To: "2.41-12+deb13u1"}},
		Added:    []PackageChange{{Name: "jq", Architecture: "amd64", To: "1.7.1-6"}, {Name: "libjq1", Architecture: "amd64", To: "1.7.1-6"}},
		Removed:  []PackageChange{{Name: "nano", Architecture: "amd64", From: "8.4-1"}},
	}
	if got, want := d.Summary(1024), "upgraded libc6 2.41-12 → 2.41-12+deb13u1; added jq 1.7.1-6, libjq1 1.7.1-6; removed nano 8.4-1"; got != want {
		t.Errorf("Summary(1024) = %q, want %q", got, want)
	}
	// What does not fit is counted, in order: nothing after the first
	// change that did not fit is shown.
	if got, want := d.Summary(70), "upgraded libc6 2.41-12 → 2.41-12+deb13u1; and 3 more"; got != want {
		t.Errorf("Summary(70) = %q, want %q", got, want)
	}
	if got, want := d.Summary(10), "and 4 more"; got != want {
		t.Errorf("Summary(10) = %q, want %q", got, want)
	}
	for _, limit := range []int{10, 40, 70, 90, 1024} {
		if s := d.Summary(limit); len(s) > max(limit, len("and 4 more")) {
			t.Errorf("Summary(%d) is %d bytes: %q", limit, len(s), s)
		}
	}
	if s := (PackageDiff{}).Summary(100); s != "" {
		t.Errorf("no changes: %q", s)
	}
}
