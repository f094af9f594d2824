package controller_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/retry"

	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/backend/kubevirt"
	"github.com/nodeforge/nodeforge/internal/backend/pod"
	"github.com/nodeforge/nodeforge/internal/buildresult"
	"github.com/nodeforge/nodeforge/internal/controller"
	"github.com/nodeforge/nodeforge/internal/storage"
	"github.com/nodeforge/nodeforge/internal/testenv"
)

// The envtest suite runs both controllers against a real kube-apiserver
// with the real Pod and KubeVirt backends. There is no kubelet, no
// virt-handler and no garbage collector: the tests play the builder by
// patching Pod and VMI status (phase, termination message), and feed
// progress through a fake log reader. Artifacts go to a storage.Dir store
// (the same Publisher layout as S3).

var (
	env      *testenv.Env
	k8s      client.Client
	logs     = &fakeLogs{logs: map[string][]byte{}}
	dirStore *storage.Dir
)

const testTimeout = 20 * time.Second

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse() // for testing.Short
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel())))
	var err error
	env, err = testenv.Start(testenv.Options{
		ExtraCRDDirs: []string{filepath.Join(testenv.RepoRoot(), "test", "crds", "kubevirt")},
	})
	if err != nil {
		if testing.Short() || os.Getenv("KUBEBUILDER_ASSETS") == "" && os.Getenv("NODEFORGE_REQUIRE_ENVTEST") != "1" {
			fmt.Fprintln(os.Stderr, "envtest not started, envtest tests will skip:", err)
			return m.Run()
		}
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if err := kubevirtv1.AddToScheme(env.Scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	k8s = env.Client
	dir, err := os.MkdirTemp("", "nodeforge-artifacts-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if dirStore, err = storage.NewDir(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := startManager(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		managerMu.Lock()
		defer managerMu.Unlock()
		stopManager()
	}()
	return m.Run()
}

func zapLevel() zapcore.Level {
	if os.Getenv("NODEFORGE_TEST_LOG") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel
}

var (
	managerMu   sync.Mutex
	stopManager func()
)

// startManager runs both controllers; the returned func stops them.
func startManager() (func(), error) {
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache:                  controller.CacheOptions(nil, &corev1.Pod{}, &kubevirtv1.VirtualMachineInstance{}),
	})
	if err != nil {
		return nil, err
	}
	artifacts := controller.PublisherStore{Open: func(context.Context, *imagev1.NodeImage) (*storage.Publisher, error) {
		return &storage.Publisher{Store: dirStore}, nil
	}}
	podBackend := &pod.Backend{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Scheme: env.Scheme,
		Logs: logs, Image: "nodeforge-builder:test", OneBuildPerNode: true,
	}
	backends := map[imagev1.BuilderBackend]backend.Backend{
		imagev1.BuilderBackendPod: podBackend,
		imagev1.BuilderBackendKubeVirt: &kubevirt.Backend{
			Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Scheme: env.Scheme,
			Image: "nodeforge-appliance:test", ArtifactLookup: controller.BuildArtifactLookup(artifacts),
		},
	}
	opts := crcontroller.Options{MaxConcurrentReconciles: 2}
	if err := (&controller.NodeImageBuildReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("nodeimagebuild-controller"),
		Backends: backends, RetryBackoff: 300 * time.Millisecond, PollInterval: 300 * time.Millisecond,
	}).SetupWithManager(mgr, []client.Object{&kubevirtv1.VirtualMachineInstance{}}, opts); err != nil {
		return nil, err
	}
	if err := (&controller.NodeImageReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("nodeimage-controller"), Artifacts: artifacts,
		UpdateChecks: podBackend,
	}).SetupWithManager(mgr, opts); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				fmt.Fprintln(os.Stderr, "manager:", err)
			}
		})
	}
	managerMu.Lock()
	stopManager = stop
	managerMu.Unlock()
	return stop, nil
}

type fakeLogs struct {
	mu   sync.Mutex
	logs map[string][]byte
}

func (f *fakeLogs) TailLogs(_ context.Context, ns, name, _ string, _ int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.logs[ns+"/"+name], nil
}

func (f *fakeLogs) set(ns, name, log string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs[ns+"/"+name] = []byte(log)
}

func needEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip("envtest not available:", testenv.ErrNoAssets)
	}
}

var nsCounter int

// newNamespace creates a namespace with the credentials Secret.
func newNamespace(t *testing.T) string {
	t.Helper()
	g := NewWithT(t)
	nsCounter++
	ns := fmt.Sprintf("t%d-%d", nsCounter, time.Now().UnixNano()%100000)
	g.Expect(k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	g.Expect(k8s.Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s3-creds", Namespace: ns},
		StringData: map[string]string{"accessKeyID": "AKIATEST", "secretAccessKey": "sup3r-s3cret-value"},
	})).To(Succeed())
	return ns
}

