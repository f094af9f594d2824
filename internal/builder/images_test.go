package builder

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/nodeforge/nodeforge/internal/containerd"
	"github.com/nodeforge/nodeforge/internal/sandbox"
)

func TestParseImageRef(t *testing.T) {
	for _, tc := range []struct {
		ref, mirror    string
		name, source   string
		wantErrContain string
	}{
		{ref: "registry.k8s.io/pause:3.10.2", name: "registry.k8s.io/pause:3.10.2", source: "registry.k8s.io/pause:3.10.2"},
		{ref: "registry.k8s.io/coredns/coredns:v1.14.6", mirror: "127.0.0.1:5000/k8s", name: "registry.k8s.io/coredns/coredns:v1.14.6", source: "127.0.0.1:5000/k8s/coredns/coredns:v1.14.6"},
		{ref: "registry.k8s.io/pause:3.10.2", mirror: "mirror.example.com/", name: "registry.k8s.io/pause:3.10.2", source: "mirror.example.com/pause:3.10.2"},
		{ref: "quay.io/team/tool:1.0", mirror: "127.0.0.1:5000", name: "quay.io/team/tool:1.0", source: "quay.io/team/tool:1.0"},
		{
			ref: "registry.k8s.io/pause:3.10.2@sha256:" + strings.Repeat("a", 64), mirror: "127.0.0.1:5000",
			name: "registry.k8s.io/pause:3.10.2", source: "127.0.0.1:5000/pause@sha256:" + strings.Repeat("a", 64),
		},
		{ref: "registry.k8s.io/pause", wantErrContain: "tag"},
		{ref: "docker.io/library/busybox:1.36", wantErrContain: "Docker Hub"},
		{ref: "busybox:1.36", wantErrContain: "registry to be explicitly defined"},
	} {
		t.Run(tc.ref+" via "+tc.mirror, func(t *testing.T) {
			r, err := parseImageRef(tc.ref, tc.mirror)
			if tc.wantErrContain != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrContain) {
					t.Fatalf("err = %v, want one about %q", err, tc.wantErrContain)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.name.String() != tc.name || r.source.String() != tc.source {
				t.Fatalf("stored as %s from %s; want %s from %s", r.name, r.source, tc.name, tc.source)
			}
		})
	}
}

// imagesRunner plays kubeadm (in the tree) and the import (the builder's
// containerd): it reads the Docker archive the import gets.
type imagesRunner struct {
	t       *testing.T
	kubeadm string // what kubeadm config images list prints

	mu       sync.Mutex
	kubeadmV string              // the --kubernetes-version kubeadm was asked for
	imported map[string][]string // RepoTags -> layer files in the archive
	dropped  []string            // layer digests the import drops
	store    string
	platform string // the platform the import selects
}

func (r *imagesRunner) Run(_ context.Context, c Command) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, argv, ok := sandbox.Parse(c.Name, c.Args, c.Env); ok {
		if s.Root == "" || !slices.Equal(argv[:4], []string{"kubeadm", "config", "images", "list"}) {
			r.t.Errorf("unexpected sandboxed command %q in %+v", argv, s)
			return fmt.Errorf("unexpected")
		}
		r.kubeadmV = argv[len(argv)-1]
		_, err := io.WriteString(c.Stdout, r.kubeadm)
		return err
	}
	if c.Name != "unshare" {
		r.t.Errorf("unexpected command %s", c.String())
		return fmt.Errorf("unexpected")
	}
	// unshare --mount --propagation private sh -c SCRIPT sh CONFIG SOCK ARCHIVE LOG STORE PLATFORM DIGEST...
	i := slices.Index(c.Args, "-c")
	args := c.Args[i+3:]
	cfg, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	if !strings.Contains(string(cfg), fmt.Sprintf("root = %q", args[4])) || !strings.Contains(string(cfg), `"io.containerd.grpc.v1.cri"`) {
		r.t.Errorf("the import's containerd config does not use the store %s or leaves the CRI on:\n%s", args[4], cfg)
	}
	r.store = args[4]
	r.platform = args[5]
	r.dropped = args[6:]
	f, err := os.Open(args[2])
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct {
			RepoTags []string
			Layers   []string
		}
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return err
		}
		r.imported = map[string][]string{}
		for _, e := range m {
			r.imported[strings.Join(e.RepoTags, ",")] = e.Layers
		}
	}
	return nil
}

