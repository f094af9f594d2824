package storage

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// failingStore fails PutBytes for keys with a given suffix.
type failingStore struct {
	Store
	failSuffix string
}

func (f *failingStore) PutBytes(ctx context.Context, key string, data []byte, opts PutOptions) (ObjectInfo, error) {
	if strings.HasSuffix(key, f.failSuffix) {
		return ObjectInfo{}, &OpError{Op: "put", Key: key, Kind: ErrUnavailable, Err: errors.New("injected")}
	}
	return f.Store.PutBytes(ctx, key, data, opts)
}

func writeSmall(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.raw")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPublisherOnDir(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pub := &Publisher{Store: d, Now: func() time.Time { return clock }}

	a, err := pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "one"), Manifest: []byte(`{"a":1}`)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.ImageKey).To(Equal("n/"+digestN(1)+"/1/n.raw"), "revision 1; format from the .raw extension")
	g.Expect(a.Revision).To(Equal(1))
	g.Expect(a.PublishedAt).To(Equal(clock))
	ptr, err := pub.Latest(ctx, "n")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ptr).To(Equal(Pointer{SpecDigest: digestN(1), Revision: 1, Key: a.ImageKey, ManifestKey: a.ManifestKey, SHA256: a.SHA256, Size: 3, PublishedAt: clock}))

	found, err := pub.Lookup(ctx, "n", "sha256:"+digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found.SHA256).To(Equal(a.SHA256))

	// A publish failing at the manifest leaves latest and the older
	// artifact alone, the new digest is not found, and what it wrote of
	// its revision is gone.
	failing := &Publisher{Store: &failingStore{Store: d, failSuffix: ManifestFileName}}
	_, err = failing.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(2), ImagePath: writeSmall(t, "two"), Manifest: []byte(`{}`)})
	g.Expect(errors.Is(err, ErrUnavailable)).To(BeTrue(), "%v", err)
	g.Expect(err.Error()).To(ContainSubstring("manifest"))
	_, err = pub.Lookup(ctx, "n", digestN(2))
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())
	ptr, _ = pub.Latest(ctx, "n")
	g.Expect(ptr.SpecDigest).To(Equal(digestN(1)))
	left, err := d.List(ctx, "n/"+digestN(2)+"/")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(left).To(BeEmpty())
	// ... and so does one failing at the pointer.
	failing = &Publisher{Store: &failingStore{Store: d, failSuffix: LatestFileName}}
	_, err = failing.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(3), ImagePath: writeSmall(t, "three"), Manifest: []byte(`{}`)})
	g.Expect(err).To(HaveOccurred())
	ptr, _ = pub.Latest(ctx, "n")
	g.Expect(ptr.SpecDigest).To(Equal(digestN(1)))

	// Retention on the local store; revision numbers order the publishes.
	for i := 4; i <= 6; i++ {
		a, err := pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(i), ImagePath: writeSmall(t, "x"), Manifest: []byte(`{}`)})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(a.Revision).To(Equal(i-1), "3 took revision 2, freed by the failed publish of 2")
	}
	deleted, err := pub.Prune(ctx, "n", 2)
	g.Expect(err).NotTo(HaveOccurred())
	// 3 was published (manifest written) though its pointer failed.
	g.Expect(deleted).To(ConsistOf(
		Artifact{Name: "n", SpecDigest: digestN(1), Revision: 1},
		Artifact{Name: "n", SpecDigest: digestN(3), Revision: 2},
		Artifact{Name: "n", SpecDigest: digestN(4), Revision: 3}))

	g.Expect(pub.DeleteAll(ctx, "n")).To(Succeed())
	objs, err := d.List(ctx, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(objs).To(BeEmpty())
}

