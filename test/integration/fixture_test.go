package integration

// The cloud-base image that the build and verify tests share. It is built
// once per test run, through internal/builder, from Debian's packages and
// the offline Kubernetes packages (served, with a probe package, as a
// repository standing for one the NodeImage author controls), with one of
// each customisation (file, unit, shell and Ansible provisioner) added so
// those paths run for real too.
//
// The tests that build or boot after it run in parallel, two at a time
// (go test's -parallel, GOMAXPROCS by default): a TCG boot leaves part of
// two cores idle and a build's package installs use one, so two side by
// side finish sooner than one after the other. Each has its own work
// dirs; the shared image is only read.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/debian/aptrepotest"
	"github.com/nodeforge/nodeforge/internal/resolve"
)

// ansiblePlaybook is the seed pipeline's customisation path: a playbook run
// against the image, here through Ansible's chroot connection.
const ansiblePlaybook = `- hosts: all
  gather_facts: false
  tasks:
    - name: Record the node role
      ansible.builtin.copy:
        dest: /etc/nodeforge/role
        content: "{{ node_role }}\n"
        mode: "0644"
`

// fixtureDir outlives single tests: the shared image lives there.
var fixtureDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nodeforge-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtureDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// cloudBase is the built image and what it was built from.
type cloudBase struct {
	Result    *builder.Result
	Content   imagev1.ImageContent
	RepoURL   string
	BuildLog  string
	BuildTime time.Duration
	WorkDir   string
}

var (
	cloudBaseOnce sync.Once
	cloudBaseImg  *cloudBase
	cloudBaseErr  error
)

// builtCloudBase returns the shared image, building it on first use. The
// offline repository server it needs is stopped when the calling test ends;
// the image keeps the repository's URL in its apt sources, as a user's would.
func builtCloudBase(t *testing.T) *cloudBase {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a real image (minutes); not with -short")
	}
	if os.Geteuid() != 0 {
		buildUnavailable(t, "building an image needs root (mmdebstrap --mode=root)")
	}
	for _, tool := range []string{"mmdebstrap", "sfdisk", "mkfs.ext4", "mkfs.fat", "mmd", "mcopy", "grub-mkimage", "qemu-img", "qemu-system-x86_64", "debugfs", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			buildUnavailable(t, "%s is not installed (hack/image.sh installs the builder's tools)", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/grub/i386-pc/boot.img"); err != nil {
		buildUnavailable(t, "GRUB's i386-pc images are missing (package grub-pc-bin)")
	}
	cloudBaseOnce.Do(func() { cloudBaseImg, cloudBaseErr = buildCloudBase(t) })
	if cloudBaseErr != nil {
		t.Fatalf("building the shared cloud-base image: %v", cloudBaseErr)
	}
	return cloudBaseImg
}

func buildCloudBase(t *testing.T) (*cloudBase, error) {
	root := repoRoot(t)
	url, key := startAuthorRepo(t, root, offlineRepoDir(t, root))
	img, get, err := resolve.LoadFile(filepath.Join(root, buildSample))
	if err != nil {
		return nil, err
	}
	content, err := resolve.Content(context.Background(), &img.Spec.ImageContent, get)
	if err != nil {
		return nil, err
	}
	content.Kubernetes.AptRepository.URL = url
	content.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: string(key)}
	if content.Kubernetes.Images == nil {
		return nil, fmt.Errorf("the sample %s preloads no images (kubernetes.images)", buildSample)
	}
	content.Kubernetes.Images.Mirror = startImageMirror(t, root)
	content.Packages = append(content.Packages, probePackage)
	content.Files = append(content.Files, imagev1.FileSpec{Path: "/etc/nodeforge/test.conf", Content: "hello\n", Mode: "0640", Owner: "root:root"})
	content.Units = append(content.Units, imagev1.UnitSpec{Name: "nodeforge-test.service", Content: "[Unit]\nDescription=test\n[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"})
	content.Provisioners = append(content.Provisioners,
		imagev1.Provisioner{Name: "marker", Shell: &imagev1.ShellProvisioner{Inline: "test -x /usr/bin/kubeadm\necho provisioned > /etc/nodeforge/marker\n" + sandboxProbe}},
		imagev1.Provisioner{Name: "site", Ansible: &imagev1.AnsibleProvisioner{
			Playbook:  ansiblePlaybook,
			ExtraVars: []imagev1.AnsibleVar{{Name: "node_role", Value: "worker"}},
		}})
	content.Default()

	work := filepath.Join(fixtureDir, "work")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	var log bytes.Buffer
	res, err := builder.Build(ctx, builder.Options{
		Name: "cloud-base", WorkDir: work, OutDir: filepath.Join(fixtureDir, "out"),
		CacheDir: filepath.Join(buildCacheRoot(), "apt-archives"),
		Reporter: &builder.PlainReporter{W: &log},
	}, *content)
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, log.String())
	}
	return &cloudBase{Result: res, Content: *content, RepoURL: url, BuildLog: log.String(),
		BuildTime: time.Since(start), WorkDir: work}, nil
}

