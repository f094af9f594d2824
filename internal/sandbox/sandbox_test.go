package sandbox

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// probeEnv makes the test binary, copied into a sandbox, report what it can
// see and do there instead of running tests.
const probeEnv = "_NODEFORGE_SANDBOX_PROBE"

// report is what the probe found inside a sandbox.
type report struct {
	PID       int      `json:"pid"`
	Procs     []string `json:"procs"`
	Dev       []string `json:"dev"`
	CapBnd    uint64   `json:"capBnd"`
	CapEff    uint64   `json:"capEff"`
	Mount     string   `json:"mount"`   // error of mounting a tmpfs
	Mknod     string   `json:"mknod"`   // error of creating a block device node
	Sysrq     string   `json:"sysrq"`   // error of writing /proc/sysrq-trigger
	ProcSys   string   `json:"procSys"` // error of writing a sysctl
	Escape    string   `json:"escape"`  // what a chroot escape attempt found at "/"
	Read      []string `json:"read"`    // of Paths: readable ones
	Write     []string `json:"write"`   // of Paths: writable ones
	Hostname  string   `json:"hostname"`
	ExeDev    []string `json:"exeDev"`    // /dev of the dir the probe runs from
	SecretEnv bool     `json:"secretEnv"` // the helper's variable leaked
	Remount   string   `json:"remount"`   // error of remounting "/" read-write
	UserNS    string   `json:"userNS"`    // the user namespace it runs in
}

func TestMain(m *testing.M) {
	if paths, ok := os.LookupEnv(probeEnv); ok {
		probe(strings.Split(paths, ":"))
		return
	}
	os.Exit(m.Run())
}

func probe(paths []string) {
	var r report
	r.PID = os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			r.Procs = append(r.Procs, e.Name())
		}
	}
	devs, _ := os.ReadDir("/dev")
	for _, e := range devs {
		r.Dev = append(r.Dev, e.Name())
	}
	st, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:\t"); ok {
			r.CapBnd, _ = strconv.ParseUint(v, 16, 64)
		}
		if v, ok := strings.CutPrefix(l, "CapEff:\t"); ok {
			r.CapEff, _ = strconv.ParseUint(v, 16, 64)
		}
	}
	errText := func(err error) string {
		if err == nil {
			return "ok"
		}
		return err.Error()
	}
	_ = os.Mkdir("/tmp/m", 0o755)
	r.Mount = errText(unix.Mount("tmpfs", "/tmp/m", "tmpfs", 0, ""))
	r.Mknod = errText(unix.Mknod("/tmp/disk", unix.S_IFBLK|0o600, int(unix.Mkdev(8, 0))))
	r.Sysrq = errText(os.WriteFile("/proc/sysrq-trigger", []byte("h"), 0))
	r.ProcSys = errText(os.WriteFile("/proc/sys/kernel/domainname", []byte("x"), 0))
	r.Remount = errText(unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND, ""))
	r.UserNS, _ = os.Readlink("/proc/self/ns/user")
	// The classic escape: chroot into a subdirectory, climb out of it.
	if err := os.MkdirAll("/tmp/jail", 0o755); err == nil {
		if err := unix.Chroot("/tmp/jail"); err == nil {
			for range 64 {
				_ = os.Chdir("..")
			}
			_ = unix.Chroot(".")
		}
	}
	top, _ := os.ReadDir("/")
	var names []string
	for _, e := range top {
		names = append(names, e.Name())
	}
	r.Escape = strings.Join(names, ",")
	for _, p := range paths {
		if p == "" {
			continue
		}
		// A hidden path is covered by a mount: taking it away must fail.
		_ = unix.Unmount(p, unix.MNT_DETACH)
		if f, err := os.Open(filepath.Join(p, "marker")); err == nil {
			r.Read = append(r.Read, p)
			f.Close()
		}
		if err := os.WriteFile(filepath.Join(p, "written"), []byte("x"), 0o644); err == nil {
			r.Write = append(r.Write, p)
		}
	}
	r.Hostname, _ = os.Hostname()
	exeDev, _ := os.ReadDir(filepath.Join(filepath.Dir(os.Args[0]), "dev"))
	for _, e := range exeDev {
		r.ExeDev = append(r.ExeDev, e.Name())
	}
	_, r.SecretEnv = os.LookupEnv(helperEnv)
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a sandbox needs root (mount and PID namespaces)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare (util-linux) is not installed")
	}
}

// run runs argv in a sandbox and decodes the probe's report.
func run(t *testing.T, s Spec, paths []string, argv ...string) report {
	t.Helper()
	name, args, env, err := Exec(s, argv)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(append([]string{"PATH=/usr/bin:/bin"}, env...), probeEnv+"="+strings.Join(paths, ":"))
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sandboxed %v: %v\n%s", argv, err, stderr.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("probe output %q: %v\n%s", out.String(), err, stderr.String())
	}
	return r
}

