package verify

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
	"github.com/nodeforge/nodeforge/internal/freeport"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// kvmKernelWindow is how long a boot under KVM may take to show the
// kernel's first console line before KVM is judged unable to run the guest.
// On a working KVM host the kernel prints within a few seconds (firmware,
// GRUB's one-second menu, decompression).
const kvmKernelWindow = 20 * time.Second

// kvmSilenceWindow is how long the serial console of a guest under KVM may
// stay silent before SSH answers until the guest is judged stalled. Booting
// under KVM prints steadily (kernel, systemd, cloud-init); a vCPU that KVM
// cannot run prints nothing more.
const kvmSilenceWindow = 90 * time.Second

var (
	kvmMu     sync.Mutex
	kvmProbed bool
	kvmUsable bool
	kvmReason string
)

// ProbeKVM reports whether QEMU can run guests with KVM here, and why
// not. Opening /dev/kvm is not enough: on a paravirtualised host (a
// kvm-pvm backend) QEMU may abort with "failed to set MSR 0x10a" as soon as
// it initializes the vCPU. The probe starts a stopped (-S) q35 machine
// with -cpu host; if QEMU is still alive after a short grace period, the
// vCPU was set up. That is necessary, not sufficient: on other such hosts
// the vCPU starts and then the firmware or the guest kernel cannot run, so
// the boot test also watches the guest's first seconds (waitKernel) and
// calls disableKVM when they fail. The result is cached for the process.
func ProbeKVM(ctx context.Context) (bool, string) {
	kvmMu.Lock()
	defer kvmMu.Unlock()
	if !kvmProbed {
		kvmUsable, kvmReason = probeKVM(ctx)
		kvmProbed = true
	}
	return kvmUsable, kvmReason
}

// disableKVM records that KVM cannot run guests here after all, so later
// boots of the process go straight to TCG.
func disableKVM(reason string) {
	kvmMu.Lock()
	defer kvmMu.Unlock()
	kvmProbed, kvmUsable, kvmReason = true, false, reason
}

func probeKVM(ctx context.Context) (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm: %v", err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.Command("qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "q35",
		"-nodefaults", "-no-user-config", "-display", "none", "-m", "64", "-S")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return false, fmt.Sprintf("starting qemu: %v", err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return false, fmt.Sprintf("qemu with KVM exited at start (%v): %s", waitErr, lastLine(stderr.String()))
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	_ = cmd.Process.Kill()
	<-done
	return true, "qemu started a KVM vCPU"
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(ls) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(ls[i]); l != "" && !strings.Contains(l, "Assertion") {
			return l
		}
	}
	return strings.TrimSpace(s)
}

// guestUser is the account the NoCloud user-data creates for the test.
const guestUser = "nodeforge-verify"

