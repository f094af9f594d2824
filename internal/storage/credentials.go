package storage

import (
	"fmt"
	"log/slog"
	"strings"
)

// Keys read from a Kubernetes Secret's data by CredentialsFromSecretData.
// The AWS_* spellings are accepted too, so one Secret can also be mounted as
// environment variables.
const (
	SecretKeyAccessKeyID     = "accessKeyID"
	SecretKeySecretAccessKey = "secretAccessKey"
	SecretKeySessionToken    = "sessionToken" // optional
)

// CredentialSecretKeys are every key of a Secret that
// CredentialsFromSecretData reads: a builder is given these and nothing
// else of the Secret.
var CredentialSecretKeys = []string{
	SecretKeyAccessKeyID, SecretKeySecretAccessKey, SecretKeySessionToken,
	EnvAccessKeyID, EnvSecretAccessKey, EnvSessionToken,
}

// Standard environment variables read by CredentialsFromEnv.
const (
	EnvAccessKeyID     = "AWS_ACCESS_KEY_ID"
	EnvSecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	EnvSessionToken    = "AWS_SESSION_TOKEN"
)

const redacted = "<redacted>"

// Credentials are S3 static credentials: an access key, its secret and an
// optional session token. The values are reachable only through methods, and
// every textual form (fmt verbs including %#v and %+v, slog, JSON) redacts
// them, so a Credentials value printed by mistake, or nested in a struct that
// is printed, does not leak. Errors from this package never contain them.
type Credentials struct {
	// A closure: reflection-based printing (fmt on an unexported field,
	// where no method can be called; debuggers' struct dumps) shows only a
	// function address, never the values.
	v func() credentialValues
}

type credentialValues struct {
	accessKeyID, secretAccessKey, sessionToken string
}

// NewCredentials returns static credentials. sessionToken may be empty.
func NewCredentials(accessKeyID, secretAccessKey, sessionToken string) Credentials {
	v := credentialValues{
		accessKeyID:     strings.TrimSpace(accessKeyID),
		secretAccessKey: strings.TrimSpace(secretAccessKey),
		sessionToken:    strings.TrimSpace(sessionToken),
	}
	return Credentials{v: func() credentialValues { return v }}
}

// CredentialsFromEnv reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the
// optional AWS_SESSION_TOKEN through lookup (os.LookupEnv in production).
// It fails when the key or the secret is missing; the error names the
// missing variable, never a value.
func CredentialsFromEnv(lookup func(string) (string, bool)) (Credentials, error) {
	get := func(k string) string {
		v, _ := lookup(k)
		return v
	}
	c := NewCredentials(get(EnvAccessKeyID), get(EnvSecretAccessKey), get(EnvSessionToken))
	if err := c.validate(EnvAccessKeyID, EnvSecretAccessKey); err != nil {
		return Credentials{}, fmt.Errorf("credentials from environment: %w", err)
	}
	return c, nil
}

// CredentialsFromSecretData reads credentials from a Kubernetes Secret's
// data map: keys accessKeyID, secretAccessKey and optional sessionToken, or
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN. The error
// for a missing key names the key, never a value.
func CredentialsFromSecretData(data map[string][]byte) (Credentials, error) {
	get := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := data[k]; ok && len(v) > 0 {
				return string(v)
			}
		}
		return ""
	}
	c := NewCredentials(
		get(SecretKeyAccessKeyID, EnvAccessKeyID),
		get(SecretKeySecretAccessKey, EnvSecretAccessKey),
		get(SecretKeySessionToken, EnvSessionToken),
	)
	if err := c.validate(SecretKeyAccessKeyID, SecretKeySecretAccessKey); err != nil {
		return Credentials{}, fmt.Errorf("credentials from secret: %w", err)
	}
	return c, nil
}

func (c Credentials) validate(accessName, secretName string) error {
	var missing []string
	if c.AccessKeyID() == "" {
		missing = append(missing, accessName)
	}
	if c.SecretAccessKey() == "" {
		missing = append(missing, secretName)
	}
	if len(missing) > 0 {
		return errorf(ErrInvalidArgument, "missing %s", strings.Join(missing, " and "))
	}
	return nil
}

// AccessKeyID returns the access key ID.
func (c Credentials) AccessKeyID() string {
	if c.v == nil {
		return ""
	}
	return c.v().accessKeyID
}

// SecretAccessKey returns the secret access key.
func (c Credentials) SecretAccessKey() string {
	if c.v == nil {
		return ""
	}
	return c.v().secretAccessKey
}

// SessionToken returns the session token, or "".
func (c Credentials) SessionToken() string {
	if c.v == nil {
		return ""
	}
	return c.v().sessionToken
}

// IsZero reports whether no access key or secret is set (anonymous access).
func (c Credentials) IsZero() bool {
	return c.AccessKeyID() == "" && c.SecretAccessKey() == ""
}

// String redacts every value; it only says which ones are set.
func (c Credentials) String() string {
	field := func(v string) string {
		if v == "" {
			return "<unset>"
		}
		return redacted
	}
	return fmt.Sprintf("Credentials{AccessKeyID: %s, SecretAccessKey: %s, SessionToken: %s}",
		field(c.AccessKeyID()), field(c.SecretAccessKey()), field(c.SessionToken()))
}

// GoString is used by %#v.
func (c Credentials) GoString() string { return "storage." + c.String() }

// Format makes every fmt verb print the redacted form.
func (c Credentials) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = fmt.Fprint(f, c.GoString())
		return
	}
	_, _ = fmt.Fprint(f, c.String())
}

// LogValue implements slog.LogValuer.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("accessKeyIDSet", c.AccessKeyID() != ""),
		slog.Bool("secretAccessKeySet", c.SecretAccessKey() != ""),
		slog.Bool("sessionTokenSet", c.SessionToken() != ""),
	)
}

// MarshalJSON redacts, so credentials never end up in a manifest or status.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return []byte(`"` + redacted + `"`), nil
}

// redact replaces every credential value in s.
func (c Credentials) redact(s string) string {
	for _, v := range []string{c.SecretAccessKey(), c.SessionToken(), c.AccessKeyID()} {
		if len(v) >= 4 {
			s = strings.ReplaceAll(s, v, redacted)
		}
	}
	return s
}

var (
	_ fmt.Stringer   = Credentials{}
	_ fmt.GoStringer = Credentials{}
	_ fmt.Formatter  = Credentials{}
	_ slog.LogValuer = Credentials{}
)
