//go:build e2e

// Package e2e holds nodeforge's end-to-end tests: they run against a real
// cluster named by KUBECONFIG, normally the single-node one that
// hack/local-cluster.sh brings up (make test-e2e does both), or kind or any
// cluster whose node has /dev/kvm.
//
// Images come from tarballs, never from a registry: imageTarball builds one
// from a Go program and loadImage hands it to the cluster with the command in
// NODEFORGE_E2E_IMAGE_LOADER (default "hack/local-cluster.sh import"; for kind,
// "kind load image-archive"). Specs live one topic per file (cluster_test.go,
// and the controller and builder specs beside it) and share the helpers here.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

var (
	// repoRoot is the module root; scripts are run from there.
	repoRoot string
	// restConfig and clientset talk to the cluster under test.
	restConfig *rest.Config
	clientset  *kubernetes.Clientset
	// k8sClient reads and writes nodeforge's kinds too.
	k8sClient client.Client
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "nodeforge e2e")
}

var _ = BeforeSuite(func() {
	SetDefaultEventuallyTimeout(2 * time.Minute)
	SetDefaultEventuallyPollingInterval(time.Second)

	var err error
	repoRoot, err = filepath.Abs(filepath.Join("..", ".."))
	Expect(err).NotTo(HaveOccurred())

	kubeconfig := os.Getenv("KUBECONFIG")
	Expect(kubeconfig).NotTo(BeEmpty(),
		"KUBECONFIG must name the cluster under test (make test-e2e sets it; see docs/local-cluster.md)")
	restConfig, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	clientset, err = kubernetes.NewForConfig(restConfig)
	Expect(err).NotTo(HaveOccurred())

	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(imagev1.AddToScheme(scheme)).To(Succeed())
	k8sClient, err = client.New(restConfig, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	version, err := clientset.Discovery().ServerVersion()
	Expect(err).NotTo(HaveOccurred(), "the API server named by KUBECONFIG=%s must be reachable", kubeconfig)
	GinkgoWriter.Printf("cluster: %s, Kubernetes %s\n", restConfig.Host, version.GitVersion)
})

// newNamespace creates a namespace for one spec, deleted when the spec ends
// (set NODEFORGE_E2E_KEEP=1 to keep it for debugging), and waits for its
// default ServiceAccount so Pods can be admitted.
func newNamespace(ctx context.Context, prefix string) string {
	GinkgoHelper()
	ns, err := clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: prefix + "-",
			Labels:       map[string]string{"app.kubernetes.io/part-of": "nodeforge-e2e"},
		},
	}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) {
		if os.Getenv("NODEFORGE_E2E_KEEP") != "" {
			GinkgoWriter.Printf("keeping namespace %s\n", ns.Name)
			return
		}
		err := clientset.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		if !apierrors.IsNotFound(err) {
			Expect(err).NotTo(HaveOccurred())
		}
	})
	Eventually(func(ctx context.Context) error {
		_, err := clientset.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err
	}).WithContext(ctx).Should(Succeed(), "default ServiceAccount of %s", ns.Name)
	return ns.Name
}

// imageTarball packs the Go main package pkg (relative to the repository
// root) into an image tarball named repo:<content tag>; it returns the image
// reference and the tarball path.
func imageTarball(pkg, repo string) (ref, tarball string) {
	GinkgoHelper()
	out := run(filepath.Join(repoRoot, "hack", "local-cluster", "go-image.sh"), pkg, repo)
	fields := strings.Fields(out)
	Expect(fields).To(HaveLen(2), "go-image.sh prints REF TARBALL, got %q", out)
	return fields[0], fields[1]
}

// loadImage makes an image tarball available to the cluster's nodes.
func loadImage(tarball string) {
	GinkgoHelper()
	loader := os.Getenv("NODEFORGE_E2E_IMAGE_LOADER")
	if loader == "" {
		loader = filepath.Join(repoRoot, "hack", "local-cluster.sh") + " import"
	}
	args := append(strings.Fields(loader), tarball)
	run(args[0], args[1:]...)
}

// run executes a command from the repository root and returns its stdout;
// stderr goes to the Ginkgo log.
func run(name string, args ...string) string {
	GinkgoHelper()
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot
	var stdout strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = GinkgoWriter
	err := cmd.Run()
	Expect(err).NotTo(HaveOccurred(), "%s %s", name, strings.Join(args, " "))
	return stdout.String()
}

// kubectl runs kubectl against the cluster under test and returns its stdout.
func kubectl(args ...string) string {
	GinkgoHelper()
	return run("kubectl", args...)
}

// describePod is a one-line account of a Pod for failure messages.
func describePod(p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pod %s/%s phase=%s", p.Namespace, p.Name, p.Status.Phase)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			fmt.Fprintf(&b, " %s=%s(%s)", c.Type, c.Status, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			fmt.Fprintf(&b, " %s waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			fmt.Fprintf(&b, " %s terminated: exit %d %s %q", cs.Name, cs.State.Terminated.ExitCode,
				cs.State.Terminated.Reason, cs.State.Terminated.Message)
		}
	}
	return b.String()
}

// runOutput executes a command from the repository root and returns its
// combined output, without failing the spec (for diagnostics).
func runOutput(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	return string(out), err
}
