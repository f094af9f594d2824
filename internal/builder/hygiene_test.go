package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A failed hygiene task names the task and its cause on one line: the
// failed progress event carries the first line only.
func TestHygieneErrorKeepsCauseOnFirstLine(t *testing.T) {
	root := t.TempDir()
	// /etc/machine-id is a non-empty directory: it cannot be emptied.
	if err := os.MkdirAll(filepath.Join(root, "etc/machine-id/x"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &build{root: root, rep: NopReporter{}, now: time.Now}
	err := b.hygiene(context.Background(), &HygieneParams{})
	if err == nil {
		t.Fatal("hygiene succeeded")
	}
	if got := firstLine(err.Error()); !strings.HasPrefix(got, "machine-id: ") || !strings.Contains(got, "is a directory") {
		t.Errorf("first line of the error = %q; want the task and its cause", got)
	}
	if !errors.Is(err, syscall.EISDIR) {
		t.Errorf("err = %v; want it to wrap the cause", err)
	}
}