// tree makes a root filesystem holding only a static copy of the test
// binary as /probe.
func tree(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if f, err := elf.Open(self); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatalf("the test binary is dynamically linked; the sandbox test needs a static one (CGO_ENABLED=0)")
			}
		}
		f.Close()
	}
	root := t.TempDir()
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(root, "probe"), os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return root
}

// checkConfined holds for every sandbox: nothing of the node reachable.
func checkConfined(t *testing.T, r report) {
	t.Helper()
	if r.PID != 1 || len(r.Procs) != 1 {
		t.Errorf("pid %d, processes %v; want only itself, as PID 1", r.PID, r.Procs)
	}
	for _, d := range r.Dev {
		if !slices.Contains([]string{"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd", "stdin", "stdout", "stderr"}, d) {
			t.Errorf("/dev has %s", d)
		}
	}
	var keep uint64
	for _, c := range KeepCapabilities {
		keep |= 1 << c
	}
	if r.CapBnd&^keep != 0 || r.CapEff&^keep != 0 {
		t.Errorf("bounding %#x, effective %#x; want within %#x", r.CapBnd, r.CapEff, keep)
	}
	if r.CapEff&(1<<unix.CAP_CHOWN) == 0 {
		t.Errorf("effective %#x lacks CAP_CHOWN: package installs would fail", r.CapEff)
	}
	for what, e := range map[string]string{"mount": r.Mount, "mknod": r.Mknod, "sysrq-trigger": r.Sysrq, "/proc/sys": r.ProcSys, "remount / read-write": r.Remount} {
		if e == "ok" {
			t.Errorf("%s succeeded in the sandbox", what)
		}
	}
	if r.SecretEnv {
		t.Errorf("the helper's %s reached the command", helperEnv)
	}
}

func TestTreeSandbox(t *testing.T) {
	needRoot(t)
	root := tree(t)
	// A marker on the host outside the tree: the escape must not find it.
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, Spec{Root: root, Hostname: "sandboxed"}, []string{outside, "/"}, "/probe")
	checkConfined(t, r)
	if r.Hostname != "sandboxed" {
		t.Errorf("hostname %q", r.Hostname)
	}
	if len(r.Read) != 0 {
		t.Errorf("reached the host's %v", r.Read)
	}
	if !slices.Contains(r.Write, "/") {
		t.Error("the tree is not writable")
	}
	if _, err := os.Stat(filepath.Join(root, "written")); err != nil {
		t.Errorf("the write did not land in the tree: %v", err)
	}
	// "/" after the chroot escape is still the tree (probe, the sandbox's
	// mount points, what the probe wrote), not the host's root.
	for _, n := range strings.Split(r.Escape, ",") {
		if !slices.Contains([]string{"probe", "proc", "sys", "dev", "run", "tmp", "written"}, n) {
			t.Errorf("after the escape attempt / has %q (%s)", n, r.Escape)
		}
	}
	// Nothing is left mounted on the host.
	if m, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(m, []byte(root)) {
		t.Errorf("mounts of the tree left on the host:\n%s", m)
	}
}

// markedDirs makes the dirs "writable", "hidden" and "other", each with a
// file "marker", outside /tmp, which a view replaces: else hiding and
// read-only would hold for the wrong reason.
func markedDirs(t *testing.T) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, n := range []string{"writable", "hidden", "other"} {
		d, err := os.MkdirTemp("/var/tmp", "sandbox-"+n+"-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		if err := os.WriteFile(filepath.Join(d, "marker"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		dirs[n] = d
	}
	return dirs
}

func TestViewSandbox(t *testing.T) {
	needRoot(t)
	dirs := markedDirs(t)
	// The probe runs from a writable dir: the view's /tmp, where the test
	// binary is, is a tmpfs of its own.
	bin := tree(t)
	s := Spec{Writable: []string{dirs["writable"], bin}, Tree: bin, Hidden: []string{dirs["hidden"]}}
	r := run(t, s, []string{dirs["writable"], dirs["hidden"], dirs["other"]}, filepath.Join(bin, "probe"))
	checkConfined(t, r)
	if want := []string{dirs["writable"], dirs["other"]}; !slices.Equal(r.Read, want) {
		t.Errorf("readable %v; want %v (the hidden dir is empty)", r.Read, want)
	}
	if want := []string{dirs["writable"]}; !slices.Equal(r.Write, want) {
		t.Errorf("writable %v; want %v", r.Write, want)
	}
	if _, err := os.Stat(filepath.Join(dirs["other"], "written")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("wrote into a read-only path: %v", err)
	}
	// The tree a tool chroots into has the sandbox's /dev.
	if !slices.Contains(r.ExeDev, "null") || slices.Contains(r.ExeDev, "console") {
		t.Errorf("the tree's /dev has %v; want the sandbox's", r.ExeDev)
	}
}

