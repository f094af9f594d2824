package containerdisk

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/nodeforge/nodeforge/internal/containerdisk/registrytest"
)

func writeDisk(t *testing.T, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "img.qcow2")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

var created = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func TestImageIsAContainerDisk(t *testing.T) {
	g := NewWithT(t)
	disk, data := writeDisk(t, 3<<20)
	img, err := Image(disk, "cloud-base.qcow2", "arm64", created)
	g.Expect(err).NotTo(HaveOccurred())

	cfg, err := img.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.OS).To(Equal("linux"))
	g.Expect(cfg.Architecture).To(Equal("arm64"))
	mt, err := img.MediaType()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(mt)).To(Equal("application/vnd.oci.image.manifest.v1+json"))

	layers, err := img.Layers()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(layers).To(HaveLen(1))
	rc, err := layers[0].Uncompressed()
	g.Expect(err).NotTo(HaveOccurred())
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		g.Expect(err).NotTo(HaveOccurred())
		names = append(names, h.Name)
		g.Expect(h.Uid).To(Equal(QEMUID), h.Name)
		g.Expect(h.Gid).To(Equal(QEMUID), h.Name)
		if h.Typeflag == tar.TypeReg {
			g.Expect(h.Name).To(Equal("disk/cloud-base.qcow2"))
			g.Expect(h.Mode).To(Equal(int64(0o440)))
			got, err := io.ReadAll(tr)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(bytes.Equal(got, data)).To(BeTrue(), "the layer's disk differs from the file")
		}
	}
	g.Expect(names).To(Equal([]string{"disk/", "disk/cloud-base.qcow2"}))

	// The same file makes the same image: a retried push uploads the
	// same digests.
	again, err := Image(disk, "cloud-base.qcow2", "arm64", created)
	g.Expect(err).NotTo(HaveOccurred())
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	g.Expect(d2).To(Equal(d1))
}

func TestImageRejectsBadInput(t *testing.T) {
	g := NewWithT(t)
	disk, _ := writeDisk(t, 16)
	_, err := Image(disk, "a/b.qcow2", "amd64", created)
	g.Expect(err).To(MatchError(ContainSubstring("plain file name")))
	_, err = Image(filepath.Join(t.TempDir(), "missing"), "x.qcow2", "amd64", created)
	g.Expect(err).To(HaveOccurred())
	_, err = Image(t.TempDir(), "x.qcow2", "amd64", created)
	g.Expect(err).To(MatchError(ContainSubstring("not a regular file")))
}

func TestParseRepositoryAndTags(t *testing.T) {
	g := NewWithT(t)
	r, err := ParseRepository("127.0.0.1:5000/images/cloud-base", true)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.RegistryStr()).To(Equal("127.0.0.1:5000"))
	g.Expect(r.RepositoryStr()).To(Equal("images/cloud-base"))
	g.Expect(r.Scheme()).To(Equal("http"))
	r, err = ParseRepository("registry.example.com/images/cloud-base", false)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Scheme()).To(Equal("https"))
	for _, bad := range []string{"cloud-base", "reg.example.com/img:stable", "reg.example.com/img@sha256:" + strings.Repeat("a", 64), "reg.example.com/Upper", ""} {
		_, err := ParseRepository(bad, false)
		g.Expect(err).To(HaveOccurred(), bad)
	}
	g.Expect(ValidateTag("stable")).To(Succeed())
	g.Expect(ValidateTag("v1.37.2-r3")).To(Succeed())
	g.Expect(ValidateTag("-bad")).To(HaveOccurred())
	g.Expect(ValidateTag(strings.Repeat("a", 129))).To(HaveOccurred())
}

