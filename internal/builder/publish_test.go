package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A manifest that cannot be written or published leaves no image behind.
func TestBuildPublishFailureLeavesNoImage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault string // a non-empty directory in the way
	}{
		{"manifest write fails", ".test.json.partial"},
		{"manifest rename fails", "test.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newBuildEnv(t)
			if err := os.MkdirAll(filepath.Join(e.opts.OutDir, tc.fault, "x"), 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := Build(context.Background(), e.opts, kubeContent())
			var se *StepError
			if !errors.As(err, &se) || se.Step != StepManifest {
				t.Fatalf("err = %v; want a manifest step error", err)
			}
			if got := e.outFiles(t); !slices.Equal(got, []string{tc.fault}) {
				t.Errorf("output dir = %v; want only the fault %s", got, tc.fault)
			}
		})
	}
}

// A cleanup failure after a failed build is reported with the build's
// error, not dropped.
func TestBuildFailureAndCleanupFailure(t *testing.T) {
	e := newBuildEnv(t)
	fake := filepath.Join(t.TempDir(), "mountinfo")
	old := mountInfoPath
	mountInfoPath = fake
	t.Cleanup(func() { mountInfoPath = old })
	e.run.failOn = "mkfs.ext4"
	e.run.failOutput = []string{"mkfs.ext4: Could not allocate block"}
	e.run.afterFail = func(c Command) {
		// Something is still mounted in the tree: cleanup must refuse.
		root := c.Args[slices.Index(c.Args, "-d")+1]
		_ = os.WriteFile(fake, []byte("80 60 0:5 / "+root+"/dev rw - devtmpfs udev rw\n"), 0o644)
	}
	_, err := Build(context.Background(), e.opts, kubeContent())
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepDisk {
		t.Fatalf("err = %v; want the disk step's error first", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "step cleanup failed") || !strings.Contains(msg, "still mounted") {
		t.Errorf("err = %v; want the cleanup failure too", err)
	}
}

// A failure right after the work dir is made (here: build.log cannot be
// created, its path being too long) still removes the work dir.
func TestBuildEarlyFailureRemovesWorkDir(t *testing.T) {
	e := newBuildEnv(t)
	e.opts.Runner = nil
	// The work dir is WorkDir/test.build-N with N 1 to 10 digits: with
	// WorkDir/test.build- 4085 bytes long, the work dir (at most 4095)
	// can be made, WorkDir/test.build-N/build.log (at least 4096) cannot.
	const pathMax = 4096
	prefix := len("/test.build-")
	dir := e.opts.WorkDir
	for len(dir)+prefix < pathMax-11 {
		n := min(200, pathMax-11-prefix-len(dir)-1)
		dir = filepath.Join(dir, strings.Repeat("d", n))
	}
	if len(dir)+prefix != pathMax-11 {
		t.Fatalf("work dir path %d bytes; want %d", len(dir), pathMax-11-prefix)
	}
	e.opts.WorkDir = dir
	_, err := Build(context.Background(), e.opts, kubeContent())
	var se *StepError
	if !errors.As(err, &se) || se.Step != "plan" || !strings.Contains(err.Error(), "build.log") {
		t.Fatalf("err = %v; want the plan step failing to create build.log", err)
	}
	if got := e.workFiles(t); len(got) != 0 {
		t.Errorf("work dir after failure = %v; want empty", got)
	}
}
