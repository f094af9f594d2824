package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// checkEnv is an update check's spec file and a Dir store standing in for
// its destination.
type checkEnv struct {
	o     *runOptions
	build *imagev1.NodeImageBuild
	pub   *storage.Publisher
}

func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	dir := t.TempDir()
	spec := writeBuild(t, dir, func(b *imagev1.NodeImageBuild) {
		b.Name = "demo-updates-0123456789"
		b.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: "https://s3.example.com", Bucket: "images",
			CredentialsSecretRef: corev1LocalRef}}
	})
	b, err := readBuild(spec)
	if err != nil {
		t.Fatal(err)
	}
	store, err := storage.NewDir(filepath.Join(dir, "bucket"))
	if err != nil {
		t.Fatal(err)
	}
	e := &checkEnv{build: b, pub: &storage.Publisher{Store: store}}
	e.o = &runOptions{spec: spec, result: filepath.Join(dir, "result"), scratch: filepath.Join(dir, "scratch"),
		credentialsDir: filepath.Join(dir, "no-credentials"), caDir: dir, updates: true,
		openPublisher: func(dst *imagev1.DestinationSpec, ns string) (*storage.Publisher, time.Duration, error) {
			if dst == nil || dst.S3.Bucket != "images" || ns != "default" {
				t.Errorf("destination %+v in namespace %q", dst, ns)
			}
			return e.pub, time.Hour, nil
		}}
	return e
}

// publish publishes an artifact of the build's digest whose manifest lists
// packages.
func (e *checkEnv) publish(t *testing.T, packages []manifest.Package) {
	t.Helper()
	m := manifest.Manifest{SchemaVersion: manifest.SchemaVersion, Name: "demo", SpecDigest: e.build.Spec.SpecDigest, Packages: packages}
	raw, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "demo.qcow2")
	if err := os.WriteFile(img, []byte("qcow2 bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pub.Publish(context.Background(), storage.PublishInput{Name: "demo", SpecDigest: e.build.Spec.SpecDigest,
		ImagePath: img, Manifest: raw}); err != nil {
		t.Fatal(err)
	}
}

func readUpdatesResult(t *testing.T, path string) *buildresult.UpdatesResult {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := buildresult.DecodeUpdates(raw)
	if err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	return r
}

// fakeArchive plays mmdebstrap's resolution pass for builder.CheckUpdates:
// it answers apt-cache madison for every package asked with the archive's
// version: versions[name], none when that is empty, else 1.0-1.
type fakeArchive struct {
	versions map[string]string
	asked    []string
	err      error
}

var (
	madisonOut = regexp.MustCompile(`> '([^']+/madison)'`)
	closureOut = regexp.MustCompile(`> '([^']+/base-closure)'`)
	quotedName = regexp.MustCompile(`'([a-z0-9.+-]+)'`)
)

func (f *fakeArchive) Run(_ context.Context, c builder.Command) error {
	if f.err != nil {
		return f.err
	}
	if !slices.Contains(c.Args, "mmdebstrap") || !slices.Contains(c.Args, "--format=null") {
		return fmt.Errorf("unexpected command %s %v: an update check resolves only", c.Name, c.Args)
	}
	for _, a := range c.Args {
		m := madisonOut.FindStringSubmatch(a)
		if m == nil {
			continue
		}
		var b bytes.Buffer
		for _, q := range quotedName.FindAllStringSubmatch(a[:strings.Index(a, ">")], -1) {
			f.asked = append(f.asked, q[1])
			v, ok := f.versions[q[1]]
			if !ok {
				v = "1.0-1"
			}
			if v != "" {
				fmt.Fprintf(&b, "%s | %s | http://127.0.0.1/debian trixie/main amd64 Packages\n", q[1], v)
			}
		}
		if err := os.WriteFile(m[1], b.Bytes(), 0o644); err != nil {
			return err
		}
		if m := closureOut.FindStringSubmatch(a); m != nil {
			return os.WriteFile(m[1], nil, 0o644)
		}
		return nil
	}
	return errors.New("no madison output path in the resolution hook")
}

