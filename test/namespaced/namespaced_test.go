// Package namespaced proves the manager's per-namespace mode against a real
// API server (envtest) with RBAC: the manager runs as a user whose rights
// are exactly the repository's manifests for that mode (config/namespaced)
// — the full manager role and the Secret reader bound in one build
// namespace only, and nodeforge's own objects and Namespaces cluster-wide
// (config/rbac/own_objects_role.yaml) — and with --build-namespace set to
// that namespace. It builds a NodeImage there under
// --max-concurrent-builds (which counts live builders), leaves another
// namespace alone, and releases every finalizer when the namespace is
// deleted even after the namespace's RoleBindings are gone.
package namespaced_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/backend/pod"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/testenv"
)

const (
	managerUser = "system:serviceaccount:nodeforge-system:nodeforge-manager"
	buildNS     = "team-a"
	otherNS     = "team-b"
	timeout     = 30 * time.Second
)

type noLogs struct{}

func (noLogs) TailLogs(context.Context, string, string, string, int64) ([]byte, error) {
	return nil, nil
}

// applyManifest creates the objects of a YAML file of the repository (one
// or more documents) with the admin client.
func applyManifest(t *testing.T, g Gomega, c client.Client, path string, objs ...client.Object) {
	applyManifestFixed(t, g, c, path, func() {}, objs...)
}

// applyManifestFixed is applyManifest with a fix-up of the decoded objects
// before they are created (what kustomize would set).
func applyManifestFixed(t *testing.T, g Gomega, c client.Client, path string, fix func(), objs ...client.Object) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), path))
	g.Expect(err).NotTo(HaveOccurred())
	docs := splitYAML(b)
	g.Expect(docs).To(HaveLen(len(objs)), "%s: documents", path)
	for i, d := range docs {
		g.Expect(yaml.Unmarshal(d, objs[i])).To(Succeed(), "%s: document %d", path, i)
	}
	fix()
	for i := range objs {
		g.Expect(c.Create(context.Background(), objs[i])).To(Succeed(), "%s: document %d", path, i)
	}
}

// splitYAML splits a multi-document file, dropping documents that hold
// only comments.
func splitYAML(b []byte) [][]byte {
	var out [][]byte
	for _, d := range strings.Split(string(b), "\n---\n") {
		for _, l := range strings.Split(d, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, []byte(d))
				break
			}
		}
	}
	return out
}

func TestPerNamespaceMode(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("NODEFORGE_REQUIRE_ENVTEST") == "1" {
			t.Fatal(testenv.ErrNoAssets)
		}
		t.Skip(testenv.ErrNoAssets)
	}
	g := NewWithT(t)
	ctx := context.Background()
	env, err := testenv.Start(testenv.Options{})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	admin := env.Client

	for _, ns := range []string{buildNS, otherNS} {
		g.Expect(admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		g.Expect(admin.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s3-creds", Namespace: ns},
			StringData: map[string]string{"accessKeyID": "AKIATEST", "secretAccessKey": "s3cret"}})).To(Succeed())
	}
	// The roles exactly as shipped; the bindings of config/namespaced.
	applyManifest(t, g, admin, "config/rbac/role.yaml", &rbacv1.ClusterRole{})
	applyManifest(t, g, admin, "config/rbac/secret_reader_role.yaml", &rbacv1.ClusterRole{})
	applyManifest(t, g, admin, "config/rbac/own_objects_role.yaml", &rbacv1.ClusterRole{})
	own := &rbacv1.ClusterRoleBinding{}
	applyManifestFixed(t, g, admin, "config/rbac/own_objects_role_binding.yaml", func() {
		own.Subjects[0].Namespace = "nodeforge-system" // kustomize's namespace
	}, own)
	rbs := []client.Object{&rbacv1.RoleBinding{}, &rbacv1.RoleBinding{}}
	applyManifest(t, g, admin, "config/namespaced/namespace_role_bindings.yaml", rbs...)

	cfg, err := env.UserConfig(managerUser, "system:serviceaccounts", "system:serviceaccounts:nodeforge-system", "system:authenticated")
	g.Expect(err).NotTo(HaveOccurred())
	// The user has no right to list Pods cluster-wide: the mode's premise.
	asManager, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	g.Expect(err).NotTo(HaveOccurred())
	err = asManager.List(ctx, &corev1.PodList{})
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "cluster-wide Pod list: %v", err)

	dir, err := storage.NewDir(t.TempDir())
	g.Expect(err).NotTo(HaveOccurred())
	stop := startManager(t, g, env, cfg, dir)
	t.Cleanup(stop)

	// A NodeImage in the build namespace is built; the builder Pod is made
	// and counted with the manager's own rights.
	ni := nodeImage(buildNS, "worker")
	g.Expect(admin.Create(ctx, ni)).To(Succeed())
	other := nodeImage(otherNS, "worker")
	g.Expect(admin.Create(ctx, other)).To(Succeed())
	var podName string
	g.Eventually(func(g Gomega) {
		var pods corev1.PodList
		g.Expect(admin.List(ctx, &pods, client.InNamespace(buildNS), backend.BuilderSelector)).To(Succeed())
		g.Expect(pods.Items).To(HaveLen(1))
		podName = pods.Items[0].Name
	}, timeout).Should(Succeed())
	p := &corev1.Pod{}
	g.Expect(admin.Get(ctx, client.ObjectKey{Namespace: buildNS, Name: podName}, p)).To(Succeed())
	res := &buildresult.Result{Outcome: buildresult.OutcomeSucceeded, Accelerator: "tcg",
		Artifact: &buildresult.Artifact{URL: "s3://images/team-a/worker/x/worker.qcow2", SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			Size: 1 << 30, VirtualSize: 8 << 30, Format: "qcow2"},
		Verification: &buildresult.Verification{Passed: 3}}
	msg, err := res.Encode()
	g.Expect(err).NotTo(HaveOccurred())
	now := metav1.Now()
	p.Status.Phase = corev1.PodSucceeded
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: pod.ContainerName, Image: p.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: string(msg), StartedAt: now, FinishedAt: now}}}}
	g.Expect(admin.Status().Update(ctx, p)).To(Succeed())
	g.Eventually(func(g Gomega) {
		n := &imagev1.NodeImage{}
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(ni), n)).To(Succeed())
		g.Expect(n.Status.Artifact).NotTo(BeNil(), "conditions: %+v", n.Status.Conditions)
		g.Expect(conditionOf(n, imagev1.ReadyCondition)).To(Equal("True/Succeeded"))
	}, timeout).Should(Succeed())

	// The other namespace is not the manager's: untouched.
	g.Consistently(func(g Gomega) {
		n := &imagev1.NodeImage{}
		g.Expect(admin.Get(ctx, client.ObjectKeyFromObject(other), n)).To(Succeed())
		g.Expect(n.Finalizers).To(BeEmpty())
		g.Expect(n.Status.Conditions).To(BeEmpty())
	}, 2*time.Second).Should(Succeed())

	// The namespace is deleted. envtest has no namespace controller, so
	// the test does what it would: the RoleBindings may go first (here:
	// before anything else), then every object is deleted. The manager,
	// left with only its cluster-wide rights, must still release the
	// finalizers of the NodeImage and its build.
	for _, rb := range rbs {
		g.Expect(admin.Delete(ctx, rb)).To(Succeed())
	}
	g.Eventually(func(g Gomega) {
		err := asManager.Get(ctx, client.ObjectKey{Namespace: buildNS, Name: "s3-creds"}, &corev1.Secret{})
		g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "the Secret reader binding is gone: %v", err)
	}, timeout).Should(Succeed())
	g.Expect(admin.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: buildNS}})).To(Succeed())
	g.Expect(admin.Delete(ctx, ni)).To(Succeed())
	g.Eventually(func(g Gomega) {
		err := admin.Get(ctx, client.ObjectKeyFromObject(ni), &imagev1.NodeImage{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the NodeImage is still there: %v", err)
		var builds imagev1.NodeImageBuildList
		g.Expect(admin.List(ctx, &builds, client.InNamespace(buildNS))).To(Succeed())
		g.Expect(builds.Items).To(BeEmpty(), "builds still there")
	}, timeout).Should(Succeed())
}

func nodeImage(ns, name string) *imagev1.NodeImage {
	return &imagev1.NodeImage{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: imagev1.NodeImageSpec{
			ImageContent:   imagev1.ImageContent{Packages: []string{"vim"}},
			DeletionPolicy: imagev1.DeletionPolicyDelete,
			Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
				Endpoint: "https://s3.example.com", Bucket: "images", CredentialsSecretRef: corev1.LocalObjectReference{Name: "s3-creds"},
			}},
		},
	}
}

