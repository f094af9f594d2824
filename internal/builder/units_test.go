package builder

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestJSONReporter(t *testing.T) {
	var b bytes.Buffer
	r := &JSONReporter{W: &b}
	r.Plan([]string{"resolve", "rootfs"})
	r.Report(Event{Step: "rootfs", Percent: 35, State: StateRunning, Message: "installing packages", ElapsedSeconds: 12.345})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines = %q", lines)
	}
	var got struct {
		Progress Event `json:"progress"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatal(err)
	}
	want := Event{Step: "rootfs", Percent: 35, State: StateRunning, Message: "installing packages", ElapsedSeconds: 12.3}
	if got.Progress != want {
		t.Errorf("progress = %+v; want %+v", got.Progress, want)
	}
	if !strings.HasPrefix(lines[1], `{"progress":{"step":"rootfs","percent":35,`) {
		t.Errorf("line = %s", lines[1])
	}
}

func TestPlainAndTerminalReporters(t *testing.T) {
	var b bytes.Buffer
	p := &PlainReporter{W: &b}
	p.Plan([]string{"a", "b"})
	p.Report(Event{Step: "a", State: StateRunning})
	p.Report(Event{Step: "a", State: StateRunning, Message: "x"})
	p.Report(Event{Step: "a", State: StateRunning, Message: "x"}) // duplicate: dropped
	p.Report(Event{Step: "a", Percent: 50, State: StateDone, ElapsedSeconds: 1.5})
	p.Report(Event{Step: "b", Percent: 50, State: StateFailed, Message: "boom", ElapsedSeconds: 2})
	want := "plan: a → b\n[  0%] a                        started\n[  0%] a                        x\n[ 50%] a                        done in 1.5s\n[ 50%] b                        FAILED after 2.0s: boom\n"
	if b.String() != want {
		t.Errorf("plain output:\n%s\nwant:\n%s", b.String(), want)
	}

	var tb bytes.Buffer
	tr := &TerminalReporter{W: &tb, Width: 60}
	tr.Plan([]string{"resolve", "rootfs"})
	tr.Report(Event{Step: "resolve", Percent: 4, State: StateDone, ElapsedSeconds: 1.2})
	tr.Report(Event{Step: "rootfs", Percent: 20, State: StateRunning, Message: "downloading packages"})
	time.Sleep(10 * time.Millisecond)
	tr.Close()
	out := tb.String()
	for _, want := range []string{"✓ resolve", "▸ rootfs", "downloading packages", "20%", "\x1b[3A"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, out)
		}
	}
}

func TestPatchGrubBIOS(t *testing.T) {
	boot := make([]byte, sector)
	for i := range boot {
		boot[i] = 0xAA
	}
	mbr := make([]byte, sector)
	copy(mbr[0x1b8:], []byte{1, 2, 3, 4}) // disk signature
	mbr[0x1be+4] = 0xEE                   // protective partition
	mbr[510], mbr[511] = 0x55, 0xAA
	core := make([]byte, 2*sector+100)
	binary.LittleEndian.PutUint16(core[grubBlocklist+10:], 0x820)

	newMBR, newCore, err := patchGrubBIOS(boot, core, mbr, 2048, mib)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(newMBR[grubKernelSector:]); got != 2048 {
		t.Errorf("kernel sector = %d", got)
	}
	if newMBR[grubBootDrive] != 0xff || newMBR[grubDriveCheck] != 0x90 || newMBR[grubDriveCheck+1] != 0x90 {
		t.Error("boot drive / drive check not patched")
	}
	if !bytes.Equal(newMBR[0x1b8:], mbr[0x1b8:]) {
		t.Error("partition table or disk signature not preserved")
	}
	if newMBR[0] != 0xAA || newMBR[grubBPBStart] != 0 {
		t.Error("boot code not copied, or BPB not kept from the disk")
	}
	if got := binary.LittleEndian.Uint64(newCore[grubBlocklist:]); got != 2049 {
		t.Errorf("blocklist start = %d", got)
	}
	if got := binary.LittleEndian.Uint16(newCore[grubBlocklist+8:]); got != 2 {
		t.Errorf("blocklist length = %d; want 2 sectors after diskboot", got)
	}
	if _, _, err := patchGrubBIOS(boot, make([]byte, 3*mib), mbr, 2048, mib); err == nil {
		t.Error("oversized core.img accepted")
	}
}

func TestPickVersions(t *testing.T) {
	pins, err := pickVersions([]PackageRequest{
		{Name: "containerd", Match: MatchConstraint, Version: ">=1.7.23"},
		{Name: "kubeadm", Match: MatchPrefix, Version: "1.37.2-"},
		{Name: "vim"},
	}, parseMadison([]byte("containerd | 1.7.22-1 | a\ncontainerd | 1.7.24~ds1-6 | b\nkubeadm | 1.37.2-1.1 | c\nkubeadm | 1.37.2-1.2 | c\nvim | 2:9.1 | d\n")))
	if err != nil || pins["containerd"] != "1.7.24~ds1-6" || pins["kubeadm"] != "1.37.2-1.2" || pins["vim"] != "" {
		t.Errorf("pins = %v, %v", pins, err)
	}
	_, err = pickVersions([]PackageRequest{{Name: "nope", Why: "packages"}, {Name: "containerd", Match: MatchConstraint, Version: ">=2.0"}},
		parseMadison([]byte("containerd | 1.7.24~ds1-6 | b\n")))
	if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), ">=2.0") || !IsInputError(err) {
		t.Errorf("err = %v; want both problems as an input error", err)
	}
}

func TestInRootStaysInside(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "run"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "var"), 0o755))
	must(os.Symlink("/run", filepath.Join(root, "var", "run")))
	must(os.Symlink("../../../../etc", filepath.Join(root, "var", "escape")))
	for p, want := range map[string]string{
		"/var/run/x":    filepath.Join(root, "run", "x"),
		"/var/escape/y": filepath.Join(root, "etc", "y"),
		"/a/../b":       filepath.Join(root, "b"),
	} {
		got, err := inRoot(root, p, false)
		if err != nil || got != want {
			t.Errorf("inRoot(%s) = %s, %v; want %s", p, got, err, want)
		}
	}
}

func TestExecRunnerTail(t *testing.T) {
	var log bytes.Buffer
	r := &ExecRunner{Log: &log}
	err := r.Run(context.Background(), Command{Name: "sh", Args: []string{"-c", "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3"}})
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v (%T)", err, err)
	}
	if len(ce.Tail) != TailLines || ce.Tail[len(ce.Tail)-1] != "oops" || ce.Tail[0] != "line 12" {
		t.Errorf("tail = %q", ce.Tail)
	}
	if !strings.Contains(log.String(), "line 1\n") {
		t.Error("full output not in the build log")
	}
	out, err := output(context.Background(), r, Command{Name: "sh", Args: []string{"-c", "echo data; echo noise >&2"}})
	if err != nil || string(out) != "data\n" {
		t.Errorf("output = %q, %v", out, err)
	}
}

func TestCommandShort(t *testing.T) {
	c := Command{Name: "mmdebstrap", Args: []string{"--mode=root", "--setup-hook=set -e\nmkdir -p x", strings.Repeat("p,", 100)}}
	s := c.Short()
	if strings.Contains(s, "\n") || !strings.Contains(s, "--setup-hook=set -e…") || len([]rune(s)) > 400 {
		t.Errorf("Short() = %q", s)
	}
}
