package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/containerd"
)

// PreflightIgnored are the kubeadm preflight errors the boot test ignores:
// they depend on the VM the image boots in, not on the image.
//   - NumCPU and Mem: the test VM's size (2 vCPUs, 2 GiB) is chosen by the
//     verifier; a production VM is sized by its user.
//   - ImagePull: control-plane images come from a registry at join time;
//     the test VM has no network beyond the forwarded SSH port (the test
//     also passes --dry-run, so nothing is pulled).
//
// Everything else (swap, sysctls, modules, the container runtime, ports,
// binaries on PATH, cgroups) is the image's responsibility and fails the
// check.
var PreflightIgnored = []string{"NumCPU", "Mem", "ImagePull"}

// planGuest lists the in-guest checks a defaulted content implies; they run
// after boot-ssh and boot-cloud-init-done.
func planGuest(b *bootRun) []plannedCheck {
	c := b.content
	g := func(name string, f checkFunc) plannedCheck { return plannedCheck{name: name, category: Boot, run: f} }
	p := []plannedCheck{
		g(CheckBootHostname, b.checkHostname),
		g(CheckBootRootGrown, b.checkRootGrown),
		g(CheckBootFailedUnits, b.checkFailedUnits),
	}
	if boolOf(c.SSH.Enabled) {
		p = append(p, g(CheckBootSSHDEffective, b.checkSSHDEffective))
	}
	cr := c.ContainerRuntime
	if boolOf(cr.Containerd.Enabled) {
		p = append(p, g(CheckBootContainerd, b.checkContainerd), g(CheckBootContainerdConfig, b.checkContainerdConfig))
		if k := c.Kubernetes; k != nil && slices.Contains(k.Components, imagev1.ComponentCRITools) {
			p = append(p, g(CheckBootCrictl, b.checkCrictl))
		}
	}
	if boolOf(cr.Runc.Enabled) {
		p = append(p, g(CheckBootRunc, b.simple("runc --version", `runc version`)))
	}
	if boolOf(cr.CNIPlugins.Enabled) {
		p = append(p, g(CheckBootCNI, b.checkCNI))
	}
	if len(c.Kernel.Modules) > 0 {
		p = append(p, g(CheckBootModules, b.checkModules))
	}
	if len(c.Kernel.Sysctls) > 0 {
		p = append(p, g(CheckBootSysctls, b.checkSysctls))
	}
	if boolOf(c.Swap.Disabled) {
		p = append(p, g(CheckBootNoSwap, b.checkNoSwap))
	}
	if boolOf(c.Monitoring.NodeExporter.Enabled) {
		p = append(p, g(CheckBootNodeExporter, b.checkNodeExporter))
	}
	if k := c.Kubernetes; k != nil {
		has := map[imagev1.KubernetesComponent]bool{}
		for _, comp := range k.Components {
			has[comp] = true
		}
		if has[imagev1.ComponentKubeadm] {
			p = append(p, g(CheckBootKubeadmVersion, b.version("kubeadm version -o short", k.Version)))
		}
		if has[imagev1.ComponentKubelet] {
			p = append(p, g(CheckBootKubeletVersion, b.version("kubelet --version", k.Version)))
			p = append(p, g(CheckBootKubeletInactive, b.checkKubeletNotRunning))
		}
		if has[imagev1.ComponentKubectl] {
			p = append(p, g(CheckBootKubectlVersion, b.version("kubectl version --client", k.Version)))
		}
		if has[imagev1.ComponentKubeadm] && has[imagev1.ComponentKubelet] {
			p = append(p, g(CheckBootKubeadmPreflight, b.checkPreflight))
		}
	}
	return p
}

const cmdLimit = 60 * time.Second

// simple runs a command that must exit 0 and print something matching re.
func (b *bootRun) simple(cmd, re string) checkFunc {
	rx := regexp.MustCompile(re)
	return func(ctx context.Context) (string, error) {
		out, code, err := b.run(ctx, cmd, cmdLimit)
		if err != nil {
			return "", fmt.Errorf("%s: %w", cmd, err)
		}
		if code != 0 || !rx.MatchString(out) {
			return "", fmt.Errorf("%s exited %d: %s", cmd, code, clip(out, 300))
		}
		return firstLine(out), nil
	}
}

