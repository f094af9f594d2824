package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/containerd"
)

// Paths the provision step writes in the image.
const (
	PolicyRCPath        = "/usr/sbin/policy-rc.d"
	ContainerdConfig    = containerd.ConfigPath
	CrictlConfig        = "/etc/crictl.yaml"
	ModulesLoadPath     = "/etc/modules-load.d/nodeforge.conf"
	SysctlPath          = "/etc/sysctl.d/90-nodeforge.conf"
	SSHDConfigPath      = "/etc/ssh/sshd_config.d/00-nodeforge.conf"
	NodeExporterDefault = "/etc/default/prometheus-node-exporter"
	NodeExporterReady   = "/etc/systemd/system/prometheus-node-exporter.service.d/10-nodeforge-ready.conf"
	FirstBootPath       = "/etc/cloud/cloud.cfg.d/90_nodeforge_firstboot.cfg"
	WaitOnlineDropIn    = "/etc/systemd/system/systemd-networkd-wait-online.service.d/10-nodeforge-any.conf"
	DatasourcesPath     = "/etc/cloud/cloud.cfg.d/91_nodeforge_datasources.cfg"
	UserDataPath        = "/etc/cloud/cloud.cfg.d/92_nodeforge_defaults.cfg"
	SSHKeygenUnit       = "nodeforge-ssh-keygen.service"
	savedResolvConf     = "/etc/.resolv.conf.nodeforge"
	header              = "# Written by nodeforge from the NodeImage spec.\n"
)

// KeyringPath is where an apt source's key lives in the image.
func KeyringPath(name string, armored bool) string {
	if armored {
		return "/etc/apt/keyrings/" + name + "-apt-keyring.asc"
	}
	return "/etc/apt/keyrings/" + name + "-apt-keyring.gpg"
}

func (b *build) provision(ctx context.Context, p *ProvisionParams) error {
	// Services must not start during the build (package scripts and
	// provisioners alike); hygiene removes this again.
	if err := b.writeTreeFile(PolicyRCPath, []byte("#!/bin/sh\n# nodeforge: no service starts while the image is built\nexit 101\n"), 0o755); err != nil {
		return err
	}
	if err := b.useBuildResolvConf(); err != nil {
		return err
	}

	tasks := []struct {
		name string
		on   bool
		run  func() error
	}{
		{"containerd config", p.Containerd, func() error { return b.containerdConfig(ctx, p.SystemdCgroup, p.CNIBinDir) }},
		{"CNI plugins", p.CNIBinDir != "", func() error { return b.cniPlugins(p.CNIBinDir) }},
		{"crictl config", p.Crictl, func() error {
			return b.writeTreeFile(CrictlConfig, []byte(header+"runtime-endpoint: "+containerd.Socket+"\nimage-endpoint: "+containerd.Socket+"\ntimeout: 10\n"), 0o644)
		}},
		{"Kubernetes repository", p.Kubernetes != nil, func() error { return b.kubernetesRepo(*p.Kubernetes) }},
		{"hold packages", len(p.Hold) > 0, func() error {
			return b.runner.Run(ctx, b.chroot(append([]string{"apt-mark", "hold"}, p.Hold...)...))
		}},
		{"kernel modules and sysctls", true, func() error { return b.kernelSettings(p.Modules, p.Sysctls) }},
		{"swap", p.DisableSwap, func() error { return b.removeGlob("/swap*.img") }},
		{"sshd", p.SSH != nil, func() error { return b.sshd(p.SSH) }},
		{"node exporter", p.NodeExporterPort != 0, func() error { return b.nodeExporter(p.NodeExporterPort) }},
		{"cloud-init", true, func() error { return b.cloudInit(p.Datasources, p.DefaultUserData) }},
		{"root account", true, func() error { return b.lockRoot() }},
		{"users", len(p.Users) > 0, func() error { return b.users(ctx, p.Users) }},
		{"files", len(p.Files) > 0, func() error { return b.files(ctx, p.Files) }},
		{"units", len(p.Units) > 0, func() error { return b.units(p.Units) }},
		{"enable units", len(p.Enable) > 0, func() error {
			return b.runner.Run(ctx, b.chroot(append([]string{"systemctl", "enable"}, p.Enable...)...))
		}},
		{"mask units", len(p.Mask) > 0, func() error {
			return b.runner.Run(ctx, b.chroot(append([]string{"systemctl", "mask"}, p.Mask...)...))
		}},
	}
	for i, t := range tasks {
		if !t.on {
			continue
		}
		b.progress(float64(i)/float64(len(tasks)), t.name)
		if err := t.run(); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
	}
	return nil
}