// The check reads the published manifest of the spec digest and resolves
// its whole package list (not only the requested packages) against the
// spec's repositories; the result counts and names the newer versions,
// with their digest.
func TestCheckUpdatesComparesThePublishedManifest(t *testing.T) {
	g := NewWithT(t)
	e := newCheckEnv(t)
	installed := []manifest.Package{
		{Name: "jq", Version: "1.7.1-6", Architecture: "amd64"},
		{Name: "libc6", Version: "2.41-12", Architecture: "amd64"},
		{Name: "libgone1", Version: "1.0", Architecture: "amd64"},
		{Name: "libjq1", Version: "1.7.1-6", Architecture: "amd64"},
	}
	e.publish(t, installed)
	archive := &fakeArchive{versions: map[string]string{
		"jq": "1.7.1-6", "libjq1": "1.7.1-6", // current
		"libc6":      "2.41-12+deb13u1", // a dependency nobody asked for: newer
		"libgone1":   "",                // offered by no repository
		"containerd": "1.7.24~ds1-6",    // the spec constrains it
	}}
	e.o.runner = archive
	var out, errOut bytes.Buffer
	g.Expect(runCheckUpdates(context.Background(), e.o, &out, &errOut)).To(Succeed(), errOut.String())
	g.Expect(archive.asked).To(ContainElements("jq", "libc6", "libgone1", "libjq1"))

	r := readUpdatesResult(t, e.o.result)
	g.Expect(r.Outcome).To(Equal(buildresult.OutcomeSucceeded))
	g.Expect(r.SpecDigest).To(Equal(e.build.Spec.SpecDigest))
	g.Expect(r.Checked).To(Equal(int32(4)))
	g.Expect(r.Upgrades).To(Equal(int32(1)))
	g.Expect(r.Unavailable).To(Equal(int32(1)))
	g.Expect(r.Digest).To(MatchRegexp(`^sha256:[0-9a-f]{64}$`))
	g.Expect(r.Changes).To(Equal([]string{"libc6 2.41-12 → 2.41-12+deb13u1"}))
	g.Expect(out.String()).To(HavePrefix(`{"updates":{"outcome":"succeeded"`))
	g.Expect(filepath.Join(e.o.scratch, "work")).To(BeADirectory(), "work dir under the scratch volume")

	// The same archive again: the same digest. A current archive: no
	// upgrades, no digest.
	first := r.Digest
	g.Expect(runCheckUpdates(context.Background(), e.o, &out, &errOut)).To(Succeed())
	g.Expect(readUpdatesResult(t, e.o.result).Digest).To(Equal(first))
	archive.versions["libc6"] = "2.41-12"
	g.Expect(runCheckUpdates(context.Background(), e.o, &out, &errOut)).To(Succeed())
	r = readUpdatesResult(t, e.o.result)
	g.Expect(r.Upgrades).To(BeZero())
	g.Expect(r.Digest).To(BeEmpty())
	g.Expect(r.Changes).To(BeEmpty())

	// Many upgrades: the result names the first ones and counts them all.
	for i := range 80 {
		name := fmt.Sprintf("libmany%02d", i)
		installed = append(installed, manifest.Package{Name: name, Version: "1.0-1", Architecture: "amd64"})
		archive.versions[name] = "1.0-2"
	}
	e.publish(t, installed)
	g.Expect(runCheckUpdates(context.Background(), e.o, &out, &errOut)).To(Succeed())
	r = readUpdatesResult(t, e.o.result)
	g.Expect(r.Upgrades).To(Equal(int32(80)))
	g.Expect(r.Changes).To(HaveLen(maxUpdateChanges))
}

func TestCheckUpdatesReportsFailuresInTheResult(t *testing.T) {
	for name, tc := range map[string]struct {
		publish bool
		mutate  func(*checkEnv)
		want    string
	}{
		"nothing published": {want: "finding the published artifact"},
		"no destination": {publish: true, mutate: func(e *checkEnv) {
			e.build.Spec.Destination = nil
			raw, _ := json.Marshal(e.build)
			_ = os.WriteFile(e.o.spec, raw, 0o600)
		}, want: "spec.destination is not set"},
		"resolver fails": {publish: true, mutate: func(e *checkEnv) {
			e.o.runner = &fakeArchive{err: errors.New("E: The repository does not have a Release file")}
		}, want: "resolving the image's packages"},
		"destination unreadable": {mutate: func(e *checkEnv) {
			e.o.openPublisher = nil // the real one: no credentials mounted
		}, want: "credentials Secret creds"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			e := newCheckEnv(t)
			if tc.publish {
				e.publish(t, []manifest.Package{{Name: "jq", Version: "1.7.1-6", Architecture: "amd64"}})
			}
			e.o.runner = &fakeArchive{versions: map[string]string{"jq": "1.7.1-6"}}
			if tc.mutate != nil {
				tc.mutate(e)
			}
			var out bytes.Buffer
			g.Expect(runCheckUpdates(context.Background(), e.o, &out, &out)).To(MatchError(errCheckFailed))
			r := readUpdatesResult(t, e.o.result)
			g.Expect(r.Outcome).To(Equal(buildresult.OutcomeFailed))
			g.Expect(r.Message).To(ContainSubstring(tc.want))
		})
	}
}

// TestCheckUpdatesReadsTheManifestFromS3 runs the check against a real
// MinIO, with the credentials read from a mounted-Secret-shaped directory,
// as in the update check Pod.
func TestCheckUpdatesReadsTheManifestFromS3(t *testing.T) {
	g := NewWithT(t)
	srv := miniotest.Start(t, miniotest.Config{})
	e := newCheckEnv(t)
	e.build.Spec.Destination = &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: srv.Endpoint(), Bucket: "images",
		Prefix: "nodes", Insecure: true, CreateBucket: true, CredentialsSecretRef: corev1LocalRef}}
	raw, err := json.Marshal(e.build)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(os.WriteFile(e.o.spec, raw, 0o600)).To(Succeed())
	creds := filepath.Join(t.TempDir(), "credentials")
	g.Expect(os.Mkdir(creds, 0o700)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(creds, "accessKeyID"), []byte(srv.AccessKey), 0o600)).To(Succeed())
	g.Expect(os.WriteFile(filepath.Join(creds, "secretAccessKey"), []byte(srv.SecretKey), 0o600)).To(Succeed())
	e.o.credentialsDir, e.o.openPublisher = creds, nil

	pub, _, err := storage.OpenDestination(*e.build.Spec.Destination.S3, e.build.Namespace, storage.NewCredentials(srv.AccessKey, srv.SecretKey, ""), nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pub.EnsureDestination(context.Background())).To(Succeed())
	e.pub = pub
	e.publish(t, []manifest.Package{{Name: "libc6", Version: "2.41-12", Architecture: "amd64"}})
	e.o.runner = &fakeArchive{versions: map[string]string{"libc6": "2.41-12+deb13u1", "containerd": "1.7.24~ds1-6"}}

	var out bytes.Buffer
	g.Expect(runCheckUpdates(context.Background(), e.o, &out, &out)).To(Succeed(), out.String())
	r := readUpdatesResult(t, e.o.result)
	g.Expect(r.Checked).To(Equal(int32(1)))
	g.Expect(r.Changes).To(Equal([]string{"libc6 2.41-12 → 2.41-12+deb13u1"}))
	g.Expect(out.String()).NotTo(ContainSubstring(srv.SecretKey))
}
