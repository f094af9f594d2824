package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// TestCheckUpdatesPodCommand runs what an update check Pod runs, the real
// `nodeforge run --check-updates` binary, as root, against the image's
// real repositories (the Debian mirror and a signed author repository on
// loopback) and a real MinIO holding the published manifest, with the
// credentials read from a mounted-Secret-shaped directory. The manifest
// stands for a built cloud-base image: the author's package at 1.0 and a
// Debian library at a version older than any the mirror offers. Then the
// author publishes 1.1 of their package: the next check names it, with a
// new updates digest (and so a new BaseUpdated build name); checking again
// without a change gives the same digest (the same build: nothing new).
func TestCheckUpdatesPodCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("resolves against real repositories; not with -short")
	}
	if os.Geteuid() != 0 {
		buildUnavailable(t, "the check needs root (mmdebstrap --mode=root)")
	}
	for _, tool := range []string{"mmdebstrap", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			buildUnavailable(t, "%s is not installed (hack/image.sh installs the builder's tools)", tool)
		}
	}
	root := repoRoot(t)
	repo := newAuthorRepo(t, root, offlineRepoDir(t, root))
	srv := miniotest.Start(t, miniotest.Config{})

	img, get, err := resolve.LoadFile(filepath.Join(root, buildSample))
	if err != nil {
		t.Fatal(err)
	}
	content, err := resolve.Content(context.Background(), &img.Spec.ImageContent, get)
	if err != nil {
		t.Fatal(err)
	}
	content.Kubernetes.AptRepository.URL = repo.URL
	content.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: string(repo.Key)}
	content.Packages = append(content.Packages, probePackage)
	content.Default()
	digest, err := content.Digest()
	if err != nil {
		t.Fatal(err)
	}

	dst := &imagev1.DestinationSpec{S3: &imagev1.S3Destination{Endpoint: srv.Endpoint(), Bucket: "images", Prefix: "nodes",
		Insecure: true, CreateBucket: true, CredentialsSecretRef: corev1.LocalObjectReference{Name: "creds"}}}
	pub, _, err := storage.OpenDestination(*dst.S3, "default", storage.NewCredentials(srv.AccessKey, srv.SecretKey, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := pub.EnsureDestination(ctx); err != nil {
		t.Fatal(err)
	}
	m := manifest.Manifest{SchemaVersion: manifest.SchemaVersion, Name: "cloud-base", SpecDigest: digest, Packages: []manifest.Package{
		{Name: probePackage, Version: "1.0", Architecture: "all"},
		{Name: "zlib1g", Version: "1:1.0-1", Architecture: "amd64"},
	}}
	raw, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "cloud-base.qcow2")
	if err := os.WriteFile(image, []byte("qcow2 bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, storage.PublishInput{Name: "cloud-base", SpecDigest: digest, ImagePath: image, Manifest: raw}); err != nil {
		t.Fatal(err)
	}

	// What the manager mounts: the spec and the credential keys.
	spec, err := json.Marshal(&imagev1.NodeImageBuild{
		TypeMeta:   metav1.TypeMeta{APIVersion: imagev1.GroupVersion.String(), Kind: imagev1.NodeImageBuildKind},
		ObjectMeta: metav1.ObjectMeta{Name: "cloud-base-updates-0123456789", Namespace: "default"},
		Spec: imagev1.NodeImageBuildSpec{NodeImageName: "cloud-base", SpecDigest: digest, Reason: imagev1.BuildReasonBaseUpdated,
			Image: *content, Destination: dst},
	})
	if err != nil {
		t.Fatal(err)
	}
	specPath, creds, scratch := filepath.Join(dir, "spec.json"), filepath.Join(dir, "credentials"), filepath.Join(dir, "scratch")
	if err := os.WriteFile(specPath, spec, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"accessKeyID": srv.AccessKey, "secretAccessKey": srv.SecretKey} {
		if err := os.WriteFile(filepath.Join(creds, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "nodeforge")
	if out, err := buildExec(ctx, nil, "go", "build", "-o", bin, filepath.Join(root, "cmd", "nodeforge")); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	check := func(what string) *buildresult.UpdatesResult {
		t.Helper()
		result := filepath.Join(dir, "result")
		start := time.Now()
		out, err := buildExec(ctx, nil, bin, "run", "--check-updates", "--spec", specPath, "--result", result,
			"--scratch", scratch, "--credentials-dir", creds)
		if err != nil {
			t.Fatalf("%s: nodeforge run --check-updates: %v\n%s", what, err, out)
		}
		if bytes.Contains([]byte(out), []byte(srv.SecretKey)) {
			t.Errorf("%s: the output holds the secret key", what)
		}
		b, err := os.ReadFile(result)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > buildresult.MaxResultSize {
			t.Errorf("%s: result of %d bytes", what, len(b))
		}
		r, err := buildresult.DecodeUpdates(b)
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, b)
		}
		t.Logf("%s (%s): %s", what, time.Since(start).Round(100*time.Millisecond), r.Summary(1024))
		return r
	}
	probe := fmt.Sprintf("%s 1.0 → 1.1", probePackage)

	before := check("before")
	if before.Outcome != buildresult.OutcomeSucceeded || before.Checked != 2 || before.SpecDigest != digest {
		t.Fatalf("before: %+v", before)
	}
	if before.Upgrades != 1 || len(before.Changes) != 1 || before.Changes[0][:len("zlib1g 1:1.0-1 → ")] != "zlib1g 1:1.0-1 → " {
		t.Errorf("before: want the Debian library's upgrade only, got %+v", before)
	}

	repo.Publish(t, probePackage, "1.1", probePostinst)
	after := check("after publishing 1.1")
	if after.Upgrades != 2 || !slices.Contains(after.Changes, probe) {
		t.Errorf("after: want %q among 2 upgrades, got %+v", probe, after)
	}
	if after.Digest == before.Digest {
		t.Errorf("the updates digest did not change: %s", after.Digest)
	}
	again := check("again, unchanged")
	if again.Digest != after.Digest {
		t.Errorf("an unchanged repository gave another digest: %s, then %s", after.Digest, again.Digest)
	}
	if a, b := controller.UpdateBuildName("cloud-base", digest, after.Digest), controller.UpdateBuildName("cloud-base", digest, again.Digest); a != b {
		t.Errorf("BaseUpdated build names %s and %s differ", a, b)
	}
}
