package verify

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"path"
	"strings"
	"testing"

	"github.com/nodeforge/nodeforge/internal/containerd"
)

func TestParseFstab(t *testing.T) {
	fstab := `# comment
UUID=abc / ext4 errors=remount-ro 0 1
/swapfile none swap sw 0 0
UUID=1234-ABCD /boot/efi vfat umask=0077 0 1
/dev/vdb2 swap swap defaults 0 0
`
	e := ParseFstab([]byte(fstab))
	if len(e) != 4 || e[0].File != "/" || e[0].Type != "ext4" {
		t.Fatalf("entries = %+v", e)
	}
	sw := SwapEntries(e)
	if len(sw) != 2 || sw[0].Spec != "/swapfile" || sw[1].Spec != "/dev/vdb2" {
		t.Errorf("swap entries = %+v", sw)
	}
	if len(SwapEntries(ParseFstab([]byte("UUID=x / ext4 defaults 0 1\n")))) != 0 {
		t.Error("swap found in a swapless fstab")
	}
}

// memFS is an in-memory FileLister.
type memFS map[string]string

func (m memFS) ReadFile(p string) ([]byte, error) {
	if s, ok := m[p]; ok {
		return []byte(s), nil
	}
	return nil, ErrNotExist
}

func (m memFS) ReadDir(dir string) ([]DirEntry, error) {
	var out []DirEntry
	for p := range m {
		if path.Dir(p) == dir {
			out = append(out, DirEntry{Name: path.Base(p)})
		}
	}
	if len(out) == 0 {
		return nil, ErrNotExist
	}
	return out, nil
}

func TestEvaluateSSHDConfig(t *testing.T) {
	debianMain := "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n#PasswordAuthentication yes\n"
	tests := []struct {
		name  string
		fs    memFS
		key   string
		want  string
		isSet bool
	}{
		{"unset uses the default", memFS{"/etc/ssh/sshd_config": debianMain}, "PasswordAuthentication", "", false},
		{"drop-in before main file wins", memFS{
			"/etc/ssh/sshd_config":                 debianMain,
			"/etc/ssh/sshd_config.d/50-cloud.conf": "KbdInteractiveAuthentication yes\n",
		}, "KbdInteractiveAuthentication", "yes", true},
		{"first drop-in in lexical order wins", memFS{
			"/etc/ssh/sshd_config":                      debianMain,
			"/etc/ssh/sshd_config.d/10-nodeforge.conf":  "PasswordAuthentication no\n",
			"/etc/ssh/sshd_config.d/50-cloud-init.conf": "PasswordAuthentication yes\n",
		}, "PasswordAuthentication", "no", true},
		{"later drop-in cannot override an earlier one", memFS{
			"/etc/ssh/sshd_config":                     debianMain,
			"/etc/ssh/sshd_config.d/01-permit.conf":    "PermitRootLogin=yes\n",
			"/etc/ssh/sshd_config.d/99-nodeforge.conf": "PermitRootLogin no\n",
		}, "PermitRootLogin", "yes", true},
		{"match blocks do not set global values", memFS{
			"/etc/ssh/sshd_config": "Match User admin\n  PasswordAuthentication yes\nMatch all\nPasswordAuthentication no\n",
		}, "PasswordAuthentication", "no", true},
		{"keywords are case-insensitive", memFS{
			"/etc/ssh/sshd_config": "passwordauthentication NO\n",
		}, "PasswordAuthentication", "NO", true},
		{"relative include resolves under /etc/ssh", memFS{
			"/etc/ssh/sshd_config": "Include extra.conf\n",
			"/etc/ssh/extra.conf":  "PermitRootLogin prohibit-password\n",
		}, "PermitRootLogin", "prohibit-password", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := EvaluateSSHDConfig(tt.fs)
			if err != nil {
				t.Fatal(err)
			}
			got, set := c.Get(tt.key)
			if got != tt.want || set != tt.isSet {
				t.Errorf("Get(%s) = %q, %v; want %q, %v", tt.key, got, set, tt.want, tt.isSet)
			}
		})
	}
}

