package checksum

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, size, err := File(p)
	if err != nil {
		t.Fatal(err)
	}
	// sha256("abc"), FIPS 180-2 appendix B.1.
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; sum != want || size != 3 {
		t.Errorf("File = %s, %d; want %s, 3", sum, size, want)
	}
	if _, _, err := File(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) {
		t.Errorf("missing file: err %v, want not-exist", err)
	}
}

func TestCopy(t *testing.T) {
	var dst strings.Builder
	sum, n, err := Copy(&dst, strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; sum != want || n != 3 || dst.String() != "abc" {
		t.Errorf("Copy = %s, %d, copied %q; want %s, 3, \"abc\"", sum, n, dst.String(), want)
	}
}
