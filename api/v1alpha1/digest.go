package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// DigestSchema versions the way image content maps to an image. Bump it when
// the builder starts producing different bytes for the same content, so
// that artifacts published by an older builder are not reused.
const DigestSchema = "image.nodeforge.dev/content/v1"

// ErrUnresolvedReference is returned by Digest when the content still refers
// to a ConfigMap: the digest must cover the referenced bytes, so callers
// resolve references first (see ImageContent.References).
var ErrUnresolvedReference = errors.New("image content refers to a ConfigMap that is not resolved yet")

// Digest returns the content address of the image content: "sha256:" and
// the hex SHA-256 of its canonical JSON form, after defaulting, with lists
// whose order does not matter sorted. It does not modify c.
func (c *ImageContent) Digest() (string, error) {
	if refs := c.References(); len(refs) > 0 {
		return "", fmt.Errorf("%w: %s", ErrUnresolvedReference, strings.Join(refs, ", "))
	}
	canon := c.DeepCopy()
	canon.Default()
	canon.canonicalize()
	b, err := json.Marshal(canon)
	if err != nil {
		return "", fmt.Errorf("encoding image content: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(DigestSchema))
	h.Write([]byte{'\n'})
	h.Write(b)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// References lists the ConfigMap references in the content, as field paths
// with the ConfigMap and key they name.
func (c *ImageContent) References() []string {
	var refs []string
	if k := c.Kubernetes; k != nil && k.AptRepository.SigningKey.ConfigMapKeyRef != nil {
		r := k.AptRepository.SigningKey.ConfigMapKeyRef
		refs = append(refs, fmt.Sprintf("kubernetes.aptRepository.signingKey.configMapKeyRef (%s/%s)", r.Name, r.Key))
	}
	for i, f := range c.Files {
		if r := f.ConfigMapKeyRef; r != nil {
			refs = append(refs, fmt.Sprintf("files[%d].configMapKeyRef (%s/%s)", i, r.Name, r.Key))
		}
	}
	for i, p := range c.Provisioners {
		if p.Ansible != nil && p.Ansible.PlaybookRef != nil {
			r := p.Ansible.PlaybookRef
			refs = append(refs, fmt.Sprintf("provisioners[%d].ansible.playbookRef (%s/%s)", i, r.Name, r.Key))
		}
	}
	return refs
}

// canonicalize sorts the lists whose order carries no meaning. Provisioners
// run in order and datasources are probed in order, so those stay as given.
func (c *ImageContent) canonicalize() {
	slices.Sort(c.Packages)
	slices.Sort(c.Kernel.Modules)
	slices.SortFunc(c.Kernel.Sysctls, func(a, b Sysctl) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(c.Files, func(a, b FileSpec) int { return strings.Compare(a.Path, b.Path) })
	slices.SortFunc(c.Units, func(a, b UnitSpec) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(c.Users, func(a, b UserSpec) int { return strings.Compare(a.Name, b.Name) })
	for i := range c.Users {
		slices.Sort(c.Users[i].Groups)
		slices.Sort(c.Users[i].SSHAuthorizedKeys)
	}
	if k := c.Kubernetes; k != nil {
		slices.Sort(k.Components)
		slices.Sort(k.AptRepository.Components)
	}
}

// DigestHex returns the hex part of a "sha256:..." digest.
func DigestHex(digest string) string { return strings.TrimPrefix(digest, "sha256:") }
