// Package capool builds the certificate pool a client trusts when a user
// names a private CA: the system's CAs and the user's, so that the same
// setting works for endpoints signed by either.
package capool

import (
	"crypto/x509"
	"errors"
)

// New returns the system's CA pool (empty when the system has none) with
// the certificates of the PEM bundle added; a bundle without a
// certificate is an error.
func New(pem []byte) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate found in the CA bundle")
	}
	return pool, nil
}
