package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// KeepCapabilities are the capabilities a sandboxed command keeps: those a
// package install and a provisioner need as root in the tree (owners and
// modes, setcap in maintainer scripts, switching users, chroot for
// Ansible's chroot connection). Everything else is dropped from the
// bounding set, among it CAP_SYS_ADMIN (mounts, devtmpfs), CAP_MKNOD (device
// nodes; a privileged container has no device cgroup), CAP_SYS_MODULE,
// CAP_SYS_RAWIO, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH (open_by_handle_at),
// CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_SYS_BOOT.
var KeepCapabilities = []uintptr{
	unix.CAP_CHOWN,
	unix.CAP_DAC_OVERRIDE,
	unix.CAP_FOWNER,
	unix.CAP_FSETID,
	unix.CAP_KILL,
	unix.CAP_SETGID,
	unix.CAP_SETUID,
	unix.CAP_SETPCAP,
	unix.CAP_SETFCAP,
	unix.CAP_NET_BIND_SERVICE,
	unix.CAP_SYS_CHROOT,
	unix.CAP_AUDIT_WRITE,
}

// BootstrapCapabilities are kept in the bounding set on top of
// KeepCapabilities for a Spec.Bootstrap command, which runs in a user
// namespace of its own where they count only there: CAP_SYS_ADMIN for
// mmdebstrap's mounts of /proc, /sys and /dev into the tree it installs.
var BootstrapCapabilities = []uintptr{unix.CAP_SYS_ADMIN}

// devices are the character devices bind-mounted into the sandbox's /dev.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// maskedProc are covered by /dev/null (files) or an empty read-only tmpfs
// (directories); readOnlyProc are remounted read-only. The lists follow the
// OCI runtime defaults.
var (
	maskedProc = []string{
		"acpi", "asound", "kcore", "keys", "latency_stats", "sched_debug",
		"scsi", "timer_list", "timer_stats", "sysrq-trigger",
	}
	readOnlyProc = []string{"bus", "fs", "irq", "sys"}
)

// userNSEnv marks the helper's second stage, started in the user namespace
// of a Spec.Bootstrap command (runInUserNamespace): a new user namespace
// starts with every capability in its bounding set, so the bounding set is
// cut again there before the command starts. Its value is the command.
const userNSEnv = "_NODEFORGE_SANDBOX_USERNS"

func init() {
	if bin, ok := os.LookupEnv(userNSEnv); ok {
		runtime.LockOSThread()
		err := os.Unsetenv(userNSEnv)
		if err == nil {
			err = dropCapabilities(BootstrapCapabilities...)
		}
		if err == nil {
			err = syscall.Exec(bin, os.Args[1:], os.Environ())
		}
		fmt.Fprintf(os.Stderr, "nodeforge sandbox: in the user namespace: %v\n", err)
		os.Exit(126)
	}
	spec, ok := os.LookupEnv(helperEnv)
	if !ok {
		return
	}
	// Capabilities belong to a thread: set them and exec on one.
	runtime.LockOSThread()
	if err := helper(spec, os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "nodeforge sandbox: %v\n", err)
		os.Exit(126)
	}
}

// helper sets the sandbox up and execs argv; it returns only on failure.
// It runs as PID 1 of the namespaces unshare made.
func helper(specJSON string, argv []string) error {
	var s Spec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		return fmt.Errorf("reading the spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return err
	}
	if len(argv) == 0 {
		return errors.New("no command")
	}
	if err := os.Unsetenv(helperEnv); err != nil {
		return err
	}
	if os.Getpid() != 1 {
		return errors.New("not PID 1 of a new PID namespace (run through unshare with the sandbox's arguments)")
	}
	// Nothing done here propagates back to the builder's mounts.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	newRoot, err := prepareRoot(s)
	if err != nil {
		return err
	}
	if err := systemMounts(newRoot); err != nil {
		return err
	}
	if s.Tree != "" {
		if err := systemMounts(filepath.Join(newRoot, s.Tree)); err != nil {
			return fmt.Errorf("tree %s: %w", s.Tree, err)
		}
	}
	if err := enter(newRoot); err != nil {
		return err
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		return err
	}
	var extra []uintptr
	if s.Bootstrap {
		extra = BootstrapCapabilities
	}
	if err := dropCapabilities(extra...); err != nil {
		return err
	}
	bin := argv[0]
	if !strings.Contains(bin, "/") {
		// PATH comes from the command's environment, resolved in the
		// sandbox's root.
		p, err := exec.LookPath(bin)
		if err != nil {
			return err
		}
		bin = p
	}
	if s.Bootstrap {
		return runInUserNamespace(bin, argv)
	}
	return syscall.Exec(bin, argv, os.Environ())
}

// runInUserNamespace runs argv as root of a new user namespace that maps
// every user and group to itself, with a mount namespace of its own
// (Spec.Bootstrap), and exits with its status. Its capabilities count only
// there: it can mount tmpfs, devpts and binds of what it sees (mmdebstrap
// binds the sandbox's /proc and /sys into the tree: a fresh proc or sysfs
// is refused, the sandbox's being partly masked), but no device or disk
// file system, and the view's mounts are locked, so the hidden and
// read-only paths stay as they are. Identity-mapped, files keep their real
// owners.
func runInUserNamespace(bin string, argv []string) error {
	// The helper's own executable, which the view may not show by path.
	const self = "/proc/self/exe"
	all := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1<<32 - 1}}
	cmd := &exec.Cmd{
		Path: self, Args: argv, Env: append(os.Environ(), userNSEnv+"="+bin),
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
			UidMappings:                all,
			GidMappings:                all,
			GidMappingsEnableSetgroups: true,
		},
	}
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if st, ok := exit.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			os.Exit(128 + int(st.Signal()))
		}
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		return fmt.Errorf("starting %s in a user namespace: %w", bin, err)
	}
	os.Exit(0)
	return nil
}

