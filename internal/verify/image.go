package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// ImageInfo is the part of `qemu-img info --output=json` verify looks at.
type ImageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Type string `json:"type"`
		Data struct {
			CompressionType string `json:"compression-type"`
			Compat          string `json:"compat"`
			Corrupt         bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// ParseImageInfo decodes `qemu-img info --output=json`.
func ParseImageInfo(b []byte) (*ImageInfo, error) {
	var info ImageInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("decoding qemu-img info: %w", err)
	}
	if info.Format == "" {
		return nil, errors.New("qemu-img info reported no format")
	}
	return &info, nil
}

// runCmd runs a command and returns its stdout; the error carries stderr.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 500 {
			msg = msg[len(msg)-500:]
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// QemuImgInfo runs qemu-img info on an image.
func QemuImgInfo(ctx context.Context, image string) (*ImageInfo, error) {
	out, err := runCmd(ctx, "qemu-img", "info", "--output=json", image)
	if err != nil {
		return nil, err
	}
	return ParseImageInfo(out)
}

// Disk is an image converted to a sparse raw file for offline reading.
type Disk struct {
	Path string
	Size int64
	GPT  *GPT
	// MBR is the first sector.
	MBR []byte
}

// OpenDisk converts image to a sparse raw file in workDir and reads its
// partition table. The caller removes workDir.
func OpenDisk(ctx context.Context, image, format, workDir string) (*Disk, error) {
	raw := filepath.Join(workDir, "disk.raw")
	if _, err := runCmd(ctx, "qemu-img", "convert", "-f", format, "-O", "raw", "-S", "4k", image, raw); err != nil {
		return nil, err
	}
	f, err := os.Open(raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	d := &Disk{Path: raw, Size: st.Size(), MBR: make([]byte, 512)}
	if _, err := io.ReadFull(f, d.MBR); err != nil {
		return nil, fmt.Errorf("reading the first sector: %w", err)
	}
	d.GPT, err = ReadGPT(f, st.Size())
	if err != nil {
		return d, err
	}
	return d, nil
}

// ReadAt reads n bytes at off from the raw disk.
func (d *Disk) ReadAt(off int64, n int) ([]byte, error) {
	f, err := os.Open(d.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// Well-known GPT partition type GUIDs.
const (
	GUIDBIOSBoot    = "21686148-6449-6E6F-744E-656564454649"
	GUIDESP         = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	GUIDLinuxFS     = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	GUIDRootX86_64  = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	GUIDLinuxSwap   = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
	sectorSize      = 512
	gptEntryMinSize = 128
)

// GPT is a parsed GUID partition table.
type GPT struct {
	DiskGUID   string
	Partitions []Partition
}

// Partition is one used GPT entry.
type Partition struct {
	Number   int
	TypeGUID string
	GUID     string
	Name     string
	FirstLBA uint64
	LastLBA  uint64
}

// Offset is the partition's byte offset.
func (p Partition) Offset() int64 { return int64(p.FirstLBA) * sectorSize }

// Size is the partition's size in bytes.
func (p Partition) Size() int64 { return int64(p.LastLBA-p.FirstLBA+1) * sectorSize }

// ByType returns the first partition of a type, or nil.
func (g *GPT) ByType(guid string) *Partition {
	for i := range g.Partitions {
		if strings.EqualFold(g.Partitions[i].TypeGUID, guid) {
			return &g.Partitions[i]
		}
	}
	return nil
}

// ReadGPT reads and validates the primary GPT of a 512-byte-sector disk:
// the protective MBR, the header signature and CRC, and the entry array
// CRC.
func ReadGPT(r io.ReaderAt, size int64) (*GPT, error) {
	mbr := make([]byte, sectorSize)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("reading the MBR: %w", err)
	}
	hdr := make([]byte, sectorSize)
	if _, err := r.ReadAt(hdr, sectorSize); err != nil {
		return nil, fmt.Errorf("reading the GPT header: %w", err)
	}
	return ParseGPT(mbr, hdr, func(off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := r.ReadAt(b, off)
		return b, err
	}, size)
}

// ParseGPT parses a protective MBR, a GPT header sector and (through
// readAt) the partition entry array.
func ParseGPT(mbr, hdr []byte, readAt func(off int64, n int) ([]byte, error), diskSize int64) (*GPT, error) {
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return nil, errors.New("no MBR boot signature 0x55AA in sector 0")
	}
	if mbr[446+4] != 0xEE {
		return nil, fmt.Errorf("the MBR's first partition has type 0x%02x, want 0xEE (protective MBR)", mbr[446+4])
	}
	if string(hdr[:8]) != "EFI PART" {
		return nil, errors.New("no GPT header signature \"EFI PART\" at LBA 1")
	}
	hsize := binary.LittleEndian.Uint32(hdr[12:16])
	if hsize < 92 || hsize > sectorSize {
		return nil, fmt.Errorf("GPT header size %d is invalid", hsize)
	}
	want := binary.LittleEndian.Uint32(hdr[16:20])
	h := append([]byte(nil), hdr[:hsize]...)
	binary.LittleEndian.PutUint32(h[16:20], 0)
	if got := crc32.ChecksumIEEE(h); got != want {
		return nil, fmt.Errorf("GPT header CRC is 0x%08x, computed 0x%08x", want, got)
	}
	lastUsable := binary.LittleEndian.Uint64(hdr[48:56])
	if diskSize > 0 && int64(lastUsable+1)*sectorSize > diskSize {
		return nil, fmt.Errorf("GPT last usable LBA %d lies beyond the disk (%d bytes)", lastUsable, diskSize)
	}
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:80])
	n := binary.LittleEndian.Uint32(hdr[80:84])
	esize := binary.LittleEndian.Uint32(hdr[84:88])
	ecrc := binary.LittleEndian.Uint32(hdr[88:92])
	if esize < gptEntryMinSize || n == 0 || n > 1024 {
		return nil, fmt.Errorf("GPT entry array of %d entries of %d bytes is invalid", n, esize)
	}
	arr, err := readAt(int64(entriesLBA)*sectorSize, int(n*esize))
	if err != nil {
		return nil, fmt.Errorf("reading GPT entries: %w", err)
	}
	if got := crc32.ChecksumIEEE(arr); got != ecrc {
		return nil, fmt.Errorf("GPT entry array CRC is 0x%08x, computed 0x%08x", ecrc, got)
	}
	g := &GPT{DiskGUID: guidString(hdr[56:72])}
	for i := 0; i < int(n); i++ {
		e := arr[i*int(esize) : (i+1)*int(esize)]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		g.Partitions = append(g.Partitions, Partition{
			Number:   i + 1,
			TypeGUID: guidString(e[0:16]),
			GUID:     guidString(e[16:32]),
			FirstLBA: binary.LittleEndian.Uint64(e[32:40]),
			LastLBA:  binary.LittleEndian.Uint64(e[40:48]),
			Name:     utf16Name(e[56:128]),
		})
	}
	return g, nil
}

