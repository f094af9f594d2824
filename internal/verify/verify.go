// Package verify checks a built node image against the ImageContent it was
// built from: offline, by reading the image file (qemu-img, the GPT, ext4
// through debugfs, FAT through mtools; nothing is mounted), and by booting
// a throwaway overlay of it under QEMU with a NoCloud seed and running
// checks over SSH. Results form a Report whose JSON shape is shared with
// `nodeforge verify --json` and the build manifest. See checks.go for the
// check names and docs/verification.md for what each asserts.
package verify

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/arch"
)

// guestCheckConcurrency bounds the in-guest checks running at once (each is
// one SSH session on the same connection; sshd allows 10).
const guestCheckConcurrency = 4

// Verify checks the image at imagePath against content (defaulted here; a
// defaulted content is left as is). Check failures are recorded in the
// report; the error is only for problems that stop verification itself,
// such as an unusable work directory or an optional/skip name that matches
// no check (CheckSelection). The image file is never modified.
func Verify(ctx context.Context, imagePath string, content imagev1.ImageContent, opts Options) (*Report, error) {
	c := content.DeepCopy()
	c.Default()
	if err := CheckSelection(*c, opts); err != nil {
		return nil, err
	}
	if _, err := os.Stat(imagePath); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	dir, err := os.MkdirTemp(opts.WorkDir, "nodeforge-verify-")
	if err != nil {
		return nil, fmt.Errorf("creating a work directory: %w", err)
	}
	defer os.RemoveAll(dir)

	r := &Report{Checks: []Check{}}
	sel := newSelector(opts)

	off := &offlineImage{path: imagePath, content: c, workDir: dir}
	off.load(ctx)
	for _, pc := range planOffline(off) {
		sel.run(ctx, r, pc, opts.Progress)
	}
	// The raw copy is only needed offline; free the space before booting.
	if off.disk != nil {
		_ = os.Remove(off.disk.Path)
	}

	if opts.Boot {
		var vsize int64
		format := "qcow2"
		if off.info != nil {
			vsize, format = off.info.VirtualSize, off.info.Format
		}
		bootTest(ctx, r, sel, imagePath, c, vsize, format, off.infoErr, dir, opts)
	}
	return r, nil
}

// bootNames lists the boot checks the content implies, for recording them
// as failed when the guest never answers.
func bootNames(c *imagev1.ImageContent) []string {
	b := &bootRun{content: c}
	var names []string
	for _, pc := range planGuest(b) {
		names = append(names, pc.name)
	}
	return names
}

