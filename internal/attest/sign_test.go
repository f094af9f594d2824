package attest

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"testing"

	. "github.com/onsi/gomega"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Keys made as cosign makes them (sigstore's cryptoutils: an encrypted
// ECDSA P-256 key and an unencrypted RSA key) sign blobs and digests that
// sigstore's own verifier accepts, against the right file only.
func TestSignaturesVerifyWithSigstore(t *testing.T) {
	g := NewWithT(t)
	password := []byte("correct horse")
	ecPriv, ecPub, err := cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), cryptoutils.StaticPasswordFunc(password))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(ecPriv)).To(HavePrefix("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"))
	rsaPriv, rsaPub, err := cryptoutils.GeneratePEMEncodedRSAKeyPair(2048, cryptoutils.SkipPassword)
	g.Expect(err).NotTo(HaveOccurred())

	blob := []byte("a qcow2 image, or its SBOM")
	for name, k := range map[string]struct{ priv, pub, pass []byte }{
		"cosign ECDSA": {ecPriv, ecPub, password},
		"RSA":          {rsaPriv, rsaPub, nil},
	} {
		s, err := LoadSigner(k.priv, k.pass)
		g.Expect(err).NotTo(HaveOccurred(), name)
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(k.pub)
		g.Expect(err).NotTo(HaveOccurred())
		v, err := signature.LoadVerifier(pub, crypto.SHA256)
		g.Expect(err).NotTo(HaveOccurred())

		sig, err := SignBlob(s, blob)
		g.Expect(err).NotTo(HaveOccurred())
		raw, err := base64.StdEncoding.DecodeString(string(sig))
		g.Expect(err).NotTo(HaveOccurred(), "base64, as cosign writes it")
		g.Expect(v.VerifySignature(bytes.NewReader(raw), bytes.NewReader(blob))).To(Succeed(), name)
		g.Expect(v.VerifySignature(bytes.NewReader(raw), bytes.NewReader([]byte("another file")))).NotTo(Succeed(), name)
	}

	_, err = LoadSigner(ecPriv, []byte("wrong"))
	g.Expect(err).To(MatchError(ContainSubstring("cannot decrypt")))
	g.Expect(err.Error()).NotTo(ContainSubstring("wrong"))
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(edKey)
	_, err = LoadSigner(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil)
	g.Expect(err).To(MatchError(ContainSubstring("Ed25519")))
	_, err = LoadSigner([]byte("not a key"), nil)
	g.Expect(err).To(MatchError(ContainSubstring("not a PEM block")))
	s, _ := LoadSigner(rsaPriv, nil)
	_, err = SignDigest(s, "abc")
	g.Expect(err).To(MatchError(ContainSubstring("not a sha256 digest")))
}
