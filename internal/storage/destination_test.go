package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

func TestParseS3URL(t *testing.T) {
	for _, tc := range []struct {
		in     string
		bucket string
		prefix string
		bad    bool
	}{
		{in: "s3://images", bucket: "images"},
		{in: "s3://images/", bucket: "images"},
		{in: "s3://images/nodes/prod/", bucket: "images", prefix: "nodes/prod"},
		{in: "s3://images//a//b", bucket: "images", prefix: "a/b"},
		{in: "https://images/x", bad: true},
		{in: "s3://Bad_Bucket/x", bad: true},
		{in: "s3://images/../x", bad: true},
		{in: "s3://user:pw@images/x", bad: true},
		{in: "s3://images/x?y=1", bad: true},
		{in: "s3://", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			g := NewWithT(t)
			u, err := ParseS3URL(tc.in)
			if tc.bad {
				g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue(), "%v", err)
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(u).To(Equal(S3URL{Bucket: tc.bucket, Prefix: tc.prefix}))
		})
	}
}

func TestS3OptionsFromEnvAndOpenS3URL(t *testing.T) {
	g := NewWithT(t)
	env := map[string]string{
		EnvEndpointURL: "http://127.0.0.1:9000", EnvDefaultRegion: "eu-west-1",
		EnvAccessKeyID: testAccessKey, EnvSecretAccessKey: testSecret,
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	opts, err := S3OptionsFromEnv("bkt1", lookup)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(opts.PlainHTTP).To(BeTrue(), "an http:// endpoint in the environment is the opt-in")
	g.Expect(opts.Region).To(Equal("eu-west-1"))
	g.Expect(opts.Credentials.SecretAccessKey()).To(Equal(testSecret))

	// AWS_CA_BUNDLE (often set machine-wide) is for https endpoints only.
	env[EnvCABundle] = "/nonexistent/ca.pem"
	opts, err = S3OptionsFromEnv("bkt1", lookup)
	g.Expect(err).NotTo(HaveOccurred(), "an http:// endpoint ignores AWS_CA_BUNDLE")
	g.Expect(opts.CACertPEM).To(BeNil())
	env[EnvEndpointURL] = "https://127.0.0.1:9000"
	_, err = S3OptionsFromEnv("bkt1", lookup)
	g.Expect(err).To(MatchError(ContainSubstring(EnvCABundle)), "an https endpoint reads it")
	env[EnvEndpointURL] = "http://127.0.0.1:9000"
	delete(env, EnvCABundle)

	pub, st, err := OpenS3URL("s3://bkt1/nodes/prod", true, lookup)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pub.Prefix).To(Equal("nodes/prod"))
	g.Expect(st.Bucket()).To(Equal("bkt1"))
	g.Expect(st.create).To(BeTrue())
	g.Expect(pub.ImageKey("n", digestN(1), 3, FormatQCOW2)).To(Equal("nodes/prod/n/" + digestN(1) + "/3/n.qcow2"))

	delete(env, EnvSecretAccessKey)
	_, _, err = OpenS3URL("s3://bkt1", false, lookup)
	g.Expect(err).To(MatchError(ContainSubstring("AWS_SECRET_ACCESS_KEY")))

	// No endpoint is an error: there is no default server to send the
	// credentials and the image to.
	env[EnvSecretAccessKey] = testSecret
	delete(env, EnvEndpointURL)
	_, _, err = OpenS3URL("s3://bkt1", false, lookup)
	g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue(), "%v", err)
	g.Expect(err).To(MatchError(And(ContainSubstring("AWS_ENDPOINT_URL"), ContainSubstring("spec.destination.s3.endpoint"))))
}