// pushRandom pushes a random two-layer image to ref and returns it.
func pushRandom(t *testing.T, ref string) v1.Image {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func newImagesBuild(t *testing.T, r Runner) *build {
	t.Helper()
	dir := t.TempDir()
	b := &build{root: filepath.Join(dir, "root"), work: filepath.Join(dir, "work"), runner: r}
	cfg, err := os.ReadFile("../containerd/testdata/debian-1.7.24-default.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := b.writeTreeFile(containerd.ConfigPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestImagesPreloadsThroughTheMirror(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	apiserver := pushRandom(t, host+"/k8s/kube-apiserver:v1.37.2")
	pause := pushRandom(t, host+"/k8s/pause:3.10.2")
	tool := pushRandom(t, host+"/team/tool:1.0")

	run := &imagesRunner{t: t, kubeadm: "registry.k8s.io/kube-apiserver:v1.37.2\nregistry.k8s.io/pause:3.10.2\n"}
	b := newImagesBuild(t, run)
	err := b.images(context.Background(), &ImagesParams{
		KubernetesVersion: "v1.37.2", ControlPlane: true, Mirror: host + "/k8s",
		Extra: []string{host + "/team/tool:1.0", "registry.k8s.io/pause:3.10.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if run.kubeadmV != "v1.37.2" {
		t.Errorf("kubeadm listed images for %q", run.kubeadmV)
	}

	// The archive names each image once, under the name kubeadm asks for.
	var names []string
	for n := range run.imported {
		names = append(names, n)
	}
	slices.Sort(names)
	want := []string{host + "/team/tool:1.0", "registry.k8s.io/kube-apiserver:v1.37.2", "registry.k8s.io/pause:3.10.2"}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("imported %q, want %q", names, want)
	}
	// Every layer is dropped after unpacking, none twice.
	var layers []string
	for _, img := range []v1.Image{apiserver, pause, tool} {
		ls, _ := img.Layers()
		for _, l := range ls {
			d, _ := l.Digest()
			layers = append(layers, d.String())
		}
	}
	slices.Sort(layers)
	if !slices.Equal(run.dropped, layers) {
		t.Errorf("dropped %q, want the layers %q", run.dropped, layers)
	}
	if run.platform != "linux/amd64" {
		t.Errorf("imported for %q, want linux/amd64 (the default)", run.platform)
	}

	// The store is the tree's, created empty for containerd.
	if want := filepath.Join(b.root, containerdRoot); run.store != want {
		t.Errorf("store %s, want %s", run.store, want)
	}

	// The manifest records name, source, digests and size.
	if len(b.containerImages) != 3 {
		t.Fatalf("manifest images %+v", b.containerImages)
	}
	ci := b.containerImages[0]
	digest, _ := apiserver.Digest()
	id, _ := apiserver.ConfigName()
	if ci.Name != "registry.k8s.io/kube-apiserver:v1.37.2" || ci.Source != host+"/k8s/kube-apiserver:v1.37.2" ||
		ci.Digest != digest.String() || ci.ID != id.String() || ci.SizeBytes <= 0 {
		t.Errorf("manifest image %+v; want digest %s id %s", ci, digest, id)
	}
	if tc := b.containerImages[2]; tc.Name != host+"/team/tool:1.0" || tc.Source != "" {
		t.Errorf("an extra image pulled as named records no source: %+v", tc)
	}

	// The pause image kubeadm names is containerd's sandbox image.
	cfg, err := os.ReadFile(filepath.Join(b.root, containerd.ConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	s, err := containerd.Effective(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.SandboxImage != "registry.k8s.io/pause:3.10.2" {
		t.Errorf("sandbox image %q", s.SandboxImage)
	}
	if _, err := os.Stat(filepath.Join(b.work, "images.tar")); !os.IsNotExist(err) {
		t.Errorf("the images archive is left in the work dir: %v", err)
	}
}

func TestImagesFailures(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	pushRandom(t, host+"/pause:3.10.2")

	for _, tc := range []struct {
		name    string
		kubeadm string
		setup   func(t *testing.T, b *build)
		want    string
	}{
		{name: "an image the mirror lacks", kubeadm: "registry.k8s.io/pause:3.10.2\nregistry.k8s.io/etcd:3.7.0-0\n", want: "pulling " + host + "/etcd:3.7.0-0"},
		{name: "no pause image", kubeadm: "registry.k8s.io/etcd:3.7.0-0\n", want: "no registry.k8s.io/pause"},
		{name: "kubeadm prints nothing", kubeadm: "", want: "named no images"},
		{name: "a store the packages filled", kubeadm: "registry.k8s.io/pause:3.10.2\n", want: "not empty", setup: func(t *testing.T, b *build) {
			if err := b.writeTreeFile(containerdRoot+"/io.containerd.content.v1.content", []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newImagesBuild(t, &imagesRunner{t: t, kubeadm: tc.kubeadm})
			if tc.setup != nil {
				tc.setup(t, b)
			}
			err := b.images(context.Background(), &ImagesParams{KubernetesVersion: "v1.37.2", ControlPlane: true, Mirror: host})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestImagesPullWithTheBuildersDockerConfig: a registry that wants
// credentials gets them from the Docker configuration DOCKER_CONFIG names
// (nodeforge run points it at spec.builder.registryCredentials; the CLI
// uses its user's), and refuses the pull without it.
func TestImagesPullWithTheBuildersDockerConfig(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "puller" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(host + "/team/tool:1.0")
	if err := remote.Write(tag, img, remote.WithAuth(&authn.Basic{Username: "puller", Password: "s3cret"})); err != nil {
		t.Fatal(err)
	}
	params := &ImagesParams{KubernetesVersion: "v1.37.2", Extra: []string{host + "/team/tool:1.0"}}

	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no config.json: anonymous
	err = newImagesBuild(t, &imagesRunner{t: t}).images(context.Background(), params)
	if err == nil || !strings.Contains(err.Error(), "pulling "+host+"/team/tool:1.0") || !strings.Contains(err.Error(), "401 Unauthorized") {
		t.Fatalf("anonymous pull: err = %v, want a 401 for the image", err)
	}

	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, base64.StdEncoding.EncodeToString([]byte("puller:s3cret")))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	run := &imagesRunner{t: t}
	b := newImagesBuild(t, run)
	if err := b.images(context.Background(), params); err != nil {
		t.Fatalf("pull with the Docker configuration: %v", err)
	}
	if _, ok := run.imported[host+"/team/tool:1.0"]; !ok {
		t.Fatalf("imported %v", run.imported)
	}
	for _, ci := range b.containerImages {
		if strings.Contains(fmt.Sprintf("%+v", ci), "s3cret") {
			t.Fatalf("the manifest record carries the credentials: %+v", ci)
		}
	}
}