// guidString formats a GPT mixed-endian GUID.
func guidString(b []byte) string {
	return strings.ToUpper(fmt.Sprintf("%08X-%04X-%04X-%X-%X",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16]))
}

func utf16Name(b []byte) string {
	var r []rune
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		r = append(r, rune(c))
	}
	return string(r)
}

// Ext4Super is what verify reads from an ext4 superblock.
type Ext4Super struct {
	UUID  string
	Label string
	// Features: has_journal, extents and 64bit are what make it ext4 rather
	// than ext2/3.
	Journal, Extents bool
}

// ParseExt4Super parses the 1024-byte superblock found 1024 bytes into an
// ext2/3/4 filesystem.
func ParseExt4Super(sb []byte) (*Ext4Super, error) {
	if len(sb) < 1024 {
		return nil, errors.New("short superblock")
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return nil, errors.New("no ext2/3/4 superblock magic 0xEF53")
	}
	compat := binary.LittleEndian.Uint32(sb[0x5C:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	u := sb[0x68:0x78]
	return &Ext4Super{
		UUID:    fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
		Label:   strings.TrimRight(string(sb[0x78:0x88]), "\x00"),
		Journal: compat&0x4 != 0,
		Extents: incompat&0x40 != 0,
	}, nil
}

// FATBoot is what verify reads from a FAT boot sector.
type FATBoot struct {
	// Type is "FAT12", "FAT16" or "FAT32".
	Type string
	// VolumeID formatted as fstab's UUID=XXXX-XXXX.
	VolumeID string
	Label    string
}

// ParseFATBoot parses a FAT boot sector.
func ParseFATBoot(bs []byte) (*FATBoot, error) {
	if len(bs) < 512 || bs[510] != 0x55 || bs[511] != 0xAA {
		return nil, errors.New("no boot sector signature 0x55AA")
	}
	if t := strings.TrimSpace(string(bs[0x52:0x5A])); t == "FAT32" {
		id := binary.LittleEndian.Uint32(bs[0x43:])
		return &FATBoot{Type: "FAT32", VolumeID: fmt.Sprintf("%04X-%04X", id>>16, id&0xffff), Label: strings.TrimSpace(string(bs[0x47:0x52]))}, nil
	}
	if t := strings.TrimSpace(string(bs[0x36:0x3E])); strings.HasPrefix(t, "FAT1") {
		id := binary.LittleEndian.Uint32(bs[0x27:])
		return &FATBoot{Type: t, VolumeID: fmt.Sprintf("%04X-%04X", id>>16, id&0xffff), Label: strings.TrimSpace(string(bs[0x2B:0x36]))}, nil
	}
	return nil, errors.New("no FAT12/16/32 file system type in the boot sector")
}

// DirEntry is one entry of a directory in the image.
type DirEntry struct {
	Name    string
	Mode    uint32
	IsDir   bool
	Symlink bool
	Size    int64
}

// ErrNotExist is returned for missing files in the image.
var ErrNotExist = errors.New("no such file in the image")

// Ext4FS reads an ext4 filesystem inside a raw disk through debugfs,
// without mounting it.
type Ext4FS struct {
	ctx  context.Context
	spec string // "disk.raw?offset=N"
}

// NewExt4FS opens the ext4 filesystem at a byte offset of a raw disk.
func NewExt4FS(ctx context.Context, raw string, offset int64) *Ext4FS {
	return &Ext4FS{ctx: ctx, spec: raw + "?offset=" + strconv.FormatInt(offset, 10)}
}

func (e *Ext4FS) debugfs(req string) ([]byte, string, error) {
	cmd := exec.CommandContext(e.ctx, "debugfs", "-R", req, e.spec)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	// debugfs prints its version banner on stderr; errors follow it.
	var msgs []string
	for _, l := range strings.Split(errb.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "debugfs ") {
			msgs = append(msgs, l)
		}
	}
	return out.Bytes(), strings.Join(msgs, "; "), err
}

func quoteDebugfs(p string) string { return `"` + p + `"` }

// ReadFile returns a file's content, following symbolic links.
func (e *Ext4FS) ReadFile(p string) ([]byte, error) {
	p, err := e.resolve(p)
	if err != nil {
		return nil, err
	}
	out, msg, err := e.debugfs("cat " + quoteDebugfs(p))
	if err != nil {
		return nil, fmt.Errorf("debugfs cat %s: %w: %s", p, err, msg)
	}
	if strings.Contains(msg, "File not found") {
		return nil, fmt.Errorf("%s: %w", p, ErrNotExist)
	}
	if msg != "" && len(out) == 0 {
		return nil, fmt.Errorf("debugfs cat %s: %s", p, msg)
	}
	return out, nil
}

// Stat describes one inode.
type Stat struct {
	Type string // "regular", "directory", "symlink", ...
	Mode uint32
	UID  int
	GID  int
	Size int64
	// Link is a symbolic link's target.
	Link string
}

// Lstat describes a path without following a final symbolic link.
func (e *Ext4FS) Lstat(p string) (*Stat, error) {
	out, msg, err := e.debugfs("stat " + quoteDebugfs(p))
	if err != nil {
		return nil, fmt.Errorf("debugfs stat %s: %w: %s", p, err, msg)
	}
	if strings.Contains(msg, "File not found") || len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", p, ErrNotExist)
	}
	return parseDebugfsStat(string(out))
}