// sandboxProbe, appended to the fixture's shell provisioner, records what
// a provisioner sees of the node (TestBuildCloudBaseImage reads it back):
// in the sandbox it is PID 1 itself, its /dev has no disks or KVM, and a
// mount is refused.
const sandboxProbe = `{
echo "pid1=$(cat /proc/1/comm)"
echo "dev=$(ls /dev | tr '\n' ' ')"
if mount -t tmpfs probe /mnt 2>/dev/null; then umount /mnt; echo mount=ok; else echo mount=refused; fi
} > /etc/nodeforge/sandbox
`

// probePackage is the package of the author's repository whose maintainer
// script records what it sees of the builder: its user, mount and PID
// namespaces, the capability bounding set and /dev.
// TestBuildCloudBaseImage reads the record back.
const probePackage = "nodeforge-postinst-probe"

const probePostinst = `#!/bin/sh
set -e
mkdir -p /etc/nodeforge
{
for ns in user mnt pid; do echo "$ns=$(readlink /proc/self/ns/$ns)"; done
echo "capbnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)"
echo "dev=$(ls /dev | tr '\n' ' ')"
} > /etc/nodeforge/postinst-probe
`

// startImageMirror starts the local registry with the control-plane
// images (hack/registry.sh) for as long as t runs and returns its host:port,
// the mirror the fixture pulls them through. Its tools are built first when
// NODEFORGE_REQUIRE_INTEGRATION=1 (the registry and the images' binaries,
// minutes cold).
func startImageMirror(t *testing.T, root string) string {
	t.Helper()
	if os.Getenv("NODEFORGE_REQUIRE_INTEGRATION") != "1" {
		for _, set := range []string{"registry", "control-plane", "crane", "kube-node"} {
			out, err := buildExec(context.Background(), []string{"NODEFORGE_CACHE=" + buildCacheRoot()}, filepath.Join(root, "hack", "tools.sh"), "path", set)
			if err != nil {
				t.Fatalf("hack/tools.sh path %s: %v\n%s", set, err, out)
			}
			if _, err := os.Stat(filepath.Join(strings.TrimSpace(out), ".stamp")); err != nil {
				buildUnavailable(t, "the %s tools are not built (hack/tools.sh %s)", set, set)
			}
		}
	}
	script := filepath.Join(root, "hack", "registry.sh")
	env := []string{"NODEFORGE_CACHE=" + buildCacheRoot(), "NODEFORGE_REGISTRY_STATE=" + filepath.Join(t.TempDir(), "registry")}
	t.Cleanup(func() {
		if out, err := buildExec(context.Background(), env, script, "down"); err != nil {
			t.Errorf("hack/registry.sh down: %v\n%s", err, out)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out, err := buildExec(ctx, env, script, "up")
	if err != nil {
		t.Fatalf("hack/registry.sh up: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "export NODEFORGE_REGISTRY="); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("hack/registry.sh up printed no NODEFORGE_REGISTRY:\n%s", out)
	return ""
}

// startAuthorRepo serves a repository a NodeImage author controls (spec.
// kubernetes.aptRepository) on 127.0.0.1 for as long as t runs: the
// offline Kubernetes packages plus probePackage 1.0. It returns its URL
// and armored public key.
func startAuthorRepo(t *testing.T, root, offline string) (string, []byte) {
	r := newAuthorRepo(t, root, offline)
	return r.URL, r.Key
}

func newAuthorRepo(t *testing.T, root, offline string) *aptrepotest.Repo {
	t.Helper()
	for _, tool := range aptrepotest.Tools {
		if _, err := exec.LookPath(tool); err != nil {
			buildUnavailable(t, "%s is not installed", tool)
		}
	}
	r := aptrepotest.Start(t, root, offline)
	r.Publish(t, probePackage, "1.0", probePostinst)
	return r
}
