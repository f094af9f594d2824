package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/checksum"
	"github.com/nodeforge/nodeforge/internal/debian"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

// convertArgs is the qemu-img command line for the output format.
func convertArgs(p *ConvertParams, raw, out string) []string {
	args := []string{"convert", "-f", "raw", "-O", string(p.Format)}
	if p.Format == imagev1.FormatQCOW2 {
		switch p.Compression {
		case imagev1.CompressionZstd:
			args = append(args, "-c", "-o", "compression_type=zstd")
		case imagev1.CompressionZlib:
			args = append(args, "-c", "-o", "compression_type=zlib")
		}
	}
	return append(args, raw, out)
}

func (b *build) convert(ctx context.Context, p *ConvertParams) error {
	b.progress(0.05, fmt.Sprintf("qemu-img convert to %s (%s)", p.Format, p.Compression))
	_ = os.Remove(b.partImage)
	if err := b.runner.Run(ctx, Command{Name: "qemu-img", Args: convertArgs(p, b.raw, b.partImage)}); err != nil {
		return err
	}
	// The raw disk is no longer needed: free its space before the manifest.
	_ = os.Remove(b.raw)
	return nil
}

func (b *build) writeManifest(ctx context.Context, _ *ManifestParams) error {
	b.progress(0.1, "checksum and package list")
	sum, size, err := checksum.File(b.partImage)
	if err != nil {
		return err
	}
	virtual := b.content.Disk.Size.Value()
	if out, err := output(ctx, b.runner, Command{Name: "qemu-img", Args: []string{"info", "--output=json", b.partImage}}); err == nil {
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if json.Unmarshal(out, &info) == nil && info.VirtualSize > 0 {
			virtual = info.VirtualSize
		}
	}
	status, err := b.readTreeFile("/var/lib/dpkg/status")
	if err != nil {
		return err
	}
	packages, err := installedPackages(status)
	if err != nil {
		return fmt.Errorf("the image's dpkg status: %w", err)
	}
	digest, err := b.content.Digest()
	if err != nil {
		return err
	}
	compression := ""
	if b.content.Output.Format == imagev1.FormatQCOW2 {
		compression = string(b.content.Output.Compression)
	}
	b.manifest = &manifest.Manifest{
		SchemaVersion:  manifest.SchemaVersion,
		Name:           b.opts.Name,
		SpecDigest:     digest,
		BuilderVersion: builderVersion(),
		CreatedAt:      b.now().UTC().Truncate(1e9),
		Image: manifest.Image{
			File:        b.opts.Name + "." + string(b.content.Output.Format),
			Format:      b.content.Output.Format,
			Compression: compression,
			SHA256:      sum,
			Size:        size,
			VirtualSize: virtual,
		},
		Base: manifest.Base{
			Distribution:  string(b.content.Base.Distribution),
			Release:       string(b.content.Base.Release),
			Architecture:  string(b.content.Base.Architecture),
			Mirror:        stripUserinfo(b.mirror),
			Suites:        b.suites,
			KernelVersion: b.kernelVersion,
			Layer:         b.baseLayer,
			LayerReused:   b.baseReused,
		},
		InstalledSizeBytes: b.treeBytes,
		Packages:           packages,
		Images:             b.containerImages,
		Content:            manifestContent(b.content),
	}
	b.progress(1, fmt.Sprintf("%d packages, %.1f MiB image", len(b.manifest.Packages), float64(size)/(1<<20)))
	return nil
}

// redacted replaces a secret value in the published manifest.
const redacted = "<redacted>"

// manifestContent is the content as the manifest publishes it, without
// what was needed only during the build and may be secret: Ansible
// extraVars values and credentials (user:password@) in the mirror and key
// URLs. The manifest's specDigest still addresses the real content.
func manifestContent(c *imagev1.ImageContent) imagev1.ImageContent {
	m := c.DeepCopy()
	m.Base.Mirror = stripUserinfo(m.Base.Mirror)
	if k := m.Kubernetes; k != nil {
		k.AptRepository.URL = stripUserinfo(k.AptRepository.URL)
		k.AptRepository.SigningKey.URL = stripUserinfo(k.AptRepository.SigningKey.URL)
	}
	for _, p := range m.Provisioners {
		if p.Ansible == nil {
			continue
		}
		for i := range p.Ansible.ExtraVars {
			p.Ansible.ExtraVars[i].Value = redacted
		}
	}
	return *m
}

// stripUserinfo removes user[:password]@ from a URL, leaving the rest as
// written (no re-encoding, and no url.Parse that could fail and keep it).
func stripUserinfo(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return s
	}
	return s[:i+3] + rest[at+1:]
}

// installedPackages lists the installed packages of a dpkg status file,
// sorted by name: the image's SBOM in the manifest.
func installedPackages(b []byte) ([]manifest.Package, error) {
	status, err := debian.ParseStatus(b)
	if err != nil {
		return nil, err
	}
	out := make([]manifest.Package, 0, len(status))
	for _, p := range status {
		if p.Installed() {
			out = append(out, manifest.Package{Name: p.Name, Version: p.Version, Architecture: p.Architecture, InstalledSizeKiB: p.InstalledSizeKiB})
		}
	}
	slices.SortFunc(out, func(a, b manifest.Package) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
