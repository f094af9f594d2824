package manifest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// Store returns exactly the bytes it wrote, and Read reads them back.
func TestStoreReturnsWhatItWrote(t *testing.T) {
	m := &Manifest{SchemaVersion: SchemaVersion, Name: "cloud-base", SpecDigest: "sha256:" + string(bytes.Repeat([]byte("a"), 64)),
		ContainerDisk: &ContainerDisk{Repository: "registry.example.com/images/cloud-base", Digest: "sha256:" + string(bytes.Repeat([]byte("b"), 64))}}
	path := filepath.Join(t.TempDir(), "cloud-base.json")
	raw, err := m.Store(path)
	if err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, onDisk) {
		t.Fatalf("Store returned %q, wrote %q", raw, onDisk)
	}
	back, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Name != m.Name || *back.ContainerDisk != *m.ContainerDisk {
		t.Errorf("read back %+v, want %+v", back, m)
	}
}
