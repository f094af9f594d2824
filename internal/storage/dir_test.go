package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/nodeforge/nodeforge/internal/checksum"
)

func TestDirPutStatGetListDelete(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(filepath.Join(t.TempDir(), "store"))
	g.Expect(err).NotTo(HaveOccurred())

	src := filepath.Join(t.TempDir(), "img.qcow2")
	g.Expect(os.WriteFile(src, []byte("image bytes"), 0o644)).To(Succeed())
	sum, _, _ := checksum.File(src)

	var last int64
	info, err := d.PutFile(ctx, "a/b/img.qcow2", src, PutOptions{Progress: func(done, _ int64) { last = done }})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.SHA256).To(Equal(sum))
	g.Expect(info.Size).To(BeEquivalentTo(11))
	g.Expect(last).To(BeEquivalentTo(11))

	_, err = d.PutBytes(ctx, "a/c", []byte("c"), PutOptions{ContentType: "text/plain"})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = d.PutBytes(ctx, "ab", []byte("x"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	st, err := d.Stat(ctx, "a/c")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st.ContentType).To(Equal("text/plain"))

	rc, info2, err := d.Get(ctx, "a/b/img.qcow2")
	g.Expect(err).NotTo(HaveOccurred())
	b, _ := io.ReadAll(rc)
	rc.Close()
	g.Expect(string(b)).To(Equal("image bytes"))
	g.Expect(info2.SHA256).To(Equal(sum))

	list, err := d.List(ctx, "a/")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(keys(list)).To(Equal([]string{"a/b/img.qcow2", "a/c"}))
	list, err = d.List(ctx, "")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(keys(list)).To(Equal([]string{"a/b/img.qcow2", "a/c", "ab"}), "metadata dir is hidden")

	g.Expect(d.URL("a/c")).To(Equal("file://" + filepath.Join(d.Root(), "a", "c")))
	u, err := d.PresignGet(ctx, "a/c", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(u).To(Equal(d.URL("a/c")))

	g.Expect(d.Delete(ctx, "a/b/img.qcow2")).To(Succeed())
	g.Expect(d.Delete(ctx, "a/b/img.qcow2")).To(Succeed())
	_, err = d.Stat(ctx, "a/b/img.qcow2")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())
	_, err = os.Stat(filepath.Join(d.Root(), "a", "b"))
	g.Expect(os.IsNotExist(err)).To(BeTrue(), "empty dirs are removed")

	for _, bad := range []string{"", "/abs", "a/../b", "a//b", "dir/", dirMetaDir + "/x"} {
		_, err := d.PutBytes(ctx, bad, []byte("x"), PutOptions{})
		g.Expect(errors.Is(err, ErrInvalidArgument)).To(BeTrue(), "key %q: %v", bad, err)
	}
}

func TestDirChecksumMismatchLeavesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	_, err = d.PutBytes(ctx, "k", []byte("good"), PutOptions{})
	g.Expect(err).NotTo(HaveOccurred())

	src := filepath.Join(t.TempDir(), "f")
	g.Expect(os.WriteFile(src, []byte("new content"), 0o644)).To(Succeed())
	_, err = d.PutFile(ctx, "k", src, PutOptions{SHA256: strings.Repeat("0", 64)})
	g.Expect(errors.Is(err, ErrChecksumMismatch)).To(BeTrue(), "%v", err)

	// The old object is intact and no temp file remains.
	rc, info, err := d.Get(ctx, "k")
	g.Expect(err).NotTo(HaveOccurred())
	b, _ := io.ReadAll(rc)
	rc.Close()
	g.Expect(string(b)).To(Equal("good"))
	g.Expect(info.Size).To(BeEquivalentTo(4))
	entries, _ := os.ReadDir(d.Root())
	for _, e := range entries {
		g.Expect(e.Name()).NotTo(ContainSubstring(".tmp-"))
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = d.PutFile(cctx, "k2", src, PutOptions{})
	g.Expect(errors.Is(err, context.Canceled)).To(BeTrue(), "%v", err)
	_, err = d.Stat(ctx, "k2")
	g.Expect(errors.Is(err, ErrNotFound)).To(BeTrue())
}

func TestDirConditionalPut(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	testConditionalPut(t, d)
}

// testConditionalPut checks PutOptions.IfAbsent on a store: a second
// conditional put of a key fails with ErrExists and leaves the object as
// it was, and of writers racing for a new key exactly one wins.
func testConditionalPut(t *testing.T, s Store) {
	g := NewWithT(t)
	ctx := context.Background()
	_, err := s.PutBytes(ctx, "claims/a", []byte("first"), PutOptions{IfAbsent: true})
	g.Expect(err).NotTo(HaveOccurred())
	_, err = s.PutBytes(ctx, "claims/a", []byte("second"), PutOptions{IfAbsent: true})
	g.Expect(errors.Is(err, ErrExists)).To(BeTrue(), "%v", err)
	info, err := s.Stat(ctx, "claims/a")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(info.SHA256).To(Equal(sha256Hex("first")), "the object is the first writer's")
	rc, _, err := s.Get(ctx, "claims/a")
	g.Expect(err).NotTo(HaveOccurred())
	b, _ := io.ReadAll(rc)
	rc.Close()
	g.Expect(string(b)).To(Equal("first"))

	const writers = 6
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.PutBytes(ctx, "claims/b", []byte(fmt.Sprintf("writer %d", i)), PutOptions{IfAbsent: true})
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		g.Expect(errors.Is(err, ErrExists)).To(BeTrue(), "%v", err)
	}
	g.Expect(won).To(Equal(1), "exactly one writer wins: %v", errs)
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
