package integration

// TestOfflineKubernetesAptRepo checks the offline Kubernetes apt repository
// built by hack/k8s-apt-repo.sh the way a Debian image build consumes it: the
// script serves it on 127.0.0.1, and a plain apt-get with private state,
// cache and configuration dirs runs update (signature verified with the
// published key, in both its armored and binary forms) and downloads
// kubeadm, kubelet and kubectl, whose fields and contents are then checked.
// A wrong key must make apt reject the repository.
//
// The repository takes 10-20 minutes to build cold, so the test is skipped
// unless it is built (hack/k8s-apt-repo.sh build) or
// NODEFORGE_REQUIRE_INTEGRATION=1, in which case a missing repository fails.

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

const (
	aptK8sVersion = "v1.37.2"
	aptDebVersion = "1.37.2-1.1"
	// cri-tools follows Kubernetes minors (hack/tools.sh CRI_TOOLS_VERSION).
	aptCRIVersion    = "v1.37.0"
	aptCRIDebVersion = "1.37.0-1.1"
	aptRepoScript    = "hack/k8s-apt-repo.sh"
	requireEnvName   = "NODEFORGE_REQUIRE_INTEGRATION"
)

// unavailable skips the test, or fails it when integration tests are required.
func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireEnvName) == "1" {
		t.Fatalf("%s (%s=1 requires it)", msg, requireEnvName)
	}
	t.Skipf("%s; set %s=1 to make this a failure", msg, requireEnvName)
}