// conditionOf is "Status/Reason" of the condition typ, or "".
func conditionOf(n *imagev1.NodeImage, typ string) string {
	if c := apimeta.FindStatusCondition(n.Status.Conditions, typ); c != nil {
		return string(c.Status) + "/" + c.Reason
	}
	return ""
}

// startManager runs both controllers as the manager's user, limited to
// the build namespace, as cmd/manager does with --build-namespace.
func startManager(t *testing.T, g Gomega, env *testenv.Env, cfg *rest.Config, dir *storage.Dir) func() {
	t.Helper()
	namespaces := []string{buildNS}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache:                  controller.CacheOptions(namespaces, &corev1.Pod{}),
	})
	g.Expect(err).NotTo(HaveOccurred())
	reader := mgr.GetAPIReader()
	// The artifact store reads the credentials Secret as the real one does
	// (S3Opener), then publishes into a directory: no S3 server needed to
	// prove the rights.
	artifacts := controller.PublisherStore{Open: func(ctx context.Context, ni *imagev1.NodeImage) (*storage.Publisher, error) {
		var s corev1.Secret
		if err := reader.Get(ctx, client.ObjectKey{Namespace: ni.Namespace, Name: ni.Spec.Destination.S3.CredentialsSecretRef.Name}, &s); err != nil {
			return nil, fmt.Errorf("reading Secret %s/%s: %w", ni.Namespace, ni.Spec.Destination.S3.CredentialsSecretRef.Name, err)
		}
		return &storage.Publisher{Store: dir, Prefix: ni.Namespace}, nil
	}}
	backends := map[imagev1.BuilderBackend]backend.Backend{
		imagev1.BuilderBackendPod: &pod.Backend{
			Client: mgr.GetClient(), Reader: reader, Scheme: env.Scheme,
			Logs: noLogs{}, Image: "nodeforge-builder:test", OneBuildPerNode: true,
		},
	}
	opts := crcontroller.Options{MaxConcurrentReconciles: 2}
	g.Expect((&controller.NodeImageBuildReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("nodeimagebuild-controller"),
		Backends: backends, RetryBackoff: 300 * time.Millisecond, PollInterval: 300 * time.Millisecond,
		MaxConcurrentBuilds: 1, Namespaces: namespaces,
	}).SetupWithManager(mgr, nil, opts)).To(Succeed())
	g.Expect((&controller.NodeImageReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("nodeimage-controller"), Artifacts: artifacts,
	}).SetupWithManager(mgr, opts)).To(Succeed())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("manager: %v", err)
		}
	}
}