func bootTest(ctx context.Context, r *Report, sel selector, image string, c *imagev1.ImageContent, vsize int64, format string, infoErr error, workDir string, opts Options) {
	timeout := opts.BootTimeout
	if timeout <= 0 {
		timeout = imagev1.DefaultBootTimeout
	}
	cluster := opts.Cluster && clusterApplies(c)
	// failRest records every boot check after boot-ssh (and the cluster
	// checks) as not run.
	failRest := func(msg string) {
		for _, n := range append([]string{CheckBootCloudInit}, bootNames(c)...) {
			sel.failWith(r, n, Boot, "not run: "+msg, opts.Progress)
		}
		if cluster {
			for _, n := range clusterNames {
				sel.failWith(r, n, Cluster, "not run: "+msg, opts.Progress)
			}
		}
	}
	// failAll fails boot-ssh with msg and every later boot check as not run.
	failAll := func(msg string) {
		sel.failWith(r, CheckBootSSH, Boot, msg, opts.Progress)
		failRest(msg)
	}
	if sel.skip[CheckBootSSH] {
		failAll("boot-ssh skipped")
		return
	}
	if infoErr != nil {
		failAll(fmt.Sprintf("cannot boot an image qemu-img cannot read: %v", infoErr))
		return
	}

	accel := opts.Accelerator
	auto := accel == ""
	if auto {
		accel = AccelTCG
		if guest := c.Base.Architecture; guest != "" && guest != arch.Host() {
			// KVM runs guests of the host's architecture only.
			r.AcceleratorNote = fmt.Sprintf("KVM not used: the guest is %s, the host %s (emulated)", guest, arch.Host())
		} else if ok, why := ProbeKVM(ctx); ok {
			accel = AccelKVM
		} else {
			r.AcceleratorNote = "KVM not used: " + why
		}
	}

	dir, err := os.MkdirTemp(workDir, "boot-")
	if err != nil {
		failAll(err.Error())
		return
	}
	defer os.RemoveAll(dir)

	bctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("boot test timed out after %s", timeout))
	defer cancel()

	// Each attempt gets its own directory: overlay, seed, UEFI vars, logs.
	start := func(accel string) (*bootRun, error) {
		d := filepath.Join(dir, accel)
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		run := &bootRun{image: image, content: c, dir: d, accel: accel}
		if err := run.prepare(bctx, vsize, format); err != nil {
			return nil, err
		}
		return run, run.start()
	}
	b, err := start(accel)
	defer func() {
		if b != nil {
			b.stop()
		}
	}()
	// A host can pass the probe and still not run this guest under KVM.
	// Then the boot starts again under TCG, once, and the report says why:
	// a guest that fails under KVM may be the accelerator's fault, so only
	// a failure under TCG is the image's.
	fallback := func(why string) error {
		b.stop()
		accel = AccelTCG
		r.AcceleratorNote = "the boot under KVM failed (" + why + "); booted again under TCG"
		b, err = start(accel)
		return err
	}
	kvmAuto := func() bool { return auto && accel == AccelKVM }
	if err == nil && kvmAuto() {
		if kerr := b.waitKernel(bctx, kvmKernelWindow); kerr != nil && bctx.Err() == nil {
			// The vCPU cannot even start the kernel: KVM's fault, for the
			// rest of the process.
			disableKVM(kerr.Error())
			err = fallback(kerr.Error())
		}
	}
	if err != nil {
		r.Accelerator = accel
		failAll(err.Error())
		return
	}

	failed := false
	sshCheck := sel.run(bctx, r, plannedCheck{name: CheckBootSSH, category: Boot, run: func(ctx context.Context) (string, error) {
		var silence time.Duration
		if accel == AccelKVM {
			silence = kvmSilenceWindow
		}
		err := b.waitSSH(ctx, silence)
		if err != nil && kvmAuto() && ctx.Err() == nil {
			why := err.Error()
			if ferr := fallback(why); ferr != nil {
				return "", ferr
			}
			// KVM is given up for the process only when TCG then gets
			// through: a guest that fails both ways is the image's fault.
			if err = b.waitSSH(ctx, 0); err == nil {
				disableKVM(why)
			}
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
				return "", fmt.Errorf("%w (%w, %s)", err, context.Cause(ctx), accel)
			}
			return "", err
		}
		r.TimeToSSHSeconds = roundSeconds(time.Since(b.started))
		return fmt.Sprintf("logged in as %s with the per-run key after %.0f s (%s)", guestUser, r.TimeToSSHSeconds, accel), nil
	}}, opts.Progress)
	r.Accelerator = accel
	if !sshCheck.Passed {
		if b != nil { // nil when the TCG attempt could not even be prepared
			r.ConsoleTail = b.consoleTail(4000)
		}
		failRest("no SSH session")
		return
	}

	ci := sel.run(bctx, r, plannedCheck{name: CheckBootCloudInit, category: Boot, run: func(ctx context.Context) (string, error) {
		msg, err := b.waitCloudInit(ctx)
		r.TimeToCloudInitSeconds = roundSeconds(time.Since(b.started))
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s after %.0f s", msg, r.TimeToCloudInitSeconds), nil
	}}, opts.Progress)
	failed = failed || (!ci.Passed && !ci.Skipped)

	// The in-guest checks only read the running system, so they run side
	// by side: under TCG most of their time is the guest starting Go
	// binaries (kubeadm, kubelet, kubectl), which parallelises over vCPUs.
	if sel.runAll(bctx, r, planGuest(b), guestCheckConcurrency, opts.Progress) {
		failed = true
	}
	// The cluster checks change the guest (kubeadm init), so they come
	// last, one after the other, with a budget of their own.
	if cluster {
		ct := opts.ClusterTimeout
		if ct <= 0 {
			ct = imagev1.DefaultClusterTimeout
		}
		cstart := time.Now()
		if runCluster(ctx, r, sel, planCluster(b), ct, opts.Progress) {
			failed = true
		}
		r.ClusterSeconds = roundSeconds(time.Since(cstart))
		if !b.nodeReadyAt.IsZero() {
			r.TimeToNodeReadySeconds = roundSeconds(b.nodeReadyAt.Sub(b.started))
		}
	}
	r.BootSeconds = roundSeconds(time.Since(b.started))
	// Where the boot's time went, for the report (not a check).
	if out, code, err := b.run(bctx, "systemd-analyze --no-pager; systemd-analyze critical-chain --no-pager; systemd-analyze blame --no-pager | head -n 15", 30*time.Second); err == nil && code == 0 {
		r.BootAnalysis = out
	}
	if failed {
		r.ConsoleTail = b.consoleTail(4000)
	}
}
