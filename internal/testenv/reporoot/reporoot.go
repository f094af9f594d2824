// Package reporoot finds the repository's root, the directory of the
// nodeforge module's go.mod, from a test's working directory: go test runs
// each package's tests in its source directory. Tests use it to reach the
// repository's scripts (hack/) and files. It does not use the test's own
// source path (runtime.Caller): builds with -trimpath, make's default,
// record module-relative paths there.
package reporoot

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ModulePath is the module whose root is looked for; the builder modules
// under hack/tools have go.mod files of their own.
const ModulePath = "github.com/nodeforge/nodeforge"

// Dir returns the repository root above the working directory.
func Dir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && modulePath(b) == ModulePath {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod of %s in %s or above", ModulePath, wd)
		}
		d = parent
	}
}

// modulePath is the module directive of a go.mod.
func modulePath(gomod []byte) string {
	s := bufio.NewScanner(bytes.NewReader(gomod))
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
