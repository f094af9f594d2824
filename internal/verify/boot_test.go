package verify

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
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
