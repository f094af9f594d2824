package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nodeforge/nodeforge/internal/testenv"
)

// --kubevirt=auto turns the backend on exactly when the API server serves
// VirtualMachineInstances; true and false are taken as given.
func TestKubeVirtEnabled(t *testing.T) {
	env, err := testenv.Start(testenv.Options{})
	if err != nil {
		if os.Getenv("NODEFORGE_REQUIRE_ENVTEST") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	check := func(mode string, want bool) {
		t.Helper()
		got, err := (&options{enableKubeVirt: mode}).kubevirtEnabled(env.Config)
		if err != nil || got != want {
			t.Fatalf("--kubevirt=%s: got %v, %v; want %v", mode, got, err, want)
		}
	}
	check("auto", false)
	check("true", true)

	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(testenv.RepoRoot(), "test", "crds", "kubevirt")}, ErrorIfPathMissing: true,
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := (&options{enableKubeVirt: "auto"}).kubevirtEnabled(env.Config)
		if err == nil && got {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("--kubevirt=auto with the VirtualMachineInstance CRD installed: got %v, %v", got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	check("false", false)
}
