package integration

// TestBuildCloudBaseImage takes the shared cloud-base image (fixture_test.go:
// Debian's packages from the default mirror, kubeadm/kubelet/kubectl from the
// offline Kubernetes packages in a repository served on 127.0.0.1 that
// stands for one the NodeImage author controls, built through
// internal/builder). It inspects the image
// offline (qemu-img info, sfdisk, debugfs on the raw root partition) and
// asserts every item of the seed image's contents, and boots it under QEMU
// TCG (BIOS, then UEFI when OVMF is installed) until the kernel hands over to
// systemd.
//
// Cost: with a warm package cache (${NODEFORGE_CACHE:-~/.cache/nodeforge}/
// apt-archives, shared with `make image`) about 1.5-2 minutes of build and
// 20-40 s of boots on 2 cores; cold, add about 2 minutes of downloads.
// Skipped with -short, without root or tools, or without the built offline
// repository, unless NODEFORGE_REQUIRE_INTEGRATION=1 (then those fail; the
// repository is built if missing).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"

	"github.com/nodeforge/nodeforge/internal/builder"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/testenv/reporoot"
)

const buildSample = "config/samples/image_v1alpha1_nodeimage_cloudbase.yaml"

func buildUnavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("NODEFORGE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s (NODEFORGE_REQUIRE_INTEGRATION=1 requires it)", msg)
	}
	t.Skipf("%s; set NODEFORGE_REQUIRE_INTEGRATION=1 to make this a failure", msg)
}