func clip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// waitCloudInit waits for cloud-init to finish and checks its result.
func (b *bootRun) waitCloudInit(ctx context.Context) (string, error) {
	out, code, err := b.run(ctx, "cloud-init status --wait >/dev/null 2>&1; cloud-init status --long; echo; cat /run/cloud-init/result.json", time.Until(deadlineOf(ctx)))
	if err != nil {
		return "", fmt.Errorf("waiting for cloud-init: %w", err)
	}
	if code != 0 {
		return "", fmt.Errorf("cloud-init status exited %d: %s", code, clip(out, 600))
	}
	if !strings.Contains(out, "status: done") {
		return "", fmt.Errorf("cloud-init did not finish cleanly: %s", clip(out, 600))
	}
	if i := strings.Index(out, `"errors"`); i >= 0 {
		rest := out[i:]
		if !regexp.MustCompile(`"errors":\s*\[\s*\]`).MatchString(rest) {
			return "", fmt.Errorf("cloud-init reported errors: %s", clip(rest, 600))
		}
	}
	ds := regexp.MustCompile(`"datasource":\s*"([^"]*)"`).FindStringSubmatch(out)
	if len(ds) == 2 {
		return "done, " + ds[1], nil
	}
	return "done", nil
}

func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(10 * time.Minute)
}

func (b *bootRun) checkHostname(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "hostname", cmdLimit)
	if err != nil {
		return "", err
	}
	if out != b.hostname {
		return "", fmt.Errorf("hostname is %q, user-data set %q", out, b.hostname)
	}
	return out, nil
}

func (b *bootRun) checkRootGrown(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "lsblk -bnro NAME,SIZE,TYPE,MOUNTPOINT | awk '$3==\"disk\" || $4==\"/\"'; df -B1 --output=size / | tail -1", cmdLimit)
	if err != nil {
		return "", err
	}
	var disk, part, fs int64
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[2] == "disk" && disk == 0:
			disk, _ = strconv.ParseInt(f[1], 10, 64)
		case len(f) >= 4 && f[3] == "/":
			part, _ = strconv.ParseInt(f[1], 10, 64)
		case len(f) == 1:
			fs, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	if disk == 0 || part == 0 || fs == 0 {
		return "", fmt.Errorf("cannot read disk, partition and filesystem sizes from: %s", clip(out, 300))
	}
	// The root partition should end within 16 MiB of the disk's end (after
	// the backup GPT and alignment), and the filesystem fill most of it.
	if disk-part > 256<<20 || fs < part*9/10 {
		return "", fmt.Errorf("root not grown: disk %d MiB, root partition %d MiB, filesystem %d MiB", disk>>20, part>>20, fs>>20)
	}
	return fmt.Sprintf("disk %d MiB, root partition %d MiB, filesystem %d MiB", disk>>20, part>>20, fs>>20), nil
}

func (b *bootRun) checkFailedUnits(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "systemctl list-units --failed --plain --no-legend --no-pager", cmdLimit)
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(out) != "" {
		var units []string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				units = append(units, f[0])
			}
		}
		return "", fmt.Errorf("failed units: %s", strings.Join(units, ", "))
	}
	return "no failed units", nil
}

func (b *bootRun) checkSSHDEffective(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "sudo sshd -T 2>&1 | grep -Ei '^(passwordauthentication|kbdinteractiveauthentication|permitrootlogin) '", cmdLimit)
	if err != nil {
		return "", err
	}
	want := map[string]string{
		"passwordauthentication":       "no",
		"kbdinteractiveauthentication": "no",
		"permitrootlogin":              string(b.content.SSH.PermitRootLogin),
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.ToLower(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			got[f[0]] = f[1]
		}
	}
	var bad []string
	for k, v := range want {
		if got[k] != v {
			bad = append(bad, fmt.Sprintf("%s %q, want %q", k, got[k], v))
		}
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("sshd -T: %s", strings.Join(bad, "; "))
	}
	return "sshd -T: key-only, permitrootlogin " + got["permitrootlogin"], nil
}

