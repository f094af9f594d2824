package integration

// Integration tests of internal/verify against a real Debian trixie image.
//
// The image is the one the builder produced when NODEFORGE_VERIFY_IMAGE
// (a qcow2) and NODEFORGE_VERIFY_NODEIMAGE (its NodeImage YAML) are set;
// otherwise a small test image is built once with mmdebstrap (about 2
// minutes with a warm mirror, as root) by verifyTestImageScript and cached in
// ${NODEFORGE_CACHE:-~/.cache/nodeforge}/verify-testimage/, keyed by the
// script's hash. When the offline Kubernetes apt repository
// (hack/k8s-apt-repo.sh build) is in the cache, its kubeadm, kubelet and
// kubectl are installed and the Kubernetes checks run too.
//
// Cost: one TCG boot of the good image (about 2 minutes here), one short
// boot of an unbootable image, and offline runs (about 10 s each) on
// deliberately broken copies. Tests skip when tools or root are missing,
// unless NODEFORGE_REQUIRE_INTEGRATION=1, which turns skips into failures.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/resolve"
	"github.com/nodeforge/nodeforge/internal/verify"
)

const (
	verifyRequireEnv  = "NODEFORGE_REQUIRE_INTEGRATION"
	verifyK8sVersion  = "v1.37.2"
	verifyK8sRepoURL  = "http://127.0.0.1:8080/k8s/"
	verifyBootTimeout = 8 * time.Minute
)

// verifyUnavailable skips, or fails under NODEFORGE_REQUIRE_INTEGRATION=1.
func verifyUnavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(verifyRequireEnv) == "1" {
		t.Fatalf("%s (%s=1)", msg, verifyRequireEnv)
	}
	t.Skip(msg + "; set " + verifyRequireEnv + "=1 to make this a failure")
}

func verifyCacheDir() string {
	if d := os.Getenv("NODEFORGE_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "nodeforge")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "nodeforge")
}

func verifyNeedTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			verifyUnavailable(t, "%s is not installed", tool)
		}
	}
}

// verifyFixture is the image under test and the content it was built from.
type verifyFixture struct {
	path    string
	content imagev1.ImageContent
	err     error
	skip    string
}

var (
	verifyOnce    sync.Once
	verifyFixt    verifyFixture
	verifyRawOnce sync.Once
	verifyRaw     string
	verifyRawErr  error
)

// verifyImage returns the image under test, building the test image once.
func verifyImage(t *testing.T) verifyFixture {
	t.Helper()
	verifyNeedTools(t, "qemu-img", "debugfs", "e2fsck", "mcopy")
	verifyOnce.Do(func() { verifyFixt = loadVerifyImage() })
	if verifyFixt.skip != "" {
		verifyUnavailable(t, "%s", verifyFixt.skip)
	}
	if verifyFixt.err != nil {
		t.Fatal(verifyFixt.err)
	}
	return verifyFixt
}

func loadVerifyImage() verifyFixture {
	if p := os.Getenv("NODEFORGE_VERIFY_IMAGE"); p != "" {
		f := verifyFixture{path: p}
		if y := os.Getenv("NODEFORGE_VERIFY_NODEIMAGE"); y != "" {
			img, get, err := resolve.LoadFile(y)
			if err != nil {
				return verifyFixture{err: err}
			}
			c, err := resolve.Content(context.Background(), &img.Spec.ImageContent, get)
			if err != nil {
				return verifyFixture{err: err}
			}
			f.content = *c
		}
		f.content.Default()
		return f
	}
	for _, tool := range []string{"mmdebstrap", "sfdisk", "mkfs.ext4", "mkfs.fat", "mmd", "grub-mkimage", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			return verifyFixture{skip: tool + " is not installed (needed to build the test image)"}
		}
	}
	if _, err := os.Stat("/usr/lib/grub/i386-pc/boot.img"); err != nil {
		return verifyFixture{skip: "GRUB's i386-pc images are not installed (package grub-pc-bin)"}
	}
	kubeDir := filepath.Join(verifyCacheDir(), "k8s-apt-repo-"+verifyK8sVersion)
	if _, err := os.Stat(filepath.Join(kubeDir, ".stamp")); err != nil {
		kubeDir = ""
	}
	sum := sha256.Sum256([]byte(verifyTestImageScript + kubeDir))
	dir := filepath.Join(verifyCacheDir(), "verify-testimage")
	path := filepath.Join(dir, hex.EncodeToString(sum[:8])+".qcow2")
	f := verifyFixture{path: path, content: verifyTestContent(kubeDir != "")}
	if _, err := os.Stat(path); err == nil {
		return f
	}
	if os.Geteuid() != 0 {
		return verifyFixture{skip: "building the test image needs root (mmdebstrap --mode=root); or set NODEFORGE_VERIFY_IMAGE"}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return verifyFixture{err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", verifyTestImageScript, "mkimage", path, kubeDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if len(s) > 3000 {
			s = s[len(s)-3000:]
		}
		return verifyFixture{err: fmt.Errorf("building the test image: %v\n%s", err, s)}
	}
	return f
}