func TestNewS3EndpointsAndURLs(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       S3Options
		url        string
		wantErrSub string
	}{
		{name: "path style", opts: S3Options{Endpoint: "https://s3.example.com/", Addressing: AddressingPath}, url: "https://s3.example.com/bkt/a/b.qcow2"},
		{name: "virtual host", opts: S3Options{Endpoint: "https://s3.example.com", Addressing: AddressingVirtualHost}, url: "https://bkt.s3.example.com/a/b.qcow2"},
		{name: "dns alias", opts: S3Options{Endpoint: "https://s3.example.com", Addressing: "dns"}, url: "https://bkt.s3.example.com/a/b.qcow2"},
		{name: "auto on an IP is path style", opts: S3Options{Endpoint: "http://127.0.0.1:9000", PlainHTTP: true}, url: "http://127.0.0.1:9000/bkt/a/b.qcow2"},
		{name: "bare host means https", opts: S3Options{Endpoint: "minio.local:9000", Addressing: AddressingPath}, url: "https://minio.local:9000/bkt/a/b.qcow2"},
		{name: "bare host plain http", opts: S3Options{Endpoint: "minio.local:9000", PlainHTTP: true, Addressing: AddressingPath}, url: "http://minio.local:9000/bkt/a/b.qcow2"},
		{name: "no endpoint", opts: S3Options{}, wantErrSub: "AWS_ENDPOINT_URL"},
		{name: "http needs opt-in", opts: S3Options{Endpoint: "http://127.0.0.1:9000"}, wantErrSub: "plain HTTP"},
		{name: "no path", opts: S3Options{Endpoint: "https://h/sub"}, wantErrSub: "path or query"},
		{name: "no userinfo", opts: S3Options{Endpoint: "https://" + testAccessKey + ":" + testSecret + "@h"}, wantErrSub: "must not carry credentials"},
		{name: "bad addressing", opts: S3Options{Endpoint: "https://h", Addressing: "sideways"}, wantErrSub: "addressing"},
		{name: "bad CA", opts: S3Options{Endpoint: "https://h", CACertPEM: []byte("nope")}, wantErrSub: "no PEM certificate"},
		{name: "CA over http", opts: S3Options{Endpoint: "http://h", PlainHTTP: true, CACertPEM: []byte("x")}, wantErrSub: "plain HTTP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			tc.opts.Bucket = "bkt"
			st, err := NewS3(tc.opts)
			if tc.wantErrSub != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErrSub)))
				g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue())
				g.Expect(err.Error()).NotTo(ContainSubstring(testSecret))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(st.URL("a/b.qcow2")).To(Equal(tc.url))
		})
	}
}

func TestOpenDestinationAndCredentialsFromDir(t *testing.T) {
	dir := t.TempDir()
	// Shaped like a mounted Secret: the keys are symlinks into ..data.
	data := filepath.Join(dir, "..data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"accessKeyID": "AKIDEXAMPLE", "secretAccessKey": "s3cr3t-value"} {
		if err := os.WriteFile(filepath.Join(data, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	creds, err := CredentialsFromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if creds.AccessKeyID() != "AKIDEXAMPLE" || creds.SecretAccessKey() != "s3cr3t-value" {
		t.Fatalf("credentials not read: %v", creds)
	}
	if _, err := CredentialsFromDir(t.TempDir()); err == nil {
		t.Fatal("an empty directory must not yield credentials")
	}

	d := imagev1.S3Destination{Endpoint: "http://127.0.0.1:9000", Bucket: "images", Prefix: "a//b/", Insecure: true}
	opts := OptionsForDestination(d, creds, nil)
	if opts.Region != imagev1.DefaultS3Region || opts.Addressing != AddressingAuto || !opts.PlainHTTP {
		t.Fatalf("destination defaults not applied: %+v", opts)
	}
	pub, _, err := OpenDestination(d, "team-a", creds, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Keys are scoped to the namespace, whatever the prefix says.
	if pub.Prefix != "team-a/a/b" {
		t.Fatalf("prefix %q, want team-a/a/b", pub.Prefix)
	}
	for _, tc := range []struct{ ns, prefix, want string }{
		{"team-a", "", "team-a"},
		{"team-a", "../../team-b", "team-a/team-b"},
		{"team-a", "/nodeforge/", "team-a/nodeforge"},
	} {
		if got, err := DestinationPrefix(tc.ns, tc.prefix); err != nil || got != tc.want {
			t.Errorf("DestinationPrefix(%q, %q) = %q, %v; want %q", tc.ns, tc.prefix, got, err, tc.want)
		}
	}
	for _, ns := range []string{"", "Team", "a/b", "..", strings.Repeat("a", 64)} {
		if _, err := DestinationPrefix(ns, "p"); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("DestinationPrefix(%q) = %v, want ErrInvalidArgument", ns, err)
		}
	}
	if strings.Contains(fmt.Sprintf("%v %+v", opts, opts), "s3cr3t-value") {
		t.Fatal("options print the secret")
	}
}