func (b *bootRun) checkContainerd(ctx context.Context) (string, error) {
	out, code, err := b.run(ctx, "systemctl is-active containerd; sudo ctr version", cmdLimit)
	if err != nil {
		return "", err
	}
	if code != 0 || !strings.HasPrefix(out, "active") || !strings.Contains(out, "Server:") {
		return "", fmt.Errorf("containerd not answering: %s", clip(out, 400))
	}
	if m := regexp.MustCompile(`(?s)Server:.*?Version:\s*(\S+)`).FindStringSubmatch(out); len(m) == 2 {
		return "active, server " + m[1], nil
	}
	return "active", nil
}

// checkContainerdConfig reads what containerd loaded (config dump merges
// the file over containerd's compiled-in defaults) and checks the CRI's
// cgroup driver and CNI directory.
func (b *bootRun) checkContainerdConfig(ctx context.Context) (string, error) {
	out, code, err := b.run(ctx, "sudo containerd config dump", cmdLimit)
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", fmt.Errorf("containerd config dump exited %d: %s", code, clip(out, 300))
	}
	s, err := containerd.Effective([]byte(out))
	if err != nil {
		return "", err
	}
	return b.criVerdict(s, "containerd config dump")
}

// criVerdict checks CRI settings against the spec.
func (b *bootRun) criVerdict(s containerd.CRISettings, from string) (string, error) {
	cr := b.content.ContainerRuntime
	var msgs, bad []string
	if boolOf(cr.Containerd.SystemdCgroup) {
		if m, err := cgroupVerdict(s, from); err != nil {
			bad = append(bad, err.Error())
		} else {
			msgs = append(msgs, m)
		}
	} else if s.SystemdCgroup != nil && *s.SystemdCgroup {
		bad = append(bad, from+" sets SystemdCgroup = true; containerRuntime.containerd.systemdCgroup is false")
	}
	if boolOf(cr.CNIPlugins.Enabled) {
		if m, err := cniDirVerdict(s, cr.CNIPlugins.BinDir, from); err != nil {
			bad = append(bad, err.Error())
		} else {
			msgs = append(msgs, m)
		}
	}
	if len(bad) > 0 {
		return "", errors.New(strings.Join(bad, "; "))
	}
	return strings.Join(msgs, ", "), nil
}

// checkCrictl asks containerd over the CRI, as the kubelet and kubeadm do:
// crictl reads /etc/crictl.yaml for the endpoint, the runtime must report
// RuntimeReady, and the CRI's own view of its configuration must have the
// spec's cgroup driver and CNI directory.
func (b *bootRun) checkCrictl(ctx context.Context) (string, error) {
	ver, code, err := b.run(ctx, "sudo crictl version 2>&1", cmdLimit)
	if err != nil {
		return "", err
	}
	if code != 0 || !strings.Contains(ver, "RuntimeName:  containerd") {
		return "", fmt.Errorf("crictl version exited %d: %s", code, clip(ver, 300))
	}
	info, code, err := b.run(ctx, "sudo crictl info 2>/dev/null", cmdLimit)
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", fmt.Errorf("crictl info exited %d: %s", code, clip(info, 300))
	}
	s, ready, err := parseCrictlInfo([]byte(info))
	if err != nil {
		return "", err
	}
	if !ready {
		return "", fmt.Errorf("crictl info: the runtime is not RuntimeReady: %s", clip(info, 300))
	}
	msg, err := b.criVerdict(s, "crictl info")
	if err != nil {
		return "", err
	}
	rv := regexp.MustCompile(`RuntimeVersion:\s*(\S+)`).FindStringSubmatch(ver)
	if len(rv) == 2 {
		msg = "containerd " + rv[1] + " ready over the CRI, " + msg
	}
	return msg, nil
}

