package builder

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// guardKeyTransport makes fetchKey dial loopback only: a test that reaches
// for any other host fails without a packet (not even a DNS query) leaving.
func guardKeyTransport(t *testing.T, tlsConfig *tls.Config) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = tlsConfig
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if host == "localhost" {
			// Resolved here, so no lookup leaves either.
			host = "127.0.0.1"
			addr = net.JoinHostPort(host, port)
		}
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			t.Errorf("fetchKey dialed %s", addr)
			return nil, fmt.Errorf("test: refusing to dial %s", addr)
		}
		return d.DialContext(ctx, network, addr)
	}
	old := keyTransport
	keyTransport = tr
	t.Cleanup(func() { keyTransport = old })
}

func TestFetchKey(t *testing.T) {
	key := []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAA==\n-----END PGP PUBLIC KEY BLOCK-----\n")
	big := bytes.Repeat([]byte("k"), maxKeySize+1)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/key":
			_, _ = w.Write(key)
		case "/max":
			_, _ = w.Write(big[:maxKeySize])
		case "/big":
			_, _ = w.Write(big)
		default:
			http.NotFound(w, r)
		}
	}))
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/key":
			_, _ = w.Write(key)
		case "/to-remote-http":
			http.Redirect(w, r, "http://nodeforge-test.invalid/key", http.StatusFound)
		case "/to-loopback-http":
			http.Redirect(w, r, plain.URL+"/key", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer secure.Close()
	guardKeyTransport(t, secure.Client().Transport.(*http.Transport).TLSClientConfig)

	localhost := strings.Replace(plain.URL, "127.0.0.1", "localhost", 1)
	keyFile := filepath.Join(t.TempDir(), "key.asc")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	bigFile := filepath.Join(t.TempDir(), "big.asc")
	if err := os.WriteFile(bigFile, big, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, url  string
		localFiles bool
		want       []byte
		err        string // empty: success
	}{
		// file:// only for the CLI: in a builder Pod it would copy any
		// readable file (the mounted credentials) into the image.
		{name: "file on the CLI", url: "file://" + keyFile, localFiles: true, want: key},
		{name: "file over the limit on the CLI", url: "file://" + bigFile, localFiles: true, err: "larger than 1048576 bytes"},
		{name: "file in a builder", url: "file:///var/run/nodeforge/credentials/secretAccessKey", err: "file:// is read only by the nodeforge CLI"},
		{name: "http on 127.0.0.1", url: plain.URL + "/key", want: key, err: ""},
		{name: "http on localhost", url: localhost + "/key", want: key, err: ""},
		{name: "https", url: secure.URL + "/key", want: key, err: ""},
		{name: "https redirected to http on loopback", url: secure.URL + "/to-loopback-http", want: key, err: ""},
		{name: "exactly the limit", url: plain.URL + "/max", want: big[:maxKeySize], err: ""},
		{name: "over the limit", url: plain.URL + "/big", want: nil, err: "larger than 1048576 bytes"},
		{name: "http on a remote host", url: "http://nodeforge-test.invalid/key", want: nil, err: "loopback hosts only"},
		{name: "http with userinfo on a remote host", url: "http://u:p@nodeforge-test.invalid/key", want: nil, err: "loopback hosts only"},
		{name: "https redirected to http on a remote host", url: secure.URL + "/to-remote-http", want: nil, err: "loopback hosts only"},
		{name: "unknown scheme", url: "ftp://nodeforge-test.invalid/key", want: nil, err: "not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fetchKey(context.Background(), imagev1.KeySource{URL: tc.url}, tc.localFiles)
			if tc.err == "" {
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Errorf("fetchKey = %d bytes, %v; want %d bytes", len(got), err, len(tc.want))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !IsInputError(err) {
				t.Errorf("fetchKey err = %v; want an input error containing %q", err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "u:p@") {
				t.Errorf("error shows the URL's password: %v", err)
			}
		})
	}
}
