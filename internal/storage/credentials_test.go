package storage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

const (
	testAccessKey = "AKIDEXAMPLEACCESS"
	testSecret    = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	testToken     = "FwoGZXIvYXdzEXAMPLETOKEN"
)

func TestCredentialsNeverFormatSecrets(t *testing.T) {
	g := NewWithT(t)
	c := NewCredentials(testAccessKey, testSecret, testToken)
	type holder struct {
		Exported   Credentials
		unexported Credentials
		Ptr        *Credentials
	}
	h := holder{Exported: c, unexported: c, Ptr: &c}
	var out []string
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		out = append(out, fmt.Sprintf(f, c), fmt.Sprintf(f, h), fmt.Sprintf(f, &h), fmt.Sprintf(f, []Credentials{c}))
	}
	out = append(out, fmt.Sprint(c), fmt.Sprintln(h), c.String(), c.GoString())
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "creds", c, "holder", h)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "creds", c, "holder", h)
	out = append(out, buf.String())
	j, err := json.Marshal(h)
	g.Expect(err).NotTo(HaveOccurred())
	out = append(out, string(j))

	all := strings.Join(out, "\n")
	for _, v := range []string{testAccessKey, testSecret, testToken} {
		g.Expect(all).NotTo(ContainSubstring(v))
	}
	g.Expect(c.String()).To(Equal("Credentials{AccessKeyID: <redacted>, SecretAccessKey: <redacted>, SessionToken: <redacted>}"))
	g.Expect(Credentials{}.String()).To(ContainSubstring("SessionToken: <unset>"))
	// The values stay reachable for the client.
	g.Expect(c.AccessKeyID()).To(Equal(testAccessKey))
	g.Expect(c.SecretAccessKey()).To(Equal(testSecret))
	g.Expect(c.SessionToken()).To(Equal(testToken))
	g.Expect(c.redact("msg " + testSecret + " " + testToken)).To(Equal("msg <redacted> <redacted>"))
}

func TestCredentialsFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantErr string
		token   string
	}{
		{name: "all set", env: map[string]string{EnvAccessKeyID: testAccessKey, EnvSecretAccessKey: testSecret, EnvSessionToken: testToken}, token: testToken},
		{name: "no token", env: map[string]string{EnvAccessKeyID: testAccessKey, EnvSecretAccessKey: testSecret}},
		{name: "no secret", env: map[string]string{EnvAccessKeyID: testAccessKey}, wantErr: "missing AWS_SECRET_ACCESS_KEY"},
		{name: "nothing", env: map[string]string{}, wantErr: "missing AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c, err := CredentialsFromEnv(env(tc.env))
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				g.Expect(err).To(MatchError(ErrInvalidArgument))
				g.Expect(err.Error()).NotTo(ContainSubstring(testAccessKey))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(c.SecretAccessKey()).To(Equal(testSecret))
			g.Expect(c.SessionToken()).To(Equal(tc.token))
		})
	}
}

func TestCredentialsFromSecretData(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    map[string][]byte
		wantErr string
		token   string
	}{
		{name: "camelCase keys", data: map[string][]byte{"accessKeyID": []byte(testAccessKey), "secretAccessKey": []byte(testSecret + "\n"), "sessionToken": []byte(testToken)}, token: testToken},
		{name: "AWS_* keys", data: map[string][]byte{"AWS_ACCESS_KEY_ID": []byte(testAccessKey), "AWS_SECRET_ACCESS_KEY": []byte(testSecret)}},
		{name: "missing secret", data: map[string][]byte{"accessKeyID": []byte(testAccessKey)}, wantErr: "missing secretAccessKey"},
		{name: "empty", data: nil, wantErr: "missing accessKeyID and secretAccessKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c, err := CredentialsFromSecretData(tc.data)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				g.Expect(err.Error()).NotTo(ContainSubstring(testAccessKey))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(c.AccessKeyID()).To(Equal(testAccessKey))
			g.Expect(c.SecretAccessKey()).To(Equal(testSecret), "trailing newline of kubectl create secret --from-file is trimmed")
			g.Expect(c.SessionToken()).To(Equal(tc.token))
		})
	}
}