func TestPushThenTag(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	host := registrytest.Start(t, registrytest.Options{})
	repo, err := ParseRepository(host+"/nodeforge/cloud-base", true)
	g.Expect(err).NotTo(HaveOccurred())
	target := Target{Repository: repo}
	g.Expect(target.CheckPush(ctx)).To(Succeed())

	disk, data := writeDisk(t, 1<<20)
	img, err := Image(disk, "cloud-base.qcow2", "amd64", created)
	g.Expect(err).NotTo(HaveOccurred())
	ref, err := target.Push(ctx, img, nil)
	g.Expect(err).NotTo(HaveOccurred())
	want, _ := img.Digest()
	g.Expect(ref.DigestStr()).To(Equal(want.String()))
	// Pushed by digest: no tag yet.
	_, err = target.Resolve(ctx, "stable")
	g.Expect(err).To(HaveOccurred())

	g.Expect(target.Tag(ctx, ref, "stable", "1.37")).To(Succeed())
	for _, tag := range []string{"stable", "1.37"} {
		got, err := target.Resolve(ctx, tag)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got).To(Equal(want), tag)
	}
	// Tagging again is a no-op.
	g.Expect(target.Tag(ctx, ref, "stable")).To(Succeed())

	// What a consumer pulls is the disk.
	pulled, err := remote.Image(repo.Tag("stable"))
	g.Expect(err).NotTo(HaveOccurred())
	var got bytes.Buffer
	h, err := ReadDisk(pulled, &got)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(h.Name).To(Equal("disk/cloud-base.qcow2"))
	g.Expect(bytes.Equal(got.Bytes(), data)).To(BeTrue())
	// An image that is not a containerDisk is refused.
	extra, err := mutate.AppendLayers(img, static.NewLayer([]byte("x"), types.OCILayer))
	g.Expect(err).NotTo(HaveOccurred())
	_, err = ReadDisk(extra, io.Discard)
	g.Expect(err).To(MatchError(ContainSubstring("one layer")))

	// A tag cannot point at a digest the repository lacks.
	other, _ := name.NewDigest(repo.String()+"@sha256:"+strings.Repeat("0", 64), name.Insecure)
	g.Expect(target.Tag(ctx, other, "stable")).To(MatchError(ContainSubstring("reading")))
	still, _ := target.Resolve(ctx, "stable")
	g.Expect(still).To(Equal(want))
}

