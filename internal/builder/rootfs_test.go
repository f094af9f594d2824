package builder

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nodeforge/nodeforge/internal/manifest"
)

// bootstrapCommands are the mmdebstrap commands a build ran, in order.
func (f *fakeRunner) bootstrapCommands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.commands {
		if strings.HasPrefix(c, "mmdebstrap ") {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeRunner) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commands, f.cmds, f.bootstraps = nil, nil, nil
}

func cachedLayers(t *testing.T, cache string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(cache, "base"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

var hexKey = regexp.MustCompile(`^[0-9a-f]{64}$`)

// TestBaseLayerCache: the first build makes the base layer from Debian's
// packages alone and caches it; builds whose base closure is the same
// (the same spec, a package added) reuse it and only install the layer;
// a version change in the base's closure makes a new one; the cache
// keeps the few most recently used.
func TestBaseLayerCache(t *testing.T) {
	e := newBuildEnv(t)
	build := func(t *testing.T, pkgs ...string) *manifest.Manifest {
		t.Helper()
		e.run.reset()
		c := kubeContent()
		c.Packages = append(c.Packages, pkgs...)
		res, err := Build(context.Background(), e.opts, c)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		return res.Manifest
	}

	m := build(t)
	key := m.Base.Layer
	if !hexKey.MatchString(key) || m.Base.LayerReused {
		t.Fatalf("first build: base layer %q, reused %v; want a new sha256 key", key, m.Base.LayerReused)
	}
	if got := cachedLayers(t, e.opts.CacheDir); !slices.Equal(got, []string{key + ".tar"}) {
		t.Errorf("cached layers = %v; want %s.tar", got, key)
	}
	cmds := e.run.bootstrapCommands()
	if len(cmds) != 3 {
		t.Fatalf("mmdebstrap ran %d times; want resolve, base, layer:\n%s", len(cmds), strings.Join(cmds, "\n"))
	}
	base, layer := cmds[1], cmds[2]
	// The base: minbase with the base requests pinned, from Debian only.
	for _, want := range []string{"--variant=minbase", "containerd=1.7.24~ds1-6", "openssh-server", "linux-image-cloud-amd64"} {
		if !strings.Contains(base, want) {
			t.Errorf("base run lacks %q:\n%s", want, base)
		}
	}
	for _, bad := range []string{"kubeadm", "kubernetes.sources", "jq", "vim"} {
		if strings.Contains(base, bad) {
			t.Errorf("base run contains %q (a layer package or the extra repository):\n%s", bad, base)
		}
	}
	// The layer: the base extracted first, then the extra repository, then
	// the layer's packages installed in the tree.
	hooks := regexp.MustCompile(`--setup-hook=(\S+)`).FindAllStringSubmatch(layer, -1)
	if len(hooks) == 0 || !strings.HasPrefix(hooks[0][1], "tar") || !strings.Contains(layer, key+".tar") {
		t.Errorf("the layer run does not extract the base layer first:\n%s", layer)
	}
	if !strings.Contains(layer, "kubernetes.sources") || !strings.Contains(layer, "--variant=custom") {
		t.Errorf("layer run lacks the custom variant or the extra repository:\n%s", layer)
	}
	for _, want := range []string{"'kubeadm=1.37.2-1.1'", "'cri-tools=1.37.0-1.1'", "'jq=1.7.1-6'", "'vim'", "--allow-downgrades"} {
		if !strings.Contains(layer, want) {
			t.Errorf("layer install lacks %s:\n%s", want, layer)
		}
	}
	if strings.Contains(layer, "openssh-server") {
		t.Errorf("layer run installs a base package:\n%s", layer)
	}

	t.Run("the same spec reuses the base", func(t *testing.T) {
		m := build(t)
		if m.Base.Layer != key || !m.Base.LayerReused {
			t.Errorf("base layer %q reused %v; want %s reused", m.Base.Layer, m.Base.LayerReused, key)
		}
		for _, c := range e.run.bootstrapCommands() {
			if strings.Contains(c, "--variant=minbase") {
				t.Errorf("the base was built again:\n%s", c)
			}
		}
	})
	t.Run("a package added reuses the base", func(t *testing.T) {
		m := build(t, "curl")
		if m.Base.Layer != key || !m.Base.LayerReused {
			t.Errorf("base layer %q reused %v; want %s reused", m.Base.Layer, m.Base.LayerReused, key)
		}
		if cmds := e.run.bootstrapCommands(); !strings.Contains(cmds[len(cmds)-1], "'curl'") {
			t.Errorf("curl is not installed in the layer:\n%s", cmds[len(cmds)-1])
		}
	})
	t.Run("a base package update makes a new base; old ones are pruned", func(t *testing.T) {
		keys := []string{key}
		for _, v := range []string{"2.41-12+deb13u6", "2.41-12+deb13u7", "2.41-12+deb13u8"} {
			e.run.versions = map[string]string{"libc6": v}
			m := build(t)
			if m.Base.LayerReused || slices.Contains(keys, m.Base.Layer) {
				t.Errorf("libc6 %s: base layer %q reused %v; want a new one", v, m.Base.Layer, m.Base.LayerReused)
			}
			keys = append(keys, m.Base.Layer)
		}
		got := cachedLayers(t, e.opts.CacheDir)
		var want []string
		for _, k := range keys[len(keys)-keepBaseLayers:] {
			want = append(want, k+".tar")
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("cached layers = %v; want the %d newest %v", got, keepBaseLayers, want)
		}
	})
}

// TestBaseLayerUncached: without a key (the simulation failed, no cache
// dir) the tree is built in one run, as before, and the manifest names
// no layer.
func TestBaseLayerUncached(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(e *buildEnv)
		message string
	}{
		{"simulation fails", func(e *buildEnv) {
			e.run.simulateError = "Unable to locate package linux-image-cloud-amd64"
		}, "base layer not cached: simulating its install failed: Unable to locate package linux-image-cloud-amd64"},
		{"no cache dir", func(e *buildEnv) { e.opts.CacheDir = "" }, "base layer not cached: no package cache dir"},
		{"a base package pinned off the candidate", func(e *buildEnv) {
			e.run.versions = map[string]string{"containerd": "2.1.0-1"}
			e.run.older = map[string]string{"containerd": "1.7.24~ds1-6"}
		}, "base layer not cached: containerd is pinned to 1.7.24~ds1-6 (containerRuntime.containerd.version), not apt's candidate 2.1.0-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newBuildEnv(t)
			tc.setup(e)
			c := kubeContent()
			if tc.name == "a base package pinned off the candidate" {
				// The archive's candidate is 2.1.0-1; the spec wants 1.7.
				c.ContainerRuntime.Containerd.Version = "~1.7"
			}
			res, err := Build(context.Background(), e.opts, c)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if res.Manifest.Base.Layer != "" {
				t.Errorf("manifest names base layer %q", res.Manifest.Base.Layer)
			}
			cmds := e.run.bootstrapCommands()
			if len(cmds) != 2 || !strings.Contains(cmds[1], "--variant=minbase") || !strings.Contains(cmds[1], "kubeadm=1.37.2-1.1") || !strings.Contains(cmds[1], "kubernetes.sources") {
				t.Errorf("want resolve and one minbase run of every package:\n%s", strings.Join(cmds, "\n"))
			}
			if !slices.ContainsFunc(e.rep.events, func(ev Event) bool { return strings.HasPrefix(ev.Message, tc.message) }) {
				t.Errorf("no progress message %q", tc.message)
			}
		})
	}
}