// verifyTestContent is the content the test image is built with.
func verifyTestContent(kube bool) imagev1.ImageContent {
	size := resource.MustParse("8Gi")
	c := imagev1.ImageContent{
		Disk:     imagev1.DiskSpec{Size: &size, BootMode: imagev1.BootModeHybrid},
		Packages: []string{"vim-tiny", "htop", "tmux", "net-tools", "iptables", "nftables", "curl", "ca-certificates"},
	}
	if kube {
		c.Kubernetes = &imagev1.KubernetesSpec{
			Version:       verifyK8sVersion,
			AptRepository: imagev1.AptRepository{URL: verifyK8sRepoURL, SigningKey: imagev1.KeySource{URL: verifyK8sRepoURL + "Release.key"}},
		}
	}
	c.Default()
	return c
}

func verifyLogReport(t *testing.T, r *verify.Report) {
	t.Helper()
	for _, c := range r.Checks {
		state := "ok"
		switch {
		case c.Skipped:
			state = "skip"
		case !c.Passed:
			state = "FAIL"
		}
		t.Logf("%-4s %-8s %-40s %6.1fs %s", state, c.Category, c.Name, c.DurationSeconds, c.Message)
	}
	t.Logf("summary %+v accelerator=%q ssh=%.0fs cloud-init=%.0fs boot=%.0fs", r.Summary, r.Accelerator, r.TimeToSSHSeconds, r.TimeToCloudInitSeconds, r.BootSeconds)
}

func verifyFind(t *testing.T, r *verify.Report, name string) verify.Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("report has no check %s", name)
	return verify.Check{}
}

func verifyFileDigest(t *testing.T, p string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

// TestVerifyGoodImage verifies the image offline and by booting it: every
// required check passes, the artifact is unchanged, and the JSON report
// has the documented shape.
func TestVerifyGoodImage(t *testing.T) {
	f := verifyImage(t)
	verifyNeedTools(t, "qemu-system-x86_64", "cloud-localds")
	before := verifyFileDigest(t, f.path)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), verifyBootTimeout+5*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := verify.Verify(ctx, f.path, f.content, verify.Options{Boot: true, BootTimeout: verifyBootTimeout, WorkDir: work})
	if err != nil {
		t.Fatal(err)
	}
	verifyLogReport(t, r)
	t.Logf("verified in %s", time.Since(start).Round(time.Second))
	if fails := r.RequiredFailures(); len(fails) > 0 {
		for _, c := range fails {
			t.Errorf("required check %s failed: %s", c.Name, c.Message)
		}
		t.Logf("console tail:\n%s", r.ConsoleTail)
	}
	if r.Accelerator != verify.AccelKVM && r.Accelerator != verify.AccelTCG {
		t.Errorf("accelerator %q not recorded", r.Accelerator)
	}
	if r.TimeToSSHSeconds <= 0 || r.TimeToCloudInitSeconds < r.TimeToSSHSeconds {
		t.Errorf("timings not recorded: ssh %.1f cloud-init %.1f", r.TimeToSSHSeconds, r.TimeToCloudInitSeconds)
	}
	if after := verifyFileDigest(t, f.path); after != before {
		t.Errorf("the image changed during verification: sha256 %s -> %s", before, after)
	}
	verifyNoLeftovers(t, work)
	b, _ := json.Marshal(r)
	var shape struct {
		Checks  []map[string]any `json:"checks"`
		Summary map[string]int   `json:"summary"`
	}
	if err := json.Unmarshal(b, &shape); err != nil || len(shape.Checks) == 0 {
		t.Fatalf("report JSON: %v", err)
	}
	for _, k := range []string{"name", "category", "passed", "message", "durationSeconds"} {
		if _, ok := shape.Checks[0][k]; !ok {
			t.Errorf("check JSON lacks %s", k)
		}
	}
	if out := os.Getenv("NODEFORGE_VERIFY_REPORT"); out != "" {
		_ = os.WriteFile(out, b, 0o644)
	}
}

