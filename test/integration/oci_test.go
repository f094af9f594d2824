package integration

// TestPushContainerDiskToARealRegistry pushes a 256 MiB disk as a KubeVirt
// containerDisk to a real registry (CNCF Distribution, built by
// hack/tools.sh registry) that requires a password and serves TLS with a
// certificate of a private CA, with the credentials a
// kubernetes.io/dockerconfigjson Secret holds and that CA (what
// destination.oci.caSecretRef names). It
// kills the registry in the middle of a push and checks that no tag moved
// and that the retry, against the restarted registry, completes the push;
// what a consumer pulls through the moved tag is the disk, byte for byte.
// (The e2e suite pushes the built cloud-base image the same way, from the
// builder Pod.)

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"
	"golang.org/x/crypto/bcrypt"

	"github.com/nodeforge/nodeforge/internal/containerdisk"
	"github.com/nodeforge/nodeforge/internal/freeport"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
)

// authRegistry is a Distribution registry on 127.0.0.1 with htpasswd auth,
// over TLS when caPEM is set.
type authRegistry struct {
	t          testing.TB
	bin, dir   string
	addr       string
	user, pass string
	// caPEM is the CA that signed the registry's certificate (nil: plain
	// HTTP).
	caPEM  []byte
	cmd    *exec.Cmd
	exited chan struct{}
}