func newNodeImage(ns, name string) *imagev1.NodeImage {
	return &imagev1.NodeImage{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: imagev1.NodeImageSpec{
			ImageContent: imagev1.ImageContent{Packages: []string{"vim"}},
			Destination: &imagev1.DestinationSpec{S3: &imagev1.S3Destination{
				Endpoint: "https://s3.example.com", Bucket: "node-images",
				CredentialsSecretRef: corev1.LocalObjectReference{Name: "s3-creds"},
			}},
			Builder: imagev1.BuilderSpec{Retries: ptr.To[int32](0)},
		},
	}
}

// digestOf is the spec digest the controller will compute.
func digestOf(g Gomega, ni *imagev1.NodeImage) string {
	d, err := ni.Spec.ImageContent.Digest()
	g.Expect(err).NotTo(HaveOccurred())
	return d
}

func get[T client.Object](g Gomega, obj T) T {
	g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(obj), obj)).To(Succeed())
	return obj
}

// update applies mutate to the latest version of obj and writes it,
// retrying on conflicts: the controllers under test write the same object
// (finalizers, annotations) while the test changes its spec, as a user's
// kubectl apply would race them too.
func update[T client.Object](g Gomega, obj T, mutate func(T)) T {
	g.Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate(obj)
		return k8s.Update(context.Background(), obj)
	})).To(Succeed())
	return obj
}

func kstatusOf(g Gomega, obj client.Object) status.Status {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	g.Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	g.Expect(err).NotTo(HaveOccurred())
	return res.Status
}

func condition(obj interface{ GetConditions() []metav1.Condition }, typ string) *metav1.Condition {
	for i, c := range obj.GetConditions() {
		if c.Type == typ {
			return &obj.GetConditions()[i]
		}
	}
	return nil
}

func reasonOf(obj interface{ GetConditions() []metav1.Condition }, typ string) string {
	if c := condition(obj, typ); c != nil {
		return string(c.Status) + "/" + c.Reason
	}
	return ""
}

func buildKey(ns, name string) *imagev1.NodeImageBuild {
	return &imagev1.NodeImageBuild{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func podKey(ns, name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

// playPod sets the builder Pod's phase and, for a terminated builder, its
// termination message, as the kubelet would.
func playPod(g Gomega, ns, name string, phase corev1.PodPhase, res *buildresult.Result) {
	p := get(g, podKey(ns, name))
	now := metav1.Now()
	cs := corev1.ContainerStatus{Name: pod.ContainerName, Image: p.Spec.Containers[0].Image}
	switch phase {
	case corev1.PodRunning:
		cs.Ready = true
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
	case corev1.PodSucceeded, corev1.PodFailed:
		msg := ""
		if res != nil {
			b, err := res.Encode()
			g.Expect(err).NotTo(HaveOccurred())
			msg = string(b)
		}
		code := int32(0)
		if phase == corev1.PodFailed {
			code = 1
		}
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: code, Message: msg, StartedAt: now, FinishedAt: now}
	}
	p.Status.Phase = phase
	p.Status.ContainerStatuses = []corev1.ContainerStatus{cs}
	g.Expect(k8s.Status().Update(context.Background(), p)).To(Succeed())
}

func succeeded(ni *imagev1.NodeImage, digest string) *buildresult.Result {
	return &buildresult.Result{
		Outcome: buildresult.OutcomeSucceeded,
		Artifact: &buildresult.Artifact{
			URL:    fmt.Sprintf("s3://node-images/%s/%s/1/%s.qcow2", ni.Name, imagev1.DigestHex(digest), ni.Name),
			SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			Size:   1 << 30, VirtualSize: 8 << 30, Format: "qcow2", Revision: 1,
			ManifestURL: fmt.Sprintf("s3://node-images/%s/%s/1/manifest.json", ni.Name, imagev1.DigestHex(digest)),
			Companions:  []string{ni.Name + ".provenance.json", ni.Name + ".qcow2.sig", ni.Name + ".spdx.json"},
		},
		Verification: &buildresult.Verification{Passed: 12, Skipped: 1},
		Accelerator:  "kvm",
	}
}

func failed(reason, step, msg string) *buildresult.Result {
	return &buildresult.Result{Outcome: buildresult.OutcomeFailed, Reason: reason, Step: step, Message: msg,
		Verification: &buildresult.Verification{Passed: 3, Failed: 1, FailedChecks: []string{"kubelet-enabled"}}}
}

func listBuilds(g Gomega, ns string) []imagev1.NodeImageBuild {
	var l imagev1.NodeImageBuildList
	g.Expect(k8s.List(context.Background(), &l, client.InNamespace(ns))).To(Succeed())
	return l.Items
}

func listPods(g Gomega, ns string) []corev1.Pod {
	var l corev1.PodList
	g.Expect(k8s.List(context.Background(), &l, client.InNamespace(ns))).To(Succeed())
	return l.Items
}

func eventReasons(g Gomega, ns, name string) []string {
	var l eventsv1.EventList
	g.Expect(k8s.List(context.Background(), &l, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range l.Items {
		if e.Regarding.Name == name {
			out = append(out, e.Reason)
		}
	}
	return out
}

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }
