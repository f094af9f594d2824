package builder

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// setSecrets puts credentials, a host TMPDIR and a proxy in the builder's
// environment; it returns the TMPDIR.
func setSecrets(t *testing.T) string {
	tmp := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
	t.Setenv("AWS_SESSION_TOKEN", "t0ken")
	t.Setenv("NODEFORGE_S3_SECRET_KEY", "s3cr3t")
	t.Setenv("TMPDIR", tmp)
	t.Setenv("http_proxy", "http://proxy.test:3128")
	return tmp
}

func checkNoSecrets(t *testing.T, what string, env []string) {
	t.Helper()
	for _, kv := range env {
		if strings.HasPrefix(kv, "AWS_") || strings.HasPrefix(kv, "NODEFORGE_S3_SECRET_KEY=") {
			t.Errorf("%s: environment has %s", what, kv)
		}
	}
}

func TestChildEnvironment(t *testing.T) {
	setSecrets(t)
	e := newBuildEnv(t)
	c := kubeContent()
	c.Provisioners = []imagev1.Provisioner{{Name: "motd", Shell: &imagev1.ShellProvisioner{Inline: "echo hi > /etc/motd"}}}
	if _, err := Build(context.Background(), e.opts, c); err != nil {
		t.Fatal(err)
	}
	var chroot, host int
	for _, c := range e.run.cmds {
		env := commandEnv(c)
		checkNoSecrets(t, c.Short(), env)
		if c.Name == "chroot" {
			chroot++
			if !c.Clean {
				t.Errorf("%s: not a clean environment", c.Short())
			}
			for _, kv := range env {
				if strings.HasPrefix(kv, "TMPDIR=") {
					t.Errorf("%s: environment has %s", c.Short(), kv)
				}
			}
			for _, want := range []string{"HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "http_proxy=http://proxy.test:3128"} {
				if !slices.Contains(env, want) {
					t.Errorf("%s: environment %q lacks %s", c.Short(), env, want)
				}
			}
		} else {
			host++
			if !slices.Contains(env, "PATH="+os.Getenv("PATH")) {
				t.Errorf("%s: host command lost the host's PATH", c.Short())
			}
		}
	}
	if chroot == 0 || host == 0 {
		t.Fatalf("%d chroot and %d host commands; want some of each", chroot, host)
	}
}

func TestAnsibleEnvironment(t *testing.T) {
	setSecrets(t)
	run := &fakeRunner{t: t}
	dir := t.TempDir()
	b := &build{root: filepath.Join(dir, "rootfs"), work: dir, runner: run, rep: NopReporter{}}
	b.now = func() time.Time { return time.Time{} }
	p := &ProvisionerParams{Name: "site", Ansible: &imagev1.AnsibleProvisioner{Playbook: "- hosts: all\n  tasks: []\n"}}
	if err := b.ansible(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if len(run.cmds) != 1 {
		t.Fatalf("commands = %v", run.commands)
	}
	env := commandEnv(run.cmds[0])
	checkNoSecrets(t, "ansible-playbook", env)
	if got := envLast(env, "TMPDIR"); got != "/tmp" {
		t.Errorf("ansible-playbook TMPDIR = %q; want /tmp (it is the modules' TMPDIR in the image)", got)
	}
}

// envLast is the value a process sees for key: the last one in env.
func envLast(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, _ := strings.Cut(kv, "="); k == key {
			v = val
		}
	}
	return v
}

func TestExecRunnerEnvironment(t *testing.T) {
	tmp := setSecrets(t)
	for _, clean := range []bool{false, true} {
		var out bytes.Buffer
		r := &ExecRunner{}
		if err := r.Run(context.Background(), Command{Name: "env", Clean: clean, Env: []string{"X=1"}, Stdout: &out}); err != nil {
			t.Fatal(err)
		}
		env := strings.Split(strings.TrimSpace(out.String()), "\n")
		checkNoSecrets(t, "env", env)
		if !slices.Contains(env, "X=1") || !slices.Contains(env, "http_proxy=http://proxy.test:3128") {
			t.Errorf("clean=%t: environment %q lacks the command's own or the proxy", clean, env)
		}
		if hasTmp := slices.Contains(env, "TMPDIR="+tmp); hasTmp == clean {
			t.Errorf("clean=%t: host TMPDIR passed: %t", clean, hasTmp)
		}
	}
}
