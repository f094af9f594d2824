package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A test binary that dies without running deferred calls (here: a panic)
// still leaves no kube-apiserver, etcd, data dir or serving-cert dir behind.
func TestStartReapsAfterPanic(t *testing.T) {
	if os.Getenv("NODEFORGE_TESTENV_PANIC") == "1" {
		env, err := Start(Options{})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(3)
		}
		fmt.Println("DIR", env.env.ControlPlane.Etcd.DataDir)
		fmt.Println("DIR", env.env.ControlPlane.APIServer.CertDir)
		fmt.Println("DIR", env.env.WebhookInstallOptions.LocalServingCertDir)
		for _, c := range childProcs(os.Getpid()) {
			fmt.Println("PID", c.pid)
		}
		panic("a test panicked with envtest running")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("NODEFORGE_REQUIRE_ENVTEST") == "1" {
			t.Fatal(ErrNoAssets)
		}
		t.Skip(ErrNoAssets)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartReapsAfterPanic$", "-test.v")
	cmd.Env = append(os.Environ(), "NODEFORGE_TESTENV_PANIC=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("a test panicked")) {
		t.Fatalf("the child test did not panic (err %v):\n%s", err, out)
	}
	var pids []int
	var dirs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "PID "); ok {
			n, _ := strconv.Atoi(v)
			pids = append(pids, n)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "DIR "); ok {
			dirs = append(dirs, v)
		}
	}
	if len(pids) < 2 || len(dirs) != 3 {
		t.Fatalf("the child reported %d processes and %d dirs, want etcd, kube-apiserver and their 3 dirs:\n%s", len(pids), len(dirs), out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, p := range pids {
			if alive(p) {
				left = append(left, "process "+strconv.Itoa(p))
			}
		}
		for _, d := range dirs {
			if _, err := os.Stat(d); err == nil {
				left = append(left, "dir "+d)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the panic these remain: %s", strings.Join(left, ", "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	return len(f) > 0 && f[0] != "Z"
}
