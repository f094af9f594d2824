package verify

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/freeport"
)

// QEMU's stderr is written by exec's copy goroutine while the boot test
// reads it for the console tail; run with -race.
func TestBootStderrConcurrentWriteAndRead(t *testing.T) {
	dir := t.TempDir()
	b := &bootRun{dir: dir, console: filepath.Join(dir, "console.log"), firmware: filepath.Join(dir, "firmware.log")}
	if err := os.WriteFile(b.console, []byte("login:"), 0o600); err != nil {
		t.Fatal(err)
	}
	var w io.Writer = &b.stderr // what start gives exec.Cmd.Stderr
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			fmt.Fprintf(w, "qemu: warning %d\n", i)
		}
	}()
	for range 200 {
		_ = b.consoleTail(100)
	}
	wg.Wait()
	if got := b.consoleTail(4000); !strings.Contains(got, "(qemu stderr:)") || !strings.Contains(got, "warning 199") {
		t.Fatalf("console tail lacks QEMU's stderr: %q", got)
	}
}

func pflashDrives(args []string) []string {
	var out []string
	for i, a := range args {
		if a == "-drive" && i+1 < len(args) && strings.HasPrefix(args[i+1], "if=pflash") {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestQemuArgsUEFIVars(t *testing.T) {
	fw := t.TempDir()
	code := filepath.Join(fw, "OVMF_CODE.fd")
	vars := filepath.Join(fw, "OVMF_VARS.fd")
	for _, p := range []string{code, vars} {
		if err := os.WriteFile(p, []byte("firmware "+filepath.Base(p)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	orig := findOVMF
	t.Cleanup(func() { findOVMF = orig })
	newRun := func(mode imagev1.BootMode) *bootRun {
		c := &imagev1.ImageContent{}
		c.Default()
		c.Disk.BootMode = mode
		dir := t.TempDir()
		return &bootRun{content: c, dir: dir, hostname: "h", console: filepath.Join(dir, "console.log"), firmware: filepath.Join(dir, "firmware.log")}
	}

	t.Run("code and vars template", func(t *testing.T) {
		findOVMF = func() (string, string) { return code, vars }
		b := newRun(imagev1.BootModeUEFI)
		args, err := b.qemuArgs()
		if err != nil {
			t.Fatal(err)
		}
		varsCopy := filepath.Join(b.dir, "OVMF_VARS.fd")
		want := []string{"if=pflash,format=raw,unit=0,readonly=on,file=" + code, "if=pflash,format=raw,unit=1,file=" + varsCopy}
		if got := pflashDrives(args); !slices.Equal(got, want) {
			t.Fatalf("pflash drives %q, want %q", got, want)
		}
		if data, err := os.ReadFile(varsCopy); err != nil || string(data) != "firmware OVMF_VARS.fd" {
			t.Fatalf("vars copy: %q, %v", data, err)
		}
	})
	t.Run("no vars template: no vars drive", func(t *testing.T) {
		findOVMF = func() (string, string) { return code, "" }
		b := newRun(imagev1.BootModeUEFI)
		args, err := b.qemuArgs()
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"if=pflash,format=raw,unit=0,readonly=on,file=" + code}
		if got := pflashDrives(args); !slices.Equal(got, want) {
			t.Fatalf("pflash drives %q, want %q", got, want)
		}
		if _, err := os.Stat(filepath.Join(b.dir, "OVMF_VARS.fd")); !os.IsNotExist(err) {
			t.Fatalf("a vars file was written: %v", err)
		}
	})
	t.Run("unreadable vars template is an error", func(t *testing.T) {
		findOVMF = func() (string, string) { return code, filepath.Join(fw, "missing_VARS.fd") }
		b := newRun(imagev1.BootModeUEFI)
		if _, err := b.qemuArgs(); err == nil || !strings.Contains(err.Error(), "UEFI vars") {
			t.Fatalf("want an error about the UEFI vars, got %v", err)
		}
	})
	t.Run("unwritable run directory is an error", func(t *testing.T) {
		findOVMF = func() (string, string) { return code, vars }
		b := newRun(imagev1.BootModeUEFI)
		b.dir = filepath.Join(b.dir, "missing")
		if _, err := b.qemuArgs(); err == nil || !strings.Contains(err.Error(), "UEFI vars") {
			t.Fatalf("want an error about the UEFI vars, got %v", err)
		}
	})
	t.Run("BIOS has no pflash", func(t *testing.T) {
		findOVMF = func() (string, string) { t.Fatal("BIOS looked for OVMF"); return "", "" }
		args, err := newRun(imagev1.BootModeBIOS).qemuArgs()
		if err != nil {
			t.Fatal(err)
		}
		if got := pflashDrives(args); len(got) != 0 {
			t.Fatalf("pflash drives %q for BIOS", got)
		}
	})
}

// waitKernel tells a guest whose kernel runs from one KVM cannot run: a
// KVM internal error on QEMU's stderr, QEMU exiting, or a console that
// shows GRUB and then nothing.
func TestWaitKernel(t *testing.T) {
	const grub = "  Booting `Debian GNU/Linux'\n"
	cases := []struct {
		name    string
		console string
		stderr  string
		exited  bool
		wantErr string // "" means the kernel started
	}{
		{name: "kernel line on the console", console: grub + "[    0.000000] Linux version 6.12.57+deb13-cloud-amd64\n"},
		{name: "KVM internal error", stderr: "qemu-system-x86_64: warning: host doesn't support requested feature\nKVM internal error. Suberror: 1\nextra data[0]: 0x1\nemulation failure\n",
			wantErr: "qemu: KVM internal error. Suberror: 1"},
		{name: "qemu exited", console: grub, stderr: "qemu-system-x86_64: failed to set MSR 0x10a to 0x69\n", exited: true,
			wantErr: "qemu exited before the kernel started (exit status 1): qemu-system-x86_64: failed to set MSR 0x10a to 0x69"},
		{name: "GRUB, then silence", console: grub, wantErr: "the kernel wrote nothing to the serial console within 600ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := &bootRun{console: filepath.Join(dir, "console.log"), exited: make(chan struct{})}
			if err := os.WriteFile(b.console, []byte(tc.console), 0o600); err != nil {
				t.Fatal(err)
			}
			fmt.Fprint(&b.stderr, tc.stderr)
			if tc.exited {
				b.exitErr = fmt.Errorf("exit status 1")
				close(b.exited)
			}
			err := b.waitKernel(t.Context(), 600*time.Millisecond)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("waitKernel = %v, want the kernel started", err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Fatalf("waitKernel = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// The panic detector reads the kernel's own panic line, and under KVM
// tells a stall (the accelerator's fault: the boot is retried under TCG)
// from a panic of the image. The logs are serial consoles of the Debian 13
// cloud kernel: a good boot and a root-mount panic captured under TCG, and
// a KVM stall (a good boot's first 300 lines, then a soft lockup, an RCU
// stall and the softlockup panic, in the kernel's formats).
func TestClassifyConsole(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good, panicked, stalled := read("console-tcg-good.log"), read("console-tcg-panic.log"), read("console-kvm-stall.log")
	slowTCG := append(append([]byte{}, good...), []byte("[  201.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n")...)
	// cloud-init echoing text that mentions a panic is not a panic.
	chatter := append(append([]byte{}, good...), []byte("[  90.1] cloud-init[451]: Kernel panic handling: kdump not configured\n")...)
	cases := []struct {
		name     string
		console  []byte
		firmware string
		kvm      bool
		kind     string // "" means no sign
		line     string
	}{
		{name: "good boot under TCG", console: good},
		{name: "good boot under KVM", console: good, kvm: true},
		{name: "panic under TCG", console: panicked, kind: signGuest, line: "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"},
		{name: "panic under KVM", console: panicked, kvm: true, kind: signGuest, line: "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"},
		{name: "stall then panic under KVM is the accelerator", console: stalled, kvm: true, kind: signStall, line: "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [systemd-udevd:187]"},
		{name: "the same console under TCG is a panic", console: stalled, kind: signGuest, line: "Kernel panic - not syncing: softlockup: hung tasks"},
		{name: "an RCU stall warning under TCG is slowness", console: slowTCG},
		{name: "an RCU stall under KVM", console: slowTCG, kvm: true, kind: signStall, line: "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"},
		{name: "panic mentioned by a program", console: chatter},
		{name: "emergency mode", console: []byte("You are in emergency mode. After logging in, type \"journalctl -xb\"\n"), kind: signGuest, line: "You are in emergency mode"},
		{name: "no bootable device", firmware: "Booting from Hard Disk...\nBoot failed: not a bootable disk\n", kind: signGuest, line: "Boot failed: not a bootable disk"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sign, ok := classifyConsole(tc.console, []byte(tc.firmware), tc.kvm)
			if tc.kind == "" {
				if ok {
					t.Fatalf("sign %+v on a console without one", sign)
				}
				return
			}
			if !ok || sign.Kind != tc.kind || sign.Line != tc.line {
				t.Fatalf("sign = %+v (found %v), want kind %q line %q", sign, ok, tc.kind, tc.line)
			}
		})
	}
}

// Under KVM a console that stops growing before SSH answers is a stall;
// waitSSH gives up after the silence window instead of the boot timeout.
func TestWaitSSHSilenceUnderKVM(t *testing.T) {
	dir := t.TempDir()
	port, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	b := &bootRun{console: filepath.Join(dir, "console.log"), firmware: filepath.Join(dir, "firmware.log"),
		accel: AccelKVM, sshPort: port, exited: make(chan struct{})}
	if err := os.WriteFile(b.console, []byte("[    1.2] Run /init as init process\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.signer = testSigner(t)
	start := time.Now()
	err = b.waitSSH(t.Context(), 1500*time.Millisecond)
	var gf *guestFatalError
	if !errors.As(err, &gf) || gf.sign.Kind != signStall || !strings.Contains(err.Error(), "Run /init as init process") {
		t.Fatalf("waitSSH = %v, want a stall naming the console's last line", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("waitSSH took %s with a 1.5 s silence window", d)
	}
}

func testSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
