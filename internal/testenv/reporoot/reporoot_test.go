package reporoot

import (
	"os"
	"path/filepath"
	"testing"
)

// From this package's directory the root is two levels up, past no other
// go.mod; from a builder module under hack/tools it is still the
// repository's, not that module's.
func TestDir(t *testing.T) {
	root, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if want := filepath.Clean(filepath.Join(wd, "..", "..", "..")); root != want {
		t.Fatalf("Dir() = %s, want %s", root, want)
	}
	t.Chdir(filepath.Join(root, "hack", "tools", "etcd"))
	if got, err := Dir(); err != nil || got != root {
		t.Fatalf("from hack/tools/etcd: Dir() = %q, %v; want %s", got, err, root)
	}
	t.Chdir(t.TempDir())
	if _, err := Dir(); err == nil {
		t.Fatal("Dir() found a root above a temp dir")
	}
}

func TestModulePath(t *testing.T) {
	for in, want := range map[string]string{
		"module github.com/nodeforge/nodeforge\n\ngo 1.26\n": ModulePath,
		"// comment\nmodule \"example.com/x\"\n":             "example.com/x",
		"go 1.26\n":                                          "",
	} {
		if got := modulePath([]byte(in)); got != want {
			t.Errorf("modulePath(%q) = %q, want %q", in, got, want)
		}
	}
}
