// Package containerd reads and writes the parts of containerd's
// configuration that make a Kubernetes node work: the CRI plugin's default
// runtime, its cgroup driver (SystemdCgroup) and the directory its CNI
// plugins are loaded from. The builder writes them with Configure; verify
// reads them back with Effective, from the file in the image (offline) and
// from `containerd config dump` in the booted guest, so both ask the same
// questions of the same keys.
package containerd

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Paths in a node image.
const (
	// ConfigPath is containerd's configuration file.
	ConfigPath = "/etc/containerd/config.toml"
	// Socket is containerd's CRI endpoint.
	Socket = "unix:///run/containerd/containerd.sock"
)

// CRI plugin IDs: version 2 configurations (containerd 1.x) have one CRI
// plugin; version 3 (containerd 2.x) splits it, the runtime settings under
// io.containerd.cri.v1.runtime.
const (
	criPluginV2 = "io.containerd.grpc.v1.cri"
	criPluginV3 = "io.containerd.cri.v1.runtime"
	criImagesV3 = "io.containerd.cri.v1.images"
)

// CRISettings are the node-relevant settings of containerd's CRI plugin.
type CRISettings struct {
	// Version is the configuration's schema version (2 or 3).
	Version int
	// DefaultRuntime is the runtime pods run with (runc unless set).
	DefaultRuntime string
	// SystemdCgroup is the default runtime's options.SystemdCgroup; nil
	// when the configuration does not set it (containerd then uses cgroupfs).
	SystemdCgroup *bool
	// CNIBinDirs are the directories CNI plugins are loaded from (bin_dir,
	// or bin_dirs in containerd 2.1+); empty when not set, when
	// containerd's compiled-in default applies (which differs between
	// builds: Debian's is /usr/lib/cni, upstream's /opt/cni/bin).
	CNIBinDirs []string
	// CNIConfDir is where CNI network configurations are read from.
	CNIConfDir string
	// SandboxImage is the pause image pods are started with; empty when
	// the configuration does not set it (containerd's compiled-in default).
	SandboxImage string
}

// Effective reads the CRI settings from a containerd configuration, as
// `containerd config default` or `containerd config dump` prints it or as
// a config.toml holds it.
func Effective(cfg []byte) (CRISettings, error) {
	var doc map[string]any
	if err := toml.Unmarshal(cfg, &doc); err != nil {
		return CRISettings{}, fmt.Errorf("containerd configuration is not valid TOML: %w", err)
	}
	s := CRISettings{Version: 1, DefaultRuntime: "runc"}
	if v, ok := doc["version"].(int64); ok {
		s.Version = int(v)
	}
	plugins, _ := doc["plugins"].(map[string]any)
	var cri map[string]any
	switch s.Version {
	case 2:
		cri, _ = plugins[criPluginV2].(map[string]any)
	case 3:
		cri, _ = plugins[criPluginV3].(map[string]any)
	default:
		return s, fmt.Errorf("containerd configuration version %d is not supported (want 2 or 3)", s.Version)
	}
	if cri == nil {
		return s, nil
	}
	ctrd, _ := cri["containerd"].(map[string]any)
	if name, ok := ctrd["default_runtime_name"].(string); ok && name != "" {
		s.DefaultRuntime = name
	}
	runtimes, _ := ctrd["runtimes"].(map[string]any)
	rt, _ := runtimes[s.DefaultRuntime].(map[string]any)
	opts, _ := rt["options"].(map[string]any)
	if v, ok := opts["SystemdCgroup"].(bool); ok {
		s.SystemdCgroup = &v
	}
	cni, _ := cri["cni"].(map[string]any)
	if d, ok := cni["bin_dir"].(string); ok && d != "" {
		s.CNIBinDirs = []string{d}
	}
	if ds, ok := cni["bin_dirs"].([]any); ok {
		s.CNIBinDirs = nil
		for _, d := range ds {
			if d, ok := d.(string); ok && d != "" {
				s.CNIBinDirs = append(s.CNIBinDirs, d)
			}
		}
	}
	s.CNIConfDir, _ = cni["conf_dir"].(string)
	if s.Version == 2 {
		s.SandboxImage, _ = cri["sandbox_image"].(string)
	} else {
		imgs, _ := plugins[criImagesV3].(map[string]any)
		pinned, _ := imgs["pinned_images"].(map[string]any)
		s.SandboxImage, _ = pinned["sandbox"].(string)
	}
	return s, nil
}

