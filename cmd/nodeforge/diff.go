package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/nodeforge/nodeforge/internal/manifest"
)

func newDiffCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "diff OLD.json NEW.json",
		Short: "Show which packages changed between two built images",
		Long: `diff compares the package lists of two build manifests (the NAME.json
next to a built image, or manifest.json from object storage): which
packages were upgraded, downgraded, added or removed, with their versions
ordered as dpkg orders them. The kernel version is shown when it changed.

--output json prints the same as one JSON object.`,
		Example: `  nodeforge diff out/old/cloud-base.json out/cloud-base.json
  nodeforge diff --output json a.json b.json | jq '.upgraded[].name'`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output: %q is not text or json", output)
			}
			older, err := manifest.Read(args[0])
			if err != nil {
				return err
			}
			newer, err := manifest.Read(args[1])
			if err != nil {
				return err
			}
			d := manifest.DiffPackages(older.Packages, newer.Packages)
			if output == "json" {
				return writeDiffJSON(cmd.OutOrStdout(), older, newer, d)
			}
			return writeDiffText(cmd.OutOrStdout(), older, newer, d)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// diffSide names one manifest in the diff's output.
type diffSide struct {
	Name           string `json:"name"`
	SpecDigest     string `json:"specDigest"`
	BuilderVersion string `json:"builderVersion,omitempty"`
	CreatedAt      string `json:"createdAt,omitempty"`
	KernelVersion  string `json:"kernelVersion,omitempty"`
}

func sideOf(m *manifest.Manifest) diffSide {
	s := diffSide{Name: m.Name, SpecDigest: m.SpecDigest, BuilderVersion: m.BuilderVersion, KernelVersion: m.Base.KernelVersion}
	if !m.CreatedAt.IsZero() {
		s.CreatedAt = m.CreatedAt.UTC().Format("2006-01-02T15:04:05Z")
	}
	return s
}

func writeDiffJSON(w io.Writer, older, newer *manifest.Manifest, d manifest.PackageDiff) error {
	out := struct {
		Old diffSide `json:"old"`
		New diffSide `json:"new"`
		manifest.PackageDiff
	}{sideOf(older), sideOf(newer), d}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeDiffText(w io.Writer, older, newer *manifest.Manifest, d manifest.PackageDiff) error {
	for _, s := range []struct {
		label string
		side  diffSide
	}{{"old", sideOf(older)}, {"new", sideOf(newer)}} {
		fmt.Fprintf(w, "%s: %s, spec %s", s.label, s.side.Name, s.side.SpecDigest)
		if s.side.CreatedAt != "" {
			fmt.Fprintf(w, ", built %s", s.side.CreatedAt)
		}
		fmt.Fprintln(w)
	}
	if o, n := older.Base.KernelVersion, newer.Base.KernelVersion; o != n {
		fmt.Fprintf(w, "kernel: %s -> %s\n", o, n)
	}
	if d.Empty() {
		fmt.Fprintln(w, "packages: no changes")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANGE\tPACKAGE\tARCH\tFROM\tTO")
	for _, l := range []struct {
		what    string
		changes []manifest.PackageChange
	}{{"upgraded", d.Upgraded}, {"downgraded", d.Downgraded}, {"added", d.Added}, {"removed", d.Removed}} {
		for _, c := range l.changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.what, c.Name, c.Architecture, dash(c.From), dash(c.To))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "packages: %d upgraded, %d downgraded, %d added, %d removed\n",
		len(d.Upgraded), len(d.Downgraded), len(d.Added), len(d.Removed))
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
