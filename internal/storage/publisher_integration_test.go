package storage

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	. "github.com/onsi/gomega"
)

func digestN(i int) string { return strings.Repeat(string("0123456789abcdef"[i%16]), 64) }

func TestS3PublishLookupPruneDelete(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t, func(o *S3Options) { o.PartSize = 5 << 20 })
	pub := &Publisher{Store: st, Prefix: "nodes/prod"}
	ctx := context.Background()
	dir := t.TempDir()

	// Miss before anything is published.
	_, err := pub.Lookup(ctx, "worker", digestN(1))
	var nf *ArtifactNotFoundError
	g.Expect(errors.As(err, &nf)).To(BeTrue(), "%v", err)
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())
	_, err = pub.Latest(ctx, "worker")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue(), "%v", err)

	path, sum := writeTestFile(t, dir, 11<<20, 30)
	a, err := pub.Publish(ctx, PublishInput{Name: "worker", SpecDigest: "sha256:" + digestN(1), ImagePath: path, Manifest: []byte(`{"n":1}`)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.ImageKey).To(Equal("nodes/prod/worker/" + digestN(1) + "/1/worker.qcow2"))
	g.Expect(a.SHA256).To(Equal(sum))
	g.Expect(a.URL).To(Equal(srv.endpoint() + "/" + st.Bucket() + "/" + a.ImageKey))

	// Hit: the same spec is found and needs no rebuild.
	found, err := pub.Lookup(ctx, "worker", digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found.SHA256).To(Equal(sum))
	g.Expect(found.Size).To(BeEquivalentTo(11 << 20))
	g.Expect(found.ImageKey).To(Equal(a.ImageKey))
	// Miss for another spec.
	_, err = pub.Lookup(ctx, "worker", digestN(2))
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())

	// The companions: sha256sum line and the manifest as given.
	rc, _, err := st.Get(ctx, a.ChecksumKey)
	g.Expect(err).NotTo(HaveOccurred())
	line, _ := io.ReadAll(rc)
	rc.Close()
	g.Expect(string(line)).To(Equal(sum + "  worker.qcow2\n"))
	rc, _, err = st.Get(ctx, a.ManifestKey)
	g.Expect(err).NotTo(HaveOccurred())
	man, _ := io.ReadAll(rc)
	rc.Close()
	g.Expect(string(man)).To(Equal(`{"n":1}`))

	// A presigned URL of the artifact downloads the image.
	u, err := st.PresignGet(ctx, a.ImageKey, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	resp, err := http.Get(u)
	g.Expect(err).NotTo(HaveOccurred())
	gotSum, _ := readAllHash(t, resp.Body)
	resp.Body.Close()
	g.Expect(gotSum).To(Equal(sum))

	// More publications, revisions 2 to 4.
	for i := 2; i <= 4; i++ {
		p, _ := writeTestFile(t, dir, 1<<20, uint64(30+i))
		a, err := pub.Publish(ctx, PublishInput{Name: "worker", SpecDigest: digestN(i), ImagePath: p, Manifest: []byte(`{}`)})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(a.Revision).To(Equal(i))
	}
	// A revision whose publish never finished (image, no manifest) is not
	// "published": Lookup misses it and Prune leaves it alone while fresh.
	_, err = st.PutBytes(ctx, pub.ImageKey("worker", digestN(9), 5, FormatQCOW2), []byte("half"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = pub.Lookup(ctx, "worker", digestN(9))
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())
	// Another name sharing a prefix is not touched by anything below.
	_, err = pub.Publish(ctx, PublishInput{Name: "worker2", SpecDigest: digestN(1), ImagePath: path, SHA256: sum, Manifest: []byte(`{}`)})
	g.Expect(err).NotTo(HaveOccurred())

	ptr, err := pub.Latest(ctx, "worker")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ptr.SpecDigest).To(Equal(digestN(4)))

	deleted, err := pub.Prune(ctx, "worker", 2)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(deleted).To(ConsistOf(Artifact{Name: "worker", SpecDigest: digestN(1), Revision: 1}, Artifact{Name: "worker", SpecDigest: digestN(2), Revision: 2}))
	for i, want := range map[int]bool{1: false, 2: false, 3: true, 4: true} {
		_, err := pub.Lookup(ctx, "worker", digestN(i))
		g.Expect(err == nil).To(Equal(want), "digest %d: %v", i, err)
	}
	objs, err := st.List(ctx, "nodes/prod/worker/"+digestN(1)+"/")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(objs).To(BeEmpty())

	// Roll latest back to the older digest 3 (as an operator would): prune
	// to 0 keeps only what latest names, though digest 4 is newer.
	b, _ := json.Marshal(Pointer{SpecDigest: digestN(3), Revision: 3, Key: pub.ImageKey("worker", digestN(3), 3, FormatQCOW2)})
	_, err = st.PutBytes(ctx, pub.LatestKey("worker"), b, PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	deleted, err = pub.Prune(ctx, "worker", 0)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(deleted).To(ConsistOf(Artifact{Name: "worker", SpecDigest: digestN(4), Revision: 4}))
	_, err = pub.Lookup(ctx, "worker", digestN(3))
	g.Expect(err).NotTo(HaveOccurred(), "latest is never pruned")

	// Delete policy: everything of the name goes, other names stay.
	g.Expect(pub.DeleteAll(ctx, "worker")).To(Succeed())
	objs, err = st.List(ctx, "nodes/prod/worker/")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(objs).To(BeEmpty())
	_, err = pub.Lookup(ctx, "worker2", digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
}

// A builder killed mid-upload leaves an incomplete multipart upload that
// no abort ever reached: it holds space without being an object. Prune
// aborts such uploads of the name once older than StaleUploadAge (never a
// fresh one, which may be in progress), and DeleteAll aborts them all;
// other names' uploads stay.
func TestS3PruneAndDeleteAbortLeftoverUploads(t *testing.T) {
	g := NewWithT(t)
	srv := startMinio(t, minioConfig{})
	st := srv.bucketStore(t)
	pub := &Publisher{Store: st, Prefix: "team-a/nodes"}
	ctx := context.Background()
	start := func(key string) {
		_, err := st.core.NewMultipartUpload(ctx, st.Bucket(), key, minio.PutObjectOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}
	uploads := func() []string {
		var keys []string
		for u := range st.client.ListIncompleteUploads(ctx, st.Bucket(), "", true) {
			g.Expect(u.Err).NotTo(HaveOccurred())
			keys = append(keys, u.Key)
		}
		return keys
	}
	mine := pub.ImageKey("worker", digestN(1), 1, FormatQCOW2)
	other := (&Publisher{Prefix: "team-a/nodes"}).ImageKey("worker2", digestN(1), 1, FormatQCOW2)
	start(mine)
	start(other)

	_, err := pub.Prune(ctx, "worker", 3)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(uploads()).To(ConsistOf(mine, other), "a fresh upload may be in progress: Prune leaves it")

	g.Expect(pub.DeleteAll(ctx, "worker")).To(Succeed())
	g.Expect(uploads()).To(ConsistOf(other), "DeleteAll aborts the name's uploads only")
}