func TestEvaluateSysctlFiles(t *testing.T) {
	paths := []string{"/usr/lib/sysctl.d/50-default.conf", "/etc/sysctl.d/90-kubernetes.conf", "/etc/sysctl.d/99-override.conf"}
	content := map[string][]byte{
		paths[0]: []byte("net.ipv4.ip_forward = 0\nkernel.pid_max = 4194304\n"),
		paths[1]: []byte("# k8s\nnet.ipv4.ip_forward=1\nnet/bridge/bridge-nf-call-iptables = 1\n"),
		paths[2]: []byte("-net.bridge.bridge-nf-call-iptables = 0\n"),
	}
	v := EvaluateSysctlFiles(paths, content)
	if v["net.ipv4.ip_forward"][0] != "1" || v["net.ipv4.ip_forward"][1] != paths[1] {
		t.Errorf("ip_forward = %v", v["net.ipv4.ip_forward"])
	}
	if v["net.bridge.bridge-nf-call-iptables"][0] != "0" {
		t.Errorf("bridge-nf-call-iptables = %v, want the last assignment 0", v["net.bridge.bridge-nf-call-iptables"])
	}
}

func TestContainerdVerdicts(t *testing.T) {
	const head = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n"
	const cni = "[plugins.\"io.containerd.grpc.v1.cri\".cni]\n"
	tests := []struct {
		conf              string
		cgroupErr, dirErr string // "" means the verdict passes
	}{
		{conf: head + "  SystemdCgroup = true\n" + cni + "  bin_dir = \"/opt/cni/bin\"\n"},
		{conf: head + "  SystemdCgroup = false\n" + cni + "  bin_dir = \"/usr/lib/cni\"\n",
			cgroupErr: "sets SystemdCgroup = false", dirErr: "loads CNI plugins from /usr/lib/cni"},
		{conf: head + "  # SystemdCgroup = true\n", cgroupErr: "does not set SystemdCgroup", dirErr: "sets no CNI bin_dir"},
		// A version 1 (unversioned) file is not what containerd 1.7 reads as the CRI's.
		{conf: "[plugins.cri.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n", cgroupErr: "version 1 is not supported", dirErr: "version 1 is not supported"},
	}
	for _, tt := range tests {
		s, err := containerd.Effective([]byte(tt.conf))
		var cgErr, dirErr error
		if err != nil {
			cgErr, dirErr = err, err
		} else {
			_, cgErr = cgroupVerdict(s, "config.toml")
			_, dirErr = cniDirVerdict(s, "/opt/cni/bin", "config.toml")
		}
		for _, v := range []struct {
			what string
			err  error
			want string
		}{{"cgroup", cgErr, tt.cgroupErr}, {"cni dir", dirErr, tt.dirErr}} {
			switch {
			case v.want == "" && v.err != nil:
				t.Errorf("%q: %s: %v, want a pass", tt.conf, v.what, v.err)
			case v.want != "" && (v.err == nil || !strings.Contains(v.err.Error(), v.want)):
				t.Errorf("%q: %s: %v, want an error containing %q", tt.conf, v.what, v.err, v.want)
			}
		}
	}
}

