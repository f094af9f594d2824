package builder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
)

// A foreign-architecture image (arm64 on an amd64 builder) is built the
// same way as a native one: mmdebstrap runs the image's maintainer scripts
// and the provisioning commands in the tree, and the kernel runs the
// tree's binaries through qemu-user-static's binfmt_misc handler. The
// handler must be registered with the F (fix binary) flag: QEMU is then
// opened when it is registered, so it runs inside the chroot and the
// sandbox, where the host's /usr/libexec is not visible. qemu-user-static
// ships the registrations in /usr/lib/binfmt.d; systemd-binfmt or
// binfmt-support load them at boot, which containers and minimal hosts
// skip: ensureBinfmt then mounts binfmt_misc and registers the handler
// itself (root only; the registration is the host kernel's, shared by
// every container, as qemu-user-static's own would be).

var (
	// binfmtDir is where binfmt_misc is mounted.
	binfmtDir = "/proc/sys/fs/binfmt_misc"
	// binfmtConfDirs hold systemd-binfmt's registration lines.
	binfmtConfDirs = []string{"/etc/binfmt.d", "/usr/lib/binfmt.d"}
	// mountBinfmt mounts binfmt_misc on dir.
	mountBinfmt = func(dir string) error {
		return syscall.Mount("binfmt_misc", dir, "binfmt_misc", 0, "")
	}
	// hostArch is the builder's architecture.
	hostArch = arch.Host
)

// foreign reports whether images of architecture name need emulation on
// this builder.
func foreign(name string) bool {
	return name != "" && imagev1.Architecture(name) != hostArch()
}

// architectureArgs are mmdebstrap's arguments for the image's architecture:
// none on a native build (its default), --architectures for a foreign one.
// mmdebstrap then copies /usr/bin/qemu-<arch>-static into the tree unless
// it sees the handler's F flag, which it cannot in the sandbox (a /proc of
// its own, without binfmt_misc); the copy needs /usr/bin to exist before
// anything is extracted, which the setup hook makes sure of. mmdebstrap
// removes the copy when it is done; the kernel uses the handler's
// pre-opened QEMU anyway.
func architectureArgs(name string) []string {
	if !foreign(name) {
		return nil
	}
	return []string{"--architectures=" + name, `--setup-hook=mkdir -p "$1/usr/bin"`}
}

// ensureBinfmt makes sure the binaries of architecture name run on this
// builder, registering qemu-user-static's handler when it is installed but
// not registered. The error names what is missing.
func ensureBinfmt(name string) error {
	if !foreign(name) {
		return nil
	}
	a, err := arch.For(imagev1.Architecture(name))
	if err != nil {
		return inputErrorf("%v", err)
	}
	handler := filepath.Join(binfmtDir, a.Binfmt)
	if ok, err := handlerState(handler); ok {
		return err
	}
	if _, err := os.Stat(filepath.Join(binfmtDir, "register")); err != nil {
		if err := mountBinfmt(binfmtDir); err != nil {
			return fmt.Errorf("building a %s image on %s needs binfmt_misc; mount it on the build host (mount -t binfmt_misc binfmt_misc %s): mounting it on %s failed: %w",
				name, hostArch(), binfmtDir, binfmtDir, err)
		}
	}
	if ok, err := handlerState(handler); ok {
		return err
	}
	line, conf, err := binfmtRegistration(a.Binfmt)
	if err != nil {
		return fmt.Errorf("building a %s image on %s needs qemu-user-static (the %s binfmt_misc handler): %w", name, hostArch(), a.Binfmt, err)
	}
	if !strings.Contains(registrationFlags(line), "F") {
		return fmt.Errorf("%s registers %s without the F flag: QEMU would not be found inside the image's chroot", conf, a.Binfmt)
	}
	if err := os.WriteFile(filepath.Join(binfmtDir, "register"), []byte(line), 0o200); err != nil {
		// Another build may have registered it meanwhile.
		if ok, herr := handlerState(handler); ok {
			return herr
		}
		return fmt.Errorf("registering %s from %s in %s: %w", a.Binfmt, conf, binfmtDir, err)
	}
	ok, err := handlerState(handler)
	if !ok {
		return fmt.Errorf("registered %s from %s, but %s does not show it", a.Binfmt, conf, handler)
	}
	return err
}

// handlerState reads the handler at path: registered is false when there
// is none; err says why a registered one cannot serve a chroot (disabled,
// or without the F flag).
func handlerState(path string) (registered bool, err error) {
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		return false, nil
	}
	s := string(b)
	if !strings.HasPrefix(s, "enabled") {
		return true, fmt.Errorf("the binfmt_misc handler %s is disabled (echo 1 > %s)", path, path)
	}
	for _, l := range strings.Split(s, "\n") {
		if f, ok := strings.CutPrefix(l, "flags: "); ok {
			if !strings.Contains(f, "F") {
				return true, fmt.Errorf("the binfmt_misc handler %s lacks the F (fix binary) flag: QEMU is not found inside the image's chroot; register it with F (qemu-user-static's registration does)", path)
			}
			return true, nil
		}
	}
	return true, errors.New("the binfmt_misc handler " + path + " shows no flags")
}

// binfmtRegistration finds handler's registration line in binfmtConfDirs
// (systemd-binfmt's format, one ":name:type:offset:magic:mask:interpreter:flags"
// per line; qemu-user-static installs <handler>.conf).
func binfmtRegistration(handler string) (line, file string, err error) {
	for _, d := range binfmtConfDirs {
		matches, _ := filepath.Glob(filepath.Join(d, "*.conf"))
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, ":"+handler+":") {
					return l, m, nil
				}
			}
		}
	}
	return "", "", fmt.Errorf("no registration for %s in %s", handler, strings.Join(binfmtConfDirs, " or "))
}

// registrationFlags is the flags field of a registration line (the
// magic and mask may hold escaped colons only as \x3a, so splitting is
// safe).
func registrationFlags(line string) string {
	f := strings.Split(strings.TrimSpace(line), ":")
	return f[len(f)-1]
}