// useBuildResolvConf gives tools in the chroot the host's DNS setup for the
// build; hygiene puts the image's own resolv.conf back.
func (b *build) useBuildResolvConf() error {
	hp := filepath.Join(b.root, "etc/resolv.conf")
	if fi, err := os.Lstat(hp); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if err := os.Rename(hp, filepath.Join(b.root, savedResolvConf)); err != nil {
			return err
		}
	}
	host, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		host = nil
	}
	return b.writeTreeFile("/etc/resolv.conf", host, 0o644)
}

// containerdConfig writes containerd's default configuration with the
// runc runtime's cgroup driver and the CRI plugin's CNI directory set, so
// what containerd loads matches the spec (Debian's containerd otherwise
// looks for CNI plugins in /usr/lib/cni, where CNI add-ons do not install).
func (b *build) containerdConfig(ctx context.Context, systemdCgroup bool, cniBinDir string) error {
	cfg, err := output(ctx, b.runner, b.chroot("containerd", "config", "default"))
	if err != nil {
		return err
	}
	cfg, err = containerd.Configure(cfg, systemdCgroup, cniBinDir)
	if err != nil {
		return err
	}
	return b.writeTreeFile(ContainerdConfig, cfg, 0o644)
}

// cniPlugins makes Debian's plugins (/usr/lib/cni) available in binDir as
// symlinks, which follow package upgrades.
func (b *build) cniPlugins(binDir string) error {
	const src = "/usr/lib/cni"
	entries, err := os.ReadDir(filepath.Join(b.root, src))
	if err != nil {
		return fmt.Errorf("containernetworking-plugins installed nothing in %s: %w", src, err)
	}
	if binDir == src {
		return nil
	}
	dir, err := inRoot(b.root, binDir, false)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	n := 0
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		link := filepath.Join(dir, e.Name())
		_ = os.Remove(link)
		if err := os.Symlink(path.Join(src, e.Name()), link); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no CNI plugins in %s", src)
	}
	return nil
}

// kubernetesRepo configures the Kubernetes apt repository in the image,
// replacing the build-time entry (key inline) with one whose key is a
// keyring file in /etc/apt/keyrings.
func (b *build) kubernetesRepo(s AptSource) error {
	key, err := os.ReadFile(filepath.Join(b.aptDir, s.Name+".key"))
	if err != nil {
		return err
	}
	kp := KeyringPath(s.Name, isArmored(key))
	if err := b.writeTreeFile(kp, key, 0o644); err != nil {
		return err
	}
	return b.writeTreeFile("/etc/apt/sources.list.d/"+s.Name+".sources", []byte(deb822Source(s, kp)), 0o644)
}