func parseDebugfsStat(s string) (*Stat, error) {
	st := &Stat{}
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "Type:":
				st.Type = f[i+1]
			case "Mode:":
				m, _ := strconv.ParseUint(f[i+1], 8, 32)
				st.Mode = uint32(m)
			case "User:":
				st.UID, _ = strconv.Atoi(f[i+1])
			case "Group:":
				st.GID, _ = strconv.Atoi(f[i+1])
			case "Size:":
				st.Size, _ = strconv.ParseInt(f[i+1], 10, 64)
			}
		}
		if i := strings.Index(l, "Fast link dest:"); i >= 0 {
			st.Link = strings.Trim(strings.TrimSpace(l[i+len("Fast link dest:"):]), `"`)
		}
	}
	if st.Type == "" {
		return nil, fmt.Errorf("cannot parse debugfs stat output %q", firstLine(s))
	}
	return st, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// Readlink returns a symbolic link's target.
func (e *Ext4FS) Readlink(p string) (string, error) {
	st, err := e.Lstat(p)
	if err != nil {
		return "", err
	}
	if st.Type != "symlink" {
		return "", fmt.Errorf("%s is a %s, not a symbolic link", p, st.Type)
	}
	if st.Link != "" {
		return st.Link, nil
	}
	// A slow symlink keeps its target in a data block.
	out, msg, err := e.debugfs("cat " + quoteDebugfs(p))
	if err != nil {
		return "", fmt.Errorf("debugfs cat %s: %w: %s", p, err, msg)
	}
	return strings.TrimRight(string(out), "\x00"), nil
}