// A rebuild of the same spec is a new revision: the published objects of
// the first are never written again, a failed republish leaves the first
// found and latest, and a retry publishes the second whole.
func TestRepublishIsANewRevision(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	pub := &Publisher{Store: d}
	first, err := pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "first build"), Manifest: []byte(`{"build":1}`)})
	g.Expect(err).NotTo(HaveOccurred())
	before := readAll(ctx, g, d, "n/")

	failing := &Publisher{Store: &failingStore{Store: d, failSuffix: ManifestFileName}}
	_, err = failing.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "second build"), Manifest: []byte(`{"build":2}`)})
	g.Expect(err).To(HaveOccurred())
	found, err := pub.Lookup(ctx, "n", digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found).To(Equal(Artifact{Name: "n", SpecDigest: digestN(1), Revision: 1, ImageKey: first.ImageKey,
		ChecksumKey: first.ChecksumKey, ManifestKey: first.ManifestKey, SHA256: first.SHA256, Size: first.Size,
		URL: first.URL, PublishedAt: found.PublishedAt}))
	g.Expect(readAll(ctx, g, d, "n/")).To(Equal(before), "a failed republish changes nothing")

	again, err := pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "second build"), Manifest: []byte(`{"build":2}`)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(again.Revision).To(Equal(2))
	g.Expect(again.ImageKey).To(Equal("n/" + digestN(1) + "/2/n.raw"))
	found, err = pub.Lookup(ctx, "n", digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found.Revision).To(Equal(2))
	g.Expect(found.SHA256).To(Equal(again.SHA256))
	after := readAll(ctx, g, d, "n/")
	for key, content := range before {
		if key != pub.LatestKey("n") {
			g.Expect(after).To(HaveKeyWithValue(key, content), "revision 1 is append-only")
		}
	}
	g.Expect(after[found.ChecksumKey]).To(HavePrefix(again.SHA256), "the .sha256 matches the image")
	ptr, err := pub.Latest(ctx, "n")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ptr.Revision).To(Equal(2))
	published, err := pub.Published(ctx, "n")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(published).To(HaveLen(2))
	g.Expect(published[0].Revision).To(Equal(2), "newest first")
}

// Companions (the SBOM, the provenance) go into the revision beside the
// image, before the manifest; a failing one leaves nothing of the
// revision.
func TestPublishCompanions(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	in := PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "img"), Format: FormatQCOW2, Manifest: []byte(`{}`),
		Companions: []Companion{{Name: "n.spdx.json", Data: []byte(`{"spdxVersion":"SPDX-2.3"}`), ContentType: "application/spdx+json"}}}
	failing := &Publisher{Store: &failingStore{Store: d, failSuffix: ".spdx.json"}}
	_, err = failing.Publish(ctx, in)
	g.Expect(err).To(MatchError(ContainSubstring("n.spdx.json")))
	g.Expect(readAll(ctx, g, d, "n/")).To(BeEmpty(), "the failed revision's objects are removed")

	a, err := (&Publisher{Store: d}).Publish(ctx, in)
	g.Expect(err).NotTo(HaveOccurred())
	key := "n/" + digestN(1) + "/1/n.spdx.json"
	g.Expect(a.CompanionKeys).To(Equal(map[string]string{"n.spdx.json": key}))
	g.Expect(readAll(ctx, g, d, key)).To(HaveKeyWithValue(key, `{"spdxVersion":"SPDX-2.3"}`))
}

// racingStore hides every object from its first List, as if another
// publish claimed a revision between this one's listing and its claim.
type racingStore struct {
	Store
	listed bool
}

func (r *racingStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	if !r.listed {
		r.listed = true
		return nil, nil
	}
	return r.Store.List(ctx, prefix)
}

// Of two publishes racing for a revision number, one takes it and the
// other the next: nothing of the first is written by the second.
func TestPublishRacingForARevisionTakesTheNext(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	first, err := (&Publisher{Store: d}).Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "one"), Manifest: []byte(`{}`)})
	g.Expect(err).NotTo(HaveOccurred())
	second, err := (&Publisher{Store: &racingStore{Store: d}}).Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "two"), Manifest: []byte(`{}`)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(second.Revision).To(Equal(2))
	got := readAll(ctx, g, d, first.ChecksumKey)
	g.Expect(got[first.ChecksumKey]).To(HavePrefix(first.SHA256))
}

