package integration

// Integration tests of internal/verify against a real Debian trixie image:
// the cloud-base image the builder makes for the whole package
// (fixture_test.go), or the qcow2 in NODEFORGE_VERIFY_IMAGE with its
// NodeImage YAML in NODEFORGE_VERIFY_NODEIMAGE.
//
// Cost: two full TCG boots (the good image, and one whose cloud-init
// fails; about 1-2 minutes each here), two short boots (a zeroed boot
// sector, a kernel panic; under 30 s each), and offline runs (about 10 s
// each) on deliberately broken copies. Tests skip when tools or root are missing,
// unless NODEFORGE_REQUIRE_INTEGRATION=1, which turns skips into failures.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/verify"
)

const (
	verifyRequireEnv  = "NODEFORGE_REQUIRE_INTEGRATION"
	verifyBootTimeout = 8 * time.Minute
)

// verifyUnavailable skips, or fails under NODEFORGE_REQUIRE_INTEGRATION=1.
func verifyUnavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(verifyRequireEnv) == "1" {
		t.Fatalf("%s (%s=1)", msg, verifyRequireEnv)
	}
	t.Skip(msg + "; set " + verifyRequireEnv + "=1 to make this a failure")
}

func verifyNeedTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			verifyUnavailable(t, "%s is not installed", tool)
		}
	}
}

// verifyFixture is the image under test and the content it was built from.
type verifyFixture struct {
	path    string
	content imagev1.ImageContent
}

// rawContent is the content with the output a broken raw copy has.
func (f verifyFixture) rawContent() imagev1.ImageContent {
	c := f.content
	c.Output.Format = imagev1.FormatRaw
	c.Output.Compression = imagev1.CompressionNone
	return c
}

var (
	verifyRawOnce sync.Once
	verifyRaw     string
	verifyRawErr  error
)

// verifyImage returns the image under test: NODEFORGE_VERIFY_IMAGE (a qcow2)
// with the NodeImage YAML in NODEFORGE_VERIFY_NODEIMAGE when set, else the
// shared cloud-base image the builder makes (fixture_test.go).
func verifyImage(t *testing.T) verifyFixture {
	t.Helper()
	verifyNeedTools(t, "qemu-img", "debugfs", "e2fsck", "mcopy")
	p := os.Getenv("NODEFORGE_VERIFY_IMAGE")
	if p == "" {
		img := builtCloudBase(t)
		return verifyFixture{path: img.Result.ImagePath, content: img.Content}
	}
	f := verifyFixture{path: p}
	if y := os.Getenv("NODEFORGE_VERIFY_NODEIMAGE"); y != "" {
		img, get, err := resolve.LoadFile(y)
		if err != nil {
			t.Fatal(err)
		}
		c, err := resolve.Content(context.Background(), &img.Spec.ImageContent, get)
		if err != nil {
			t.Fatal(err)
		}
		f.content = *c
	}
	f.content.Default()
	return f
}

func verifyLogReport(t *testing.T, r *verify.Report) {
	t.Helper()
	for _, c := range r.Checks {
		state := "ok"
		switch {
		case c.Skipped:
			state = "skip"
		case !c.Passed:
			state = "FAIL"
		}
		t.Logf("%-4s %-8s %-40s %6.1fs %s", state, c.Category, c.Name, c.DurationSeconds, c.Message)
	}
	t.Logf("summary %+v accelerator=%q ssh=%.0fs cloud-init=%.0fs boot=%.0fs", r.Summary, r.Accelerator, r.TimeToSSHSeconds, r.TimeToCloudInitSeconds, r.BootSeconds)
}

func verifyFind(t *testing.T, r *verify.Report, name string) verify.Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("report has no check %s", name)
	return verify.Check{}
}