// parseCrictlInfo reads the CRI settings and RuntimeReady from crictl
// info's JSON (containerd's CRI status: its configuration under "config").
func parseCrictlInfo(b []byte) (containerd.CRISettings, bool, error) {
	var info struct {
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status bool   `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
		Config struct {
			Containerd struct {
				DefaultRuntimeName string `json:"defaultRuntimeName"`
				Runtimes           map[string]struct {
					Options map[string]any `json:"options"`
				} `json:"runtimes"`
			} `json:"containerd"`
			CNI struct {
				BinDir  string   `json:"binDir"`
				BinDirs []string `json:"binDirs"`
				ConfDir string   `json:"confDir"`
			} `json:"cni"`
		} `json:"config"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return containerd.CRISettings{}, false, fmt.Errorf("crictl info is not JSON: %w", err)
	}
	ready := false
	for _, c := range info.Status.Conditions {
		if c.Type == "RuntimeReady" {
			ready = c.Status
		}
	}
	c := info.Config
	s := containerd.CRISettings{DefaultRuntime: c.Containerd.DefaultRuntimeName, CNIConfDir: c.CNI.ConfDir}
	if s.DefaultRuntime == "" {
		s.DefaultRuntime = "runc"
	}
	if v, ok := c.Containerd.Runtimes[s.DefaultRuntime].Options["SystemdCgroup"].(bool); ok {
		s.SystemdCgroup = &v
	}
	s.CNIBinDirs = c.CNI.BinDirs
	if c.CNI.BinDir != "" {
		s.CNIBinDirs = append(s.CNIBinDirs, c.CNI.BinDir)
	}
	return s, ready, nil
}

func (b *bootRun) checkCNI(ctx context.Context) (string, error) {
	dir := b.content.ContainerRuntime.CNIPlugins.BinDir
	// A CNI plugin run with CNI_COMMAND=VERSION prints its supported versions.
	cmd := fmt.Sprintf(`for p in bridge host-local loopback portmap; do echo "$p: $(CNI_COMMAND=VERSION %s/$p </dev/null 2>&1 | head -c 200)"; done`, dir)
	out, _, err := b.run(ctx, cmd, cmdLimit)
	if err != nil {
		return "", err
	}
	var bad []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, "cniVersion") {
			bad = append(bad, l)
		}
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("CNI plugins in %s do not answer VERSION: %s", dir, clip(strings.Join(bad, "; "), 400))
	}
	return "bridge, host-local, loopback, portmap answer VERSION", nil
}

func (b *bootRun) checkModules(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "cat /proc/modules; ls /sys/module", cmdLimit)
	if err != nil {
		return "", err
	}
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			have[f[0]] = true
		}
	}
	var missing []string
	for _, m := range b.content.Kernel.Modules {
		if !have[strings.ReplaceAll(m, "-", "_")] {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("not loaded: %s", strings.Join(missing, ", "))
	}
	return "loaded: " + strings.Join(b.content.Kernel.Modules, ", "), nil
}

func (b *bootRun) checkSysctls(ctx context.Context) (string, error) {
	var names []string
	for _, s := range b.content.Kernel.Sysctls {
		names = append(names, s.Name)
	}
	out, _, err := b.run(ctx, "sysctl "+strings.Join(names, " ")+" 2>&1", cmdLimit)
	if err != nil {
		return "", err
	}
	got := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			got[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	var bad []string
	for _, s := range b.content.Kernel.Sysctls {
		if got[s.Name] != s.Value {
			bad = append(bad, fmt.Sprintf("%s = %q, want %q", s.Name, got[s.Name], s.Value))
		}
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return strings.Join(names, ", ") + " live", nil
}

func (b *bootRun) checkNoSwap(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "swapon --show --noheadings", cmdLimit)
	if err != nil {
		return "", err
	}
	if out != "" {
		return "", fmt.Errorf("swap is active: %s", clip(out, 200))
	}
	return "no active swap", nil
}

func (b *bootRun) checkNodeExporter(ctx context.Context) (string, error) {
	// The exporter's port is forwarded to 127.0.0.1 only.
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", b.nePort)
	var lastErr error
	for i := 0; i < 10; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), "node_exporter_build_info") {
				return fmt.Sprintf("port %d serves metrics (%d KiB)", b.content.Monitoring.NodeExporter.Port, len(body)>>10), nil
			}
			lastErr = fmt.Errorf("HTTP %d without node_exporter_build_info", resp.StatusCode)
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(3 * time.Second):
		}
	}
	state, _, _ := b.run(ctx, "systemctl is-active prometheus-node-exporter", cmdLimit)
	return "", fmt.Errorf("node exporter on guest port %d not answering (%w); service %s", b.content.Monitoring.NodeExporter.Port, lastErr, state)
}