// Objects published before revisions (NAME/DIGEST/FILE) read as revision
// 0: found, pruned as one revision, and never confused with the numbered
// revisions below the same digest.
func TestRevisionZeroIsTheLayoutBeforeRevisions(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	pub := &Publisher{Store: d}
	dir := "n/" + digestN(1) + "/"
	img, err := d.PutBytes(ctx, dir+"n.qcow2", []byte("old"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	for key, content := range map[string]string{dir + "n.qcow2.sha256": SHA256SumLine(img.SHA256, "n.qcow2"), dir + ManifestFileName: "{}"} {
		_, err := d.PutBytes(ctx, key, []byte(content), PutOptions{})
		g.Expect(err).NotTo(HaveOccurred())
	}
	found, err := pub.Lookup(ctx, "n", digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found.Revision).To(Equal(0))
	g.Expect(found.ImageKey).To(Equal(dir + "n.qcow2"))

	a, err := pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "new"), Format: FormatQCOW2, Manifest: []byte(`{}`)})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(a.Revision).To(Equal(1))
	deleted, err := pub.Prune(ctx, "n", 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(deleted).To(ConsistOf(Artifact{Name: "n", SpecDigest: digestN(1), Revision: 0}))
	left := readAll(ctx, g, d, "n/")
	g.Expect(left).To(HaveLen(4), "revision 1's three objects and latest: %v", left)
	found, err = pub.Lookup(ctx, "n", digestN(1))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(found.Revision).To(Equal(1))
}

