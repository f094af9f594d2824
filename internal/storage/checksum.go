package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"regexp"
)

// castagnoli is the CRC32C table S3 uses for x-amz-checksum-crc32c.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var sha256HexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// validSHA256 reports whether s is a lowercase hex sha256.
func validSHA256(s string) bool { return sha256HexRE.MatchString(s) }

// SHA256SumLine formats a checksum file line the way sha256sum(1) does, so
// `sha256sum -c NAME.sha256` verifies a downloaded NAME.
func SHA256SumLine(sum, fileName string) string {
	return sum + "  " + fileName + "\n"
}

// hashReader returns the sha256 of size bytes of r, read once, sequentially.
func hashReader(r io.ReaderAt, size int64) (string, error) {
	h := startPartHasher(context.Background(), r, size, max(size, 1))
	return h.wait(context.Background())
}

// partHasher reads a file once, sequentially, in the background, feeding
// the whole file's sha256 and one CRC32C per part. A part can be uploaded as
// soon as it is hashed: its CRC32C comes from the same read as the sha256,
// and the server checks the part it receives against it, so a file that
// changes under the upload cannot end up with a checksum it does not have.
type partHasher struct {
	crcs  []uint32
	ready []chan struct{} // ready[i] closes when crcs[i] is set
	done  chan struct{}   // closes when sum or err is set
	sum   string
	err   error
}

func startPartHasher(ctx context.Context, r io.ReaderAt, size, partSize int64) *partHasher {
	n := int((size + partSize - 1) / partSize)
	h := &partHasher{crcs: make([]uint32, n), ready: make([]chan struct{}, n), done: make(chan struct{})}
	for i := range h.ready {
		h.ready[i] = make(chan struct{})
	}
	go func() {
		defer close(h.done)
		sum := sha256.New()
		buf := make([]byte, 1<<20)
		for i := range n {
			if err := ctx.Err(); err != nil {
				h.err = err
				return
			}
			off := int64(i) * partSize
			c := crc32.New(castagnoli)
			if _, err := io.CopyBuffer(io.MultiWriter(sum, c), io.NewSectionReader(r, off, min(partSize, size-off)), buf); err != nil {
				h.err = err
				return
			}
			h.crcs[i] = c.Sum32()
			close(h.ready[i])
		}
		h.sum = hex.EncodeToString(sum.Sum(nil))
	}()
	return h
}

// part waits until part i (from 0) is hashed and returns its CRC32C.
func (h *partHasher) part(ctx context.Context, i int) (uint32, error) {
	select {
	case <-h.ready[i]:
		return h.crcs[i], nil
	case <-h.done:
		select {
		case <-h.ready[i]:
			return h.crcs[i], nil
		default:
			return 0, fmt.Errorf("hash: %w", h.err)
		}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// wait returns the sha256 of the whole file once it is read.
func (h *partHasher) wait(ctx context.Context) (string, error) {
	select {
	case <-h.done:
		return h.sum, h.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