// SetSandboxImage sets the CRI's sandbox (pause) image: sandbox_image of
// a version 2 configuration, pinned_images.sandbox of a version 3 one,
// editing the line containerd's default configuration has for it.
func SetSandboxImage(cfg []byte, ref string) ([]byte, error) {
	before, err := Effective(cfg)
	if err != nil {
		return nil, err
	}
	section, key := criPluginV2, "sandbox_image"
	if before.Version == 3 {
		section, key = criImagesV3+".pinned_images", "sandbox"
	}
	norm := func(sec string) string { return strings.NewReplacer(`"`, "", `'`, "", " ", "").Replace(sec) }
	want := "plugins." + section
	lines := strings.Split(string(cfg), "\n")
	var cur string
	set := false
	for i, l := range lines {
		if m := sectionRE.FindStringSubmatch(l); m != nil {
			cur = norm(m[1])
			continue
		}
		if m := keyRE.FindStringSubmatch(l); m != nil && cur == want && m[2] == key {
			lines[i] = m[1] + key + " = " + strconv.Quote(ref)
			set = true
		}
	}
	if !set {
		return nil, fmt.Errorf("containerd's configuration has no %s in [%s]", key, want)
	}
	out := []byte(strings.Join(lines, "\n"))
	after, err := Effective(out)
	if err != nil {
		return nil, err
	}
	if after.SandboxImage != ref {
		return nil, fmt.Errorf("the edited containerd configuration reads back sandbox image %q, want %q", after.SandboxImage, ref)
	}
	return out, nil
}

var (
	sectionRE = regexp.MustCompile(`^\s*\[([^\[\]]+)\]\s*(#.*)?$`)
	keyRE     = regexp.MustCompile(`^(\s*)([A-Za-z0-9_]+)\s*=`)
)

// Configure sets, in containerd's default configuration, the default
// runtime's cgroup driver and (when cniBinDir is not empty) the CRI
// plugin's CNI plugin directory. It edits the lines in place, so the rest
// of the default stays as containerd printed it, and fails when a setting
// is not where containerd's default puts it; the result is read back with
// Effective to prove it says what was asked.
func Configure(cfg []byte, systemdCgroup bool, cniBinDir string) ([]byte, error) {
	before, err := Effective(cfg)
	if err != nil {
		return nil, err
	}
	plugin := criPluginV2
	if before.Version == 3 {
		plugin = criPluginV3
	}
	// Section names as containerd prints them, with either quote style.
	norm := func(sec string) string { return strings.NewReplacer(`"`, "", `'`, "", " ", "").Replace(sec) }
	optsSection := "plugins." + plugin + ".containerd.runtimes." + before.DefaultRuntime + ".options"
	cniSection := "plugins." + plugin + ".cni"

	lines := strings.Split(string(cfg), "\n")
	var section string
	var setCgroup, setCNI bool
	for i, l := range lines {
		if m := sectionRE.FindStringSubmatch(l); m != nil {
			section = norm(m[1])
			continue
		}
		m := keyRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		switch {
		case section == optsSection && m[2] == "SystemdCgroup":
			lines[i] = m[1] + "SystemdCgroup = " + strconv.FormatBool(systemdCgroup)
			setCgroup = true
		case section == cniSection && m[2] == "bin_dir" && cniBinDir != "":
			lines[i] = m[1] + "bin_dir = " + strconv.Quote(cniBinDir)
			setCNI = true
		case section == cniSection && m[2] == "bin_dirs" && cniBinDir != "":
			lines[i] = m[1] + "bin_dirs = [" + strconv.Quote(cniBinDir) + "]"
			setCNI = true
		}
	}
	var missing []string
	if !setCgroup {
		missing = append(missing, "SystemdCgroup in ["+optsSection+"]")
	}
	if cniBinDir != "" && !setCNI {
		missing = append(missing, "bin_dir in ["+cniSection+"]")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("containerd's default configuration has no %s", strings.Join(missing, " and no "))
	}
	out := []byte(strings.Join(lines, "\n"))
	after, err := Effective(out)
	if err != nil {
		return nil, err
	}
	if after.SystemdCgroup == nil || *after.SystemdCgroup != systemdCgroup {
		return nil, errors.New("the edited containerd configuration does not read back with the requested SystemdCgroup")
	}
	if cniBinDir != "" && (len(after.CNIBinDirs) != 1 || after.CNIBinDirs[0] != cniBinDir) {
		return nil, fmt.Errorf("the edited containerd configuration reads back CNI directories %q, want %q", after.CNIBinDirs, cniBinDir)
	}
	return out, nil
}
