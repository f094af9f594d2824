package builder

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/containerd"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

// DefaultImageRegistry is the registry kubeadm names its images in, and
// the names the preloaded images keep whatever mirror they came from.
const DefaultImageRegistry = "registry.k8s.io"

// containerdRoot is containerd's state directory in a node image.
const containerdRoot = "/var/lib/containerd"

// criNamespace is the containerd namespace of the CRI (the kubelet's).
const criNamespace = "k8s.io"

// ImagesParams preloads container images into the image's containerd.
type ImagesParams struct {
	// KubernetesVersion is the version kubeadm lists images for.
	KubernetesVersion string
	// ControlPlane adds the images the tree's kubeadm names for
	// KubernetesVersion, and makes its pause image containerd's sandbox
	// image.
	ControlPlane bool
	// Mirror (host[:port][/path]) serves registry.k8s.io's repositories;
	// empty pulls from registry.k8s.io.
	Mirror string
	// Extra are more image references (with a tag, optionally a digest).
	Extra []string
	// Architecture is the image's (Debian name, which is also the OCI
	// one): every image is pulled and imported for linux/Architecture.
	// Empty means amd64.
	Architecture string
}

// platform is the OCI platform the images are pulled for.
func (p *ImagesParams) platform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: cmp.Or(p.Architecture, string(imagev1.ArchitectureAMD64))}
}

// imageRef is one image to preload: the name it is stored under and where
// it is pulled from.
type imageRef struct {
	name   name.Tag       // stored as
	source name.Reference // pulled from (the mirror, a digest)
}

// parseImageRef parses ref (registry/repository:tag[@sha256:...]) and maps
// a registry.k8s.io repository onto mirror.
func parseImageRef(ref, mirror string) (imageRef, error) {
	base, digest, hasDigest := strings.Cut(ref, "@")
	tag, err := name.NewTag(base, name.StrictValidation)
	if err != nil {
		return imageRef{}, fmt.Errorf("image %q: %w (a full reference with a tag, such as registry.k8s.io/pause:3.10.2)", ref, err)
	}
	if tag.RegistryStr() == name.DefaultRegistry {
		// ggcr names Docker Hub index.docker.io, containerd docker.io:
		// the stored name would not be the one a Pod spec resolves to.
		return imageRef{}, fmt.Errorf("image %q: images from Docker Hub are not supported; copy them to another registry", ref)
	}
	src := tag.Context().String()
	if mirror != "" && tag.RegistryStr() == DefaultImageRegistry {
		src = strings.TrimSuffix(mirror, "/") + "/" + tag.RepositoryStr()
	}
	var source name.Reference
	if hasDigest {
		source, err = name.NewDigest(src+"@"+digest, name.StrictValidation)
	} else {
		source, err = name.NewTag(src+":"+tag.TagStr(), name.StrictValidation)
	}
	if err != nil {
		return imageRef{}, fmt.Errorf("image %q from mirror %q: %w", ref, mirror, err)
	}
	return imageRef{name: tag, source: source}, nil
}

// images pulls the images into a Docker archive in the work dir and
// imports them, unpacked, into the tree's containerd store with the
// builder's own containerd (never the image's: its binary comes from the
// author's mirror), then drops the compressed layers the snapshots now
// hold, as containerd's CRI does with discard_unpacked_layers.
func (b *build) images(ctx context.Context, p *ImagesParams) error {
	var want []string
	if p.ControlPlane {
		out, err := output(ctx, b.runner, b.chroot("kubeadm", "config", "images", "list", "--kubernetes-version", p.KubernetesVersion))
		if err != nil {
			return fmt.Errorf("kubeadm config images list: %w", err)
		}
		want = strings.Fields(string(out))
		if len(want) == 0 {
			return errors.New("kubeadm config images list named no images")
		}
	}
	want = append(want, p.Extra...)
	var refs []imageRef
	seen := map[string]bool{}
	pause := ""
	for _, w := range want {
		r, err := parseImageRef(w, p.Mirror)
		if err != nil {
			return inputErrorf("kubernetes.images: %v", err)
		}
		if seen[r.name.String()] {
			continue
		}
		seen[r.name.String()] = true
		refs = append(refs, r)
		if p.ControlPlane && r.name.Context().String() == DefaultImageRegistry+"/pause" {
			pause = r.name.String()
		}
	}
	if p.ControlPlane && pause == "" {
		return fmt.Errorf("kubeadm config images list names no %s/pause image: %s", DefaultImageRegistry, strings.Join(want, " "))
	}

	pulled := map[name.Reference]v1.Image{}
	var layers []string
	for _, r := range refs {
		img, rec, err := pullImage(ctx, r, p.platform())
		if err != nil {
			return err
		}
		pulled[r.name] = img
		b.containerImages = append(b.containerImages, rec.ContainerImage)
		layers = append(layers, rec.layers...)
	}
	archive := filepath.Join(b.work, "images.tar")
	if err := tarball.MultiRefWriteToFile(archive, pulled); err != nil {
		return fmt.Errorf("writing the images archive: %w", err)
	}
	defer os.Remove(archive)

	store, err := b.containerdStore()
	if err != nil {
		return err
	}
	if err := b.importImages(ctx, store, archive, p.platform(), layers); err != nil {
		return err
	}
	if pause != "" {
		return b.setSandboxImage(pause)
	}
	return nil
}

// pulled is a pulled image's manifest record and its layer digests.
type pulled struct {
	manifest.ContainerImage
	layers []string
}

