package storage

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// Environment variables read by S3OptionsFromEnv besides the credentials.
const (
	EnvEndpointURL   = "AWS_ENDPOINT_URL"
	EnvRegion        = "AWS_REGION"
	EnvDefaultRegion = "AWS_DEFAULT_REGION"
	// EnvCABundle names a PEM file of extra CA certificates.
	EnvCABundle = "AWS_CA_BUNDLE"
	// EnvAddressing is auto, path or virtual-host (nodeforge's own).
	EnvAddressing = "NODEFORGE_S3_ADDRESSING"
)

// S3URL is a parsed s3://BUCKET/PREFIX destination.
type S3URL struct {
	Bucket string
	// Prefix has no leading or trailing slash; may be empty.
	Prefix string
}

func (u S3URL) String() string {
	if u.Prefix == "" {
		return "s3://" + u.Bucket
	}
	return "s3://" + u.Bucket + "/" + u.Prefix
}

// ParseS3URL parses s3://BUCKET[/PREFIX]. The prefix is cleaned of leading,
// trailing and doubled slashes; "." and ".." segments are refused.
func ParseS3URL(raw string) (S3URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return S3URL{}, errorf(ErrInvalidArgument, "destination %q: %v", raw, err)
	}
	if u.Scheme != "s3" {
		return S3URL{}, errorf(ErrInvalidArgument, "destination %q: want s3://BUCKET/PREFIX", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return S3URL{}, errorf(ErrInvalidArgument, "destination %q: only s3://BUCKET/PREFIX is supported", raw)
	}
	if err := s3utils.CheckValidBucketNameStrict(u.Host); err != nil {
		return S3URL{}, errorf(ErrInvalidArgument, "destination %q: bucket %q: %v", raw, u.Host, err)
	}
	var segs []string
	for _, s := range strings.Split(u.Path, "/") {
		switch s {
		case "":
		case ".", "..":
			return S3URL{}, errorf(ErrInvalidArgument, "destination %q: . and .. are not allowed in the prefix", raw)
		default:
			segs = append(segs, s)
		}
	}
	return S3URL{Bucket: u.Host, Prefix: strings.Join(segs, "/")}, nil
}

// S3OptionsFromEnv builds options for bucket from the standard variables:
// AWS_ENDPOINT_URL (required; an http:// URL enables plain HTTP),
// AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_CA_BUNDLE (https only), and
// NODEFORGE_S3_ADDRESSING. lookup is os.LookupEnv in production.
func S3OptionsFromEnv(bucket string, lookup func(string) (string, bool)) (S3Options, error) {
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	creds, err := CredentialsFromEnv(lookup)
	if err != nil {
		return S3Options{}, err
	}
	opts := S3Options{
		Endpoint:    get(EnvEndpointURL),
		Bucket:      bucket,
		Region:      get(EnvRegion),
		Credentials: creds,
		Addressing:  Addressing(get(EnvAddressing)),
	}
	if opts.Region == "" {
		opts.Region = get(EnvDefaultRegion)
	}
	// The user wrote http:// on purpose: that is the explicit opt-in.
	opts.PlainHTTP = strings.HasPrefix(strings.ToLower(opts.Endpoint), "http://")
	// A CA bundle means nothing to plain HTTP; it may be set for every
	// tool on the machine, so it does not make an http:// endpoint fail.
	if f := get(EnvCABundle); f != "" && !opts.PlainHTTP {
		pem, err := os.ReadFile(f)
		if err != nil {
			return S3Options{}, fmt.Errorf("%s: %w", EnvCABundle, err)
		}
		opts.CACertPEM = pem
	}
	return opts, nil
}

// OpenS3URL is what `nodeforge publish --to s3://BUCKET/PREFIX` needs: it
// parses the destination, builds an S3 store from the environment and
// returns a Publisher on it with the URL's prefix. createBucket allows
// EnsureBucket (run by Publish) to create a missing bucket.
func OpenS3URL(raw string, createBucket bool, lookup func(string) (string, bool)) (*Publisher, *S3, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	dst, err := ParseS3URL(raw)
	if err != nil {
		return nil, nil, err
	}
	opts, err := S3OptionsFromEnv(dst.Bucket, lookup)
	if err != nil {
		return nil, nil, err
	}
	opts.CreateBucket = createBucket
	s, err := NewS3(opts)
	if err != nil {
		return nil, nil, err
	}
	return &Publisher{Store: s, Prefix: dst.Prefix}, s, nil
}

// OptionsForDestination maps a NodeImage's S3 destination to S3Options,
// after applying its defaults. creds and caPEM come from the Secrets the
// destination names (read by the caller: the manager from the API, the
// builder from the files they are mounted as).
func OptionsForDestination(d imagev1.S3Destination, creds Credentials, caPEM []byte) S3Options {
	d.Default()
	return S3Options{
		Endpoint:     d.Endpoint,
		Bucket:       d.Bucket,
		Region:       d.Region,
		Credentials:  creds,
		Addressing:   Addressing(d.BucketLookup),
		PlainHTTP:    d.Insecure,
		CACertPEM:    caPEM,
		CreateBucket: d.CreateBucket,
	}
}

// OpenDestination returns a Publisher on the S3 destination of a
// NodeImage in namespace. Its keys are scoped to the namespace:
// NAMESPACE/PREFIX/NAME/..., so whatever prefix and name a NodeImage
// chooses, it can only address (publish, prune, delete) keys under its own
// namespace, never another tenant's in a shared bucket.
func OpenDestination(d imagev1.S3Destination, namespace string, creds Credentials, caPEM []byte) (*Publisher, *S3, error) {
	prefix, err := DestinationPrefix(namespace, d.Prefix)
	if err != nil {
		return nil, nil, err
	}
	s, err := NewS3(OptionsForDestination(d, creds, caPEM))
	if err != nil {
		return nil, nil, err
	}
	return &Publisher{Store: s, Prefix: prefix}, s, nil
}

var namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// DestinationPrefix is the key prefix of a NodeImage destination:
// NAMESPACE/PREFIX (PREFIX cleaned, without leading or trailing slash).
func DestinationPrefix(namespace, prefix string) (string, error) {
	if !namespaceRE.MatchString(namespace) {
		return "", errorf(ErrInvalidArgument, "namespace %q: a destination's keys are scoped to the NodeImage's namespace, which must be a DNS label", namespace)
	}
	return path.Join(namespace, path.Clean("/" + prefix)[1:]), nil
}

// CredentialsFromDir reads credentials from a directory holding one file
// per key, as a Kubernetes Secret is mounted (see CredentialsFromSecretData
// for the key names).
func CredentialsFromDir(dir string) (Credentials, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Credentials{}, fmt.Errorf("reading credentials: %w", err)
	}
	data := map[string][]byte{}
	for _, e := range entries {
		// Mounted Secrets hold the files in a ..data directory with
		// symlinks next to it; skip the dot entries.
		if strings.HasPrefix(e.Name(), ".") || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return Credentials{}, fmt.Errorf("reading credentials: %w", err)
		}
		data[e.Name()] = b
	}
	return CredentialsFromSecretData(data)
}
