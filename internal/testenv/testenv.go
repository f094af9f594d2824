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
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// Env is a running API server with the CRDs installed.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *runtime.Scheme
	env    *envtest.Environment
}

// ErrNoAssets means KUBEBUILDER_ASSETS is not set.
var ErrNoAssets = fmt.Errorf("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/tools.sh envtest)")

// RepoRoot returns the repository root, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
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
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: env}, nil
}

// Stop stops the API server and etcd and removes their data.
func (e *Env) Stop() error { return e.env.Stop() }

// KubectlPath returns the kubectl binary next to the envtest binaries.
func KubectlPath() string {
	return filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
}

// Kubectl runs the envtest kubectl against the API server as an admin and
// returns its output.
func (e *Env) Kubectl(args ...string) (stdout, stderr string, err error) {
	o, eo, err := e.env.ControlPlane.KubeCtl().Run(args...)
	return readAll(o), readAll(eo), err
}

func readAll(r io.Reader) string {
	if r == nil {
		return ""
	}
	b, _ := io.ReadAll(r)
	return string(b)
}
