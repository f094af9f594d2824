// Package registrytest runs go-containerregistry's in-memory OCI registry
// on 127.0.0.1 for tests of code that pushes containerDisks. Tests against
// a real registry server are in test/integration.
package registrytest

import (
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Options shape the registry a test starts.
type Options struct {
	// User and Password, when User is set, are required as HTTP basic
	// authentication on every request; anything else is answered 401.
	User, Password string
	// Wrap, when set, wraps the registry's handler (after the
	// authentication check), for a test that injects faults.
	Wrap func(http.Handler) http.Handler
}

// Start serves a new, empty registry until the test ends and returns its
// host:port (plain HTTP: push to it with insecure set).
func Start(t testing.TB, o Options) string {
	t.Helper()
	host, _ := start(t, o, false)
	return host
}

// StartTLS is Start serving HTTPS; it also returns the PEM certificate a
// client must trust for the registry's (a CA of its own, valid for
// 127.0.0.1).
func StartTLS(t testing.TB, o Options) (host string, caPEM []byte) {
	t.Helper()
	return start(t, o, true)
}

func start(t testing.TB, o Options, withTLS bool) (string, []byte) {
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if o.Wrap != nil {
		h = o.Wrap(h)
	}
	if o.User != "" {
		h = basicAuth(h, o.User, o.Password)
	}
	if !withTLS {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://"), nil
	}
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return strings.TrimPrefix(srv.URL, "https://"), ca
}

func basicAuth(next http.Handler, user, password string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="registrytest"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