// resolve follows symbolic links in every component of p (up to 16 hops).
func (e *Ext4FS) resolve(p string) (string, error) {
	parts := strings.Split(strings.Trim(path.Clean(p), "/"), "/")
	cur := "/"
	hops := 0
	for i := 0; i < len(parts); i++ {
		if parts[i] == "" {
			continue
		}
		next := path.Join(cur, parts[i])
		st, err := e.Lstat(next)
		if err != nil {
			return "", err
		}
		if st.Type == "symlink" {
			hops++
			if hops > 16 {
				return "", fmt.Errorf("%s: too many levels of symbolic links", p)
			}
			t, err := e.Readlink(next)
			if err != nil {
				return "", err
			}
			if !path.IsAbs(t) {
				t = path.Join(cur, t)
			}
			rest := append(strings.Split(strings.Trim(path.Clean(t), "/"), "/"), parts[i+1:]...)
			parts, i, cur = rest, -1, "/"
			continue
		}
		cur = next
	}
	return cur, nil
}

// Exists reports whether a path exists (without following a final link).
func (e *Ext4FS) Exists(p string) (bool, error) {
	_, err := e.Lstat(p)
	if errors.Is(err, ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// ReadDir lists a directory (following symbolic links to it), without
// "." and "..".
func (e *Ext4FS) ReadDir(p string) ([]DirEntry, error) {
	p, err := e.resolve(p)
	if err != nil {
		return nil, err
	}
	out, msg, err := e.debugfs("ls -p " + quoteDebugfs(p))
	if err != nil {
		return nil, fmt.Errorf("debugfs ls %s: %w: %s", p, err, msg)
	}
	if strings.Contains(msg, "File not found") {
		return nil, fmt.Errorf("%s: %w", p, ErrNotExist)
	}
	return parseDebugfsLs(string(out)), nil
}

// parseDebugfsLs parses `ls -p` lines: /inode/mode/uid/gid/name/size/.
func parseDebugfsLs(s string) []DirEntry {
	var out []DirEntry
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "/") {
			continue
		}
		f := strings.Split(strings.Trim(l, "/"), "/")
		if len(f) < 5 {
			continue
		}
		name := strings.Join(f[4:len(f)-1], "/")
		if len(f) == 5 {
			name = f[4]
		}
		if name == "." || name == ".." || f[0] == "0" {
			continue
		}
		m, _ := strconv.ParseUint(f[1], 8, 32)
		size, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
		out = append(out, DirEntry{
			Name:    name,
			Mode:    uint32(m),
			IsDir:   m&0o170000 == 0o040000,
			Symlink: m&0o170000 == 0o120000,
			Size:    size,
		})
	}
	return out
}

// Fsck runs e2fsck read-only and forced; it returns the tail of its
// output when the filesystem is not clean.
func (e *Ext4FS) Fsck() (string, error) {
	cmd := exec.CommandContext(e.ctx, "e2fsck", "-fn", e.spec)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := strings.TrimSpace(string(out))
		if len(s) > 800 {
			s = "…" + s[len(s)-800:]
		}
		return s, err
	}
	return "", nil
}
