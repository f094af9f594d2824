package builder

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/sandbox"
)

// fakeRunner plays the external tools: it records every command and makes
// the files the real tools would make, just enough for the next step. A
// command whose rendering contains failOn fails with failOutput.
type fakeRunner struct {
	t          *testing.T
	failOn     string
	failOutput []string
	// afterFail, when set, runs before the failing command returns (to
	// leave partial output behind, as a real tool would).
	afterFail func(c Command)
	// versions override the fake archive's version of a package (its
	// candidate); older adds an older one.
	versions, older map[string]string
	// simulateError makes the simulated install of the base fail with it.
	simulateError string

	mu       sync.Mutex
	commands []string
	cmds     []Command
	// bootstraps are the sandboxes mmdebstrap ran in, in order.
	bootstraps []sandbox.Spec
}

var (
	madisonOut = regexp.MustCompile(`> '([^']+/madison)'`)
	closureOut = regexp.MustCompile(`> '([^']+/base-closure)'`)
	quotedName = regexp.MustCompile(`'([a-z0-9.+-]+)'`)
)

// version is the fake archive's version of a package.
func (f *fakeRunner) version(name string) string {
	if v, ok := f.versions[name]; ok {
		return v
	}
	switch name {
	case "containerd":
		return "1.7.24~ds1-6"
	case "kubeadm", "kubelet", "kubectl":
		return "1.37.2-1.1"
	case "cri-tools":
		return "1.37.0-1.1"
	case "jq":
		return "1.7.1-6"
	}
	return "1.0-1"
}

func (f *fakeRunner) Run(_ context.Context, c Command) error {
	if c.Name == "chroot" || c.Name == "ansible-playbook" || c.Name == "mmdebstrap" {
		f.t.Errorf("%s runs unsandboxed", c.Short())
	}
	// A sandboxed command is recorded as what runs inside: "chroot ROOT
	// ARGV" on a tree, ARGV itself on a view of the host.
	if s, argv, ok := sandbox.Parse(c.Name, c.Args, c.Env); ok {
		if s.Root != "" {
			c.Name, c.Args = "chroot", append([]string{s.Root}, argv...)
		} else {
			c.Name, c.Args = argv[0], argv[1:]
		}
		if c.Name == "mmdebstrap" {
			f.mu.Lock()
			f.bootstraps = append(f.bootstraps, s)
			f.mu.Unlock()
		}
	}
	f.mu.Lock()
	f.commands = append(f.commands, c.String())
	f.cmds = append(f.cmds, c)
	f.mu.Unlock()
	if f.failOn != "" && strings.Contains(c.String(), f.failOn) {
		if f.afterFail != nil {
			f.afterFail(c)
		}
		return &CommandError{Command: c.String(), Err: errors.New("exit status 1"), Tail: f.failOutput}
	}
	switch c.Name {
	case "mmdebstrap":
		return f.mmdebstrap(c)
	case "tar":
		// Saving a base layer: the real tar's output stands for the tree.
		if i := slices.Index(c.Args, "-cf"); i >= 0 {
			return os.WriteFile(c.Args[i+1], []byte("base layer of "+c.Args[slices.Index(c.Args, "-C")+1]), 0o644)
		}
	case "chroot":
		if slices.Contains(c.Args, "containerd") && c.Stdout != nil {
			fmt.Fprint(c.Stdout, "version = 2\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = false\n  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n")
		}
	case "grub-mkimage":
		out := c.Args[slices.Index(c.Args, "-o")+1]
		img := make([]byte, 3*sector)
		binary.LittleEndian.PutUint16(img[grubBlocklist+10:], 0x820)
		return os.WriteFile(out, img, 0o644)
	case "qemu-img":
		if c.Args[0] == "convert" {
			return os.WriteFile(c.Args[len(c.Args)-1], []byte("QFI\xfb fake image"), 0o644)
		}
		if c.Args[0] == "info" && c.Stdout != nil {
			fmt.Fprint(c.Stdout, `{"virtual-size": 8589934592, "format": "qcow2"}`)
		}
	}
	return nil
}