// prepareRoot makes the directory that becomes "/" a mount point and
// returns it: the tree itself, or a read-only recursive copy of the
// builder's root with the writable and hidden paths in place.
func prepareRoot(s Spec) (string, error) {
	if s.Root != "" {
		if err := unix.Mount(s.Root, s.Root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return "", fmt.Errorf("binding the tree %s: %w", s.Root, err)
		}
		return s.Root, nil
	}
	// The view is built on a tmpfs over /mnt of this namespace, which no
	// one else sees.
	base := "/mnt"
	if err := unix.Mount("tmpfs", base, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=1m"); err != nil {
		return "", fmt.Errorf("scratch tmpfs: %w", err)
	}
	root := filepath.Join(base, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	if err := unix.Mount("/", root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return "", fmt.Errorf("copying the builder's root: %w", err)
	}
	// The copy's /proc and /dev are the builder's: detach them whole
	// (systemMounts mounts the sandbox's own).
	for _, d := range []string{"proc", "dev"} {
		if err := unix.Unmount(filepath.Join(root, d), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return "", fmt.Errorf("detaching /%s: %w", d, err)
		}
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, root, unix.AT_RECURSIVE, &unix.MountAttr{
		Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
	}); err != nil {
		return "", fmt.Errorf("making the view read-only: %w", err)
	}
	// A writable /tmp of its own, under the writable paths (a build's
	// work dir may be in the builder's /tmp).
	if err := unix.Mount("tmpfs", filepath.Join(root, "tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return "", fmt.Errorf("/tmp: %w", err)
	}
	for _, w := range s.Writable {
		if err := bindInto(root, w, false); err != nil {
			return "", fmt.Errorf("writable %s: %w", w, err)
		}
	}
	for _, r := range s.ReadOnly {
		err := bindInto(root, r, true)
		if err == nil {
			// Mounts below it too.
			err = unix.MountSetattr(unix.AT_FDCWD, filepath.Join(root, r), unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
		}
		if err != nil {
			return "", fmt.Errorf("read-only %s: %w", r, err)
		}
	}
	for _, h := range s.Hidden {
		if err := hide(filepath.Join(root, h)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("hiding %s: %w", h, err)
		}
	}
	return root, nil
}

// bindInto binds the builder's path p at the same path under root.
func bindInto(root, p string, readOnly bool) error {
	dst := filepath.Join(root, p)
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dst); errors.Is(err, os.ErrNotExist) && fi.IsDir() {
		// Below the view's own /tmp. Traversable: apt's _apt user
		// reaches the tree's package cache through it.
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount(p, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if readOnly {
		return unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
	}
	// A bind copies the flags of the source mount, but under a recursive
	// read-only attribute the source may itself be a read-only copy.
	return unix.MountSetattr(unix.AT_FDCWD, dst, unix.AT_RECURSIVE, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY})
}

// hide covers p with /dev/null (a file) or an empty read-only tmpfs.
func hide(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
	}
	return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0,mode=0555")
}

// systemMounts gives root its own /proc, a read-only /sys, a minimal /dev
// and a fresh /run.
func systemMounts(root string) error {
	for _, d := range []string{"proc", "sys", "dev", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	proc := filepath.Join(root, "proc")
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("/proc: %w", err)
	}
	for _, m := range maskedProc {
		if err := hide(filepath.Join(proc, m)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("masking /proc/%s: %w", m, err)
		}
	}
	for _, m := range readOnlyProc {
		p := filepath.Join(proc, m)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := bindInto("/", p, true); err != nil {
			return fmt.Errorf("read-only /proc/%s: %w", m, err)
		}
	}
	sys := filepath.Join(root, "sys")
	if err := unix.Unmount(sys, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detaching /sys: %w", err)
	}
	if err := unix.Mount("sysfs", sys, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("/sys: %w", err)
	}
	dev := filepath.Join(root, "dev")
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("/dev: %w", err)
	}
	for _, d := range devices {
		p := filepath.Join(dev, d)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+d, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("/dev/%s: %w", d, err)
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("/dev/pts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777"); err != nil {
		return fmt.Errorf("/dev/shm: %w", err)
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd",
		"stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	run := filepath.Join(root, "run")
	if err := unix.Mount("tmpfs", run, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("/run: %w", err)
	}
	return nil
}

// enter makes root the root of the mount namespace and detaches the old
// one, so nothing of the builder's file system stays reachable.
func enter(root string) error {
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the builder's root: %w", err)
	}
	return os.Chdir("/")
}

// dropCapabilities limits the bounding set (what any later exec, setuid
// programs included, can have) to KeepCapabilities and extra, the
// effective and permitted sets to KeepCapabilities, and the inheritable
// and ambient sets to nothing.
func dropCapabilities(extra ...uintptr) error {
	last, err := lastCapability()
	if err != nil {
		return err
	}
	keep := map[uintptr]bool{}
	for _, c := range KeepCapabilities {
		keep[c] = true
	}
	var kept [2]uint32
	for c := uintptr(0); c <= last; c++ {
		if keep[c] {
			kept[c/32] |= 1 << (c % 32)
			continue
		}
		if slices.Contains(extra, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: kept[0], Permitted: kept[0]},
		{Effective: kept[1], Permitted: kept[1]},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("setting capabilities: %w", err)
	}
	return nil
}

func lastCapability() (uintptr, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("cap_last_cap %q", strings.TrimSpace(string(b)))
	}
	return uintptr(n), nil
}
