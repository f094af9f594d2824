// Package manifest defines the build manifest: the JSON record written next
// to every image (DIR/NAME.json locally, manifest.json in object storage)
// with the spec digest, checksums and sizes, the installed packages (a
// dpkg-based SBOM), per-step timings and the verification report.
package manifest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/verify"
)

// SchemaVersion identifies this manifest format.
const SchemaVersion = "manifest.nodeforge.dev/v1"

// Manifest is the record of one built image.
type Manifest struct {
	SchemaVersion  string    `json:"schemaVersion"`
	Name           string    `json:"name"`
	SpecDigest     string    `json:"specDigest"`
	BuilderVersion string    `json:"builderVersion"`
	CreatedAt      time.Time `json:"createdAt"`

	Image Image `json:"image"`
	Base  Base  `json:"base"`

	// InstalledSizeBytes is the size of the root filesystem tree.
	InstalledSizeBytes int64     `json:"installedSizeBytes"`
	Packages           []Package `json:"packages"`
	// Images are the container images preloaded into containerd's store
	// (kubernetes.images).
	Images []ContainerImage `json:"images,omitempty"`
	Steps  []Step           `json:"steps"`

	Verification *verify.Report `json:"verification,omitempty"`

	// Previous is the image that was published under the same name before
	// this one (the latest pointer when this one was published: another
	// spec's, or an earlier build of the same spec), with the packages
	// that changed since. Absent for a first image, and for one built
	// without a destination.
	Previous *Previous `json:"previous,omitempty"`

	// ContainerDisk is where the image was pushed to an OCI registry as a
	// KubeVirt containerDisk before it was published, when it was.
	ContainerDisk *ContainerDisk `json:"containerDisk,omitempty"`

	// Content is the resolved, defaulted image content that was built.
	Content imagev1.ImageContent `json:"content"`
}

// ContainerDisk is an image's containerDisk in an OCI registry.
type ContainerDisk struct {
	// Repository is host[:port]/path.
	Repository string `json:"repository"`
	// Digest is the containerDisk's manifest digest (sha256:...).
	Digest string `json:"digest"`
}

// Previous names the image published before this one and what changed.
type Previous struct {
	SpecDigest string `json:"specDigest"`
	// Revision is that image's revision (0: published before revisions).
	Revision  int       `json:"revision,omitempty"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"createdAt"`
	// Changes are the package changes from that image to this one.
	Changes PackageDiff `json:"changes"`
}

// Image describes the image file.
type Image struct {
	File        string         `json:"file"`
	Format      imagev1.Format `json:"format"`
	Compression string         `json:"compression,omitempty"`
	SHA256      string         `json:"sha256"`
	Size        int64          `json:"size"`
	VirtualSize int64          `json:"virtualSize"`
}

// Base records what the image was installed from.
type Base struct {
	Distribution string `json:"distribution"`
	Release      string `json:"release"`
	Architecture string `json:"architecture"`
	Mirror       string `json:"mirror,omitempty"`
	// Suites are the suites the image was installed from: for
	// spec.base.mirror the release and <release>-updates (no -security),
	// for the default mirror those of mmdebstrap's sources.list (the
	// release, -updates and -security).
	Suites        []string `json:"suites,omitempty"`
	KernelVersion string   `json:"kernelVersion,omitempty"`
	// Layer is the key of the cached base layer the tree was built on
	// (sha256 of its exact package closure and build parameters); empty
	// when the tree was built in one run.
	Layer string `json:"layer,omitempty"`
	// LayerReused says the base layer came from the builder's cache.
	LayerReused bool `json:"layerReused,omitempty"`
}

// Package is one installed Debian package.
type Package struct {
	Name             string `json:"name"`
	Version          string `json:"version"`
	Architecture     string `json:"architecture"`
	InstalledSizeKiB int64  `json:"installedSizeKiB,omitempty"`
}

// ContainerImage is one container image in the image's containerd store.
type ContainerImage struct {
	// Name it is stored under (what a Pod or kubeadm asks for).
	Name string `json:"name"`
	// Source it was pulled from, when not Name (a mirror, a digest).
	Source string `json:"source,omitempty"`
	// Digest of the pulled manifest (linux/amd64).
	Digest string `json:"digest"`
	// ID is the digest of its configuration, the IMAGE ID crictl shows.
	ID string `json:"id"`
	// SizeBytes is the size of its compressed layers.
	SizeBytes int64 `json:"sizeBytes"`
}

// Step is one pipeline step's timing.
type Step struct {
	Name            string  `json:"name"`
	DurationSeconds float64 `json:"durationSeconds"`
}

// Write stores the manifest as indented JSON at path.
func (m *Manifest) Write(path string) error {
	_, err := m.Store(path)
	return err
}

// Store is Write that also returns the bytes written, for publishing the
// very document the file beside the image holds.
func (m *Manifest) Store(path string) ([]byte, error) {
	b, err := m.Encode()
	if err != nil {
		return nil, err
	}
	return b, os.WriteFile(path, b, 0o644)
}

// Encode returns the manifest as Write stores it.
func (m *Manifest) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// Read loads a manifest written by Write.
func Read(path string) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Decode reads a manifest from r and checks its schema version.
func Decode(r io.Reader) (*Manifest, error) {
	var m Manifest
	if err := json.NewDecoder(r).Decode(&m); err != nil {
		return nil, fmt.Errorf("decoding manifest: %w", err)
	}
	if m.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("manifest schemaVersion %q, want %q", m.SchemaVersion, SchemaVersion)
	}
	return &m, nil
}