// bootRun is one boot test: a throwaway overlay, a seed, a QEMU process
// and an SSH client.
type bootRun struct {
	image    string
	content  *imagev1.ImageContent
	dir      string
	accel    string
	hostname string
	sshPort  int
	nePort   int
	signer   ssh.Signer
	pubKey   string
	console  string
	firmware string
	diskSize int64

	nodeReadyAt time.Time // set by cluster-node-ready

	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	stderr  lockedBuffer // written by exec's copy goroutine while QEMU runs
	started time.Time
	client  *ssh.Client
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// prepare creates the overlay (one GiB larger than the image, so growing
// the root filesystem can be observed), the SSH key and the NoCloud seed.
func (b *bootRun) prepare(ctx context.Context, virtualSize int64, format string) error {
	b.diskSize = virtualSize + 1<<30
	overlay := filepath.Join(b.dir, "overlay.qcow2")
	abs, err := filepath.Abs(b.image)
	if err != nil {
		return err
	}
	if _, err := runCmd(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", abs, "-F", format,
		overlay, strconv.FormatInt(b.diskSize, 10)); err != nil {
		return fmt.Errorf("creating the overlay: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if b.signer, err = ssh.NewSignerFromKey(priv); err != nil {
		return err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	b.pubKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " nodeforge-verify"
	b.hostname = "nf-verify-" + randomHex(3)
	userData := fmt.Sprintf(`#cloud-config
hostname: %s
ssh_pwauth: false
users:
  - name: %s
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: true
    ssh_authorized_keys:
      - %s
`, b.hostname, guestUser, b.pubKey)
	metaData := fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", b.hostname, b.hostname)
	ud, md := filepath.Join(b.dir, "user-data"), filepath.Join(b.dir, "meta-data")
	if err := os.WriteFile(ud, []byte(userData), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(md, []byte(metaData), 0o600); err != nil {
		return err
	}
	if _, err := runCmd(ctx, "cloud-localds", filepath.Join(b.dir, "seed.img"), ud, md); err != nil {
		return fmt.Errorf("creating the NoCloud seed: %w", err)
	}
	if b.sshPort, err = freeport.Port(); err != nil {
		return err
	}
	if b.nePort, err = freeport.Port(); err != nil {
		return err
	}
	b.console = filepath.Join(b.dir, "console.log")
	b.firmware = filepath.Join(b.dir, "firmware.log")
	return nil
}

// arch is the image's architecture (amd64 when unknown).
func (b *bootRun) arch() arch.Arch {
	a, err := arch.For(b.content.Base.Architecture)
	if err != nil {
		a, _ = arch.For(imagev1.ArchitectureAMD64)
	}
	return a
}

// qemuArgs builds the command line. Only 127.0.0.1 ports are forwarded and
// restrict=on keeps the guest off every other network. For UEFI it copies
// the firmware's vars template into the run directory (the guest writes to
// it). amd64 boots a q35 machine (OVMF for UEFI, SeaBIOS otherwise, and
// OVMF's debug log on the ISA debug port); arm64 boots QEMU's virt machine
// with AAVMF, always UEFI (hybrid is UEFI there), its console the PL011,
// where the firmware prints too.
func (b *bootRun) qemuArgs() ([]string, error) {
	a := b.arch()
	args := []string{"-name", b.hostname, "-nodefaults", "-no-user-config", "-display", "none",
		"-smp", "2", "-m", "2048", "-no-reboot"}
	machine, cpu := "q35", "max"
	uefi := b.content.Disk.BootMode == imagev1.BootModeUEFI
	firmware := findOVMF
	if a.Name == imagev1.ArchitectureARM64 {
		// cortex-a57: under TCG, -cpu max emulates pointer authentication
		// in software, which makes the boot markedly slower.
		machine, cpu, uefi, firmware = "virt", "cortex-a57", true, findAAVMF
	}
	if b.accel == AccelKVM {
		args = append(args, "-machine", machine+",accel=kvm", "-cpu", "host")
	} else {
		args = append(args, "-machine", machine+",accel=tcg", "-cpu", cpu)
	}
	if uefi {
		code, vars := firmware()
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+code)
		// A firmware image without a separate vars template (OVMF.fd)
		// gets no vars drive.
		if vars != "" {
			varsCopy := filepath.Join(b.dir, filepath.Base(vars))
			in, err := os.ReadFile(vars)
			if err != nil {
				return nil, fmt.Errorf("reading the UEFI vars template: %w", err)
			}
			if err := os.WriteFile(varsCopy, in, 0o600); err != nil {
				return nil, fmt.Errorf("copying the UEFI vars template: %w", err)
			}
			args = append(args, "-drive", "if=pflash,format=raw,unit=1,file="+varsCopy)
		}
	}
	fwd := fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:22", b.sshPort)
	if boolOf(b.content.Monitoring.NodeExporter.Enabled) {
		fwd += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", b.nePort, b.content.Monitoring.NodeExporter.Port)
	}
	args = append(args,
		"-drive", "file="+filepath.Join(b.dir, "overlay.qcow2")+",if=virtio,format=qcow2,cache=unsafe,discard=unmap",
		"-drive", "file="+filepath.Join(b.dir, "seed.img")+",if=virtio,format=raw,readonly=on",
		"-netdev", "user,id=n0,restrict=on,"+fwd,
		"-device", "virtio-net-pci,netdev=n0",
		"-device", "virtio-rng-pci",
		"-serial", "file:"+b.console,
	)
	if a.HasBIOS() {
		args = append(args,
			"-chardev", "file,id=fw,path="+b.firmware,
			"-device", "isa-debugcon,iobase=0x402,chardev=fw",
		)
	}
	return args, nil
}

// findAAVMF is aavmfPaths; tests replace it.
var findAAVMF = aavmfPaths

// aavmfPaths returns the arm64 UEFI firmware (AAVMF, package
// qemu-efi-aarch64) and its vars template.
func aavmfPaths() (string, string) {
	return "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"
}

// findOVMF is ovmfPaths; tests replace it.
var findOVMF = ovmfPaths

// ovmfPaths returns the OVMF code image and its vars template ("" when the
// image has none).
func ovmfPaths() (string, string) {
	for _, p := range [][2]string{
		{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
		{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
		{"/usr/share/qemu/OVMF.fd", ""},
	} {
		if _, err := os.Stat(p[0]); err == nil {
			return p[0], p[1]
		}
	}
	return "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
}

// start launches QEMU in its own process group.
func (b *bootRun) start() error {
	args, err := b.qemuArgs()
	if err != nil {
		return err
	}
	b.cmd = exec.Command(b.arch().QEMUSystem, args...)
	b.cmd.Stderr = &b.stderr
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	b.started = time.Now()
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("starting qemu: %w", err)
	}
	b.exited = make(chan struct{})
	go func() {
		b.exitErr = b.cmd.Wait()
		close(b.exited)
	}()
	return nil
}

// stop kills QEMU by its PID (and its process group) and reaps it.
func (b *bootRun) stop() {
	if b.client != nil {
		_ = b.client.Close()
	}
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.exited:
		return
	default:
	}
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	_ = b.cmd.Process.Kill()
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
	}
}

// consoleTail returns the end of the serial console (and the firmware log
// when the console is empty: then the kernel never started).
func (b *bootRun) consoleTail(n int) string {
	tail := func(p string) string {
		data, err := os.ReadFile(p)
		if err != nil {
			return ""
		}
		s := strings.ToValidUTF8(strings.ReplaceAll(string(data), "\r", ""), "?")
		if len(s) > n {
			s = "…" + s[len(s)-n:]
		}
		return strings.TrimSpace(s)
	}
	c := tail(b.console)
	if strings.TrimSpace(c) == "" {
		if fw := tail(b.firmware); fw != "" {
			return "(serial console empty; firmware log:)\n" + fw
		}
	}
	if e := strings.TrimSpace(b.stderr.String()); e != "" {
		c += "\n(qemu stderr:) " + e
	}
	return c
}

// Console signs. A kernel panic is the kernel's own "Kernel panic - not
// syncing: REASON" line, not the phrase anywhere (a unit description or a
// cloud-init message may contain it). Stall signs are what a guest prints
// when its vCPUs stop making progress: under a KVM that cannot really run
// the guest they come before, or instead of, a panic, and they say nothing
// about the image. Under TCG a loaded host may print them too while the
// guest goes on, so there they are not fatal.
var (
	panicLineRE = regexp.MustCompile(`Kernel panic - not syncing:[^\n]*`)
	stallLineRE = regexp.MustCompile(`(watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s![^\n]*|rcu: INFO: rcu_\w+ (self-)?detected stalls?[^\n]*|INFO: task \S+ blocked for more than \d+ seconds[^\n]*)`)
)

// Kinds of fatal console signs.
const (
	// signGuest: the guest itself cannot come up (a kernel panic, emergency
	// mode, GRUB cannot find its files, no bootable disk).
	signGuest = "guest"
	// signStall: the vCPUs stopped making progress; under KVM that is the
	// accelerator, not the image.
	signStall = "stall"
)

// consoleSign is a sign on the console that the guest will never come up.
type consoleSign struct {
	Kind string
	Line string
}

// guestFatalError is a boot that cannot reach SSH because of what the
// console shows.
type guestFatalError struct{ sign consoleSign }

func (e *guestFatalError) Error() string {
	if e.sign.Kind == signStall {
		return fmt.Sprintf("the guest stopped making progress: console shows %q", e.sign.Line)
	}
	return fmt.Sprintf("the guest will not come up: console shows %q", e.sign.Line)
}

// classifyConsole looks for signs in a serial console and firmware log that
// the guest will never come up. kvm says the guest runs under KVM: then a
// stall sign is fatal, and a panic that follows one is the stall's (the
// kernel panics on a soft lockup or hung task when told to), not the
// image's. Under TCG stalls are only slowness.
func classifyConsole(console, firmware []byte, kvm bool) (consoleSign, bool) {
	s := strings.ReplaceAll(string(console), "\r", "")
	stall := stallLineRE.FindString(s)
	if kvm && stall != "" {
		return consoleSign{Kind: signStall, Line: stall}, true
	}
	if p := panicLineRE.FindString(s); p != "" {
		return consoleSign{Kind: signGuest, Line: strings.TrimSpace(p)}, true
	}
	for _, sig := range []string{"You are in emergency mode", "Give root password for maintenance", "grub rescue>", "error: no such device", "error: file `"} {
		if strings.Contains(s, sig) {
			return consoleSign{Kind: signGuest, Line: sig}, true
		}
	}
	for _, sig := range []string{"No bootable device", "Boot failed: not a bootable disk", "Boot failed: could not read the boot disk"} {
		if bytes.Contains(firmware, []byte(sig)) {
			return consoleSign{Kind: signGuest, Line: sig}, true
		}
	}
	return consoleSign{}, false
}

// fatalConsole looks for signs that the guest will never come up.
func (b *bootRun) fatalConsole() (consoleSign, bool) {
	console, _ := os.ReadFile(b.console)
	fw, _ := os.ReadFile(b.firmware)
	return classifyConsole(console, fw, b.accel == AccelKVM)
}

// waitKernel waits until the guest kernel writes its first line to the
// serial console. It fails when QEMU reports a KVM internal error (the vCPU
// could not run the firmware), exits, or the console shows no kernel line
// within window (GRUB ran, then the kernel stalled). The image's kernel
// command line always has the serial console (ttyS0, ttyAMA0 on arm64) and
// no "quiet".
func (b *bootRun) waitKernel(ctx context.Context, window time.Duration) error {
	deadline := time.NewTimer(window)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, l := range strings.Split(b.stderr.String(), "\n") {
			if strings.Contains(l, "KVM internal error") {
				return fmt.Errorf("qemu: %s", strings.TrimSpace(l))
			}
		}
		if data, _ := os.ReadFile(b.console); bytes.Contains(data, []byte("Linux version")) {
			return nil
		}
		select {
		case <-b.exited:
			return fmt.Errorf("qemu exited before the kernel started (%w): %s", b.exitErr, lastLine(b.stderr.String()))
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-deadline.C:
			return fmt.Errorf("the kernel wrote nothing to the serial console within %s", window)
		case <-tick.C:
		}
	}
}

// waitSSH dials until a session runs a command, QEMU exits, the console
// shows a fatal error, or ctx ends. With silence > 0 it also gives up when
// the console has not grown for that long before SSH answers (used under
// KVM, where a guest that stops printing has stalled; under TCG a slow
// host is silent for long stretches).
func (b *bootRun) waitSSH(ctx context.Context, silence time.Duration) error {
	cfg := &ssh.ClientConfig{
		User:            guestUser,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(b.signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), // a throwaway VM with host keys generated at its first boot
		Timeout:         10 * time.Second,
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.sshPort))
	var lastErr error
	var lastSize int64 = -1
	lastGrowth := time.Now()
	for {
		select {
		case <-b.exited:
			return fmt.Errorf("qemu exited before SSH answered (%w)", b.exitErr)
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errors.New("no answer")
			}
			return fmt.Errorf("no SSH login within the boot timeout: last error: %w", lastErr)
		default:
		}
		if sig, ok := b.fatalConsole(); ok {
			return &guestFatalError{sign: sig}
		}
		if silence > 0 {
			if fi, err := os.Stat(b.console); err == nil && fi.Size() != lastSize {
				lastSize, lastGrowth = fi.Size(), time.Now()
			} else if time.Since(lastGrowth) > silence {
				return &guestFatalError{sign: consoleSign{Kind: signStall,
					Line: fmt.Sprintf("nothing new for %s after: %s", silence, lastConsoleLine(b.console))}}
			}
		}
		c, err := dialSSH(ctx, addr, cfg)
		if err == nil {
			b.client = c
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
		case <-b.exited:
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// lastConsoleLine is the console's last non-empty line.
func lastConsoleLine(path string) string {
	data, _ := os.ReadFile(path)
	return lastLine(strings.ToValidUTF8(strings.ReplaceAll(string(data), "\r", ""), "?"))
}

func dialSSH(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	client := ssh.NewClient(sc, chans, reqs)
	if _, _, err := runSession(ctx, client, "true"); err != nil {
		client.Close()
		return nil, err
	}
	return client, nil
}

// runSession runs one command and returns its combined output and exit
// status (-1 when it did not exit normally).
func runSession(ctx context.Context, c *ssh.Client, cmd string) (string, int, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", -1, err
	}
	defer s.Close()
	// x/crypto/ssh copies stdout and stderr from separate goroutines.
	out := &lockedBuffer{}
	s.Stdout, s.Stderr = out, out
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		return out.String(), -1, ctx.Err()
	}
	if err != nil {
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			return out.String(), ee.ExitStatus(), nil
		}
		return out.String(), -1, err
	}
	return out.String(), 0, nil
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// guestPath is set for every command: a non-login SSH session's default
// PATH lacks the sbin directories (sysctl, ip, sshd).
const guestPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH; "

// run runs a command in the guest with a per-command time limit.
func (b *bootRun) run(ctx context.Context, cmd string, limit time.Duration) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	out, code, err := runSession(ctx, b.client, guestPath+cmd)
	return strings.TrimSpace(out), code, err
}