func (f *fakeRunner) mmdebstrap(c Command) error {
	if slices.Contains(c.Args, "--format=null") {
		// The resolution pass: answer madison for every package asked,
		// and simulate the base's install.
		for _, a := range c.Args {
			m := madisonOut.FindStringSubmatch(a)
			if m == nil {
				continue
			}
			var b bytes.Buffer
			for _, q := range quotedName.FindAllStringSubmatch(a[:strings.Index(a, ">")], -1) {
				fmt.Fprintf(&b, "%s | %s | http://127.0.0.1/debian trixie/main amd64 Packages\n", q[1], f.version(q[1]))
				if v, ok := f.older[q[1]]; ok {
					fmt.Fprintf(&b, "%s | %s | http://127.0.0.1/debian trixie/main amd64 Packages\n", q[1], v)
				}
			}
			if err := os.WriteFile(m[1], b.Bytes(), 0o644); err != nil {
				return err
			}
			if m := closureOut.FindStringSubmatch(a); m != nil {
				b.Reset()
				sim := a[strings.Index(a, "apt-get --simulate"):]
				sim = sim[strings.Index(sim, " install ")+9 : strings.LastIndex(sim, ">")]
				if f.simulateError != "" {
					fmt.Fprintf(&b, "E: %s\n", f.simulateError)
				} else {
					for _, name := range append([]string{"libc6", "base-files"}, quotedName.FindAllString(sim, -1)...) {
						name = strings.Trim(name, "'")
						fmt.Fprintf(&b, "Inst %s (%s Debian:13.8/stable [amd64])\n", name, f.version(name))
					}
				}
				return os.WriteFile(m[1], b.Bytes(), 0o644)
			}
			return nil
		}
		return errors.New("no madison output path in the resolution hook")
	}
	// TARGET is the last argument before the MIRROR ones ("deb ...").
	root := c.Args[len(c.Args)-1]
	for i := len(c.Args) - 1; i > 0 && strings.HasPrefix(c.Args[i], "deb "); i-- {
		root = c.Args[i-1]
	}
	files := map[string]string{
		"var/lib/dpkg/status":                    "Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 13.8\nInstalled-Size: 400\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n",
		"boot/vmlinuz-6.12.0-cloud-amd64":        "kernel",
		"boot/initrd.img-6.12.0-cloud-amd64":     "initrd",
		"etc/shadow":                             "root::20000:0:99999:7:::\n",
		"usr/lib/cni/bridge":                     "cni",
		"etc/ssh/ssh_host_ed25519_key":           "secret",
		"var/log/apt/history.log":                "log",
		"var/lib/apt/lists/x_Packages":           "lists",
		"var/cache/apt/pkgcache.bin":             "cache",
		"var/lib/cloud/instance/obj.pkl":         "state",
		"etc/default/prometheus-node-exporter":   "# comment\nARGS=\"\"\n",
		"etc/machine-id":                         "0123456789abcdef0123456789abcdef\n",
		"usr/lib/systemd/systemd-resolved":       "bin",
		"etc/dpkg/dpkg.cfg.d/99mmdebstrap":       "force-unsafe-io\npath-exclude=/usr/share/man/*\n",
		"etc/apt/sources.list.d/.keep":           "",
		"etc/containerd/.keep":                   "",
		"var/cache/apt/archives/partial/.keep":   "",
		"var/cache/apt/archives/foo_1.0_all.deb": "deb",
	}
	if slices.Contains(c.Args, "--architectures=arm64") {
		// grub-efi-arm64-bin, which an arm64 image installs.
		files["usr/lib/grub/arm64-efi/kernel.img"] = "grub"
	}
	for p, content := range files {
		hp := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(hp, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

type recordingReporter struct {
	mu     sync.Mutex
	plan   []string
	events []Event
}

func (r *recordingReporter) Plan(s []string) { r.plan = s }
func (r *recordingReporter) Report(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

type buildEnv struct {
	opts Options
	rep  *recordingReporter
	run  *fakeRunner
}

func newBuildEnv(t *testing.T) *buildEnv {
	t.Helper()
	dir := t.TempDir()
	grub := filepath.Join(dir, "grub")
	for _, platform := range []string{"i386-pc", "x86_64-efi"} {
		if err := os.MkdirAll(filepath.Join(grub, platform), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(grub, "i386-pc", "boot.img"), make([]byte, sector), 0o644); err != nil {
		t.Fatal(err)
	}
	old := GrubDir
	GrubDir = grub
	t.Cleanup(func() { GrubDir = old })
	e := &buildEnv{rep: &recordingReporter{}, run: &fakeRunner{t: t}}
	e.opts = Options{
		Name:     "test",
		WorkDir:  filepath.Join(dir, "work"),
		OutDir:   filepath.Join(dir, "out"),
		CacheDir: filepath.Join(dir, "cache"),
		Runner:   e.run,
		Reporter: e.rep,
	}
	return e
}

func (e *buildEnv) outFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(e.opts.OutDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, x := range entries {
		names = append(names, x.Name())
	}
	return names
}

func (e *buildEnv) workFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(e.opts.WorkDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, x := range entries {
		names = append(names, x.Name())
	}
	return names
}

func TestBuildWithFakeTools(t *testing.T) {
	e := newBuildEnv(t)
	e.opts.KeepWork = true
	res, err := Build(context.Background(), e.opts, kubeContent())
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if got := e.outFiles(t); !slices.Equal(got, []string{"test.json", "test.qcow2"}) {
		t.Errorf("output files = %v", got)
	}
	m, err := manifest.Read(res.ManifestPath)
	if err != nil {
		t.Fatal(err)
	}
	c := kubeContent()
	want, _ := c.Digest()
	if m.SpecDigest != want || m.Image.SHA256 == "" || m.Image.Size == 0 || m.Image.VirtualSize != 8<<30 {
		t.Errorf("manifest = %+v", m)
	}
	if len(m.Packages) != 1 || m.Packages[0] != (manifest.Package{Name: "base-files", Version: "13.8", Architecture: "amd64", InstalledSizeKiB: 400}) {
		t.Errorf("packages = %+v", m.Packages)
	}
	if got := stepNames(mustPlan(t, c)); len(m.Steps) != len(got) {
		t.Errorf("step timings = %+v; want one per step %v", m.Steps, got)
	}
	if m.Base.KernelVersion != "6.12.0-cloud-amd64" {
		t.Errorf("kernel version = %q", m.Base.KernelVersion)
	}

	// Versions picked by resolve are pinned in the rootfs build.
	joined := strings.Join(e.run.commands, "\n")
	for _, want := range []string{"kubeadm=1.37.2-1.1", "containerd=1.7.24~ds1-6", "cri-tools=1.37.0-1.1", "apt-mark hold cri-tools kubeadm kubectl kubelet", "systemctl mask swap.target", "--skip=essential/unlink"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no command contains %q", want)
		}
	}

	// Provisioning and hygiene did their work on the tree.
	work := e.workFiles(t)
	if len(work) != 1 {
		t.Fatalf("work dir = %v", work)
	}
	root := filepath.Join(e.opts.WorkDir, work[0], "rootfs")

	// mmdebstrap, and with it every maintainer script, ran sandboxed (the
	// resolution pass, the base layer and the layer on top): on a view of
	// the builder that hides the credentials, in a user namespace of its
	// own, with only the work dir (the tree in it) and the package cache
	// writable. The runs that install packages (whose maintainer scripts
	// may come from a repository the author names) write only the cache's
	// archives and read its lists and base layers.
	if len(e.run.bootstraps) != 3 {
		t.Fatalf("mmdebstrap ran in %d sandboxes; want 3 (resolve, base layer, layer)", len(e.run.bootstraps))
	}
	for i, s := range e.run.bootstraps {
		writable, readOnly := []string{filepath.Dir(root), e.opts.CacheDir}, []string(nil)
		if i > 0 {
			writable = []string{filepath.Dir(root), filepath.Join(e.opts.CacheDir, "archives")}
			readOnly = []string{filepath.Join(e.opts.CacheDir, "lists"), filepath.Join(e.opts.CacheDir, "base")}
		}
		if s.Root != "" || !s.Bootstrap || !slices.Contains(s.Hidden, buildresult.CredentialsDir) ||
			!slices.Equal(s.Writable, writable) || !slices.Equal(s.ReadOnly, readOnly) {
			t.Errorf("mmdebstrap sandbox %d = %+v; want a bootstrap view writing only %s (reading %s), hiding the credentials", i, s, writable, readOnly)
		}
	}
	read := func(p string) string {
		b, _ := os.ReadFile(filepath.Join(root, p))
		return string(b)
	}
	exists := func(p string) bool { _, err := os.Lstat(filepath.Join(root, p)); return err == nil }
	for p, want := range map[string]string{
		ContainerdConfig:    "SystemdCgroup = true",
		CrictlConfig:        "runtime-endpoint: unix:///run/containerd/containerd.sock",
		NodeExporterReady:   `ss -Hltn "sport = :9100"`,
		ModulesLoadPath:     "br_netfilter\noverlay\n",
		SysctlPath:          "net.ipv4.ip_forward = 1",
		SSHDConfigPath:      "PasswordAuthentication no",
		NodeExporterDefault: `ARGS="--web.listen-address=:9100"`,
		DatasourcesPath:     "datasource_list: [ NoCloud, ConfigDrive, OpenStack, Ec2, None ]",
		"/etc/apt/sources.list.d/kubernetes.sources":   "Signed-By: /etc/apt/keyrings/kubernetes-apt-keyring.asc",
		"/etc/apt/keyrings/kubernetes-apt-keyring.asc": "BEGIN PGP PUBLIC KEY BLOCK",
		"/etc/shadow":         "root:*:",
		"/etc/fstab":          " / ext4 ",
		"/etc/hostname":       "localhost",
		"/boot/grub/grub.cfg": "linux /boot/vmlinuz-6.12.0-cloud-amd64 root=UUID=",
	} {
		if got := read(p); !strings.Contains(got, want) {
			t.Errorf("%s = %q; want it to contain %q", p, got, want)
		}
	}
	// containerd loads CNI plugins from the spec's directory.
	if got := read(ContainerdConfig); !strings.Contains(got, `bin_dir = "/opt/cni/bin"`) {
		t.Errorf("%s has no bin_dir = \"/opt/cni/bin\":\n%s", ContainerdConfig, got)
	}
	if swap := swapEntries(read("/etc/fstab")); len(swap) > 0 {
		t.Errorf("fstab has swap entries %q:\n%s", swap, read("/etc/fstab"))
	}
	if l, _ := os.Readlink(filepath.Join(root, "opt/cni/bin/bridge")); l != "/usr/lib/cni/bridge" {
		t.Errorf("/opt/cni/bin/bridge -> %q", l)
	}
	if l, _ := os.Readlink(filepath.Join(root, "etc/resolv.conf")); l != "../run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("resolv.conf -> %q", l)
	}
	for _, gone := range []string{"/etc/ssh/ssh_host_ed25519_key", "/var/log/apt/history.log", "/var/lib/apt/lists/x_Packages", "/var/cache/apt/pkgcache.bin", "/var/lib/cloud/instance", PolicyRCPath, "/var/cache/apt/archives/foo_1.0_all.deb"} {
		if exists(gone) {
			t.Errorf("%s survived hygiene", gone)
		}
	}
	if strings.Contains(read("/etc/dpkg/dpkg.cfg.d/99mmdebstrap"), "unsafe") {
		t.Error("force-unsafe-io left in the image's dpkg config")
	}
	if read("/etc/machine-id") != "" || !exists("/etc/machine-id") || !exists("/var/log/apt") {
		t.Error("machine-id not empty, or log directories removed")
	}

	// Progress: plan first, percent never decreases, ends at 100.
	if !slices.Equal(e.rep.plan, stepNames(mustPlan(t, c))) {
		t.Errorf("plan = %v", e.rep.plan)
	}
	last := -1
	for _, ev := range e.rep.events {
		if ev.Percent < last {
			t.Errorf("percent went back from %d to %d at %+v", last, ev.Percent, ev)
		}
		last = ev.Percent
	}
	if last != 100 {
		t.Errorf("final percent = %d", last)
	}
}

// swapEntries returns the fstab entries (not comments) of type swap.
func swapEntries(fstab string) []string {
	var out []string
	for _, l := range strings.Split(fstab, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && !strings.HasPrefix(f[0], "#") && f[2] == "swap" {
			out = append(out, l)
		}
	}
	return out
}

func TestSwapEntries(t *testing.T) {
	if got := swapEntries(fstab("u", true, "ABCD1234")); len(got) != 0 {
		t.Errorf("swap entries in the builder's fstab: %q", got)
	}
	withSwap := fstab("u", false, "") + "# /swapfile none swap sw 0 0\n/swapfile none swap sw 0 0\n"
	if got := swapEntries(withSwap); len(got) != 1 || got[0] != "/swapfile none swap sw 0 0" {
		t.Errorf("swapEntries = %q; want the one swap entry", got)
	}
}

func mustPlan(t *testing.T, c imagev1.ImageContent) []Step {
	t.Helper()
	s, err := Plan(c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBuildFailureReportsStepCauseAndOutput(t *testing.T) {
	long := make([]string, 45)
	for i := range long {
		long[i] = fmt.Sprintf("line %d", i+1)
	}
	for _, tc := range []struct {
		name     string
		failOn   string
		output   []string
		step     string
		partial  bool
		wantTail []string
	}{
		{"mirror unreachable", "--variant=custom", []string{"E: Failed to fetch InRelease", "E: mmdebstrap failed"}, "resolve", false, []string{"E: Failed to fetch InRelease", "E: mmdebstrap failed"}},
		{"rootfs fails", "--variant=minbase", long[len(long)-TailLines:], "rootfs", false, long[len(long)-TailLines:]},
		{"mkfs fails", "mkfs.ext4", []string{"mkfs.ext4: Could not allocate block"}, "disk", false, []string{"mkfs.ext4: Could not allocate block"}},
		{"convert leaves a partial image", "qemu-img convert", []string{"qemu-img: No space left on device"}, "convert", true, []string{"qemu-img: No space left on device"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newBuildEnv(t)
			e.run.failOn, e.run.failOutput = tc.failOn, tc.output
			if tc.partial {
				e.run.afterFail = func(c Command) {
					_ = os.WriteFile(c.Args[len(c.Args)-1], []byte("half an image"), 0o644)
				}
			}
			_, err := Build(context.Background(), e.opts, kubeContent())
			var se *StepError
			if !errors.As(err, &se) {
				t.Fatalf("Build error = %v (%T); want a *StepError", err, err)
			}
			if se.Step != tc.step {
				t.Errorf("step = %q; want %q", se.Step, tc.step)
			}
			if !slices.Equal(se.Output, tc.wantTail) {
				t.Errorf("output tail = %q; want %q", se.Output, tc.wantTail)
			}
			msg := err.Error()
			if !strings.Contains(msg, "step "+tc.step+" failed") || !strings.Contains(msg, tc.wantTail[len(tc.wantTail)-1]) {
				t.Errorf("error message lacks the step or the output:\n%s", msg)
			}
			var ce *CommandError
			if !errors.As(err, &ce) || !strings.Contains(ce.Command, tc.failOn) {
				t.Errorf("cause = %v; want the failing command", se.Cause)
			}
			if got := e.outFiles(t); len(got) != 0 {
				t.Errorf("output dir after failure = %v; want empty", got)
			}
			if got := e.workFiles(t); len(got) != 0 {
				t.Errorf("work dir after failure = %v; want empty", got)
			}
			var failed *Event
			for i := range e.rep.events {
				if e.rep.events[i].State == StateFailed {
					failed = &e.rep.events[i]
				}
			}
			if failed == nil || failed.Step != tc.step {
				t.Errorf("no failed event for %s: %+v", tc.step, e.rep.events)
			}
		})
	}
}

func TestBuildInputErrors(t *testing.T) {
	e := newBuildEnv(t)
	c := kubeContent()
	c.Kubernetes.Version = "v1.99.0"
	_, err := Build(context.Background(), e.opts, c)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "resolve" || !IsInputError(err) || !strings.Contains(err.Error(), "no version 1.99.0-*") {
		t.Fatalf("err = %v; want a resolve input error about kubeadm 1.99.0", err)
	}
	// The failure came before any root filesystem work.
	for _, cmd := range e.run.commands {
		if strings.Contains(cmd, "--variant=minbase") {
			t.Error("rootfs ran after resolve failed")
		}
	}
}

func TestBuildCancelled(t *testing.T) {
	e := newBuildEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Build(ctx, e.opts, kubeContent())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v; want context.Canceled", err)
	}
	if got := e.workFiles(t); len(got) != 0 {
		t.Errorf("work dir after cancel = %v", got)
	}
}

func TestParseMountsBelow(t *testing.T) {
	info := `22 1 0:21 / /proc rw - proc proc rw
80 60 0:5 / /w/b.build-1/rootfs/dev rw - devtmpfs udev rw
81 60 0:5 / /w/b.build-10/x rw - devtmpfs udev rw
82 60 0:5 / /w/b.build-1\040x/y rw - tmpfs t rw
`
	got, err := parseMountsBelow(strings.NewReader(info), "/w/b.build-1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"/w/b.build-1/rootfs/dev"}) {
		t.Errorf("mounts = %v", got)
	}
}