func TestParseImageInfo(t *testing.T) {
	js := `{"virtual-size": 8589934592, "filename": "x.qcow2", "cluster-size": 65536, "format": "qcow2",
	"actual-size": 302645248, "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
	"compression-type": "zstd", "lazy-refcounts": false, "refcount-bits": 16, "corrupt": false, "extended-l2": false}},
	"dirty-flag": false}`
	info, err := ParseImageInfo([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.VirtualSize != 8<<30 || info.FormatSpecific.Data.CompressionType != "zstd" || info.BackingFilename != "" {
		t.Errorf("info = %+v", info)
	}
	info, err = ParseImageInfo([]byte(`{"format":"qcow2","virtual-size":1,"backing-filename":"/base.qcow2"}`))
	if err != nil || info.BackingFilename != "/base.qcow2" {
		t.Errorf("backing file not parsed: %+v %v", info, err)
	}
	if _, err := ParseImageInfo([]byte(`{}`)); err == nil {
		t.Error("empty info accepted")
	}
}

// gptFixture builds a protective MBR, a GPT header and an entry array.
func gptFixture(parts []Partition) (mbr, hdr, arr []byte) {
	mbr = make([]byte, 512)
	mbr[446+4] = 0xEE
	mbr[510], mbr[511] = 0x55, 0xAA
	arr = make([]byte, 128*128)
	for i, p := range parts {
		e := arr[i*128:]
		copy(e[0:16], guidBytes(p.TypeGUID))
		copy(e[16:32], guidBytes(p.GUID))
		binary.LittleEndian.PutUint64(e[32:], p.FirstLBA)
		binary.LittleEndian.PutUint64(e[40:], p.LastLBA)
		for j, r := range p.Name {
			binary.LittleEndian.PutUint16(e[56+2*j:], uint16(r))
		}
	}
	hdr = make([]byte, 512)
	copy(hdr, "EFI PART")
	binary.LittleEndian.PutUint32(hdr[8:], 0x00010000)
	binary.LittleEndian.PutUint32(hdr[12:], 92)
	binary.LittleEndian.PutUint64(hdr[24:], 1)
	binary.LittleEndian.PutUint64(hdr[40:], 34)
	binary.LittleEndian.PutUint64(hdr[48:], 16777182)
	binary.LittleEndian.PutUint64(hdr[72:], 2)
	binary.LittleEndian.PutUint32(hdr[80:], 128)
	binary.LittleEndian.PutUint32(hdr[84:], 128)
	binary.LittleEndian.PutUint32(hdr[88:], crc32.ChecksumIEEE(arr))
	binary.LittleEndian.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr[:92]))
	return mbr, hdr, arr
}

func guidBytes(s string) []byte {
	var b [16]byte
	h := strings.ReplaceAll(s, "-", "")
	raw := make([]byte, 16)
	for i := 0; i < 16; i++ {
		var v byte
		for _, c := range h[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'A') + 10
			}
		}
		raw[i] = v
	}
	binary.LittleEndian.PutUint32(b[0:], binary.BigEndian.Uint32(raw[0:4]))
	binary.LittleEndian.PutUint16(b[4:], binary.BigEndian.Uint16(raw[4:6]))
	binary.LittleEndian.PutUint16(b[6:], binary.BigEndian.Uint16(raw[6:8]))
	copy(b[8:], raw[8:])
	return b[:]
}