func run(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// aptClient is apt-get confined to a private directory: its own sources,
// trusted keys (none), state, status file and cache, so it neither reads nor
// writes the host's apt setup.
type aptClient struct {
	t    *testing.T
	root string
}

func newAptClient(t *testing.T, url, keyPath string) *aptClient {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{
		"etc/sources.list.d", "etc/preferences.d", "etc/trusted.gpg.d", "etc/apt.conf.d",
		"state/lists/partial", "cache/archives/partial", "download",
	} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "state/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The same line an image build writes, with the key beside the sources.
	key := filepath.Join(root, "etc", "keyrings", filepath.Base(keyPath))
	if err := os.MkdirAll(filepath.Dir(key), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, data, 0o644); err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("deb [signed-by=%s] %s /\n", key, url)
	if err := os.WriteFile(filepath.Join(root, "etc/sources.list"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	return &aptClient{t: t, root: root}
}

func (a *aptClient) args(cmd ...string) []string {
	p := func(s string) string { return filepath.Join(a.root, s) }
	opts := []string{
		"Dir::Etc=" + p("etc"),
		"Dir::Etc::SourceList=" + p("etc/sources.list"),
		"Dir::Etc::SourceParts=" + p("etc/sources.list.d"),
		"Dir::Etc::Trusted=" + p("etc/trusted.gpg"),
		"Dir::Etc::TrustedParts=" + p("etc/trusted.gpg.d"),
		"Dir::Etc::Preferences=" + p("etc/preferences"),
		"Dir::Etc::PreferencesParts=" + p("etc/preferences.d"),
		"Dir::State=" + p("state"),
		"Dir::State::status=" + p("state/status"),
		"Dir::Cache=" + p("cache"),
		"APT::Architecture=amd64",
		"APT::Architectures::=amd64",
		"Acquire::Languages=none",
		// Private dirs under a 0700 temp dir: the _apt sandbox user could not
		// write there.
		"APT::Sandbox::User=root",
		// Never route loopback traffic through a proxy from the host config.
		"Acquire::http::Proxy::127.0.0.1=DIRECT",
		"Acquire::Retries=0",
	}
	var args []string
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	return append(args, cmd...)
}

func (a *aptClient) run(cmd ...string) (string, error) {
	a.t.Helper()
	return run(a.t, filepath.Join(a.root, "download"), []string{"LC_ALL=C"}, "apt-get", a.args(cmd...)...)
}

func parseExports(t *testing.T, out string) map[string]string {
	t.Helper()
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if kv, ok := strings.CutPrefix(line, "export "); ok {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	return env
}

func TestOfflineKubernetesAptRepo(t *testing.T) {
	g := NewWithT(t)
	root := repoRoot(t)
	script := filepath.Join(root, aptRepoScript)

	repoOut, err := run(t, root, nil, script, "path")
	if err != nil {
		unavailable(t, "the offline Kubernetes apt repository is not built (run: %s build): %s", aptRepoScript, strings.TrimSpace(repoOut))
	}
	repo := strings.TrimSpace(repoOut)
	for _, tool := range []string{"apt-get", "dpkg-deb", "gpg", "gpgconf"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, "%s is not installed", tool)
		}
	}

	// Serve it with the script, as the demo and tests do, in a private state
	// dir so a server someone else started is left alone.
	state := filepath.Join(t.TempDir(), "state")
	stateEnv := []string{"NODEFORGE_APT_STATE=" + state}
	out, err := run(t, root, stateEnv, script, "serve")
	g.Expect(err).NotTo(HaveOccurred(), "serve: %s", out)
	t.Cleanup(func() {
		if out, err := run(t, root, stateEnv, script, "stop"); err != nil {
			t.Errorf("stop: %v: %s", err, out)
		}
		g.Expect(state).NotTo(BeADirectory(), "stop removes the state dir")
	})
	exports := parseExports(t, out)
	url, key := exports["NODEFORGE_K8S_APT_URL"], exports["NODEFORGE_K8S_APT_KEY"]
	g.Expect(url).To(MatchRegexp(`^http://127\.0\.0\.1:[0-9]+/$`), "serve output: %s", out)
	g.Expect(key).To(Equal(filepath.Join(repo, "Release.key")))

	envOut, err := run(t, root, stateEnv, script, "env")
	g.Expect(err).NotTo(HaveOccurred(), "env: %s", envOut)
	g.Expect(parseExports(t, envOut)).To(Equal(exports))

	// The flat repository's files, as the official repository serves them.
	for _, f := range []string{"Packages", "Packages.gz", "Release", "InRelease", "Release.gpg", "Release.key", "keyring.gpg"} {
		g.Expect(filepath.Join(repo, f)).To(BeARegularFile())
	}
	g.Expect(os.ReadFile(key)).To(ContainSubstring("-----BEGIN PGP PUBLIC KEY BLOCK-----"))

	t.Run("armored key (.asc)", func(t *testing.T) {
		g := NewWithT(t)
		armored := filepath.Join(t.TempDir(), "kubernetes-apt-keyring.asc")
		g.Expect(copyFile(key, armored)).To(Succeed())
		apt := newAptClient(t, url, armored)
		out, err := apt.run("update")
		g.Expect(err).NotTo(HaveOccurred(), "apt-get update: %s", out)
		g.Expect(out).NotTo(ContainSubstring("W: "), "apt-get update warnings: %s", out)

		out, err = apt.run("download", "kubeadm", "kubelet", "kubectl", "cri-tools")
		g.Expect(err).NotTo(HaveOccurred(), "apt-get download: %s", out)
		checkDebs(t, filepath.Join(apt.root, "download"))
	})

	t.Run("binary keyring (.gpg)", func(t *testing.T) {
		g := NewWithT(t)
		binary := filepath.Join(t.TempDir(), "kubernetes-apt-keyring.gpg")
		g.Expect(copyFile(filepath.Join(repo, "keyring.gpg"), binary)).To(Succeed())
		apt := newAptClient(t, url, binary)
		out, err := apt.run("update")
		g.Expect(err).NotTo(HaveOccurred(), "apt-get update: %s", out)
		out, err = apt.run("download", "kubectl="+aptDebVersion)
		g.Expect(err).NotTo(HaveOccurred(), "apt-get download: %s", out)
	})

	t.Run("wrong key is rejected", func(t *testing.T) {
		g := NewWithT(t)
		wrong := otherKey(t)
		apt := newAptClient(t, url, wrong)
		out, err := apt.run("update")
		g.Expect(err).To(HaveOccurred(), "apt-get update must fail with a wrong key: %s", out)
		g.Expect(out).To(Or(ContainSubstring("NO_PUBKEY"), ContainSubstring("is not signed")))
		out, err = apt.run("download", "kubectl")
		g.Expect(err).To(HaveOccurred(), "nothing must be downloadable from an unverified repository: %s", out)
	})
}

// checkDebs asserts the downloaded packages' names, versions, dependencies and
// layout match the official repository's (see docs/offline-kubernetes-packages.md).
func checkDebs(t *testing.T, dir string) {
	g := NewWithT(t)
	field := func(deb, name string) string {
		out, err := run(t, dir, nil, "dpkg-deb", "-f", deb, name)
		g.Expect(err).NotTo(HaveOccurred(), "dpkg-deb -f %s %s: %s", deb, name, out)
		return strings.TrimSpace(out)
	}
	contents := func(deb string) string {
		out, err := run(t, dir, nil, "dpkg-deb", "-c", deb)
		g.Expect(err).NotTo(HaveOccurred(), "dpkg-deb -c %s: %s", deb, out)
		return out
	}
	info := func(deb string) string {
		out, err := run(t, dir, nil, "dpkg-deb", "-I", deb)
		g.Expect(err).NotTo(HaveOccurred(), "dpkg-deb -I %s: %s", deb, out)
		return out
	}

	files := map[string][]string{
		"kubeadm": {"./usr/bin/kubeadm", "./usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"},
		"kubelet": {"./usr/bin/kubelet", "./usr/lib/systemd/system/kubelet.service", "./etc/default/kubelet",
			"./var/lib/kubelet/", "./etc/kubernetes/manifests/"},
		"kubectl":   {"./usr/bin/kubectl"},
		"cri-tools": {"./usr/bin/crictl"},
	}
	version := func(pkg string) string {
		if pkg == "cri-tools" {
			return aptCRIDebVersion
		}
		return aptDebVersion
	}
	for pkg, want := range files {
		deb := fmt.Sprintf("%s_%s_amd64.deb", pkg, version(pkg))
		g.Expect(filepath.Join(dir, deb)).To(BeARegularFile())
		g.Expect(field(deb, "Package")).To(Equal(pkg))
		g.Expect(field(deb, "Version")).To(Equal(version(pkg)))
		g.Expect(field(deb, "Architecture")).To(Equal("amd64"))
		c := contents(deb)
		for _, f := range want {
			g.Expect(c).To(ContainSubstring(" "+f+"\n"), "%s must contain %s", deb, f)
		}
		// No maintainer scripts: nothing enables or starts kubelet.
		g.Expect(info(deb)).NotTo(ContainSubstring("postinst"), "%s has no postinst", deb)
	}
	g.Expect(field("kubelet_"+aptDebVersion+"_amd64.deb", "Depends")).To(Equal("mount, util-linux"))
	g.Expect(field("kubeadm_"+aptDebVersion+"_amd64.deb", "Depends")).To(BeEmpty())

	// The unit and the drop-in carry the standard kubeadm wiring.
	x := t.TempDir()
	for _, pkg := range []string{"kubeadm", "kubelet", "kubectl", "cri-tools"} {
		out, err := run(t, dir, nil, "dpkg-deb", "-x", fmt.Sprintf("%s_%s_amd64.deb", pkg, version(pkg)), x)
		g.Expect(err).NotTo(HaveOccurred(), "dpkg-deb -x: %s", out)
	}
	dropin, err := os.ReadFile(filepath.Join(x, "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(dropin)).To(ContainSubstring("ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS"))
	unit, err := os.ReadFile(filepath.Join(x, "usr/lib/systemd/system/kubelet.service"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(unit)).To(ContainSubstring("ExecStart=/usr/bin/kubelet\n"))

	// The binaries are the pinned release.
	out, err := run(t, x, nil, filepath.Join(x, "usr/bin/kubectl"), "version", "--client")
	g.Expect(err).NotTo(HaveOccurred(), "kubectl version --client: %s", out)
	g.Expect(out).To(ContainSubstring(aptK8sVersion))
	out, err = run(t, x, nil, filepath.Join(x, "usr/bin/crictl"), "--version")
	g.Expect(err).NotTo(HaveOccurred(), "crictl --version: %s", out)
	g.Expect(out).To(ContainSubstring(aptCRIVersion))
}

// otherKey generates an unrelated throwaway key and returns its armored
// public key.
func otherKey(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp("", "nf-gpg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = run(t, "", nil, "gpgconf", "--homedir", home, "--kill", "gpg-agent")
		_ = os.RemoveAll(home)
	})
	gpg := func(args ...string) (string, error) {
		return run(t, home, nil, "gpg", append([]string{"--homedir", home, "--batch", "--no-tty", "--quiet"}, args...)...)
	}
	uid := fmt.Sprintf("nodeforge wrong key %d <wrong@nodeforge.invalid>", time.Now().UnixNano())
	if out, err := gpg("--passphrase", "", "--quick-generate-key", uid, "ed25519", "sign", "never"); err != nil {
		t.Fatalf("gpg --quick-generate-key: %v: %s", err, out)
	}
	pub, err := exec.Command("gpg", "--homedir", home, "--batch", "--armor", "--export", uid).Output()
	if err != nil || !bytes.Contains(pub, []byte("BEGIN PGP PUBLIC KEY BLOCK")) {
		t.Fatalf("gpg --export: %v: %s", err, pub)
	}
	path := filepath.Join(t.TempDir(), "wrong.asc")
	if err := os.WriteFile(path, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o644)
}