// A revision left without a manifest (its builder killed, the store
// unreachable for the cleanup) is removed by Prune once stale, not before.
func TestPruneRemovesStaleUnpublishedRevisions(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	now := time.Now()
	pub := &Publisher{Store: d, Now: func() time.Time { return now }}
	_, err = d.PutBytes(ctx, "n/"+digestN(1)+"/1/n.qcow2.sha256", []byte("x"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(pub.Prune(ctx, "n", 0)).To(BeEmpty(), "maybe a publish in progress")
	now = now.Add(StaleUploadAge + time.Minute)
	g.Expect(pub.Prune(ctx, "n", 0)).To(ConsistOf(Artifact{Name: "n", SpecDigest: digestN(1), Revision: 1}))
	g.Expect(readAll(ctx, g, d, "n/")).To(BeEmpty())
}

// readAll reads every object under prefix (or the one object named).
func readAll(ctx context.Context, g Gomega, s Store, prefix string) map[string]string {
	objs, err := s.List(ctx, prefix)
	g.Expect(err).NotTo(HaveOccurred())
	out := map[string]string{}
	for _, o := range objs {
		rc, _, err := s.Get(ctx, o.Key)
		g.Expect(err).NotTo(HaveOccurred())
		b, err := io.ReadAll(rc)
		rc.Close()
		g.Expect(err).NotTo(HaveOccurred())
		out[o.Key] = string(b)
	}
	return out
}

func TestPublisherRejectsBadInput(t *testing.T) {
	g := NewWithT(t)
	d, _ := NewDir(t.TempDir())
	pub := &Publisher{Store: d}
	ctx := context.Background()
	img := writeSmall(t, "x")
	for name, in := range map[string]PublishInput{
		"bad name":      {Name: "Bad/Name", SpecDigest: digestN(1), ImagePath: img, Manifest: []byte(`{}`)},
		"bad digest":    {Name: "n", SpecDigest: "xyz", ImagePath: img, Manifest: []byte(`{}`)},
		"bad format":    {Name: "n", SpecDigest: digestN(1), ImagePath: img, Format: "vmdk", Manifest: []byte(`{}`)},
		"no manifest":   {Name: "n", SpecDigest: digestN(1), ImagePath: img},
		"bad manifest":  {Name: "n", SpecDigest: digestN(1), ImagePath: img, Manifest: []byte(`{`)},
		"bad sha256":    {Name: "n", SpecDigest: digestN(1), ImagePath: img, SHA256: "ABC", Manifest: []byte(`{}`)},
		"wrong sha256":  {Name: "n", SpecDigest: digestN(1), ImagePath: img, SHA256: strings.Repeat("0", 64), Manifest: []byte(`{}`)},
		"missing image": {Name: "n", SpecDigest: digestN(1), ImagePath: img + ".missing", Manifest: []byte(`{}`)},
		"companion named as the manifest": {Name: "n", SpecDigest: digestN(1), ImagePath: img, Manifest: []byte(`{}`),
			Companions: []Companion{{Name: ManifestFileName, Data: []byte("x")}}},
		"companion in a directory": {Name: "n", SpecDigest: digestN(1), ImagePath: img, Manifest: []byte(`{}`),
			Companions: []Companion{{Name: "../n.spdx.json", Data: []byte("x")}}},
	} {
		_, err := pub.Publish(ctx, in)
		g.Expect(err).To(HaveOccurred(), name)
	}
	objs, _ := d.List(ctx, "")
	g.Expect(objs).To(BeEmpty(), "nothing published by failed attempts")
	_, err := pub.Prune(ctx, "n", -1)
	g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue())
}

// Two tenants share a bucket and both name a NodeImage "worker": keys are
// scoped to the namespace, so one's prune and delete never touch the
// other's images, even when team-a picks a prefix that names team-b.
func TestPublishersOfTwoNamespacesShareABucket(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	open := func(ns, prefix string) *Publisher {
		p, err := DestinationPrefix(ns, prefix)
		g.Expect(err).NotTo(HaveOccurred())
		return &Publisher{Store: d, Prefix: p}
	}
	teamA, teamB := open("team-a", "nodeforge"), open("team-b", "nodeforge")
	// team-a aims its prefix at team-b's keys; it lands under team-a/.
	sneaky := open("team-a", "../team-b/nodeforge")
	for i, p := range []*Publisher{teamA, teamB, sneaky} {
		_, err := p.Publish(ctx, PublishInput{Name: "worker", SpecDigest: digestN(i + 1), ImagePath: writeSmall(t, "img"), Manifest: []byte(`{}`)})
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(sneaky.Prefix).To(Equal("team-a/team-b/nodeforge"))

	g.Expect(teamA.Prune(ctx, "worker", 0)).To(BeEmpty(), "the latest digest is kept")
	g.Expect(teamA.DeleteAll(ctx, "worker")).To(Succeed())
	g.Expect(sneaky.DeleteAll(ctx, "worker")).To(Succeed())
	left, err := d.List(ctx, "")
	g.Expect(err).NotTo(HaveOccurred())
	var keys []string
	for _, o := range left {
		keys = append(keys, o.Key)
		g.Expect(o.Key).To(HavePrefix("team-b/nodeforge/worker/"), "only team-b's objects remain")
	}
	g.Expect(keys).To(HaveLen(4), "team-b's image, .sha256, manifest and latest pointer: %v", keys)
	ptr, err := teamB.Latest(ctx, "worker")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ptr.SpecDigest).To(Equal(digestN(2)))
}

// DeleteAll removes the layout's keys of a name only: a key under NAME/
// that is not NAME/latest or NAME/DIGEST/... belongs to someone else.
func TestDeleteAllKeepsForeignKeysUnderTheName(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	pub := &Publisher{Store: d, Prefix: "team-a"}
	_, err = pub.Publish(ctx, PublishInput{Name: "n", SpecDigest: digestN(1), ImagePath: writeSmall(t, "img"), Manifest: []byte(`{}`)})
	g.Expect(err).NotTo(HaveOccurred())
	nested := &Publisher{Store: d, Prefix: "team-a/n"}
	_, err = nested.Publish(ctx, PublishInput{Name: "other", SpecDigest: digestN(2), ImagePath: writeSmall(t, "img"), Manifest: []byte(`{}`)})
	g.Expect(err).NotTo(HaveOccurred())
	// An unfinished publish of n (no manifest) is n's and goes too.
	_, err = d.PutBytes(ctx, "team-a/n/"+digestN(3)+"/n.qcow2", []byte("partial"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	g.Expect(pub.DeleteAll(ctx, "n")).To(Succeed())
	left, err := d.List(ctx, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(left).To(HaveLen(4))
	for _, o := range left {
		g.Expect(o.Key).To(HavePrefix("team-a/n/other/"))
	}
}