func verifyFileDigest(t *testing.T, p string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

// TestVerifyGoodImage verifies the image offline and by booting it: every
// required check passes, the artifact is unchanged, and the JSON report
// has the documented shape.
func TestVerifyGoodImage(t *testing.T) {
	t.Parallel() // see fixture_test.go
	f := verifyImage(t)
	verifyNeedTools(t, "qemu-system-x86_64", "cloud-localds")
	before := verifyFileDigest(t, f.path)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), verifyBootTimeout+5*time.Minute)
	defer cancel()
	start := time.Now()
	// Without the cluster checks: kubeadm init under TCG takes minutes,
	// and make image and the e2e suite (in CI, .ci/run) run them on the
	// same content; TestVerifyCloudInitError runs them on a broken copy.
	r, err := verify.Verify(ctx, f.path, f.content, verify.Options{Boot: true, BootTimeout: verifyBootTimeout, WorkDir: work})
	if err != nil {
		t.Fatal(err)
	}
	verifyLogReport(t, r)
	t.Logf("verified in %s", time.Since(start).Round(time.Second))
	if fails := r.RequiredFailures(); len(fails) > 0 {
		for _, c := range fails {
			t.Errorf("required check %s failed: %s", c.Name, c.Message)
		}
		t.Logf("console tail:\n%s", r.ConsoleTail)
	}
	if r.Accelerator != verify.AccelKVM && r.Accelerator != verify.AccelTCG {
		t.Errorf("accelerator %q not recorded", r.Accelerator)
	}
	if r.Accelerator == verify.AccelTCG && r.AcceleratorNote == "" {
		t.Errorf("the boot chose tcg and its report does not say why (acceleratorNote empty)")
	}
	if r.TimeToSSHSeconds <= 0 || r.TimeToCloudInitSeconds < r.TimeToSSHSeconds {
		t.Errorf("timings not recorded: ssh %.1f cloud-init %.1f", r.TimeToSSHSeconds, r.TimeToCloudInitSeconds)
	}
	if after := verifyFileDigest(t, f.path); after != before {
		t.Errorf("the image changed during verification: sha256 %s -> %s", before, after)
	}
	verifyNoLeftovers(t, work)
	b, _ := json.Marshal(r)
	var shape struct {
		Checks  []map[string]any `json:"checks"`
		Summary map[string]int   `json:"summary"`
	}
	if err := json.Unmarshal(b, &shape); err != nil || len(shape.Checks) == 0 {
		t.Fatalf("report JSON: %v", err)
	}
	for _, k := range []string{"name", "category", "passed", "message", "durationSeconds"} {
		if _, ok := shape.Checks[0][k]; !ok {
			t.Errorf("check JSON lacks %s", k)
		}
	}
	if out := os.Getenv("NODEFORGE_VERIFY_REPORT"); out != "" {
		_ = os.WriteFile(out, b, 0o644)
	}
}