func TestParseGPT(t *testing.T) {
	parts := []Partition{
		{TypeGUID: GUIDBIOSBoot, GUID: "11111111-2222-3333-4444-555555555555", FirstLBA: 2048, LastLBA: 4095, Name: "bios"},
		{TypeGUID: GUIDESP, GUID: "AAAAAAAA-2222-3333-4444-555555555555", FirstLBA: 4096, LastLBA: 135167, Name: "esp"},
		{TypeGUID: GUIDRootX86_64, GUID: "BBBBBBBB-2222-3333-4444-555555555555", FirstLBA: 135168, LastLBA: 16777182, Name: "root"},
	}
	mbr, hdr, arr := gptFixture(parts)
	read := func(off int64, n int) ([]byte, error) {
		if off != 1024 {
			return nil, errors.New("unexpected offset")
		}
		return arr[:n], nil
	}
	g, err := ParseGPT(mbr, hdr, read, 8<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Partitions) != 3 {
		t.Fatalf("partitions = %+v", g.Partitions)
	}
	for i, p := range g.Partitions {
		if p.Number != i+1 || p.TypeGUID != parts[i].TypeGUID || p.GUID != parts[i].GUID || p.Name != parts[i].Name || p.FirstLBA != parts[i].FirstLBA {
			t.Errorf("partition %d = %+v, want %+v", i+1, p, parts[i])
		}
	}
	if esp := g.ByType(GUIDESP); esp == nil || esp.Offset() != 4096*512 || esp.Size() != 64<<20 {
		t.Errorf("ESP = %+v", esp)
	}

	corrupt := []struct {
		name   string
		mangle func(mbr, hdr, arr []byte)
		want   string
	}{
		{"zeroed boot sector", func(m, _, _ []byte) { copy(m, make([]byte, 512)) }, "0x55AA"},
		{"no protective partition", func(m, _, _ []byte) { m[446+4] = 0x83 }, "protective MBR"},
		{"bad header CRC", func(_, h, _ []byte) { h[100] = 0; h[48]++ }, "header CRC"},
		{"bad entry CRC", func(_, _, a []byte) { a[40]++ }, "entry array CRC"},
		{"no signature", func(_, h, _ []byte) { copy(h, "NOTAGPT!") }, "EFI PART"},
	}
	for _, tt := range corrupt {
		t.Run(tt.name, func(t *testing.T) {
			m, h, a := gptFixture(parts)
			tt.mangle(m, h, a)
			_, err := ParseGPT(m, h, func(off int64, n int) ([]byte, error) { return a[:n], nil }, 8<<30)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestParseExt4SuperAndFAT(t *testing.T) {
	sb := make([]byte, 1024)
	binary.LittleEndian.PutUint16(sb[0x38:], 0xEF53)
	binary.LittleEndian.PutUint32(sb[0x5C:], 0x4)
	binary.LittleEndian.PutUint32(sb[0x60:], 0x40)
	copy(sb[0x68:], []byte{0x4f, 0xa2, 0x40, 0x5a, 0x1d, 0x55, 0x4c, 0x25, 0x86, 0x9e, 0x52, 0x63, 0xd3, 0x4c, 0x5d, 0x35})
	copy(sb[0x78:], "root")
	s, err := ParseExt4Super(sb)
	if err != nil || s.UUID != "4fa2405a-1d55-4c25-869e-5263d34c5d35" || s.Label != "root" || !s.Journal || !s.Extents {
		t.Errorf("ext4 = %+v, %v", s, err)
	}
	if _, err := ParseExt4Super(make([]byte, 1024)); err == nil {
		t.Error("zeroed superblock accepted")
	}

	bs := make([]byte, 512)
	bs[510], bs[511] = 0x55, 0xAA
	copy(bs[0x36:], "FAT16   ")
	binary.LittleEndian.PutUint32(bs[0x27:], 0xDED1AB9D)
	copy(bs[0x2B:], "ESP        ")
	f, err := ParseFATBoot(bs)
	if err != nil || f.Type != "FAT16" || f.VolumeID != "DED1-AB9D" || f.Label != "ESP" {
		t.Errorf("fat = %+v, %v", f, err)
	}
}

func TestParseDebugfsOutput(t *testing.T) {
	ls := "/2/040755/0/0/./4096/\n/2/040755/0/0/../4096/\n/12/100644/0/0/fstab/120/\n/13/120777/0/0/resolv.conf/20/\n/0/000000/0/0/deleted/0/\n"
	e := parseDebugfsLs(ls)
	if len(e) != 2 || e[0].Name != "fstab" || e[0].Size != 120 || e[0].IsDir || !e[1].Symlink {
		t.Errorf("ls = %+v", e)
	}
	st, err := parseDebugfsStat("Inode: 13   Type: symlink    Mode:  0777   Flags: 0x0\nUser:     0   Group:     0   Size: 9\nFast link dest: \"/dev/null\"\n")
	if err != nil || st.Type != "symlink" || st.Link != "/dev/null" || st.Mode != 0o777 || st.Size != 9 {
		t.Errorf("stat = %+v, %v", st, err)
	}
}