func (b *build) kernelSettings(modules []string, sysctls []imagev1.Sysctl) error {
	if len(modules) > 0 {
		var m strings.Builder
		m.WriteString(header)
		for _, mod := range modules {
			m.WriteString(mod + "\n")
		}
		if err := b.writeTreeFile(ModulesLoadPath, []byte(m.String()), 0o644); err != nil {
			return err
		}
	}
	if len(sysctls) > 0 {
		var s strings.Builder
		s.WriteString(header)
		for _, x := range sysctls {
			fmt.Fprintf(&s, "%s = %s\n", x.Name, x.Value)
		}
		if err := b.writeTreeFile(SysctlPath, []byte(s.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// sshdConfig is key-only sshd. The drop-in sorts first, and sshd keeps
// the first value it reads, so later drop-ins (cloud-init's) cannot turn
// passwords back on.
func sshdConfig(p *SSHParams) string {
	return header + `PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin ` + string(p.PermitRootLogin) + "\n"
}

const sshKeygenUnit = `[Unit]
Description=Generate SSH host keys missing from the image (nodeforge)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
`

func (b *build) sshd(p *SSHParams) error {
	if err := b.writeTreeFile(SSHDConfigPath, []byte(sshdConfig(p)), 0o644); err != nil {
		return err
	}
	return b.writeTreeFile("/etc/systemd/system/"+SSHKeygenUnit, []byte(sshKeygenUnit), 0o644)
}

var argsRE = regexp.MustCompile(`(?m)^ARGS=.*$`)

func (b *build) nodeExporter(port int32) error {
	cur, err := b.readTreeFile(NodeExporterDefault)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	line := fmt.Sprintf(`ARGS="--web.listen-address=:%d"`, port)
	if argsRE.Match(cur) {
		cur = argsRE.ReplaceAll(cur, []byte(line))
	} else {
		cur = append(cur, []byte("\n"+line+"\n")...)
	}
	if err := b.writeTreeFile(NodeExporterDefault, cur, 0o644); err != nil {
		return err
	}
	return b.writeTreeFile(NodeExporterReady, []byte(nodeExporterReady(port)), 0o644)
}

// nodeExporterReady is a drop-in that keeps the exporter's start job
// running until it listens. cloud-init's final stage is ordered after
// multi-user.target, so "cloud-init status: done" then means the exporter
// answers, as it means for containerd (Type=notify). It never fails the
// unit: after 60 s the start completes with a message in the journal.
func nodeExporterReady(port int32) string {
	return header + fmt.Sprintf(`[Service]
ExecStartPost=/bin/sh -c 'i=0; while [ $$i -lt 600 ]; do ss -Hltn "sport = :%[1]d" | grep -q . && exit 0; i=$$((i+1)); sleep 0.1; done; echo "nodeforge: node exporter not listening on :%[1]d after 60s" >&2'
`, port)
}

// firstBootConfig makes the first boot faster and the hostname resolvable
// (measured in docs/benchmarks.md, "Boot verification"): no RSA host key
// (most of cloud-init's 8 s ssh stage under TCG), no keys on the console,
// /etc/hosts managed for the hostname, no locale module (no locales are
// installed). The spec's defaultUserData (92_...) sorts later and wins.
const firstBootConfig = header + `ssh_genkeytypes: [ed25519, ecdsa]
ssh:
  emit_keys_to_console: false
manage_etc_hosts: localhost
locale: false
`

// waitOnlineAny keeps a missing second NIC from holding the boot (and
// cloud-init's network stage) for networkd-wait-online's 120 s default.
const waitOnlineAny = header + `[Service]
ExecStart=
ExecStart=/usr/lib/systemd/systemd-networkd-wait-online --any --timeout=20
`

func (b *build) cloudInit(ds []imagev1.Datasource, userData string) error {
	if err := b.writeTreeFile(FirstBootPath, []byte(firstBootConfig), 0o644); err != nil {
		return err
	}
	if err := b.writeTreeFile(WaitOnlineDropIn, []byte(waitOnlineAny), 0o644); err != nil {
		return err
	}
	if len(ds) > 0 {
		names := make([]string, len(ds))
		for i, d := range ds {
			names[i] = string(d)
		}
		cfg := header + "datasource_list: [ " + strings.Join(names, ", ") + " ]\n"
		if err := b.writeTreeFile(DatasourcesPath, []byte(cfg), 0o644); err != nil {
			return err
		}
	}
	if userData != "" {
		if err := b.writeTreeFile(UserDataPath, []byte(userData), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// lockRoot makes sure root has no usable password.
func (b *build) lockRoot() error {
	sh, err := b.readTreeFile("/etc/shadow")
	if err != nil {
		return err
	}
	lines := strings.Split(string(sh), "\n")
	changed := false
	for i, l := range lines {
		f := strings.Split(l, ":")
		if len(f) > 1 && f[0] == "root" && !strings.HasPrefix(f[1], "*") && !strings.HasPrefix(f[1], "!") {
			f[1] = "*"
			lines[i] = strings.Join(f, ":")
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return b.writeTreeFile("/etc/shadow", []byte(strings.Join(lines, "\n")), 0o640)
}

func (b *build) users(ctx context.Context, users []imagev1.UserSpec) error {
	for _, u := range users {
		args := []string{"useradd", "--create-home", "--shell", "/bin/bash"}
		if len(u.Groups) > 0 {
			args = append(args, "--groups", strings.Join(u.Groups, ","))
		}
		if err := b.runner.Run(ctx, b.chroot(append(args, u.Name)...)); err != nil {
			return fmt.Errorf("user %s: %w", u.Name, err)
		}
		if len(u.SSHAuthorizedKeys) > 0 {
			keys := strings.Join(u.SSHAuthorizedKeys, "\n") + "\n"
			script := `set -e; h=$(getent passwd "$1" | cut -d: -f6); install -d -m 0700 -o "$1" -g "$1" "$h/.ssh"; cat > "$h/.ssh/authorized_keys"; chown "$1:$1" "$h/.ssh/authorized_keys"; chmod 0600 "$h/.ssh/authorized_keys"`
			c := b.chroot("sh", "-c", script, "sh", u.Name)
			c.Stdin = strings.NewReader(keys)
			if err := b.runner.Run(ctx, c); err != nil {
				return fmt.Errorf("user %s authorized keys: %w", u.Name, err)
			}
		}
		if u.Sudo {
			if err := b.writeTreeFile("/etc/sudoers.d/90-nodeforge-"+u.Name, []byte(u.Name+" ALL=(ALL) NOPASSWD:ALL\n"), 0o440); err != nil {
				return err
			}
		}
	}
	return nil
}

// files are written through the image's own tools, so that owners are the
// image's users and symlinks resolve inside the image.
func (b *build) files(ctx context.Context, files []imagev1.FileSpec) error {
	const script = `set -e; mkdir -p "$(dirname "$1")"; rm -f "$1"; cat > "$1"; chown "$2" "$1"; chmod "$3" "$1"`
	for _, f := range files {
		c := b.chroot("sh", "-c", script, "sh", f.Path, f.Owner, f.Mode)
		c.Stdin = strings.NewReader(f.Content)
		if err := b.runner.Run(ctx, c); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	return nil
}

func (b *build) units(units []imagev1.UnitSpec) error {
	for _, u := range units {
		if err := b.writeTreeFile("/etc/systemd/system/"+u.Name, []byte(u.Content), 0o644); err != nil {
			return fmt.Errorf("unit %s: %w", u.Name, err)
		}
	}
	return nil
}

// provisioner runs one spec provisioner against the tree.
func (b *build) provisioner(ctx context.Context, p *ProvisionerParams) error {
	if p.Ansible != nil {
		return b.ansible(ctx, p)
	}
	script := "/tmp/.nodeforge-provisioner-" + p.Name + ".sh"
	if err := b.writeTreeFile(script, []byte(p.Shell), 0o700); err != nil {
		return err
	}
	defer func() { _ = b.removeTree(script) }()
	b.progress(0.1, "running the inline script in the image")
	if err := b.runner.Run(ctx, b.chroot("/bin/sh", "-e", script)); err != nil {
		return fmt.Errorf("shell provisioner %s: %w", p.Name, err)
	}
	return nil
}

// ansible runs a playbook against the tree through Ansible's chroot
// connection (the inventory host is the tree's path), from the build host.
func (b *build) ansible(ctx context.Context, p *ProvisionerParams) error {
	dir := filepath.Join(b.work, "ansible", p.Name)
	for _, d := range []string{dir, filepath.Join(dir, "home"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	playbook := filepath.Join(dir, "playbook.yml")
	if err := os.WriteFile(playbook, []byte(p.Ansible.Playbook), 0o600); err != nil {
		return err
	}
	vars := map[string]string{}
	for _, v := range p.Ansible.ExtraVars {
		vars[v.Name] = v.Value
	}
	vb, _ := json.Marshal(vars)
	varsFile := filepath.Join(dir, "vars.json")
	if err := os.WriteFile(varsFile, vb, 0o600); err != nil {
		return err
	}
	env := []string{
		"HOME=" + filepath.Join(dir, "home"),
		"ANSIBLE_LOCAL_TEMP=" + filepath.Join(dir, "tmp"),
		"ANSIBLE_REMOTE_TEMP=/tmp/.ansible",
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_RETRY_FILES_ENABLED=0",
		"ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3",
		"DEBIAN_FRONTEND=noninteractive",
		// The chroot connection runs modules in the image with
		// ansible-playbook's environment: the host's TMPDIR does not
		// exist there, /tmp exists on both sides.
		"TMPDIR=/tmp",
	}
	b.progress(0.1, "ansible-playbook (chroot connection)")
	c := b.onTree(env, []string{dir}, ansibleArgs(b.root, playbook, varsFile)...)
	if err := b.runner.Run(ctx, c); err != nil {
		return fmt.Errorf("ansible provisioner %s: %w", p.Name, err)
	}
	return b.removeTree("/tmp/.ansible")
}

// errNoAnsible: an Ansible provisioner needs ansible-playbook on the build
// host. The builder never installs software on its host; the builder image
// and hack/deps.sh provide it.
var errNoAnsible = errors.New("ansible-playbook is not installed on the build host (Debian package ansible, which ships the community.general chroot connection; the builder image and hack/deps.sh install it)")

// ansibleArgs is the ansible-playbook command line for a chroot target.
// The inventory is the tree alone, and --limit keeps it so: Ansible always
// has an implicit localhost, and a play for localhost would otherwise run
// on the build host. With the limit it matches no host. (delegate_to and
// lookups still run on the build host; the API documents it.)
func ansibleArgs(root, playbook, varsFile string) []string {
	return []string{"ansible-playbook", "-i", root + ",", "-l", root, "-c", "community.general.chroot", "-e", "@" + varsFile, playbook}
}