// verifyNoLeftovers asserts the work dir is empty and no QEMU runs on it.
func verifyNoLeftovers(t *testing.T, work string) {
	t.Helper()
	ents, _ := os.ReadDir(work)
	for _, e := range ents {
		t.Errorf("left behind in the work dir: %s", e.Name())
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), work) {
			t.Errorf("a process still uses the work dir: %s: %s", p, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// verifyRawCopy converts the image to a sparse raw file once; broken
// variants are sparse copies of it changed with debugfs -w or dd.
func verifyRawCopy(t *testing.T, f verifyFixture) string {
	t.Helper()
	verifyRawOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nodeforge-verify-broken-")
		if err != nil {
			verifyRawErr = err
			return
		}
		verifyRaw = filepath.Join(dir, "good.raw")
		if out, err := exec.Command("qemu-img", "convert", "-O", "raw", f.path, verifyRaw).CombinedOutput(); err != nil {
			verifyRawErr = fmt.Errorf("qemu-img convert: %v: %s", err, out)
		}
	})
	if verifyRawErr != nil {
		t.Fatal(verifyRawErr)
	}
	return verifyRaw
}

// verifyRootOffset finds the root partition's byte offset with sfdisk.
func verifyRootOffset(t *testing.T, raw string) int64 {
	t.Helper()
	out, err := exec.Command("sfdisk", "--json", raw).Output()
	if err != nil {
		t.Fatalf("sfdisk --json: %v", err)
	}
	var pt struct {
		PartitionTable struct {
			Partitions []struct {
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Type  string `json:"type"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil {
		t.Fatal(err)
	}
	var best, bestSize int64
	for _, p := range pt.PartitionTable.Partitions {
		if p.Size > bestSize {
			best, bestSize = p.Start, p.Size
		}
	}
	return best * 512
}

// verifyDebugfsWrite runs debugfs -w requests against the root filesystem.
func verifyDebugfsWrite(t *testing.T, raw string, off int64, reqs ...string) {
	t.Helper()
	for _, req := range reqs {
		out, err := exec.Command("debugfs", "-w", "-R", req, fmt.Sprintf("%s?offset=%d", raw, off)).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs -w %q: %v: %s", req, err, out)
		}
	}
}

func verifyDebugfsCat(t *testing.T, raw string, off int64, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, fmt.Sprintf("%s?offset=%d", raw, off)).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestVerifyBrokenImages feeds deliberately broken copies of the image and
// asserts the matching check fails with a message saying what is wrong.
func TestVerifyBrokenImages(t *testing.T) {
	f := verifyImage(t)
	verifyNeedTools(t, "sfdisk", "cp")
	good := verifyRawCopy(t, f)
	defer os.RemoveAll(filepath.Dir(good))
	off := verifyRootOffset(t, good)
	dir := filepath.Dir(good)

	writeFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name    string
		check   string
		message string
		breakIt func(t *testing.T, raw string)
	}{
		{
			name: "missing package", check: verify.PackageCheckName("prometheus-node-exporter"), message: "not installed",
			breakIt: func(t *testing.T, raw string) {
				status := verifyDebugfsCat(t, raw, off, "/var/lib/dpkg/status")
				var kept []string
				for _, st := range strings.Split(status, "\n\n") {
					if !strings.HasPrefix(st, "Package: prometheus-node-exporter\n") {
						kept = append(kept, st)
					}
				}
				p := writeFile("status", strings.Join(kept, "\n\n"))
				verifyDebugfsWrite(t, raw, off, "rm /var/lib/dpkg/status", "write "+p+" /var/lib/dpkg/status")
			},
		},
		{
			name: "swap left in fstab", check: verify.CheckFstabNoSwap, message: "/swapfile",
			breakIt: func(t *testing.T, raw string) {
				fstab := verifyDebugfsCat(t, raw, off, "/etc/fstab") + "/swapfile none swap sw 0 0\n"
				p := writeFile("fstab", fstab)
				verifyDebugfsWrite(t, raw, off, "rm /etc/fstab", "write "+p+" /etc/fstab")
			},
		},
		{
			name: "SSH host keys left in", check: verify.CheckHygieneSSHKeys, message: "ssh_host_ed25519_key",
			breakIt: func(t *testing.T, raw string) {
				p := writeFile("key", "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
				verifyDebugfsWrite(t, raw, off, "write "+p+" /etc/ssh/ssh_host_ed25519_key")
			},
		},
		{
			name: "zeroed boot sector", check: verify.CheckBootloaderBIOS, message: "MBR",
			breakIt: func(t *testing.T, raw string) {
				out, err := exec.Command("dd", "if=/dev/zero", "of="+raw, "bs=512", "count=1", "conv=notrunc").CombinedOutput()
				if err != nil {
					t.Fatalf("dd: %v: %s", err, out)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".raw")
			if out, err := exec.Command("cp", "--sparse=always", good, raw).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v: %s", err, out)
			}
			defer os.Remove(raw)
			tc.breakIt(t, raw)
			c := f.content
			c.Output.Format = imagev1.FormatRaw
			c.Output.Compression = imagev1.CompressionNone
			r, err := verify.Verify(context.Background(), raw, c, verify.Options{WorkDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			got := verifyFind(t, r, tc.check)
			if got.Passed || !got.Required {
				t.Fatalf("%s = %+v, want a failed required check", tc.check, got)
			}
			if !strings.Contains(got.Message, tc.message) {
				t.Errorf("%s message %q does not mention %q", tc.check, got.Message, tc.message)
			}
			t.Logf("%s: %s", tc.check, got.Message)
			if len(r.RequiredFailures()) == 0 {
				t.Error("no required failure: the CLI would exit 0")
			}
		})
	}
}

// TestVerifyUnbootableImage boots an image whose boot sector is zeroed: the
// boot test must end well within its timeout with a failed boot-ssh that
// carries the console (firmware) tail, QEMU reaped and the work dir clean.
func TestVerifyUnbootableImage(t *testing.T) {
	f := verifyImage(t)
	verifyNeedTools(t, "qemu-system-x86_64", "cloud-localds")
	dir := t.TempDir()
	img := filepath.Join(dir, "unbootable.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", f.path, "-F", "qcow2", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-c", "write -z 0 512", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	// The image keeps the good image as its backing file; only its boot
	// sector differs. (qemu-img-no-backing-file fails offline, as it should.)
	timeout := 3 * time.Minute
	work := t.TempDir()
	start := time.Now()
	r, err := verify.Verify(context.Background(), img, f.content, verify.Options{
		Boot: true, BootTimeout: timeout, WorkDir: work,
	})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	ssh := verifyFind(t, r, verify.CheckBootSSH)
	t.Logf("boot-ssh after %s: %s", elapsed.Round(time.Second), ssh.Message)
	t.Logf("console tail:\n%s", r.ConsoleTail)
	if ssh.Passed {
		t.Fatal("an image with a zeroed boot sector answered SSH")
	}
	if elapsed > timeout+2*time.Minute {
		t.Errorf("verification took %s, boot timeout %s", elapsed, timeout)
	}
	if strings.TrimSpace(r.ConsoleTail) == "" {
		t.Error("no console tail in the report")
	}
	if ci := verifyFind(t, r, verify.CheckBootCloudInit); ci.Passed || !strings.Contains(ci.Message, "not run") {
		t.Errorf("boot-cloud-init-done = %+v, want not run", ci)
	}
	verifyNoLeftovers(t, work)
}

// verifyTestImageScript builds the test image: bash -c SCRIPT mkimage OUT.qcow2 [KUBE_REPO_DIR].
const verifyTestImageScript = `# Builds a small Debian trixie node image for verify's integration tests.
# usage: mkimage.sh OUT.qcow2 [K8S_DEB_DIR]
set -euo pipefail
out=$1
kdir=${2:-}
work=$(mktemp -d "${TMPDIR:-/tmp}/nodeforge-testimage.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
size_mib=8192
bios_start=2048; bios_sectors=2048
esp_start=4096; esp_sectors=131072   # 64 MiB
root_start=$((esp_start + esp_sectors))
root_uuid=$(cat /proc/sys/kernel/random/uuid)
esp_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ' | tr a-f A-F)
esp_uuid="${esp_id:0:4}-${esp_id:4:4}"

pkgs=linux-image-cloud-amd64,systemd-sysv,udev,dbus,kmod,procps,iproute2,cloud-init,cloud-guest-utils,fdisk,openssh-server,sudo,ca-certificates,curl,containerd,runc,containernetworking-plugins,prometheus-node-exporter,iptables,nftables,conntrack,ethtool,socat,ebtables,vim-tiny,htop,tmux,net-tools,e2fsprogs
debs=()
if [ -n "$kdir" ]; then
  debs+=("--customize-hook=copy-in $(ls "$kdir"/amd64/kube*_*.deb | tr '\n' ' ') /tmp" "--customize-hook=chroot \"\$1\" sh -c 'dpkg -i /tmp/kube*.deb && rm -f /tmp/kube*.deb'")
fi

mmdebstrap --variant=minbase --mode=root --format=directory \
  --include="$pkgs" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  "${debs[@]}" \
  --customize-hook='set -e
r=$1
printf "br_netfilter\noverlay\n" > $r/etc/modules-load.d/kubernetes.conf
printf "net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n" > $r/etc/sysctl.d/90-kubernetes.conf
mkdir -p $r/etc/containerd
chroot $r containerd config default > $r/etc/containerd/config.toml
sed -i "s/SystemdCgroup = false/SystemdCgroup = true/" $r/etc/containerd/config.toml
mkdir -p $r/opt/cni
ln -s /usr/lib/cni $r/opt/cni/bin
mkdir -p $r/etc/ssh/sshd_config.d
printf "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n" > $r/etc/ssh/sshd_config.d/10-nodeforge.conf
printf "datasource_list: [ NoCloud, ConfigDrive, OpenStack, Ec2, None ]\n" > $r/etc/cloud/cloud.cfg.d/90-nodeforge-datasources.cfg
for u in containerd.service prometheus-node-exporter.service ssh.service systemd-networkd.service; do chroot $r systemctl enable $u || true; done
if chroot $r dpkg -s kubelet >/dev/null 2>&1; then
  echo "deb [trusted=yes] http://127.0.0.1:8080/k8s/ /" > $r/etc/apt/sources.list.d/kubernetes.list
  for p in kubeadm kubelet kubectl; do echo "$p hold" | chroot $r dpkg --set-selections; done
  chroot $r systemctl enable kubelet.service || true
fi
chroot $r systemctl mask swap.target || true
chroot $r usermod -p "*" root
' \
  --customize-hook='set -e
r=$1
rm -f $r/etc/ssh/ssh_host_*
: > $r/etc/machine-id
rm -f $r/var/lib/dbus/machine-id
rm -rf $r/var/lib/cloud/instance $r/var/lib/cloud/instances
rm -rf $r/var/lib/apt/lists/* $r/var/cache/apt/*.bin $r/var/cache/apt/archives/*.deb
find $r/var/log -type f -delete
' \
  trixie "$root"

kver=$(ls "$root"/boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
cat > "$root/etc/fstab" <<FSTAB
UUID=$root_uuid / ext4 errors=remount-ro 0 1
UUID=$esp_uuid /boot/efi vfat umask=0077,nofail 0 2
FSTAB
mkdir -p "$root/boot/efi" "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<CFG
set timeout=0
search --no-floppy --fs-uuid --set=root $root_uuid
linux /boot/vmlinuz-$kver root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8
initrd /boot/initrd.img-$kver
boot
CFG
cat > "$work/early.cfg" <<CFG
search --no-floppy --fs-uuid --set=root $root_uuid
set prefix=(\$root)/boot/grub
configfile (\$root)/boot/grub/grub.cfg
CFG

disk=$work/disk.raw
truncate -s ${size_mib}M "$disk"
total=$((size_mib * 2048))
root_sectors=$((total - 34 - root_start))
sfdisk -q --no-reread --no-tell-kernel "$disk" <<SF
label: gpt
start=$bios_start, size=$bios_sectors, type=21686148-6449-6E6F-744E-656564454649, name=bios
start=$esp_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$root_start, size=$root_sectors, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root
SF
mkfs.ext4 -q -F -d "$root" -U "$root_uuid" -L root -E offset=$((root_start * 512)) "$disk" $((root_sectors / 2))k

mods="part_gpt ext2 fat search search_fs_uuid normal linux configfile echo test boot"
grub-mkimage -O x86_64-efi -p /boot/grub -c "$work/early.cfg" -o "$work/BOOTX64.EFI" $mods efi_gop efi_uga all_video
mkfs.fat -F 16 -n ESP -i "${esp_id}" -C "$work/esp.img" $((esp_sectors / 2)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$work/esp.img" of="$disk" bs=512 seek=$esp_start conv=notrunc,sparse status=none

grub-mkimage -O i386-pc -p /boot/grub -c "$work/early.cfg" -o "$work/core.img" biosdisk $mods
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
[ "$core_sectors" -le "$bios_sectors" ] || { echo "core.img too big" >&2; exit 1; }
python3 - "$disk" "$work/core.img" /usr/lib/grub/i386-pc/boot.img $bios_start <<'PY'
import struct, sys
disk, core, boot, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = bytearray(open(core, 'rb').read())
n = (len(c) + 511) // 512
c += b'\0' * (n * 512 - len(c))
struct.pack_into('<QH', c, 0x200 - 12, start + 1, n - 1)
b = bytearray(open(boot, 'rb').read())
struct.pack_into('<Q', b, 0x5c, start)
b[0x66:0x68] = b'\x90\x90'
with open(disk, 'r+b') as f:
    f.seek(0); f.write(b[:440])
    f.seek(start * 512); f.write(c)
PY
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$disk" "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out (kernel $kver, root $root_uuid)" >&2
`
