package builder

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/manifest"
)

func TestStripUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		"https://deb.example.test/debian":                 "https://deb.example.test/debian",
		"https://user:pw@deb.example.test/debian":         "https://deb.example.test/debian",
		"http://user@127.0.0.1:8080/core:/stable:/v1.37/": "http://127.0.0.1:8080/core:/stable:/v1.37/",
		"https://u:p%40ss@deb.example.test/x?a=b@c":       "https://deb.example.test/x?a=b@c",
		"https://deb.example.test/path@with/at":           "https://deb.example.test/path@with/at",
		"file:///srv/key.asc":                             "file:///srv/key.asc",
		"":                                                "",
	} {
		if got := stripUserinfo(in); got != want {
			t.Errorf("stripUserinfo(%q) = %q; want %q", in, got, want)
		}
	}
}

// The published manifest carries no build-time secret: no extraVars
// value, no URL credentials. Its specDigest is the real content's.
func TestManifestRedactsSecrets(t *testing.T) {
	// resolve checks that ansible-playbook is installed; the fake runner
	// plays it.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "ansible-playbook"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	e := newBuildEnv(t)
	c := kubeContent()
	c.Base.Mirror = "https://mirroruser:mirrorpw@127.0.0.1/debian"
	c.Kubernetes.AptRepository.URL = "http://repouser:repopw@127.0.0.1:8080/"
	c.Provisioners = []imagev1.Provisioner{{Name: "site", Ansible: &imagev1.AnsibleProvisioner{
		Playbook:  "- hosts: all\n  tasks: []\n",
		ExtraVars: []imagev1.AnsibleVar{{Name: "token", Value: "extravarsecret"}},
	}}}
	res, err := Build(context.Background(), e.opts, c)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(res.ManifestPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"mirrorpw", "mirroruser", "repopw", "repouser", "extravarsecret"} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("the manifest contains %q", secret)
		}
	}
	m, err := manifest.Read(res.ManifestPath)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := c.Digest(); m.SpecDigest != want {
		t.Errorf("specDigest = %s; want the real content's %s", m.SpecDigest, want)
	}
	if got := m.Content.Provisioners[0].Ansible.ExtraVars[0]; got != (imagev1.AnsibleVar{Name: "token", Value: redacted}) {
		t.Errorf("extraVar in the manifest = %+v", got)
	}
	if m.Content.Base.Mirror != "https://127.0.0.1/debian" || m.Base.Mirror != "https://127.0.0.1/debian" || m.Content.Kubernetes.AptRepository.URL != "http://127.0.0.1:8080/" {
		t.Errorf("URLs in the manifest: %q %q %q", m.Content.Base.Mirror, m.Base.Mirror, m.Content.Kubernetes.AptRepository.URL)
	}
	// The build itself used the real values.
	if got := c.Provisioners[0].Ansible.ExtraVars[0].Value; got != "extravarsecret" {
		t.Errorf("the caller's content was changed: %q", got)
	}
	var sawMirror bool
	for _, cmd := range e.run.commands {
		sawMirror = sawMirror || strings.Contains(cmd, "https://mirroruser:mirrorpw@127.0.0.1/debian")
	}
	if !sawMirror {
		t.Error("mmdebstrap did not get the mirror with its credentials")
	}
}

// The manifest records the suites the image came from: a custom mirror
// gives the release and -updates, no -security.
func TestManifestRecordsSuites(t *testing.T) {
	e := newBuildEnv(t)
	c := kubeContent()
	c.Base.Mirror = "http://127.0.0.1/debian"
	res, err := Build(context.Background(), e.opts, c)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Read(res.ManifestPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"trixie", "trixie-updates"}; !slices.Equal(m.Base.Suites, want) {
		t.Errorf("base.suites = %q; want %q", m.Base.Suites, want)
	}
	var lines []string
	for _, cmd := range e.run.cmds {
		if cmd.Name == "mmdebstrap" {
			lines = append(lines, strings.Join(cmd.Args, "\n"))
		}
	}
	if got := strings.Join(lines, "\n"); !strings.Contains(got, "deb http://127.0.0.1/debian trixie-updates main") || strings.Contains(got, "-security") {
		t.Errorf("mmdebstrap MIRROR arguments do not match the recorded suites:\n%s", got)
	}
}

func TestSourcesSuites(t *testing.T) {
	sl := "deb http://deb.example.test/debian trixie main\n" +
		"deb [arch=amd64 signed-by=/k.gpg] http://deb.example.test/debian trixie-updates main\n" +
		"# deb http://deb.example.test/debian trixie-backports main\n" +
		"deb-src http://deb.example.test/debian trixie main\n" +
		"deb http://security.example.test/debian-security trixie-security main\n" +
		"deb http://other.example.test/debian trixie main\n"
	if got, want := sourcesSuites([]byte(sl)), []string{"trixie", "trixie-updates", "trixie-security"}; !slices.Equal(got, want) {
		t.Errorf("sourcesSuites = %q; want %q", got, want)
	}
}
