// Package testenv starts a real kube-apiserver and etcd (controller-runtime's
// envtest) with nodeforge's CRDs installed, for tests of the API and the
// controllers.
//
// The binaries come from hack/tools.sh envtest, which builds them from
// pinned Go modules; `make test` exports KUBEBUILDER_ASSETS. Without it, a
// test run with -short skips envtest suites and any other run fails with a
// message saying how to get the binaries.
package testenv

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/testenv/reporoot"
)

// Env is a running API server with the CRDs installed.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *runtime.Scheme
	env    *envtest.Environment

	adminOnce sync.Once
	admin     interface { // *controlplane.KubeCtl, an internal type
		Run(args ...string) (stdout, stderr io.Reader, err error)
	}
	adminErr error
}

// ErrNoAssets means KUBEBUILDER_ASSETS is not set.
var ErrNoAssets = fmt.Errorf("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/tools.sh envtest)")

// RepoRoot returns the repository root (reporoot.Dir); it panics when the
// test does not run inside the repository.
func RepoRoot() string {
	d, err := reporoot.Dir()
	if err != nil {
		panic(err)
	}
	return d
}

// Scheme returns a scheme with the built-in types and nodeforge's.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := imagev1.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Options adjust the environment.
type Options struct {
	// ExtraCRDDirs are installed next to nodeforge's CRDs (for example test
	// CRDs of KubeVirt).
	ExtraCRDDirs []string
}

// Start starts the API server and installs the CRDs.
func Start(opts Options) (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, ErrNoAssets
	}
	dirs := append([]string{filepath.Join(RepoRoot(), "config", "crd", "bases")}, opts.ExtraCRDDirs...)
	scheme := Scheme()
	env := &envtest.Environment{
		CRDDirectoryPaths:     dirs,
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest: %w", err)
	}
	reapOnExit([]string{env.ControlPlane.Etcd.DataDir, env.ControlPlane.APIServer.CertDir,
		env.WebhookInstallOptions.LocalServingCertDir})
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: env}, nil
}

// reapOnExit starts a watchdog, in its own session, that waits for this
// process to end and then kills the child processes it has now (etcd and
// kube-apiserver) and removes dirs. Stop does that on a normal exit; the
// watchdog covers the exits that skip deferred calls, such as a panic in a
// test or a test binary killed by its -timeout. It finds nothing to do
// after a Stop.
func reapOnExit(dirs []string) {
	children := childProcs(os.Getpid())
	if len(children) == 0 {
		return
	}
	// A PID is killed only while it is still the process started here: its
	// start time (field 22 of /proc/PID/stat) must not have changed.
	script := `parent=$1; shift
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
for a in "$@"; do
	case $a in
	pid=*)
		p=${a#pid=}; p=${p%%:*}
		now=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f20)
		[ "$now" = "${a##*:}" ] && kill -9 "$p" 2>/dev/null
		;;
	esac
done
for a in "$@"; do case $a in dir=*) rm -rf "${a#dir=}" ;; esac; done
exit 0`
	args := []string{"-c", script, "reaper", strconv.Itoa(os.Getpid())}
	for _, c := range children {
		args = append(args, "pid="+strconv.Itoa(c.pid)+":"+c.start)
	}
	for _, d := range dirs {
		if d != "" {
			args = append(args, "dir="+d)
		}
	}
	cmd := exec.Command("sh", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err == nil {
		go func() { _ = cmd.Wait() }()
	}
}

type proc struct {
	pid   int
	start string // clock ticks after boot, field 22 of /proc/PID/stat
}

// childProcs lists the processes whose parent is pid, from /proc.
func childProcs(pid int) []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces or parens.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 19 && f[1] == strconv.Itoa(pid) {
			out = append(out, proc{pid: n, start: f[19]})
		}
	}
	return out
}

// Stop stops the API server and etcd and removes their data.
func (e *Env) Stop() error { return e.env.Stop() }

// UserConfig returns a rest.Config that authenticates as user (in groups),
// whose rights are only what RBAC grants it: for tests of the manager's
// roles. The suite's own Config is a cluster admin.
func (e *Env) UserConfig(user string, groups ...string) (*rest.Config, error) {
	u, err := e.env.AddUser(envtest.User{Name: user, Groups: groups}, e.Config)
	if err != nil {
		return nil, fmt.Errorf("adding user %s: %w", user, err)
	}
	return u.Config(), nil
}

// KubectlPath returns the kubectl binary next to the envtest binaries.
func KubectlPath() string {
	return filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
}

// Kubectl runs the envtest kubectl against the API server as a cluster
// admin (a user in system:masters, made on first use) and returns its output.
func (e *Env) Kubectl(args ...string) (stdout, stderr string, err error) {
	e.adminOnce.Do(func() {
		var u *envtest.AuthenticatedUser
		if u, e.adminErr = e.env.AddUser(envtest.User{Name: "nodeforge-test-admin", Groups: []string{"system:masters"}}, nil); e.adminErr == nil {
			e.admin, e.adminErr = u.Kubectl()
		}
	})
	if e.adminErr != nil {
		return "", "", fmt.Errorf("envtest admin user: %w", e.adminErr)
	}
	o, eo, err := e.admin.Run(args...)
	return readAll(o), readAll(eo), err
}

func readAll(r io.Reader) string {
	if r == nil {
		return ""
	}
	b, _ := io.ReadAll(r)
	return string(b)
}
