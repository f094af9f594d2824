package containerd

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// debianDefault is `containerd config default` of Debian 13's containerd
// 1.7.24, taken from a built image.
func debianDefault(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/debian-1.7.24-default.toml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A containerd 2.x (version 3) configuration in the shape `containerd
// config default` prints it, cut to the keys that matter here.
const v3Default = `version = 3
root = '/var/lib/containerd'

[plugins]
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'

          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
            BinaryName = ''
            SystemdCgroup = false

    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/opt/cni/bin']
      conf_dir = '/etc/cni/net.d'
`

func TestEffectiveDebianDefault(t *testing.T) {
	s, err := Effective(debianDefault(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != 2 || s.DefaultRuntime != "runc" || s.SystemdCgroup == nil || *s.SystemdCgroup {
		t.Fatalf("settings %+v, want version 2, runtime runc, SystemdCgroup false", s)
	}
	// Debian patches the default CNI directory: a CNI add-on that installs
	// into /opt/cni/bin would not be found without Configure.
	if len(s.CNIBinDirs) != 1 || s.CNIBinDirs[0] != "/usr/lib/cni" || s.CNIConfDir != "/etc/cni/net.d" {
		t.Fatalf("CNI dirs %q, conf %q", s.CNIBinDirs, s.CNIConfDir)
	}
}

func TestConfigure(t *testing.T) {
	for name, cfg := range map[string][]byte{"debian 1.7 (version 2)": debianDefault(t), "containerd 2 (version 3)": []byte(v3Default)} {
		t.Run(name, func(t *testing.T) {
			out, err := Configure(cfg, true, "/opt/cni/bin")
			if err != nil {
				t.Fatal(err)
			}
			s, err := Effective(out)
			if err != nil {
				t.Fatal(err)
			}
			if s.SystemdCgroup == nil || !*s.SystemdCgroup || len(s.CNIBinDirs) != 1 || s.CNIBinDirs[0] != "/opt/cni/bin" {
				t.Fatalf("after Configure: %+v", s)
			}
			// Only the two settings change.
			a, b := strings.Split(string(cfg), "\n"), strings.Split(string(out), "\n")
			if len(a) != len(b) {
				t.Fatalf("line count %d -> %d", len(a), len(b))
			}
			changed := 0
			for i := range a {
				if a[i] != b[i] {
					changed++
				}
			}
			if changed != 2 {
				t.Fatalf("%d lines changed, want 2", changed)
			}
			off, err := Configure(cfg, false, "")
			if err != nil {
				t.Fatal(err)
			}
			if s, _ := Effective(off); s.SystemdCgroup == nil || *s.SystemdCgroup {
				t.Fatalf("SystemdCgroup false not written: %+v", s)
			}
		})
	}
}

func TestConfigureFailsWhereContainerdsDefaultDiffers(t *testing.T) {
	cases := map[string]struct{ cfg, want string }{
		"no runc options": {
			cfg:  "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n",
			want: `no SystemdCgroup in [plugins.io.containerd.grpc.v1.cri.containerd.runtimes.runc.options]`,
		},
		"no cni section": {
			cfg:  "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = false\n",
			want: `no bin_dir in [plugins.io.containerd.grpc.v1.cri.cni]`,
		},
		"SystemdCgroup of another runtime": {
			cfg:  "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = false\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n",
			want: `no SystemdCgroup in [plugins.io.containerd.grpc.v1.cri.containerd.runtimes.crun.options]`,
		},
		"version 1": {cfg: "[plugins.cri]\n", want: "version 1 is not supported"},
		"not TOML":  {cfg: "version = = 2\n", want: "not valid TOML"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Configure([]byte(tc.cfg), true, "/opt/cni/bin")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Configure = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// A CRI section commented out or written for the other schema version
// is not the effective one.
func TestEffectiveIgnoresOtherSchemas(t *testing.T) {
	cfg := "version = 2\n# [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n#   SystemdCgroup = true\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n"
	s, err := Effective([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if s.SystemdCgroup != nil {
		t.Fatalf("SystemdCgroup = %v from a section containerd 1.x does not read", *s.SystemdCgroup)
	}
}

func TestSetSandboxImage(t *testing.T) {
	const pause = "registry.k8s.io/pause:3.10.2"
	v3 := v3Default + `
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10'
`
	for name, cfg := range map[string][]byte{"debian 1.7 (version 2)": debianDefault(t), "version 3": []byte(v3)} {
		t.Run(name, func(t *testing.T) {
			before, err := Effective(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if before.SandboxImage == "" || before.SandboxImage == pause {
				t.Fatalf("the default's sandbox image is %q; the test needs another one", before.SandboxImage)
			}
			out, err := SetSandboxImage(cfg, pause)
			if err != nil {
				t.Fatal(err)
			}
			after, err := Effective(out)
			if err != nil {
				t.Fatal(err)
			}
			if after.SandboxImage != pause {
				t.Fatalf("sandbox image %q after SetSandboxImage, want %q", after.SandboxImage, pause)
			}
			// Nothing else changed.
			before.SandboxImage = pause
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("settings changed beyond the sandbox image: %+v, want %+v", after, before)
			}
			if d := len(strings.Split(string(out), "\n")) - len(strings.Split(string(cfg), "\n")); d != 0 {
				t.Fatalf("line count changed by %d", d)
			}
		})
	}
	t.Run("no sandbox image line", func(t *testing.T) {
		if _, err := SetSandboxImage([]byte(v3Default), pause); err == nil || !strings.Contains(err.Error(), "pinned_images") {
			t.Fatalf("err = %v, want one naming pinned_images", err)
		}
	})
}
