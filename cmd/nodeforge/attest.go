package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nodeforge/nodeforge/internal/attest"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// attestations are the SBOM and the provenance of the image m describes,
// as the companions published next to it: NAME.spdx.json and
// NAME.provenance.json.
func attestations(m *manifest.Manifest, run attest.Run) ([]storage.Companion, error) {
	sbom, err := attest.SBOM(m, "nodeforge-"+m.BuilderVersion, time.Now())
	if err != nil {
		return nil, err
	}
	prov, err := attest.Provenance(m, m.BuilderVersion, run)
	if err != nil {
		return nil, err
	}
	return []storage.Companion{
		{Name: m.Name + storage.SBOMSuffix, Data: sbom, ContentType: "application/spdx+json"},
		{Name: m.Name + storage.ProvenanceSuffix, Data: prov, ContentType: "application/vnd.in-toto+json"},
	}, nil
}

// writeCompanions writes the companions into dir (next to the image) and
// returns their paths.
func writeCompanions(dir string, cs []storage.Companion) ([]string, error) {
	var paths []string
	for _, c := range cs {
		p := filepath.Join(dir, c.Name)
		if err := os.WriteFile(p, c.Data, 0o644); err != nil {
			return nil, fmt.Errorf("writing %s: %w", c.Name, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}
