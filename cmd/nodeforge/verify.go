package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/verify"
)

type verifyFlags struct {
	file        string
	boot        bool
	jsonOut     string
	timeout     time.Duration
	accelerator string
	workDir     string
	optional    []string
	skip        []string
	quiet       bool
}

func newVerifyCmd() *cobra.Command {
	f := &verifyFlags{}
	cmd := &cobra.Command{
		Use:   "verify IMAGE.qcow2",
		Short: "Verify a node image offline and, with --boot, by booting it",
		Long: `verify checks a node image against the NodeImage it was built from.

Offline checks read the image file (qemu-img facts, partition table,
filesystems, boot loaders, packages, services, kernel and sshd settings,
hygiene) without booting or mounting it. With --boot, a throwaway overlay of
the image boots under QEMU (KVM when it can really run guests here, else TCG)
with a NoCloud seed and a per-run SSH key, and the running node is checked.

Without -f the image is checked against the default content (no Kubernetes
packages). With -f, the NodeImage is read strictly and defaulted; its
spec.verification selects optional and skipped checks and the boot timeout.
The command exits non-zero when a required check fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runVerify(cmd, args[0], f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "NodeImage YAML the image was built from")
	fl.BoolVar(&f.boot, "boot", false, "also boot the image and check the running node")
	fl.StringVar(&f.jsonOut, "json", "", "write the report as JSON to this file (- for stdout)")
	fl.DurationVar(&f.timeout, "boot-timeout", 0, "bound on the boot test (default: spec.verification.boot.timeout, 10m)")
	fl.StringVar(&f.accelerator, "accelerator", "", "force kvm or tcg instead of probing KVM")
	fl.StringVar(&f.workDir, "work-dir", "", "directory for temporary files (default: $TMPDIR)")
	fl.StringSliceVar(&f.optional, "optional", nil, "check names whose failure does not fail the command")
	fl.StringSliceVar(&f.skip, "skip", nil, "check names not to run")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print only failed checks and the summary")
	return cmd
}

func runVerify(cmd *cobra.Command, image string, f *verifyFlags) error {
	ctx := cmd.Context()
	var content imagev1.ImageContent
	var vspec imagev1.VerificationSpec
	if f.file != "" {
		img, resolved, err := loadNodeImage(ctx, f.file)
		if err != nil {
			return err
		}
		content, vspec = *resolved, img.Spec.Verification
	}
	content.Default()
	vspec.Default()
	opts := verify.OptionsFromSpec(vspec)
	opts.Boot = f.boot
	if f.timeout > 0 {
		opts.BootTimeout = f.timeout
	}
	opts.Accelerator = f.accelerator
	opts.WorkDir = f.workDir
	opts.Optional = append(opts.Optional, f.optional...)
	opts.Skip = append(opts.Skip, f.skip...)
	switch opts.Accelerator {
	case "", verify.AccelKVM, verify.AccelTCG:
	default:
		return fmt.Errorf("--accelerator must be kvm or tcg, not %q", opts.Accelerator)
	}
	opts.Progress = checkProgress(false, f.quiet, cmd.OutOrStdout(), cmd.ErrOrStderr())
	start := time.Now()
	r, err := verify.Verify(ctx, image, content, opts)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if f.jsonOut != "-" {
		printReport(out, r, f.quiet)
		fmt.Fprintf(out, "verified in %s\n", time.Since(start).Round(time.Second))
	}
	if f.jsonOut != "" {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if f.jsonOut == "-" {
			_, err = out.Write(b)
		} else {
			err = os.WriteFile(f.jsonOut, b, 0o644)
		}
		if err != nil {
			return err
		}
	}
	if fails := r.RequiredFailures(); len(fails) > 0 {
		names := make([]string, 0, len(fails))
		for _, c := range fails {
			names = append(names, c.Name)
		}
		return fmt.Errorf("%d required check(s) failed: %s", len(fails), strings.Join(names, ", "))
	}
	return nil
}

func status(c verify.Check) string {
	switch {
	case c.Skipped:
		return "SKIP"
	case c.Passed:
		return "ok"
	case !c.Required:
		return "warn"
	}
	return "FAIL"
}

// printReport prints a table of checks, the boot facts and the summary.
func printReport(w io.Writer, r *verify.Report, quiet bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCATEGORY\tCHECK\tSECONDS\tMESSAGE")
	for _, c := range r.Checks {
		if quiet && (c.Passed || c.Skipped) {
			continue
		}
		msg := strings.ReplaceAll(c.Message, "\n", " ")
		if len(msg) > 160 {
			msg = msg[:160] + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%s\n", status(c), c.Category, c.Name, c.DurationSeconds, msg)
	}
	_ = tw.Flush()
	if r.Accelerator != "" {
		fmt.Fprintf(w, "boot: accelerator %s, SSH after %.0f s, cloud-init done after %.0f s, all boot checks after %.0f s\n",
			r.Accelerator, r.TimeToSSHSeconds, r.TimeToCloudInitSeconds, r.BootSeconds)
		if r.AcceleratorNote != "" {
			fmt.Fprintf(w, "      %s\n", r.AcceleratorNote)
		}
	}
	if r.ConsoleTail != "" {
		fmt.Fprintf(w, "console tail:\n%s\n", indent(r.ConsoleTail, "  | "))
	}
	fmt.Fprintf(w, "summary: %d passed, %d failed, %d skipped\n", r.Summary.Passed, r.Summary.Failed, r.Summary.Skipped)
}

func indent(s, prefix string) string {
	lines := strings.Split(s, "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return prefix + strings.Join(lines, "\n"+prefix)
}
