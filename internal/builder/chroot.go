package builder

import (
	"context"
	"strings"
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

// nsScript mounts /proc, /sys, /dev and a fresh /run into the tree given as
// $1 and execs the rest of the arguments. It runs as the first process of a
// private mount namespace (unshare --mount --propagation private), so the
// mounts exist only for that process tree and vanish when it exits, however
// it exits: nothing can leak into the host's mount table or be left behind
// in the work dir.
const nsScript = `set -e
r=$1; shift
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount --bind /dev "$r/dev"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
exec "$@"`

// probeNamespaces reports whether private mount namespaces work here (root
// with CAP_SYS_ADMIN). Without them, chroot commands run with no /proc,
// /sys or /dev mounts, which is enough for the builder's own steps.
func probeNamespaces(ctx context.Context, r Runner) bool {
	return r.Run(ctx, Command{Name: "unshare", Args: []string{"--mount", "--propagation", "private", "true"}}) == nil
}

// inTree returns a command that runs args with the tree's mounts in place:
// args[0] runs on the host (ansible-playbook) unless it is "chroot".
func (b *build) inTree(env []string, args ...string) Command {
	if !b.namespaces {
		return Command{Name: args[0], Args: args[1:], Env: env}
	}
	a := append([]string{"--mount", "--propagation", "private", "sh", "-c", nsScript, "sh", b.root}, args...)
	return Command{Name: "unshare", Args: a, Env: env}
}

// chroot returns a command running args inside the image.
func (b *build) chroot(args ...string) Command {
	c := b.inTree(chrootEnv, append([]string{"chroot", b.root}, args...)...)
	c.Clean = true
	return c
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
