package main

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nodeforge/nodeforge/internal/attest"
	"github.com/nodeforge/nodeforge/internal/buildresult"
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

// signatures signs the image (by its sha256) and each companion, as cosign
// sign-blob does: FILE.sig, base64, next to FILE.
func signatures(s crypto.Signer, m *manifest.Manifest, companions []storage.Companion) ([]storage.Companion, error) {
	sig, err := attest.SignDigest(s, m.Image.SHA256)
	if err != nil {
		return nil, err
	}
	out := []storage.Companion{{Name: m.Image.File + storage.SignatureSuffix, Data: sig, ContentType: "text/plain"}}
	for _, c := range companions {
		sig, err := attest.SignBlob(s, c.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, storage.Companion{Name: c.Name + storage.SignatureSuffix, Data: sig, ContentType: "text/plain"})
	}
	return out, nil
}

// loadSigner reads the signing key (and its password, when there is one)
// from dir, named as cosign names them. what names the key's source in
// errors; the key and the password never appear in them.
func loadSigner(dir, what string) (crypto.Signer, error) {
	key, err := os.ReadFile(filepath.Join(dir, buildresult.SigningKeyFile))
	if err != nil {
		return nil, fmt.Errorf("%s: no %s: %w", what, buildresult.SigningKeyFile, errors.Unwrap(err))
	}
	password, err := os.ReadFile(filepath.Join(dir, buildresult.SigningPasswordFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %s: %w", what, buildresult.SigningPasswordFile, errors.Unwrap(err))
	}
	s, err := attest.LoadSigner(key, bytes.TrimRight(password, "\n"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
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