func pullImage(ctx context.Context, r imageRef, platform v1.Platform) (v1.Image, pulled, error) {
	img, err := remote.Image(r.source,
		remote.WithContext(ctx),
		remote.WithPlatform(platform),
		remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return nil, pulled{}, fmt.Errorf("pulling %s: %w", r.source, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, pulled{}, fmt.Errorf("pulling %s: %w", r.source, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, pulled{}, fmt.Errorf("pulling %s: %w", r.source, err)
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, pulled{}, fmt.Errorf("pulling %s: %w", r.source, err)
	}
	rec := pulled{ContainerImage: manifest.ContainerImage{Name: r.name.String(), Digest: digest.String(), ID: id.String()}}
	if src := r.source.Context().String(); src != r.name.Context().String() || r.source.Identifier() != r.name.TagStr() {
		rec.Source = r.source.String()
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			return nil, pulled{}, fmt.Errorf("pulling %s: %w", r.source, err)
		}
		sz, err := l.Size()
		if err != nil {
			return nil, pulled{}, fmt.Errorf("pulling %s: %w", r.source, err)
		}
		rec.SizeBytes += sz
		rec.layers = append(rec.layers, d.String())
	}
	return img, rec, nil
}

// containerdStore returns the host path of the tree's containerd root, an
// empty real directory inside the tree, created if missing. The builder's
// containerd writes there as root, so nothing the packages put into the
// tree (a symlink planted below it) may lead it outside.
func (b *build) containerdStore() (string, error) {
	hp, err := inRoot(b.root, containerdRoot, true)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(hp, filepath.Clean(b.root)+string(filepath.Separator)) {
		return "", fmt.Errorf("%s resolves outside the tree", containerdRoot)
	}
	fi, err := os.Lstat(hp)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(hp, 0o711); err != nil {
			return "", err
		}
		return hp, nil
	case err != nil:
		return "", err
	case !fi.IsDir():
		return "", fmt.Errorf("%s in the image is not a directory", containerdRoot)
	}
	entries, err := os.ReadDir(hp)
	if err != nil {
		return "", err
	}
	if len(entries) > 0 {
		return "", fmt.Errorf("%s in the image is not empty before the images are preloaded", containerdRoot)
	}
	return hp, nil
}

// importScript runs the builder's containerd on the tree's store, only
// for as long as the import takes. $1 config, $2 socket, $3 archive,
// $4 log, $5 the store, the rest the layer digests to drop after
// unpacking: their records go with ctr content rm, their files (which
// containerd's garbage collector would remove later) once it has stopped.
const importScript = `set -eu
config=$1 sock=$2 archive=$3 log=$4 store=$5 platform=$6
shift 6
containerd --config "$config" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
i=0
until ctr -a "$sock" version >/dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then
		echo "containerd did not start:" >&2
		tail -n 5 "$log" >&2
		exit 1
	fi
	sleep 0.1
done
ctr -a "$sock" -n ` + criNamespace + ` images import --platform "$platform" "$archive"
ctr -a "$sock" -n ` + criNamespace + ` content rm "$@" >/dev/null
kill $pid
wait $pid || true
trap - EXIT
for d in "$@"; do
	rm -f "$store/io.containerd.content.v1.content/blobs/${d%%:*}/${d#*:}"
done
`

// importConfig is a containerd configuration with only the content
// store, metadata and the overlayfs snapshotter that import needs: no CRI,
// no runtimes, no /opt, nothing listening but the socket in the work dir.
func importConfig(store, state, sock string) string {
	disabled := []string{
		"io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.internal.v1.tracing",
		"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.native", "io.containerd.snapshotter.v1.zfs",
		"io.containerd.runtime.v1.linux", "io.containerd.runtime.v2.task", "io.containerd.monitor.v1.cgroups",
	}
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	var ds []string
	for _, d := range disabled {
		ds = append(ds, q(d))
	}
	return "version = 2\nroot = " + q(store) + "\nstate = " + q(state) +
		"\ndisabled_plugins = [" + strings.Join(ds, ", ") + "]\n" +
		"[grpc]\n  address = " + q(sock) + "\n[ttrpc]\n  address = " + q(sock+"t") +
		"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
}

func (b *build) importImages(ctx context.Context, store, archive string, platform v1.Platform, layers []string) error {
	dir, err := os.MkdirTemp(b.work, "containerd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// A unix socket path may be at most 104 bytes; the work dir's can be
	// longer, so the sockets live in a short private dir of their own.
	sockDir, err := os.MkdirTemp("", "nf-ctrd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "s")
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, []byte(importConfig(store, filepath.Join(dir, "state"), sock)), 0o600); err != nil {
		return err
	}
	slices.Sort(layers)
	layers = slices.Compact(layers)
	// In a mount namespace of its own, so the mounts containerd makes
	// while unpacking cannot outlive it.
	args := append([]string{"--mount", "--propagation", "private", "sh", "-c", importScript, "sh",
		config, sock, archive, filepath.Join(dir, "containerd.log"), store, platform.String()}, layers...)
	if err := b.runner.Run(ctx, Command{Name: "unshare", Args: args}); err != nil {
		return fmt.Errorf("importing the images into containerd: %w", err)
	}
	return nil
}

// setSandboxImage makes ref containerd's sandbox (pause) image in the
// tree's configuration, so the kubelet's pods use the preloaded one.
func (b *build) setSandboxImage(ref string) error {
	hp, err := inRoot(b.root, containerd.ConfigPath, true)
	if err != nil {
		return err
	}
	cfg, err := os.ReadFile(hp)
	if err != nil {
		return fmt.Errorf("setting the sandbox image: %w", err)
	}
	cfg, err = containerd.SetSandboxImage(cfg, ref)
	if err != nil {
		return err
	}
	return b.writeTreeFile(containerd.ConfigPath, cfg, 0o644)
}