func TestBaseClosure(t *testing.T) {
	reqs := []PackageRequest{
		{Name: "containerd", Match: MatchConstraint, Version: ">=1.7.23", Why: "containerRuntime.containerd.version"},
		{Name: "kubeadm", Match: MatchPrefix, Version: "1.37.2-", Why: "kubernetes.version", Layer: true},
	}
	sim := []byte(`Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  containerd libc6
Inst libc6 (2.41-12+deb13u5 Debian:13.8/stable, Debian-Security:13/stable-security [amd64]) []
Inst containerd (1.7.24~ds1-6+deb13u1 Debian:13.8/stable [amd64])
Conf libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64])
`)
	got, why := baseClosure(sim, reqs, map[string]string{"containerd": "1.7.24~ds1-6+deb13u1", "kubeadm": "1.37.2-1.1"})
	if why != "" || !slices.Equal(got, []string{"containerd 1.7.24~ds1-6+deb13u1 amd64", "libc6 2.41-12+deb13u5 amd64"}) {
		t.Errorf("closure = %q, %q", got, why)
	}
	if _, why := baseClosure(sim, reqs, map[string]string{"containerd": "1.7.23-1"}); !strings.Contains(why, "containerd is pinned to 1.7.23-1 (containerRuntime.containerd.version), not apt's candidate 1.7.24~ds1-6+deb13u1") {
		t.Errorf("a pin off the candidate: %q", why)
	}
	if _, why := baseClosure([]byte("E: Unable to locate package nope\nE: apt-get --simulate exited with status 100\n"), nil, nil); why != "simulating its install failed: Unable to locate package nope" {
		t.Errorf("failed simulation: %q", why)
	}
	if _, why := baseClosure([]byte("Reading package lists...\n"), nil, nil); why == "" {
		t.Error("an empty closure keys a layer")
	}
}