// verifyNoLeftovers asserts the work dir is empty and no QEMU runs on it.
func verifyNoLeftovers(t *testing.T, work string) {
	t.Helper()
	ents, _ := os.ReadDir(work)
	for _, e := range ents {
		t.Errorf("left behind in the work dir: %s", e.Name())
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), work) {
			t.Errorf("a process still uses the work dir: %s: %s", p, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// verifyRawCopy converts the image to a sparse raw file once; broken
// variants are sparse copies of it changed with debugfs -w or dd.
func verifyRawCopy(t *testing.T, f verifyFixture) string {
	t.Helper()
	verifyRawOnce.Do(func() {
		dir := filepath.Join(fixtureDir, "broken")
		if verifyRawErr = os.MkdirAll(dir, 0o755); verifyRawErr != nil {
			return
		}
		verifyRaw = filepath.Join(dir, "good.raw")
		if out, err := exec.Command("qemu-img", "convert", "-O", "raw", f.path, verifyRaw).CombinedOutput(); err != nil {
			verifyRawErr = fmt.Errorf("qemu-img convert: %w: %s", err, out)
		}
	})
	if verifyRawErr != nil {
		t.Fatal(verifyRawErr)
	}
	return verifyRaw
}

// verifyRootOffset finds the root partition's byte offset with sfdisk.
func verifyRootOffset(t *testing.T, raw string) int64 {
	t.Helper()
	out, err := exec.Command("sfdisk", "--json", raw).Output()
	if err != nil {
		t.Fatalf("sfdisk --json: %v", err)
	}
	var pt struct {
		PartitionTable struct {
			Partitions []struct {
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Type  string `json:"type"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil {
		t.Fatal(err)
	}
	var best, bestSize int64
	for _, p := range pt.PartitionTable.Partitions {
		if p.Size > bestSize {
			best, bestSize = p.Start, p.Size
		}
	}
	return best * 512
}

// verifyDebugfsWrite runs debugfs -w requests against the root filesystem.
func verifyDebugfsWrite(t *testing.T, raw string, off int64, reqs ...string) {
	t.Helper()
	for _, req := range reqs {
		out, err := exec.Command("debugfs", "-w", "-R", req, fmt.Sprintf("%s?offset=%d", raw, off)).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs -w %q: %v: %s", req, err, out)
		}
	}
}

func verifyDebugfsCat(t *testing.T, raw string, off int64, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, fmt.Sprintf("%s?offset=%d", raw, off)).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestVerifyBrokenImages feeds deliberately broken copies of the image and
// asserts the matching check fails with a message saying what is wrong.
func TestVerifyBrokenImages(t *testing.T) {
	t.Parallel() // see fixture_test.go
	f := verifyImage(t)
	cases := []struct {
		name    string
		check   string
		message string
		breakIt func(t *testing.T, raw string, off int64)
	}{
		{
			name: "missing package", check: verify.PackageCheckName("prometheus-node-exporter"), message: "not installed",
			breakIt: func(t *testing.T, raw string, off int64) {
				status := verifyDebugfsCat(t, raw, off, "/var/lib/dpkg/status")
				var kept []string
				for _, st := range strings.Split(status, "\n\n") {
					if !strings.HasPrefix(st, "Package: prometheus-node-exporter\n") {
						kept = append(kept, st)
					}
				}
				verifyWriteRootFile(t, raw, off, "/var/lib/dpkg/status", strings.Join(kept, "\n\n"))
			},
		},
		{
			name: "swap left in fstab", check: verify.CheckFstabNoSwap, message: "/swapfile",
			breakIt: func(t *testing.T, raw string, off int64) {
				fstab := verifyDebugfsCat(t, raw, off, "/etc/fstab") + "/swapfile none swap sw 0 0\n"
				verifyWriteRootFile(t, raw, off, "/etc/fstab", fstab)
			},
		},
		{
			name: "SSH host keys left in", check: verify.CheckHygieneSSHKeys, message: "ssh_host_ed25519_key",
			breakIt: func(t *testing.T, raw string, off int64) {
				verifyWriteRootFile(t, raw, off, "/etc/ssh/ssh_host_ed25519_key",
					"-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
			},
		},
		{
			name: "containerd loads CNI plugins from Debian's dir", check: verify.CheckContainerdCNIDir, message: "/usr/lib/cni",
			breakIt: func(t *testing.T, raw string, off int64) {
				verifyWriteRootFile(t, raw, off, "/etc/containerd/config.toml", verifyDebianContainerdConfig(t, raw, off))
			},
		},
		{
			name: "containerd with the cgroupfs driver", check: verify.CheckContainerdCgroup, message: "SystemdCgroup = false",
			breakIt: func(t *testing.T, raw string, off int64) {
				verifyWriteRootFile(t, raw, off, "/etc/containerd/config.toml", verifyDebianContainerdConfig(t, raw, off))
			},
		},
		{
			name: "zeroed boot sector", check: verify.CheckBootloaderBIOS, message: "MBR",
			breakIt: func(t *testing.T, raw string, _ int64) {
				out, err := exec.Command("dd", "if=/dev/zero", "of="+raw, "bs=512", "count=1", "conv=notrunc").CombinedOutput()
				if err != nil {
					t.Fatalf("dd: %v: %s", err, out)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := verifyBrokenCopy(t, f, strings.ReplaceAll(tc.name, " ", "-"), func(raw string, off int64) { tc.breakIt(t, raw, off) })
			r, err := verify.Verify(context.Background(), raw, f.rawContent(), verify.Options{WorkDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			got := verifyFind(t, r, tc.check)
			if got.Passed || !got.Required {
				t.Fatalf("%s = %+v, want a failed required check", tc.check, got)
			}
			if !strings.Contains(got.Message, tc.message) {
				t.Errorf("%s message %q does not mention %q", tc.check, got.Message, tc.message)
			}
			t.Logf("%s: %s", tc.check, got.Message)
			if len(r.RequiredFailures()) == 0 {
				t.Error("no required failure: the CLI would exit 0")
			}
		})
	}
}

// TestVerifyUnbootableImage boots an image whose boot sector is zeroed: the
// boot test must end well within its timeout with a failed boot-ssh that
// carries the console (firmware) tail, QEMU reaped and the work dir clean.
func TestVerifyUnbootableImage(t *testing.T) {
	t.Parallel() // see fixture_test.go
	f := verifyImage(t)
	verifyNeedTools(t, "qemu-system-x86_64", "cloud-localds")
	dir := t.TempDir()
	img := filepath.Join(dir, "unbootable.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", f.path, "-F", "qcow2", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-c", "write -z 0 512", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	// The image keeps the good image as its backing file; only its boot
	// sector differs. (qemu-img-no-backing-file fails offline, as it should.)
	timeout := 3 * time.Minute
	work := t.TempDir()
	start := time.Now()
	r, err := verify.Verify(context.Background(), img, f.content, verify.Options{
		Boot: true, BootTimeout: timeout, WorkDir: work,
	})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	ssh := verifyFind(t, r, verify.CheckBootSSH)
	t.Logf("boot-ssh after %s: %s", elapsed.Round(time.Second), ssh.Message)
	t.Logf("console tail:\n%s", r.ConsoleTail)
	if ssh.Passed {
		t.Fatal("an image with a zeroed boot sector answered SSH")
	}
	if elapsed > timeout+2*time.Minute {
		t.Errorf("verification took %s, boot timeout %s", elapsed, timeout)
	}
	if strings.TrimSpace(r.ConsoleTail) == "" {
		t.Error("no console tail in the report")
	}
	if ci := verifyFind(t, r, verify.CheckBootCloudInit); ci.Passed || !strings.Contains(ci.Message, "not run") {
		t.Errorf("boot-cloud-init-done = %+v, want not run", ci)
	}
	verifyNoLeftovers(t, work)
}

// verifyBrokenCopy returns a sparse raw copy of the image under test with
// fix applied to its root file system (debugfs), removed at the end.
func verifyBrokenCopy(t *testing.T, f verifyFixture, name string, fix func(raw string, off int64)) string {
	t.Helper()
	verifyNeedTools(t, "sfdisk", "cp")
	good := verifyRawCopy(t, f)
	raw := filepath.Join(filepath.Dir(good), name+".raw")
	if out, err := exec.Command("cp", "--sparse=always", good, raw).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	t.Cleanup(func() { os.Remove(raw) })
	fix(raw, verifyRootOffset(t, good))
	return raw
}

// verifyDebianContainerdConfig is the image's containerd configuration
// with Debian's defaults put back: the CRI's CNI bin_dir /usr/lib/cni and
// SystemdCgroup = false (what containerd loads without nodeforge's edit).
func verifyDebianContainerdConfig(t *testing.T, raw string, off int64) string {
	t.Helper()
	cfg := verifyDebugfsCat(t, raw, off, "/etc/containerd/config.toml")
	broken := strings.Replace(cfg, `bin_dir = "/opt/cni/bin"`, `bin_dir = "/usr/lib/cni"`, 1)
	broken = strings.Replace(broken, "SystemdCgroup = true", "SystemdCgroup = false", 1)
	if strings.Count(broken, "/usr/lib/cni") == strings.Count(cfg, "/usr/lib/cni") || !strings.Contains(broken, "SystemdCgroup = false") {
		t.Fatalf("the image's containerd config has no bin_dir /opt/cni/bin or SystemdCgroup = true to change:\n%s", cfg)
	}
	return broken
}

// verifyWriteRootFile replaces (or adds) p in the root file system of raw.
func verifyWriteRootFile(t *testing.T, raw string, off int64, p, content string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), filepath.Base(p))
	if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	verifyDebugfsWrite(t, raw, off, "rm "+p, "write "+src+" "+p)
}

// TestVerifyKernelPanicFailsFast boots an image whose kernel panics: the
// boot test must see the panic on the console and fail at once, not wait
// for its timeout. (rdinit= names an initramfs init that does not exist, so
// the kernel mounts root= itself, cannot resolve UUID= without the
// initramfs, and panics; init= would not do, as initramfs-tools falls back
// to /sbin/init.)
func TestVerifyKernelPanicFailsFast(t *testing.T) {
	t.Parallel() // see fixture_test.go
	f := verifyImage(t)
	verifyNeedTools(t, "qemu-system-x86_64", "cloud-localds")
	raw := verifyBrokenCopy(t, f, "kernel-panic", func(raw string, off int64) {
		cfg := verifyDebugfsCat(t, raw, off, "/boot/grub/grub.cfg")
		broken := strings.ReplaceAll(cfg, " ro console=", " ro rdinit=/nonexistent-init panic=0 console=")
		if broken == cfg {
			t.Fatalf("grub.cfg has no kernel command line to change:\n%s", cfg)
		}
		verifyWriteRootFile(t, raw, off, "/boot/grub/grub.cfg", broken)
	})
	timeout := 8 * time.Minute
	work := t.TempDir()
	start := time.Now()
	r, err := verify.Verify(context.Background(), raw, f.rawContent(), verify.Options{Boot: true, BootTimeout: timeout, WorkDir: work})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	ssh := verifyFind(t, r, verify.CheckBootSSH)
	t.Logf("boot-ssh after %s: %s", elapsed.Round(time.Second), ssh.Message)
	if ssh.Passed || !strings.Contains(ssh.Message, "Kernel panic") {
		t.Fatalf("boot-ssh = %+v, want a failure naming the kernel panic", ssh)
	}
	// The panic is seen on the console; the timeout is never reached.
	if elapsed >= timeout/2 {
		t.Errorf("verification took %s: it waited for the %s boot timeout instead of failing on the panic", elapsed, timeout)
	}
	if !strings.Contains(r.ConsoleTail, "Kernel panic") {
		t.Errorf("the console tail does not show the panic:\n%s", r.ConsoleTail)
	}
	if ci := verifyFind(t, r, verify.CheckBootCloudInit); ci.Passed || !strings.Contains(ci.Message, "not run") {
		t.Errorf("boot-cloud-init-done = %+v, want not run", ci)
	}
	verifyNoLeftovers(t, work)
}

// TestVerifyCloudInitError boots an image whose cloud-init configuration
// has a failing bootcmd and whose containerd configuration points the CRI
// at Debian's CNI directory with the cgroupfs driver: SSH comes up,
// boot-cloud-init-done fails naming the failed module, the checks of what
// containerd actually loaded (config dump, and crictl info over the CRI)
// fail naming the wrong settings, and the other in-guest checks still run
// and are reported. The same copy lacks the CoreDNS image's configuration
// blob and has containerd read CNI networks from another directory: the
// cluster checks that follow in the same boot fail on each, and kubeadm
// init is not run. One boot serves all of these.
func TestVerifyCloudInitError(t *testing.T) {
	t.Parallel() // see fixture_test.go
	f := verifyImage(t)
	verifyNeedTools(t, "qemu-system-x86_64", "cloud-localds")
	// Two more faults a node would show only at kubeadm init, for the
	// cluster checks in the same boot: the CoreDNS image's configuration
	// blob gone from containerd's store (so the CRI no longer lists it),
	// and containerd reading CNI networks from a directory no CNI add-on
	// writes to.
	m, err := manifest.Read(strings.TrimSuffix(f.path, filepath.Ext(f.path)) + ".json")
	if err != nil {
		verifyUnavailable(t, "the image's manifest (for its preloaded images): %v", err)
	}
	var coredns manifest.ContainerImage
	for _, img := range m.Images {
		if strings.HasPrefix(img.Name, "registry.k8s.io/coredns/coredns:") {
			coredns = img
		}
	}
	if coredns.ID == "" {
		t.Fatalf("the image preloads no CoreDNS: %+v", m.Images)
	}
	raw := verifyBrokenCopy(t, f, "cloud-init-error", func(raw string, off int64) {
		verifyWriteRootFile(t, raw, off, "/etc/cloud/cloud.cfg.d/99-nodeforge-test-broken.cfg",
			"bootcmd:\n  - [sh, -c, \"echo nodeforge-test-bootcmd-fails; exit 3\"]\n")
		cfg := verifyDebianContainerdConfig(t, raw, off)
		broken := strings.Replace(cfg, `conf_dir = "/etc/cni/net.d"`, `conf_dir = "/etc/cni/nodeforge-elsewhere.d"`, 1)
		if broken == cfg {
			t.Fatalf("the image's containerd config has no conf_dir /etc/cni/net.d to change:\n%s", cfg)
		}
		verifyWriteRootFile(t, raw, off, "/etc/containerd/config.toml", broken)
		verifyDebugfsWrite(t, raw, off, "rm /var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/"+strings.TrimPrefix(coredns.ID, "sha256:"))
	})
	work := t.TempDir()
	r, err := verify.Verify(context.Background(), raw, f.rawContent(), verify.Options{
		Boot: true, BootTimeout: verifyBootTimeout, Cluster: true, ClusterTimeout: 5 * time.Minute, WorkDir: work,
	})
	if err != nil {
		t.Fatal(err)
	}
	verifyLogReport(t, r)
	if ssh := verifyFind(t, r, verify.CheckBootSSH); !ssh.Passed {
		t.Fatalf("boot-ssh = %+v, want passed (only cloud-init is broken)", ssh)
	}
	ci := verifyFind(t, r, verify.CheckBootCloudInit)
	if ci.Passed || !ci.Required || !strings.Contains(ci.Message, "bootcmd") {
		t.Fatalf("boot-cloud-init-done = %+v, want a failed required check naming bootcmd", ci)
	}
	for _, name := range []string{verify.CheckBootContainerdConfig, verify.CheckBootCrictl} {
		c := verifyFind(t, r, name)
		t.Logf("%s: %s", name, c.Message)
		if c.Passed || !strings.Contains(c.Message, "SystemdCgroup = false") || !strings.Contains(c.Message, "/usr/lib/cni") {
			t.Errorf("%s = %+v, want a failure naming SystemdCgroup = false and /usr/lib/cni", name, c)
		}
	}
	if c := verifyFind(t, r, verify.CheckBootContainerd); !c.Passed {
		t.Errorf("%s = %+v: containerd runs with the wrong settings too", verify.CheckBootContainerd, c)
	}
	var guestPassed int
	for _, ch := range r.Checks {
		if ch.Category == verify.Boot && ch.Name != verify.CheckBootSSH && ch.Name != verify.CheckBootCloudInit && ch.Passed {
			guestPassed++
		}
	}
	if guestPassed == 0 {
		t.Error("no in-guest check passed: a cloud-init error must not stop the others")
	}
	if len(r.RequiredFailures()) == 0 {
		t.Error("no required failure: the CLI would exit 0")
	}
	if strings.TrimSpace(r.ConsoleTail) == "" {
		t.Error("no console tail in the report of a failed boot")
	}
	// Each cluster fault fails its own check; kubeadm init and the checks
	// after it are recorded as not run.
	for _, want := range []struct{ check, message string }{
		{verify.CheckClusterImages, coredns.Name},
		{verify.CheckClusterCNI, "nodeforge-elsewhere.d"},
		{verify.CheckClusterInit, "not run: " + verify.CheckClusterImages + ", " + verify.CheckClusterCNI + " failed"},
		{verify.CheckClusterTestPod, "not run"},
	} {
		got := verifyFind(t, r, want.check)
		if got.Passed || !got.Required || got.Category != verify.Cluster || !strings.Contains(got.Message, want.message) {
			t.Errorf("%s = %+v, want a failed required cluster check mentioning %q", want.check, got, want.message)
		}
	}
	verifyNoLeftovers(t, work)
}