// A registry that breaks while the layer is uploaded fails the push and
// moves no tag; the retry completes it.
func TestFailedPushMovesNoTag(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	var broken atomic.Bool
	host := registrytest.Start(t, registrytest.Options{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if broken.Load() && strings.Contains(r.URL.Path, "/blobs/uploads/") && (r.Method == http.MethodPatch || r.Method == http.MethodPut) {
				// Read part of the body, then drop the connection.
				_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
				hj, ok := w.(http.Hijacker)
				if !ok {
					t.Error("no hijacker")
					return
				}
				c, _, _ := hj.Hijack()
				c.Close()
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	repo, _ := ParseRepository(host+"/nodeforge/cloud-base", true)
	target := Target{Repository: repo}

	oldDisk, _ := writeDisk(t, 256<<10)
	oldImg, _ := Image(oldDisk, "cloud-base.qcow2", "amd64", created)
	oldRef, err := target.Push(ctx, oldImg, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(target.Tag(ctx, oldRef, "stable")).To(Succeed())

	broken.Store(true)
	disk, _ := writeDisk(t, 2<<20)
	img, _ := Image(disk, "cloud-base.qcow2", "amd64", created)
	shortCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = target.Push(shortCtx, img, nil)
	g.Expect(err).To(HaveOccurred())
	got, err := target.Resolve(ctx, "stable")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.String()).To(Equal(oldRef.DigestStr()), "a failed push moved the tag")

	broken.Store(false)
	ref, err := target.Push(ctx, img, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(target.Tag(ctx, ref, "stable")).To(Succeed())
	got, _ = target.Resolve(ctx, "stable")
	g.Expect(got.String()).To(Equal(ref.DigestStr()))
}

// A registry whose certificate a private CA signs: refused with the
// system's CAs alone, pushed to with TransportWithCA; a bundle without a
// certificate is an error.
func TestTransportWithCA(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	host, caPEM := registrytest.StartTLS(t, registrytest.Options{})
	repo, err := ParseRepository(host+"/nodeforge/cloud-base", false)
	g.Expect(err).NotTo(HaveOccurred())
	disk, _ := writeDisk(t, 64<<10)
	img, err := Image(disk, "cloud-base.qcow2", "amd64", created)
	g.Expect(err).NotTo(HaveOccurred())

	_, err = Target{Repository: repo}.Push(ctx, img, nil)
	g.Expect(err).To(MatchError(ContainSubstring("certificate")))

	tr, err := TransportWithCA(caPEM)
	g.Expect(err).NotTo(HaveOccurred())
	target := Target{Repository: repo, Transport: tr}
	g.Expect(target.CheckPush(ctx)).To(Succeed())
	ref, err := target.Push(ctx, img, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(target.Tag(ctx, ref, "stable")).To(Succeed())
	got, err := target.Resolve(ctx, "stable")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.String()).To(Equal(ref.DigestStr()))

	_, err = TransportWithCA([]byte("not a certificate"))
	g.Expect(err).To(HaveOccurred())
}

func TestKeychain(t *testing.T) {
	g := NewWithT(t)
	basic := base64.StdEncoding.EncodeToString([]byte("robot:s3cret"))
	kc, err := Keychain([]byte(`{"auths":{"127.0.0.1:5000":{"auth":"` + basic + `"},"https://reg.example.com":{"username":"u","password":"p"}}}`))
	g.Expect(err).NotTo(HaveOccurred())
	for host, want := range map[string]authn.AuthConfig{
		"127.0.0.1:5000":  {Username: "robot", Password: "s3cret"},
		"reg.example.com": {Username: "u", Password: "p"},
	} {
		reg, _ := name.NewRegistry(host)
		a, err := kc.Resolve(reg)
		g.Expect(err).NotTo(HaveOccurred())
		got, err := a.Authorization()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(got.Username).To(Equal(want.Username), host)
		g.Expect(got.Password).To(Equal(want.Password), host)
	}
	reg, _ := name.NewRegistry("other.example.com")
	a, _ := kc.Resolve(reg)
	g.Expect(a).To(Equal(authn.Anonymous))

	_, err = Keychain([]byte(`{"auths":{}}`))
	g.Expect(err).To(MatchError(ContainSubstring("no auths")))
	_, err = Keychain([]byte(`not json`))
	g.Expect(err).To(MatchError(ContainSubstring("not a Docker configuration")))
}

// A signature is stored where cosign looks for it (sha256-HEX.sig) in the
// form cosign writes, and sigstore's verifier and payload parser accept it
// for the signed digest.
func TestPushSignatureAsCosignDoes(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	host := registrytest.Start(t, registrytest.Options{})
	repo, _ := ParseRepository(host+"/nodeforge/cloud-base", true)
	target := Target{Repository: repo}
	disk, _ := writeDisk(t, 64<<10)
	img, _ := Image(disk, "cloud-base.qcow2", "amd64", created)
	ref, err := target.Push(ctx, img, nil)
	g.Expect(err).NotTo(HaveOccurred())

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	payload, err := SignaturePayload(ref)
	g.Expect(err).NotTo(HaveOccurred())
	sum := sha256.Sum256(payload)
	raw, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(target.PushSignature(ctx, ref, payload, []byte(base64.StdEncoding.EncodeToString(raw)))).To(Succeed())

	g.Expect(SignatureTag(ref.DigestStr())).To(MatchRegexp(`^sha256-[0-9a-f]{64}\.sig$`))
	sigImg, err := remote.Image(repo.Tag(SignatureTag(ref.DigestStr())))
	g.Expect(err).NotTo(HaveOccurred())
	m, err := sigImg.Manifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.Layers).To(HaveLen(1))
	g.Expect(m.Layers[0].MediaType).To(Equal(SignatureMediaType))
	sigB64 := m.Layers[0].Annotations[SignatureAnnotation]
	layers, _ := sigImg.Layers()
	rc, err := layers[0].Compressed()
	g.Expect(err).NotTo(HaveOccurred())
	stored, _ := io.ReadAll(rc)
	rc.Close()

	// sigstore checks the signature over the stored payload...
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	g.Expect(err).NotTo(HaveOccurred())
	pemPub, err := cryptoutils.MarshalPublicKeyToPEM(key.Public())
	g.Expect(err).NotTo(HaveOccurred())
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemPub)
	g.Expect(err).NotTo(HaveOccurred())
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(stored))).To(Succeed())
	// ...which names the pushed image.
	var p sigpayload.Cosign
	g.Expect(json.Unmarshal(stored, &p)).To(Succeed())
	g.Expect(p.Image.DigestStr()).To(Equal(ref.DigestStr()))
	g.Expect(p.Image.Context().Name()).To(Equal(repo.Name()))
	// A signature over another payload fails.
	other, _ := SignaturePayload(repo.Digest("sha256:" + strings.Repeat("0", 64)))
	g.Expect(v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(other))).NotTo(Succeed())
}
