package attest

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
)

// PEM types of a cosign private key, encrypted with its password
// (scrypt and NaCl secretbox, github.com/secure-systems-lab/go-securesystemslib/encrypted).
var encryptedPEMTypes = map[string]bool{"ENCRYPTED SIGSTORE PRIVATE KEY": true, "ENCRYPTED COSIGN PRIVATE KEY": true}

// LoadSigner reads a private key: a cosign key (encrypted PEM, decrypted
// with password) or an unencrypted PEM key (PKCS#8, EC or PKCS#1 RSA). It
// must be an ECDSA or RSA key, which sign a SHA-256 digest as cosign
// sign-blob does; Ed25519 keys sign whole messages and are refused. Errors
// never contain the key or the password.
func LoadSigner(keyPEM, password []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("signing key: not a PEM block")
	}
	der := block.Bytes
	if encryptedPEMTypes[block.Type] {
		var err error
		if der, err = encrypted.Decrypt(block.Bytes, password); err != nil {
			return nil, errors.New("signing key: cannot decrypt it with the given password (cosign.password)")
		}
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(der)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(der)
	default:
		key, err = x509.ParsePKCS8PrivateKey(der)
	}
	if err != nil {
		return nil, fmt.Errorf("signing key: a %s block that is no private key this builder reads", block.Type)
	}
	if _, ok := key.(ed25519.PrivateKey); ok {
		return nil, errors.New("signing key: Ed25519 keys cannot sign a digest; use an ECDSA P-256 key (cosign generate-key-pair) or RSA")
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("signing key: %T cannot sign", key)
	}
	return s, nil
}

// SignDigest signs a SHA-256 digest (hex) and returns the signature as
// cosign writes it: base64 of the ASN.1 (ECDSA) or PKCS #1 v1.5 (RSA)
// signature. `cosign verify-blob --key PUB --signature FILE.sig FILE`
// checks it against the file.
func SignDigest(s crypto.Signer, sha256Hex string) ([]byte, error) {
	digest, err := hex.DecodeString(sha256Hex)
	if err != nil || len(digest) != sha256.Size {
		return nil, fmt.Errorf("sign: %q is not a sha256 digest", sha256Hex)
	}
	sig, err := s.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return []byte(base64.StdEncoding.EncodeToString(sig)), nil
}

// SignBlob signs data as SignDigest signs its digest.
func SignBlob(s crypto.Signer, data []byte) ([]byte, error) {
	sum := sha256.Sum256(data)
	return SignDigest(s, hex.EncodeToString(sum[:]))
}
