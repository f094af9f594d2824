package builder

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/nodeforge/nodeforge/internal/manifest"
)

func TestCheckUpdates(t *testing.T) {
	e := newBuildEnv(t)
	e.run.versions = map[string]string{
		"vim":     "2:9.1.1230-2",             // newer than installed: an upgrade
		"jq":      "1.7.1-7",                  // newer, but the spec pins 1.7.1-6
		"kubelet": "1.37.3-1.1",               // newer, but kubernetes.version pins 1.37.2
		"libgone": "",                         // offered by no repository
		"htop":    "3.4.1-5",                  // installed as is
		"libc6":   "2.41-12+deb13u1",          // a dependency nobody asked for: an upgrade too
		"zlib1g":  "1:1.3.dfsg+really1.3.1-1", // older than installed: not a downgrade
	}
	e.run.older = map[string]string{"jq": "1.7.1-6", "kubelet": "1.37.2-1.1"}
	installed := []manifest.Package{
		{Name: "zlib1g", Version: "1:1.3.dfsg+really1.3.1-2", Architecture: "amd64"},
		{Name: "vim", Version: "2:9.1.1230-1", Architecture: "amd64"},
		{Name: "jq", Version: "1.7.1-6", Architecture: "amd64"},
		{Name: "kubelet", Version: "1.37.2-1.1", Architecture: "amd64"},
		{Name: "libgone", Version: "1.0", Architecture: "all"},
		{Name: "htop", Version: "3.4.1-5", Architecture: "amd64"},
		{Name: "libc6", Version: "2.41-12", Architecture: "amd64"},
	}
	u, err := CheckUpdates(context.Background(), e.opts, kubeContent(), installed)
	if err != nil {
		t.Fatalf("CheckUpdates: %v", err)
	}
	want := []manifest.PackageChange{
		{Name: "libc6", Architecture: "amd64", From: "2.41-12", To: "2.41-12+deb13u1"},
		{Name: "vim", Architecture: "amd64", From: "2:9.1.1230-1", To: "2:9.1.1230-2"},
	}
	if len(u.Upgrades) != len(want) || u.Upgrades[0] != want[0] || u.Upgrades[1] != want[1] {
		t.Errorf("upgrades = %+v, want %+v", u.Upgrades, want)
	}
	if len(u.Unavailable) != 1 || u.Unavailable[0] != (manifest.PackageChange{Name: "libgone", Architecture: "all", From: "1.0"}) {
		t.Errorf("unavailable = %+v", u.Unavailable)
	}
	if u.Checked != len(installed) || !strings.HasPrefix(u.Digest, "sha256:") || len(u.Digest) != 71 {
		t.Errorf("checked %d, digest %q", u.Checked, u.Digest)
	}
	if s := u.Summary(); s != "2 of 7 packages have newer versions: libc6 2.41-12 → 2.41-12+deb13u1, vim 2:9.1.1230-1 → 2:9.1.1230-2; 1 no longer offered by any repository" {
		t.Errorf("summary = %q", s)
	}

	// One resolution pass, nothing else: no install, no image.
	if len(e.run.commands) != 1 || !strings.Contains(e.run.commands[0], "--format=null") {
		t.Errorf("commands = %q; want the resolution pass alone", e.run.commands)
	}
	for _, p := range installed {
		if !strings.Contains(e.run.commands[0], "'"+p.Name+"'") {
			t.Errorf("madison was not asked for %s", p.Name)
		}
	}
	if left, _ := os.ReadDir(e.opts.WorkDir); len(left) != 0 {
		t.Errorf("work dir not cleaned: %v", left)
	}

	// The same new versions found again have the same digest; other ones another.
	again, err := CheckUpdates(context.Background(), e.opts, kubeContent(), installed)
	if err != nil || again.Digest != u.Digest {
		t.Errorf("second check: %v, digest %q, want %q", err, again.Digest, u.Digest)
	}
	e.run.versions["vim"] = "2:9.1.1230-3"
	other, err := CheckUpdates(context.Background(), e.opts, kubeContent(), installed)
	if err != nil || other.Digest == u.Digest {
		t.Errorf("a newer vim: %v, digest %q unchanged", err, other.Digest)
	}
}

func TestCheckUpdatesCurrentAndBadInput(t *testing.T) {
	e := newBuildEnv(t)
	u, err := CheckUpdates(context.Background(), e.opts, kubeContent(), []manifest.Package{{Name: "htop", Version: "1.0-1", Architecture: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Upgrades)+len(u.Unavailable) != 0 || u.Digest != "" || u.Summary() != "all 1 packages are current" {
		t.Errorf("updates = %+v (%s)", u, u.Summary())
	}
	if _, err := CheckUpdates(context.Background(), e.opts, kubeContent(), nil); err == nil {
		t.Error("no installed packages: want an error")
	}
	e.run.failOn = "mmdebstrap"
	e.run.failOutput = []string{"E: The repository does not have a Release file."}
	_, err = CheckUpdates(context.Background(), e.opts, kubeContent(), []manifest.Package{{Name: "htop", Version: "1.0-1"}})
	var se *StepError
	if err == nil || !errors.As(err, &se) || se.Step != StepResolve {
		t.Errorf("an unreachable mirror: err = %v, want a resolve StepError", err)
	}
}