// A bootstrap sandbox (mmdebstrap) runs its command as root of a user
// namespace of its own: it may mount there, and still reaches nothing
// more than a view's command: no devices, no kernel knobs, no hidden or
// read-only paths, whose mounts it cannot take away.
func TestBootstrapSandbox(t *testing.T) {
	needRoot(t)
	dirs := markedDirs(t)
	bin := tree(t)
	// Read-only: a dir below the builder's /tmp (which the view replaces)
	// and one below a writable dir.
	tmpRO := t.TempDir()
	nestedRO := filepath.Join(dirs["writable"], "read-only")
	for _, d := range []string{tmpRO, nestedRO} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "marker"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := Spec{Writable: []string{dirs["writable"], bin}, ReadOnly: []string{tmpRO, nestedRO}, Hidden: []string{dirs["hidden"]}, Bootstrap: true}
	r := run(t, s, []string{dirs["writable"], dirs["hidden"], dirs["other"], tmpRO, nestedRO}, filepath.Join(bin, "probe"))
	own, err := os.Readlink("/proc/self/ns/user")
	if err != nil {
		t.Fatal(err)
	}
	if r.UserNS == "" || r.UserNS == own {
		t.Errorf("user namespace %q; want one of its own (the test's is %s)", r.UserNS, own)
	}
	// Only the sandbox's processes: the helper (PID 1) and the command.
	if len(r.Procs) != 2 {
		t.Errorf("processes %v; want the helper and the command", r.Procs)
	}
	for _, d := range r.Dev {
		if !slices.Contains([]string{"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd", "stdin", "stdout", "stderr"}, d) {
			t.Errorf("/dev has %s", d)
		}
	}
	var keep uint64
	for _, c := range append(slices.Clone(KeepCapabilities), BootstrapCapabilities...) {
		keep |= 1 << c
	}
	if r.CapBnd&^keep != 0 || r.CapBnd&(1<<unix.CAP_SYS_ADMIN) == 0 {
		t.Errorf("bounding %#x; want %#x", r.CapBnd, keep)
	}
	if r.Mount != "ok" {
		t.Errorf("mount in its own namespaces: %s; mmdebstrap needs it", r.Mount)
	}
	for what, e := range map[string]string{"mknod": r.Mknod, "sysrq-trigger": r.Sysrq, "/proc/sys": r.ProcSys, "remount / read-write": r.Remount} {
		if e == "ok" {
			t.Errorf("%s succeeded in the sandbox", what)
		}
	}
	if want := []string{dirs["writable"], dirs["other"], tmpRO, nestedRO}; !slices.Equal(r.Read, want) {
		t.Errorf("readable %v; want %v (the hidden dir stays hidden)", r.Read, want)
	}
	if want := []string{dirs["writable"]}; !slices.Equal(r.Write, want) {
		t.Errorf("writable %v; want %v", r.Write, want)
	}
	// Files it writes keep their real owner (the user namespace maps
	// every user to itself).
	fi, err := os.Stat(filepath.Join(dirs["writable"], "written"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
		t.Errorf("written as %d:%d; want 0:0", st.Uid, st.Gid)
	}
	if r.SecretEnv {
		t.Errorf("the helper's %s reached the command", helperEnv)
	}
}

func TestSpecValidate(t *testing.T) {
	for _, s := range []Spec{
		{Root: "relative"},
		{Root: "/tree", Writable: []string{"/w"}},
		{Root: "/tree", ReadOnly: []string{"/r"}},
		{ReadOnly: []string{"relative"}},
		{Writable: []string{"/"}},
		{Hidden: []string{"x"}},
		{Writable: []string{"/w"}, Tree: "/t"},
		{Root: "/tree", Tree: "/tree"},
		{Root: "/tree", Bootstrap: true},
		{Writable: []string{"/w"}, Tree: "/w", Bootstrap: true},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v: no error", s)
		}
	}
	if _, _, _, err := Exec(Spec{Root: "/tree"}, nil); err == nil {
		t.Error("no command: no error")
	}
}

func TestParseInvertsExec(t *testing.T) {
	s := Spec{Root: "/tree", Dir: "/root"}
	name, args, env, err := Exec(s, []string{"apt-get", "update"})
	if err != nil {
		t.Fatal(err)
	}
	got, argv, ok := Parse(name, args, env)
	if !ok || fmt.Sprint(got) != fmt.Sprint(s) || !slices.Equal(argv, []string{"apt-get", "update"}) {
		t.Errorf("Parse = %+v %v %v", got, argv, ok)
	}
}
