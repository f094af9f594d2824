package builder

import (
	"strings"

	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/sandbox"
)

// chrootEnv is the environment of commands run inside the image: all of
// it, with the proxy variables (Command.Clean), nothing from the host.
var chrootEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"DEBIAN_FRONTEND=noninteractive",
	"DEBCONF_NONINTERACTIVE_SEEN=true",
	"LC_ALL=C.UTF-8",
	"LANG=C.UTF-8",
	"HOME=/root",
}

// hiddenFromHostTools are the builder's paths that a sandboxed host tool
// (ansible-playbook) must not read: the mounted object-store credentials
// and a service account token, were one ever mounted. The termination log
// (the result channel) lives in /dev, which the sandbox replaces.
var hiddenFromHostTools = []string{
	buildresult.CredentialsDir,
	"/var/run/secrets",
	"/run/secrets",
}

// chroot returns a command running args inside the image, in a sandbox
// whose root is the tree (package sandbox).
func (b *build) chroot(args ...string) Command {
	return b.sandboxed(sandbox.Spec{Root: b.root}, chrootEnv, true, args...)
}

// onTree returns a command running a host tool (args[0], such as
// ansible-playbook) in a sandbox that sees the builder's root read-only
// except for the tree and the given work dirs, without the builder's
// devices, processes or credentials.
func (b *build) onTree(env []string, writable []string, args ...string) Command {
	return b.sandboxed(sandbox.Spec{
		Writable: append([]string{b.root}, writable...),
		Tree:     b.root,
		Hidden:   hiddenFromHostTools,
	}, env, false, args...)
}

// mmdebstrap returns mmdebstrap with args, run in a sandbox: a read-only
// view of the builder in which only the work dir (the tree, the build's
// apt sources, temporary files) and the package cache can be written,
// without the builder's devices, processes or credentials, as root of a
// user namespace of its own (sandbox.Spec.Bootstrap), where mmdebstrap
// mounts /proc, /sys and /dev into the tree as usual while its
// capabilities count nowhere else. Everything mmdebstrap starts runs there
// too: apt and its hooks, our setup and customize hooks, and the
// maintainer scripts of every package, which come from repositories the
// NodeImage author names (spec.base.mirror, spec.kubernetes.aptRepository).
func (b *build) mmdebstrap(args ...string) Command {
	return b.mmdebstrapIn([]string{b.work, b.cacheDir}, nil, args...)
}

// mmdebstrapInstalling is mmdebstrap for a run that installs packages,
// whose maintainer scripts may come from a repository the author names:
// of the package cache it may write only the archives (which apt checks
// against the lists before it uses them) and read the lists and the base
// layers, so no build can change what another one resolves or extracts.
func (b *build) mmdebstrapInstalling(args ...string) Command {
	return b.mmdebstrapIn([]string{b.work, b.archivesDir()}, []string{b.listsDir(), b.baseDir()}, args...)
}

// mmdebstrapIn is mmdebstrap in a sandbox where of the builder's paths
// only writable can be written, and readOnly are visible too even when
// below the builder's /tmp.
func (b *build) mmdebstrapIn(writable, readOnly []string, args ...string) Command {
	s := sandbox.Spec{Writable: writable, ReadOnly: readOnly, Hidden: hiddenFromHostTools, Bootstrap: true}
	return b.sandboxed(s, b.tmpEnv(), false, append([]string{"mmdebstrap"}, args...)...)
}

func (b *build) sandboxed(s sandbox.Spec, env []string, clean bool, args ...string) Command {
	name, a, extra, err := sandbox.Exec(s, args)
	if err != nil {
		// Only a bug makes an invalid spec: run something that fails
		// with the reason rather than the command unsandboxed.
		return Command{Name: "false", Args: []string{"sandbox: " + err.Error()}}
	}
	return Command{Name: name, Args: a, Env: append(append([]string(nil), env...), extra...), Clean: clean}
}

// shq quotes s for a POSIX shell.
func shq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tmpEnv points tools' temporary files (mmdebstrap's null-format chroot,
// for one) into the build's work dir, so nothing is left elsewhere.
func (b *build) tmpEnv() []string {
	return []string{"TMPDIR=" + b.work}
}
