package storage

import (
	"crypto/sha256"
	"encoding/hex"
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

// hashParts reads r (size bytes) once, sequentially, and returns the sha256
// of the whole content and the CRC32C of each partSize-long part.
func hashParts(r io.ReaderAt, size, partSize int64) (sum string, crcs []uint32, err error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += partSize {
		n := min(partSize, size-off)
		c := crc32.New(castagnoli)
		if _, err := io.CopyBuffer(io.MultiWriter(h, c), io.NewSectionReader(r, off, n), buf); err != nil {
			return "", nil, err
		}
		crcs = append(crcs, c.Sum32())
	}
	if size == 0 {
		crcs = nil
	}
	return hex.EncodeToString(h.Sum(nil)), crcs, nil
}

// sectionCRC32C returns the CRC32C of n bytes of r at off.
func sectionCRC32C(r io.ReaderAt, off, n int64) (uint32, error) {
	c := crc32.New(castagnoli)
	if _, err := io.CopyBuffer(c, io.NewSectionReader(r, off, n), make([]byte, 1<<20)); err != nil {
		return 0, err
	}
	return c.Sum32(), nil
}
