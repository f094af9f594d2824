// Package sandbox runs the commands of a build that execute code from the
// image being built or from the NodeImage author (package maintainer
// scripts, shell and Ansible provisioners, the builder's own tools run in
// the tree) where they cannot reach the node the builder runs on.
//
// The builder is privileged: it needs loop devices, mounts and /dev/kvm.
// A sandboxed command gets, on top of util-linux's unshare:
//
//   - new mount, PID, UTS, IPC and cgroup namespaces, so it sees only its
//     own processes (/proc/1/root is the sandbox's own root, not the
//     builder's) and its mounts vanish with it;
//   - a root of its own, entered with pivot_root and with the builder's
//     root detached, so neither chroot tricks nor /proc lead back out: the
//     image tree itself (Spec.Root), or a read-only view of the builder's
//     root in which only the paths in Spec.Writable can be written and the
//     paths in Spec.Hidden (the credentials Secret, the termination log)
//     are empty, with a /tmp of its own (a tmpfs: a path below the
//     builder's /tmp is visible in the view only when it is in
//     Spec.Writable or Spec.ReadOnly);
//   - a /dev of its own with null, zero, full, random, urandom, tty, a
//     private devpts and shm: no disks, no /dev/kvm, no loop devices;
//   - a /proc of the new PID namespace with the kernel's sensitive files
//     masked or read-only (sysrq-trigger, kcore, /proc/sys, ...), and a
//     read-only /sys;
//   - only the capabilities a package install needs (KeepCapabilities),
//     dropped from the bounding set before the command starts, so neither
//     it nor a setuid program it runs can mount, create device nodes,
//     load modules or use raw I/O.
//
// The namespaces are made by unshare(1); the rest is done by this package's
// helper, which is the builder's own executable run again (Exec): the
// package's init recognizes the helper by an environment variable, the way
// reexec helpers of container runtimes do. Any program that imports this
// package (the nodeforge CLI, the manager, test binaries) can be a helper.
//
// A Spec.Bootstrap command (mmdebstrap) runs one step further in, as root
// of an identity-mapped user namespace that the helper creates for it.
//
// The read-only view uses mount_setattr(2): build nodes need Linux 5.12 or
// later, and user namespaces enabled (user.max_user_namespaces > 0) for
// the bootstrap sandbox.
package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// helperEnv marks a process as the sandbox helper; its value is the Spec
// as JSON. The helper removes it before the command starts.
const helperEnv = "_NODEFORGE_SANDBOX"

// Spec says what a sandboxed command sees.
type Spec struct {
	// Root becomes the command's "/": an image tree. Empty means a
	// read-only view of the builder's own root (for host tools such as
	// ansible-playbook that work on a tree).
	Root string `json:"root,omitempty"`
	// Writable are paths of the builder's root that stay writable in the
	// view (the tree, a provisioner's work dir). Only without Root.
	Writable []string `json:"writable,omitempty"`
	// ReadOnly are paths of the builder's root bound read-only into the
	// view, after Writable: a path below the builder's /tmp (which the view
	// replaces) becomes visible, and one below a writable path stays
	// read-only (a cache whose part the command may only read). Only
	// without Root.
	ReadOnly []string `json:"readOnly,omitempty"`
	// Tree is a path of Writable that is an image tree a tool chroots
	// into (Ansible's chroot connection): it gets the sandbox's /proc,
	// /sys, /dev and /run too. Only without Root.
	Tree string `json:"tree,omitempty"`
	// Bootstrap runs the command as root of a user namespace of its own
	// that maps every user to itself, with its own mount namespace and
	// CAP_SYS_ADMIN there (BootstrapCapabilities): it can
	// mount into its writable paths what a root filesystem being installed
	// needs (mmdebstrap's /proc, /sys and /dev in the tree), and nothing
	// that reaches further, since its capabilities count only in its
	// namespaces and the view's mounts are locked. Only for a view, without
	// Tree: the command makes the tree's mounts itself.
	Bootstrap bool `json:"bootstrap,omitempty"`
	// Hidden are paths of the builder's root covered by something empty in
	// the view (secret mounts, the termination log). Only without Root.
	Hidden []string `json:"hidden,omitempty"`
	// Dir is the working directory inside; empty means "/".
	Dir string `json:"dir,omitempty"`
	// Hostname is the UTS name inside; empty keeps the builder's.
	Hostname string `json:"hostname,omitempty"`
}

// Validate reports a Spec the helper cannot set up.
func (s Spec) Validate() error {
	if s.Root != "" && !filepath.IsAbs(s.Root) {
		return fmt.Errorf("sandbox root %q is not absolute", s.Root)
	}
	if s.Root != "" && (len(s.Writable) > 0 || len(s.ReadOnly) > 0 || len(s.Hidden) > 0) {
		return fmt.Errorf("sandbox: writable, read-only and hidden paths apply to a view of the builder's root, not to root %s", s.Root)
	}
	if s.Tree != "" && (s.Root != "" || !slices.Contains(s.Writable, s.Tree)) {
		return fmt.Errorf("sandbox tree %q must be one of the writable paths of a view", s.Tree)
	}
	if s.Bootstrap && (s.Root != "" || s.Tree != "") {
		return fmt.Errorf("sandbox: bootstrap applies to a view without a tree (the command mounts the tree's file systems itself)")
	}
	for _, p := range slices.Concat(s.Writable, s.ReadOnly, s.Hidden) {
		if !filepath.IsAbs(p) || filepath.Clean(p) == "/" {
			return fmt.Errorf("sandbox path %q must be absolute and not /", p)
		}
	}
	return nil
}

// UnshareArgs are the arguments of unshare(1) that make the namespaces:
// the helper becomes PID 1 of the new PID namespace, and when unshare is
// killed (a canceled build) the helper is killed, and with it every
// process of the sandbox.
var UnshareArgs = []string{
	"--mount", "--propagation", "private",
	"--pid", "--fork", "--kill-child",
	"--uts", "--ipc", "--cgroup",
}

// Exec returns the program, arguments and extra environment that run argv
// in the sandbox described by s. argv[0] is looked up in the sandbox's
// PATH (from env), after the sandbox is in place.
func Exec(s Spec, argv []string) (name string, args []string, env []string, err error) {
	if err := s.Validate(); err != nil {
		return "", nil, nil, err
	}
	if len(argv) == 0 {
		return "", nil, nil, fmt.Errorf("sandbox: no command")
	}
	self, err := os.Executable()
	if err != nil {
		return "", nil, nil, fmt.Errorf("sandbox: finding the builder's executable: %w", err)
	}
	spec, err := json.Marshal(s)
	if err != nil {
		return "", nil, nil, err
	}
	args = append(append(append([]string(nil), UnshareArgs...), "--", self), argv...)
	return "unshare", args, []string{helperEnv + "=" + string(spec)}, nil
}

// Parse is the inverse of Exec, for tests that fake the runner: it reports
// whether name, args and env run a sandboxed command, with its Spec and
// argv.
func Parse(name string, args, env []string) (Spec, []string, bool) {
	var s Spec
	if name != "unshare" {
		return s, nil, false
	}
	i := -1
	for j, a := range args {
		if a == "--" {
			i = j
			break
		}
	}
	if i < 0 || i+2 > len(args) {
		return s, nil, false
	}
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, helperEnv+"="); ok {
			if err := json.Unmarshal([]byte(v), &s); err != nil {
				return s, nil, false
			}
			return s, args[i+2:], true
		}
	}
	return s, nil, false
}