func buildCacheRoot() string {
	if d := os.Getenv("NODEFORGE_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "nodeforge")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "nodeforge")
}

// repoRoot is the module root (reporoot.Dir).
func repoRoot(tb testing.TB) string {
	tb.Helper()
	d, err := reporoot.Dir()
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// buildExec runs a command and returns its combined output.
func buildExec(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// offlineRepoDir is the offline Kubernetes repository's directory, built
// first when NODEFORGE_REQUIRE_INTEGRATION=1 and it is missing.
func offlineRepoDir(t *testing.T, root string) string {
	t.Helper()
	script := filepath.Join(root, "hack", "k8s-apt-repo.sh")
	env := []string{"NODEFORGE_CACHE=" + buildCacheRoot()}
	ctx := context.Background()
	out, err := buildExec(ctx, env, script, "path")
	if err != nil {
		if os.Getenv("NODEFORGE_REQUIRE_INTEGRATION") != "1" {
			buildUnavailable(t, "the offline Kubernetes apt repository is not built (hack/k8s-apt-repo.sh build, 10-20 minutes cold): %s", strings.TrimSpace(out))
		}
		if out, err = buildExec(ctx, env, script, "build"); err != nil {
			t.Fatalf("hack/k8s-apt-repo.sh build: %v\n%s", err, out)
		}
	}
	// The script's progress goes to stderr, the directory is the last line.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// rootFS reads files of the image's root filesystem with debugfs, without
// mounting it.
type rootFS struct {
	t    *testing.T
	spec string // raw?offset=N
}

func (r rootFS) debugfs(req string) string {
	r.t.Helper()
	out, err := exec.Command("debugfs", "-R", req, r.spec).CombinedOutput()
	if err != nil {
		r.t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	// debugfs prints its banner first.
	s := string(out)
	if i := strings.Index(s, "\n"); i >= 0 && strings.HasPrefix(s, "debugfs ") {
		s = s[i+1:]
	}
	return s
}

func (r rootFS) cat(p string) string { return r.debugfs("cat " + p) }

func (r rootFS) exists(p string) bool {
	return !strings.Contains(r.debugfs("stat "+p), "File not found")
}

// link returns a symlink's target ("" when p is not a symlink).
func (r rootFS) link(p string) string {
	s := r.debugfs("stat " + p)
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Fast link dest: "); ok {
			return strings.Trim(v, `"`)
		}
	}
	if strings.Contains(s, "Type: symlink") {
		return strings.TrimSpace(r.cat(p))
	}
	return ""
}

// ls lists a directory's entry names (without . and ..).
func (r rootFS) ls(p string) []string {
	var out []string
	for _, l := range strings.Split(r.debugfs("ls -p "+p), "\n") {
		// /inode/mode/uid/gid/name/size/
		f := strings.Split(l, "/")
		if len(f) < 7 || f[5] == "." || f[5] == ".." || f[5] == "" {
			continue
		}
		out = append(out, f[5]+map[bool]string{true: "/", false: ""}[strings.HasPrefix(f[2], "04")])
	}
	return out
}

// dpkgStatus maps package name to its "Status:" and "Version:" lines.
func dpkgStatus(s string) map[string][2]string {
	out := map[string][2]string{}
	var name, status, version string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	flush := func() {
		if name != "" {
			out[name] = [2]string{status, version}
		}
		name, status, version = "", "", ""
	}
	for sc.Scan() {
		l := sc.Text()
		switch {
		case l == "":
			flush()
		case strings.HasPrefix(l, "Package: "):
			name = strings.TrimPrefix(l, "Package: ")
		case strings.HasPrefix(l, "Status: "):
			status = strings.TrimPrefix(l, "Status: ")
		case strings.HasPrefix(l, "Version: "):
			version = strings.TrimPrefix(l, "Version: ")
		}
	}
	flush()
	return out
}

func TestBuildCloudBaseImage(t *testing.T) {
	g := NewWithT(t)
	img := builtCloudBase(t)
	res, content, url := img.Result, &img.Content, img.RepoURL
	t.Logf("build took %s:\n%s", img.BuildTime.Round(time.Second), img.BuildLog)
	g.Expect(os.ReadDir(img.WorkDir)).To(BeEmpty(), "work dir not cleaned up")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// The manifest describes the file next to it.
	m, err := manifest.Read(res.ManifestPath)
	g.Expect(err).NotTo(HaveOccurred())
	want, _ := content.Digest()
	g.Expect(m.SpecDigest).To(Equal(want))
	f, err := os.Open(res.ImagePath)
	g.Expect(err).NotTo(HaveOccurred())
	h := sha256.New()
	n, _ := io.Copy(h, f)
	f.Close()
	g.Expect(m.Image.SHA256).To(Equal(hex.EncodeToString(h.Sum(nil))))
	g.Expect(m.Image.Size).To(Equal(n))
	// The seed's contents within 350 MiB, the preloaded control-plane
	// images within 120 MiB more (docs/benchmarks.md measures each).
	g.Expect(m.Image.Size).To(BeNumerically("<=", (350+120)<<20), "compressed image over the 350 MiB + 120 MiB goals")
	g.Expect(m.Steps).To(HaveLen(10), "resolve, rootfs, provision, images, two provisioners, hygiene, disk, convert, manifest")
	// The control-plane images kubeadm names, stored under their
	// registry.k8s.io names, pulled through the local mirror.
	var images []string
	for _, img := range m.Images {
		images = append(images, img.Name)
		g.Expect(img.Source).To(HavePrefix(content.Kubernetes.Images.Mirror+"/"), "%s came through the mirror", img.Name)
		g.Expect(img.Digest).To(MatchRegexp(`^sha256:[0-9a-f]{64}$`))
		g.Expect(img.ID).To(MatchRegexp(`^sha256:[0-9a-f]{64}$`))
	}
	g.Expect(images).To(ConsistOf(
		"registry.k8s.io/kube-apiserver:v1.37.2", "registry.k8s.io/kube-controller-manager:v1.37.2",
		"registry.k8s.io/kube-scheduler:v1.37.2", "registry.k8s.io/kube-proxy:v1.37.2",
		"registry.k8s.io/coredns/coredns:v1.14.6", "registry.k8s.io/pause:3.10.2", "registry.k8s.io/etcd:3.7.0-0"))
	names := map[string]string{}
	for _, p := range m.Packages {
		names[p.Name] = p.Version
	}
	g.Expect(names).To(HaveKeyWithValue("kubeadm", "1.37.2-1.1"))
	g.Expect(m.Base.KernelVersion).To(MatchRegexp(`^6\.1[2-9]\.`))
	// Built on a base layer (from the package cache or made for it), with
	// the author's packages (the repository's probe, kubeadm) on top.
	g.Expect(m.Base.Layer).To(MatchRegexp(`^[0-9a-f]{64}$`), "no cached base layer")
	g.Expect(names).To(HaveKey(probePackage))

	// qemu-img: qcow2, zstd, 8 GiB.
	info, err := buildExec(ctx, nil, "qemu-img", "info", "--output=json", res.ImagePath)
	g.Expect(err).NotTo(HaveOccurred(), info)
	var qi struct {
		Format         string `json:"format"`
		VirtualSize    int64  `json:"virtual-size"`
		FormatSpecific struct {
			Data struct {
				CompressionType string `json:"compression-type"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	g.Expect(json.Unmarshal([]byte(info), &qi)).To(Succeed())
	g.Expect(qi.Format).To(Equal("qcow2"))
	g.Expect(qi.VirtualSize).To(Equal(int64(8 << 30)))
	g.Expect(qi.FormatSpecific.Data.CompressionType).To(Equal("zstd"))

	// The partition table: BIOS boot, ESP, root (x86-64 root type).
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if o, err := buildExec(ctx, nil, "qemu-img", "convert", "-O", "raw", res.ImagePath, raw); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, o)
	}
	pt, err := buildExec(ctx, nil, "sfdisk", "--json", raw)
	g.Expect(err).NotTo(HaveOccurred(), pt)
	var table struct {
		PartitionTable struct {
			Label      string `json:"label"`
			Partitions []struct {
				Start int64  `json:"start"`
				Type  string `json:"type"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	g.Expect(json.Unmarshal([]byte(pt), &table)).To(Succeed())
	parts := table.PartitionTable.Partitions
	g.Expect(table.PartitionTable.Label).To(Equal("gpt"))
	g.Expect(parts).To(HaveLen(3))
	g.Expect(strings.ToUpper(parts[0].Type)).To(Equal(builder.TypeBIOSBoot))
	g.Expect(strings.ToUpper(parts[1].Type)).To(Equal(builder.TypeESP))
	g.Expect(strings.ToUpper(parts[2].Type)).To(Equal(builder.TypeRootX86_64))
	mbr := make([]byte, 512)
	rf, _ := os.Open(raw)
	_, _ = rf.ReadAt(mbr, 0)
	rf.Close()
	g.Expect(mbr[0x5c]).To(Equal(byte(parts[0].Start)), "boot.img does not point at core.img")
	if o, err := buildExec(ctx, nil, "e2fsck", "-fn", fmt.Sprintf("%s?offset=%d", raw, parts[2].Start*512)); err != nil {
		t.Errorf("e2fsck on the root filesystem: %v\n%s", err, o)
	}
	esp, err := buildExec(ctx, []string{"MTOOLS_SKIP_CHECK=1"}, "mdir", "-i", fmt.Sprintf("%s@@%d", raw, parts[1].Start*512), "::/EFI/BOOT")
	g.Expect(err).NotTo(HaveOccurred(), esp)
	g.Expect(esp).To(ContainSubstring("BOOTX64"))

	fs := rootFS{t: t, spec: fmt.Sprintf("%s?offset=%d", raw, parts[2].Start*512)}
	checkSeedContents(t, fs, url)
	// Pods start with the preloaded pause image, not containerd's default.
	g.Expect(fs.cat("/etc/containerd/config.toml")).To(ContainSubstring(`sandbox_image = "registry.k8s.io/pause:3.10.2"`))
	_ = os.Remove(raw)

	// Boot through UEFI: the kernel hands over to systemd. (The BIOS path
	// of this image is booted in full by TestVerifyGoodImage, SeaBIOS
	// being QEMU's default firmware; the UEFI-only image by
	// TestBuildAndVerifyUEFIOnlyImage.)
	for _, code := range []string{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"} {
		if _, err := os.Stat(code); err == nil {
			bootImage(t, res.ImagePath, code)
			return
		}
	}
	buildUnavailable(t, "OVMF is not installed (package ovmf): the UEFI boot cannot run")
}

// checkSeedContents asserts every item of the seed image's contents.
func checkSeedContents(t *testing.T, fs rootFS, repoURL string) {
	g := NewWithT(t)

	// Packages: installed, Kubernetes held at the pinned version.
	status := dpkgStatus(fs.cat("/var/lib/dpkg/status"))
	for _, p := range []string{"cloud-init", "openssh-server", "vim", "htop", "tmux", "net-tools", "containerd", "runc", "containernetworking-plugins", "iptables", "nftables", "prometheus-node-exporter", "linux-image-cloud-amd64", "cloud-guest-utils", "systemd-sysv"} {
		g.Expect(status).To(HaveKey(p), "package %s not installed", p)
		g.Expect(status[p][0]).To(Equal("install ok installed"), "package %s", p)
	}
	for _, p := range []string{"kubeadm", "kubelet", "kubectl"} {
		g.Expect(status[p]).To(Equal([2]string{"hold ok installed", "1.37.2-1.1"}), "package %s not held at 1.37.2", p)
	}
	g.Expect(status["cri-tools"]).To(Equal([2]string{"hold ok installed", "1.37.0-1.1"}), "cri-tools not held at 1.37.0")
	g.Expect(fs.cat("/etc/crictl.yaml")).To(ContainSubstring("runtime-endpoint: unix:///run/containerd/containerd.sock"))
	g.Expect(status["containerd"][1]).To(MatchRegexp(`^1\.(7\.(2[3-9]|[3-9][0-9])|[89]\.|[1-9][0-9]\.)`), "containerd older than 1.7.23")

	// containerd with the systemd cgroup driver; CNI plugins in /opt/cni/bin.
	g.Expect(fs.cat("/etc/containerd/config.toml")).To(MatchRegexp(`(?m)^\s*SystemdCgroup = true$`))
	g.Expect(fs.cat("/etc/containerd/config.toml")).NotTo(ContainSubstring("SystemdCgroup = false"))
	// The CRI loads CNI plugins from there (Debian's default is /usr/lib/cni).
	g.Expect(fs.cat("/etc/containerd/config.toml")).To(MatchRegexp(`(?m)^\s*bin_dir = "/opt/cni/bin"$`))
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		g.Expect(fs.link("/opt/cni/bin/"+p)).To(Equal("/usr/lib/cni/"+p), "CNI plugin %s", p)
		g.Expect(fs.exists("/usr/lib/cni/" + p)).To(BeTrue())
	}

	// The Kubernetes repository and its key, configured in the image.
	src := fs.cat("/etc/apt/sources.list.d/kubernetes.sources")
	g.Expect(src).To(ContainSubstring("URIs: " + repoURL))
	g.Expect(src).To(ContainSubstring("Signed-By: /etc/apt/keyrings/kubernetes-apt-keyring.asc"))
	g.Expect(fs.cat("/etc/apt/keyrings/kubernetes-apt-keyring.asc")).To(ContainSubstring("BEGIN PGP PUBLIC KEY BLOCK"))

	// Services enabled (not started: nothing ran at build time), swap masked.
	wants := fs.ls("/etc/systemd/system/multi-user.target.wants")
	for _, u := range []string{"ssh.service", "containerd.service", "prometheus-node-exporter.service", "kubelet.service", "nodeforge-ssh-keygen.service", "nodeforge-test.service"} {
		g.Expect(wants).To(ContainElement(u), "%s not enabled", u)
	}
	g.Expect(fs.link("/etc/systemd/system/swap.target")).To(Equal("/dev/null"), "swap.target not masked")

	// Kernel modules and sysctls.
	mods := fs.cat(builder.ModulesLoadPath)
	g.Expect(mods).To(MatchRegexp(`(?m)^br_netfilter$`))
	g.Expect(mods).To(MatchRegexp(`(?m)^overlay$`))
	sysctl := fs.cat(builder.SysctlPath)
	for _, s := range []string{"net.ipv4.ip_forward = 1", "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-ip6tables = 1"} {
		g.Expect(sysctl).To(ContainSubstring(s))
	}

	// fstab by UUID, without swap; no swap file.
	fstab := fs.cat("/etc/fstab")
	g.Expect(fstab).To(MatchRegexp(`(?m)^UUID=[0-9a-f-]{36} / ext4 `))
	g.Expect(fstab).To(MatchRegexp(`(?m)^UUID=[0-9A-F]{4}-[0-9A-F]{4} /boot/efi vfat `))
	for _, l := range strings.Split(fstab, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			g.Expect(l).NotTo(ContainSubstring("swap"))
		}
	}
	g.Expect(fs.exists("/swapfile")).To(BeFalse())

	// sshd: keys only, no root login, no root password.
	sshd := fs.cat(builder.SSHDConfigPath)
	for _, s := range []string{"PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no", "PubkeyAuthentication yes"} {
		g.Expect(sshd).To(MatchRegexp(`(?m)^` + s + `$`))
	}
	g.Expect(fs.cat("/etc/ssh/sshd_config")).To(MatchRegexp(`(?m)^Include /etc/ssh/sshd_config.d/\*\.conf`))
	for _, l := range strings.Split(fs.cat("/etc/shadow"), "\n") {
		if strings.HasPrefix(l, "root:") {
			g.Expect(strings.Split(l, ":")[1]).To(Or(HavePrefix("*"), HavePrefix("!")), "root has a password")
		}
	}

	// Node exporter port, cloud-init datasources and defaults.
	g.Expect(fs.cat("/etc/default/prometheus-node-exporter")).To(MatchRegexp(`(?m)^ARGS="--web.listen-address=:9100"$`))
	g.Expect(fs.cat(builder.DatasourcesPath)).To(ContainSubstring("datasource_list: [ NoCloud, ConfigDrive, OpenStack, Ec2, None ]"))
	g.Expect(fs.cat(builder.UserDataPath)).To(ContainSubstring("ssh_pwauth: false"))
	g.Expect(fs.cat(builder.FirstBootPath)).To(ContainSubstring("manage_etc_hosts: localhost"))
	g.Expect(fs.cat(builder.WaitOnlineDropIn)).To(ContainSubstring("--any"))
	g.Expect(fs.link("/etc/systemd/system/e2scrub_reap.service")).To(Equal("/dev/null"))

	// Customisations from the spec.
	g.Expect(fs.cat("/etc/nodeforge/test.conf")).To(Equal("hello\n"))
	g.Expect(fs.cat("/etc/nodeforge/marker")).To(Equal("provisioned\n"))
	// A /dev listing that holds the sandbox's devices and links only.
	const sandboxDev = `dev=(null|zero|full|random|urandom|tty|pts|shm|ptmx|fd|stdin|stdout|stderr| )+\n`
	// The shell provisioner ran in the sandbox (sandboxProbe).
	seen := fs.cat("/etc/nodeforge/sandbox")
	g.Expect(seen).To(ContainSubstring("pid1=sh\n"), "the provisioner is not PID 1 of its own PID namespace")
	g.Expect(seen).To(ContainSubstring("mount=refused\n"), "the provisioner could mount")
	g.Expect(seen).To(MatchRegexp(sandboxDev), "the provisioner's /dev has more than the sandbox's")
	// So did the maintainer script of the author's repository's package
	// (probePostinst): in user, mount and PID namespaces that are not the
	// builder's (here: this test's), with the sandbox's /dev and without
	// device nodes, modules or raw I/O in its bounding set. (It keeps
	// CAP_SYS_ADMIN for mmdebstrap's mounts, counting only in its own user
	// namespace.)
	post := fs.cat("/etc/nodeforge/postinst-probe")
	for _, ns := range []string{"user", "mnt", "pid"} {
		own, err := os.Readlink("/proc/self/ns/" + ns)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(post).To(MatchRegexp(`(?m)^`+ns+`=`+ns+`:\[[0-9]+\]$`), "no %s namespace recorded: %q", ns, post)
		g.Expect(post).NotTo(ContainSubstring(ns+"="+own+"\n"), "maintainer scripts run in the builder's %s namespace", ns)
	}
	g.Expect(post).To(MatchRegexp(sandboxDev), "the maintainer script's /dev has more than the sandbox's")
	capbnd := regexp.MustCompile(`capbnd=([0-9a-f]+)\n`).FindStringSubmatch(post)
	g.Expect(capbnd).To(HaveLen(2), "no capability bounding set recorded: %q", post)
	bnd, err := strconv.ParseUint(capbnd[1], 16, 64)
	g.Expect(err).NotTo(HaveOccurred())
	for name, c := range map[string]uint{"CAP_MKNOD": unix.CAP_MKNOD, "CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE} {
		g.Expect(bnd&(1<<c)).To(BeZero(), "maintainer scripts keep %s", name)
	}
	g.Expect(fs.cat("/etc/nodeforge/role")).To(Equal("worker\n"), "the Ansible provisioner ran")
	g.Expect(fs.exists("/tmp/.ansible")).To(BeFalse(), "Ansible temp files left in the image")

	// Hygiene.
	for _, k := range fs.ls("/etc/ssh") {
		g.Expect(k).NotTo(HavePrefix("ssh_host_"), "SSH host key baked in")
	}
	g.Expect(fs.debugfs("stat /etc/machine-id")).To(MatchRegexp(`Size: 0\b`), "machine-id not empty")
	if fs.exists("/var/lib/cloud") {
		g.Expect(fs.ls("/var/lib/cloud")).To(BeEmpty(), "cloud-init instance state")
	}
	g.Expect(fs.ls("/var/lib/apt/lists")).To(ConsistOf("partial/"))
	for _, e := range fs.ls("/var/cache/apt/archives") {
		g.Expect(e).NotTo(HaveSuffix(".deb"))
	}
	for _, e := range fs.ls("/var/cache/apt") {
		g.Expect(e).NotTo(HaveSuffix(".bin"))
	}
	var logs func(dir string)
	logs = func(dir string) {
		for _, e := range fs.ls(dir) {
			if strings.HasSuffix(e, "/") {
				logs(dir + "/" + strings.TrimSuffix(e, "/"))
			} else {
				t.Errorf("log file left in the image: %s/%s", dir, e)
			}
		}
	}
	logs("/var/log")
	g.Expect(fs.link("/etc/resolv.conf")).To(Equal("../run/systemd/resolve/stub-resolv.conf"), "build-time resolv.conf left")
	g.Expect(fs.exists(builder.PolicyRCPath)).To(BeFalse(), "policy-rc.d left in the image")
	g.Expect(fs.cat("/etc/dpkg/dpkg.cfg.d/99mmdebstrap")).NotTo(ContainSubstring("unsafe-io"))
	g.Expect(strings.TrimSpace(fs.cat("/etc/hostname"))).To(Equal("localhost"))
	g.Expect(fs.cat("/boot/grub/grub.cfg")).To(ContainSubstring("console=ttyS0"))
}

// bootImage boots a throwaway overlay of image under QEMU TCG (UEFI when
// ovmfCode is set) until the kernel hands over to systemd, then kills QEMU.
func bootImage(t *testing.T, image, ovmfCode string) {
	t.Helper()
	mode := "BIOS"
	dir := t.TempDir()
	overlay := filepath.Join(dir, "overlay.qcow2")
	if o, err := buildExec(context.Background(), nil, "qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", overlay); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, o)
	}
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-name", "nodeforge-build-test", "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "1024",
		"-drive", "file=" + overlay + ",if=virtio,format=qcow2,cache=unsafe",
		// User networking with restrict=on: the guest reaches nothing, and
		// nothing is forwarded to it.
		"-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
		"-serial", "file:" + console,
	}
	if ovmfCode != "" {
		mode = "UEFI"
		vars := filepath.Join(dir, "vars.fd")
		varsSrc := strings.Replace(ovmfCode, "CODE", "VARS", 1)
		b, err := os.ReadFile(varsSrc)
		if err != nil {
			t.Fatalf("OVMF variables: %v", err)
		}
		if err := os.WriteFile(vars, b, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill() // by PID: only the QEMU this test started
		<-exited
	}()
	deadline := time.After(4 * time.Minute)
	for {
		select {
		case <-exited:
			c, _ := os.ReadFile(console)
			t.Fatalf("%s boot: QEMU exited (%v) before systemd started\n%s\n--- console ---\n%s", mode, waitErr, qout.String(), tail(string(c), 3000))
		case <-deadline:
			c, _ := os.ReadFile(console)
			t.Fatalf("%s boot: no systemd on the console after 4 minutes\n--- console ---\n%s", mode, tail(string(c), 3000))
		case <-time.After(time.Second):
		}
		c, err := os.ReadFile(console)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if bytes.Contains(c, []byte("systemd[1]")) || bytes.Contains(c, []byte("Welcome to \x1b[1mDebian")) || bytes.Contains(c, []byte("Welcome to Debian")) {
			t.Logf("%s boot: kernel handed over to systemd after %s", mode, time.Since(start).Round(time.Second))
			return
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