// version checks a Kubernetes binary reports the pinned version.
func (b *bootRun) version(cmd, want string) checkFunc {
	return func(ctx context.Context) (string, error) {
		out, code, err := b.run(ctx, cmd+" 2>&1", cmdLimit)
		if err != nil {
			return "", err
		}
		if code != 0 {
			return "", fmt.Errorf("%s exited %d: %s", cmd, code, clip(out, 300))
		}
		if !regexp.MustCompile(`\b` + regexp.QuoteMeta(want) + `\b`).MatchString(out) {
			return "", fmt.Errorf("%s printed %q, want %s", cmd, clip(out, 200), want)
		}
		return firstLine(out), nil
	}
}

// checkKubeletNotRunning samples the kubelet's state: before kubeadm it
// has no configuration, so it must not be running (an enabled kubelet
// restarts in a loop until kubeadm writes its config, like upstream's
// packages).
func (b *bootRun) checkKubeletNotRunning(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "command -v kubelet; test -e /var/lib/kubelet/config.yaml && echo CONFIG; for i in 1 2 3; do systemctl show kubelet -p ActiveState,SubState --value | tr '\\n' ' '; echo; sleep 1; done", cmdLimit)
	if err != nil {
		return "", err
	}
	lines := strings.Split(out, "\n")
	if len(lines) == 0 || !strings.Contains(lines[0], "kubelet") {
		return "", errors.New("kubelet is not on PATH")
	}
	if strings.Contains(out, "CONFIG") {
		return "", errors.New("/var/lib/kubelet/config.yaml exists before kubeadm ran")
	}
	running := 0
	var states []string
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		states = append(states, l)
		if l == "active running" {
			running++
		}
	}
	if running == len(states) && running > 0 {
		return "", fmt.Errorf("kubelet is running before kubeadm (%s)", strings.Join(states, ", "))
	}
	return "installed, not running (" + strings.Join(states, ", ") + ")", nil
}

// checkPreflight runs kubeadm's init preflight as a dry run with a
// configuration that advertises the guest's IPv4 address, so the result
// does not depend on the test network's (absent) default route.
func (b *bootRun) checkPreflight(ctx context.Context) (string, error) {
	cfg := fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: ADDR
nodeRegistration:
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %s
`, b.content.Kubernetes.Version)
	cmd := "addr=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1); " +
		"printf '%s' '" + cfg + "' | sed \"s/ADDR/$addr/\" > /tmp/nodeforge-kubeadm.yaml; " +
		"sudo kubeadm init phase preflight --dry-run --config /tmp/nodeforge-kubeadm.yaml " +
		"--ignore-preflight-errors=" + strings.Join(PreflightIgnored, ",") + " 2>&1"
	out, code, err := b.run(ctx, cmd, 3*time.Minute)
	if err != nil {
		return "", err
	}
	var errs, warns []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "[ERROR"):
			errs = append(errs, l)
		case strings.HasPrefix(l, "[WARNING"):
			warns = append(warns, l)
		}
	}
	if code != 0 || len(errs) > 0 {
		if len(errs) == 0 {
			errs = []string{clip(out, 600)}
		}
		return "", fmt.Errorf("kubeadm preflight failed: %s", strings.Join(errs, "; "))
	}
	msg := "passed"
	if len(warns) > 0 {
		msg += fmt.Sprintf(" with %d warning(s): %s", len(warns), clip(strings.Join(warns, "; "), 500))
	}
	return msg, nil
}