// startAuthRegistry starts the registry for as long as t runs; withTLS
// serves TLS with a certificate of a CA made for the test.
func startAuthRegistry(t testing.TB, root string, withTLS bool) *authRegistry {
	t.Helper()
	out, err := buildExec(context.Background(), []string{"NODEFORGE_CACHE=" + buildCacheRoot()}, filepath.Join(root, "hack", "tools.sh"), "path", "registry")
	if err != nil {
		t.Fatalf("hack/tools.sh path registry: %v\n%s", err, out)
	}
	bin := filepath.Join(strings.TrimSpace(out), "registry")
	if _, err := os.Stat(bin); err != nil {
		buildUnavailable(t, "the registry is not built (hack/tools.sh registry)")
	}
	r := &authRegistry{t: t, bin: bin, dir: t.TempDir(), user: "robot", pass: "pushes-" + fmt.Sprint(time.Now().UnixNano())}
	hash, err := bcrypt.GenerateFromPassword([]byte(r.pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "htpasswd"), []byte(r.user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r.addr, err = freeport.Addr(); err != nil {
		t.Fatal(err)
	}
	tlsConfig := ""
	if withTLS {
		// public.crt and private.key, for 127.0.0.1.
		r.caPEM = miniotest.WriteTestCA(t, r.dir)
		tlsConfig = fmt.Sprintf("  tls:\n    certificate: %s/public.crt\n    key: %s/private.key\n", r.dir, r.dir)
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s/data
http:
  addr: %s
%sauth:
  htpasswd:
    realm: nodeforge-test
    path: %s/htpasswd
`, r.dir, r.addr, tlsConfig, r.dir)
	if err := os.WriteFile(filepath.Join(r.dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	r.start()
	return r
}

func (r *authRegistry) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, "serve", filepath.Join(r.dir, "config.yml"))
	log, err := os.OpenFile(filepath.Join(r.dir, "registry.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	log.Close()
	r.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(r.cmd, r.exited)
	client, url := http.DefaultClient, "http://"+r.addr+"/v2/"
	if r.caPEM != nil {
		tr, err := containerdisk.TransportWithCA(r.caPEM)
		if err != nil {
			r.t.Fatal(err)
		}
		client, url = &http.Client{Transport: tr}, "https://"+r.addr+"/v2/"
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(filepath.Join(r.dir, "registry.log"))
	r.t.Fatalf("the registry did not come up on %s:\n%s", r.addr, b)
}

// kill stops the registry at once (SIGKILL), as a crash would.
func (r *authRegistry) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	r.cmd = nil
}

func (r *authRegistry) stop() { r.kill() }

// dockerConfig is the .dockerconfigjson of a Secret with push access.
func (r *authRegistry) dockerConfig() []byte {
	auth := base64.StdEncoding.EncodeToString([]byte(r.user + ":" + r.pass))
	return []byte(`{"auths":{"` + r.addr + `":{"auth":"` + auth + `"}}}`)
}

func TestPushContainerDiskToARealRegistry(t *testing.T) {
	g := NewWithT(t)
	reg := startAuthRegistry(t, repoRoot(t), true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// A disk of incompressible bytes, as a qcow2's compressed clusters are.
	diskPath := filepath.Join(t.TempDir(), "cloud-base.qcow2")
	f, err := os.Create(diskPath)
	g.Expect(err).NotTo(HaveOccurred())
	sum := sha256.New()
	_, err = io.CopyN(io.MultiWriter(f, sum), rand.Reader, 256<<20)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(f.Close()).To(Succeed())
	diskSHA := hex.EncodeToString(sum.Sum(nil))
	created := time.Now()

	repo, err := containerdisk.ParseRepository(reg.addr+"/nodeforge/cloud-base", false)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := containerdisk.Keychain(reg.dockerConfig())
	g.Expect(err).NotTo(HaveOccurred())
	// Without the CA the registry's certificate is not trusted.
	untrusted := containerdisk.Target{Repository: repo, Keychain: kc}
	g.Expect(untrusted.CheckPush(ctx)).To(MatchError(ContainSubstring("certificate")))
	tr, err := containerdisk.TransportWithCA(reg.caPEM)
	g.Expect(err).NotTo(HaveOccurred())
	// Without credentials the registry refuses: checked before a build.
	anonymous := containerdisk.Target{Repository: repo, Transport: tr}
	g.Expect(anonymous.CheckPush(ctx)).To(MatchError(ContainSubstring("no push access")))
	target := containerdisk.Target{Repository: repo, Keychain: kc, Transport: tr}
	g.Expect(target.CheckPush(ctx)).To(Succeed())

	// An earlier image holds the moving tag.
	small := filepath.Join(t.TempDir(), "small.qcow2")
	g.Expect(os.WriteFile(small, []byte("an earlier image"), 0o644)).To(Succeed())
	earlier, err := containerdisk.Image(small, "cloud-base.qcow2", "amd64", created)
	g.Expect(err).NotTo(HaveOccurred())
	earlierRef, err := target.Push(ctx, earlier, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(target.Tag(ctx, earlierRef, "stable")).To(Succeed())

	disk, err := containerdisk.Image(diskPath, "cloud-base.qcow2", "amd64", created)
	g.Expect(err).NotTo(HaveOccurred())

	// The registry dies a third of the way into the upload.
	progress := make(chan v1.Update, 64)
	killed := make(chan struct{})
	go func() {
		done := false
		for u := range progress {
			if !done && u.Total > 0 && u.Complete > u.Total/3 {
				done = true
				reg.kill()
				close(killed)
			}
		}
		if !done {
			close(killed)
		}
	}()
	start := time.Now()
	_, err = target.Push(ctx, disk, progress)
	<-killed
	g.Expect(err).To(HaveOccurred(), "the push went through although the registry was killed")
	t.Logf("push failed as the registry died, after %s: %v", time.Since(start).Round(time.Millisecond), err)

	reg.start()
	got, err := target.Resolve(ctx, "stable")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.String()).To(Equal(earlierRef.DigestStr()), "the failed push moved the tag")

	// The retry completes it; the tags move.
	start = time.Now()
	ref, err := target.Push(ctx, disk, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(target.Tag(ctx, ref, "stable", "r1-test")).To(Succeed())
	t.Logf("pushed %s (256 MiB) in %s", ref, time.Since(start).Round(time.Millisecond))
	got, err = target.Resolve(ctx, "stable")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.String()).To(Equal(ref.DigestStr()))

	// A consumer pulls the image through the tag, with the Secret's
	// credentials: /disk/cloud-base.qcow2, the built bytes, owned by qemu.
	pulled, err := remote.Image(repo.Tag("stable"), remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithTransport(tr))
	g.Expect(err).NotTo(HaveOccurred())
	cfg, err := pulled.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Architecture).To(Equal("amd64"))
	sum = sha256.New()
	h, err := containerdisk.ReadDisk(pulled, sum)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h.Name).To(Equal("disk/cloud-base.qcow2"))
	g.Expect(h.Uid).To(Equal(containerdisk.QEMUID))
	g.Expect(h.Mode).To(Equal(int64(0o440)))
	g.Expect(hex.EncodeToString(sum.Sum(nil))).To(Equal(diskSHA), "the pulled disk differs from the pushed one")

	// Anonymous pulls are refused too: the credentials were what worked.
	_, err = remote.Head(repo.Tag("stable"), remote.WithContext(ctx), remote.WithAuth(authn.Anonymous), remote.WithTransport(tr))
	g.Expect(err).To(HaveOccurred())
}

// BenchmarkPushContainerDisk pushes a disk (NODEFORGE_BENCH_DISK, as
// make bench sets it to the built cloud-base image; else 512 MiB of random
// bytes) as a containerDisk to the Distribution registry on 127.0.0.1:
// what destination.oci adds to a publish (the layer's gzip, once for its
// digest and once for the upload, and the upload).
func BenchmarkPushContainerDisk(b *testing.B) {
	reg := startAuthRegistry(b, repoRoot(b), false)
	ctx := context.Background()
	diskPath := os.Getenv("NODEFORGE_BENCH_DISK")
	if diskPath == "" {
		diskPath = filepath.Join(b.TempDir(), "disk.qcow2")
		f, err := os.Create(diskPath)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyN(f, rand.Reader, 512<<20); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	fi, err := os.Stat(diskPath)
	if err != nil {
		b.Fatal(err)
	}
	kc, err := containerdisk.Keychain(reg.dockerConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A repository per round: nothing is there yet, as for a new image.
		repo, err := containerdisk.ParseRepository(fmt.Sprintf("%s/bench/disk-%d", reg.addr, i), true)
		if err != nil {
			b.Fatal(err)
		}
		target := containerdisk.Target{Repository: repo, Keychain: kc}
		img, err := containerdisk.Image(diskPath, "disk.qcow2", "amd64", time.Now())
		if err != nil {
			b.Fatal(err)
		}
		ref, err := target.Push(ctx, img, nil)
		if err == nil {
			err = target.Tag(ctx, ref, "stable")
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
