//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/containerdisk"
	"github.com/nodeforge/nodeforge/internal/debian/aptrepotest"
	"github.com/nodeforge/nodeforge/internal/manifest"
	"github.com/nodeforge/nodeforge/internal/storage"
)

// The NodeImage specs drive the whole product: the real manager (started by
// test/e2e/run.sh on this host as its ServiceAccount, with
// --builder-host-network), the builder image in a privileged Pod, a Debian
// build, QEMU boot verification and MinIO. Each build takes minutes on a
// small machine, so there are only three: the cloud-base sample, the same
// with one more package, and a spec that cannot be built.

const (
	// buildTimeout bounds one build (about 1 min of building, 1.5 min of
	// boot verification and 4-5 min of cluster checks under TCG on 2
	// cores; generous on purpose).
	buildTimeout = 25 * time.Minute
	// credentialsSecret holds the S3 credentials in the test namespace.
	credentialsSecret = "s3-credentials"
	// pushSecret holds the registry credentials destination.oci pushes with.
	pushSecret = "registry-push"
	// cacheClaim is the PersistentVolumeClaim of the package cache.
	cacheClaim = "build-cache"
	// s3Prefix is the key prefix of every artifact the suite publishes.
	s3Prefix = "e2e"
	// missingPackage is a package no Debian release has.
	missingPackage = "nodeforge-e2e-no-such-package"
	// addedPackage is the one package the second build adds (small, with
	// dependencies of its own, none of them in the first image).
	addedPackage = "jq"
	// updatedPackage is published by the author repository the cloud-base
	// NodeImage installs from, in 1.0 before its first build and in 1.1
	// before its update check.
	updatedPackage = "nodeforge-e2e-probe"
)

// stack is what test/e2e/run.sh started for the suite.
type stack struct {
	s3Endpoint, region string
	creds              storage.Credentials
	aptURL, aptKey     string
	// registry (host:port) mirrors the control-plane images (hack/registry.sh).
	registry string
	// stateDir is run.sh's temp dir, removed when it ends; the cache volume
	// lives there.
	stateDir   string
	managerLog string
	// seedCache, when set, is a package cache (the host's, which make
	// image fills) the cache volume starts from.
	seedCache string
}

// localStack returns the stack from the environment, or skips the spec when
// it was not started (NODEFORGE_E2E_CLUSTER=existing).
func localStack() stack {
	GinkgoHelper()
	st := stack{
		s3Endpoint: os.Getenv("AWS_ENDPOINT_URL"),
		region:     os.Getenv("AWS_REGION"),
		creds:      storage.NewCredentials(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		aptURL:     os.Getenv("NODEFORGE_K8S_APT_URL"),
		aptKey:     os.Getenv("NODEFORGE_K8S_APT_KEY"),
		registry:   os.Getenv("NODEFORGE_REGISTRY"),
		stateDir:   os.Getenv("NODEFORGE_E2E_STATE"),
		managerLog: os.Getenv("NODEFORGE_E2E_MANAGER_LOG"),
		seedCache:  os.Getenv("NODEFORGE_E2E_SEED_CACHE"),
	}
	if st.s3Endpoint == "" || st.aptURL == "" || st.registry == "" || st.stateDir == "" || st.managerLog == "" {
		Skip("needs the manager, MinIO, the offline apt repository and the image registry that test/e2e/run.sh starts with the local cluster")
	}
	return st
}

// destination is an S3 destination in bucket on the suite's MinIO.
func (st stack) destination(bucket string) *imagev1.S3Destination {
	return &imagev1.S3Destination{
		Endpoint:             st.s3Endpoint,
		Bucket:               bucket,
		Prefix:               s3Prefix,
		Region:               st.region,
		BucketLookup:         imagev1.BucketLookupPath,
		CredentialsSecretRef: corev1.LocalObjectReference{Name: credentialsSecret},
		Insecure:             true,
		CreateBucket:         true,
	}
}

// store opens bucket with the MinIO credentials, creating the bucket, for
// the NodeImages of namespace ns (their keys are under ns/).
func (st stack) store(ctx context.Context, bucket, ns string) (*storage.Publisher, *storage.S3) {
	GinkgoHelper()
	d := *st.destination(bucket)
	d.Default()
	pub, s3, err := storage.OpenDestination(d, ns, st.creds, nil)
	Expect(err).NotTo(HaveOccurred())
	Expect(s3.EnsureBucket(ctx)).To(Succeed())
	return pub, s3
}

// prepareNamespace makes a namespace ready for NodeImages the way a user
// would (docs/spec): the builder ServiceAccount, the RoleBinding that lets
// the manager read Secrets there, and the S3 credentials Secret.
func prepareNamespace(ctx context.Context, st stack, prefix string) string {
	GinkgoHelper()
	ns := newNamespace(ctx, prefix)
	objs := []client.Object{
		&corev1.ServiceAccount{
			ObjectMeta:                   metav1.ObjectMeta{Name: "nodeforge-builder", Namespace: ns},
			AutomountServiceAccountToken: ptr.To(false),
		},
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "nodeforge-secret-reader", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "nodeforge-secret-reader"},
			Subjects: []rbacv1.Subject{{
				Kind: rbacv1.ServiceAccountKind, Name: "nodeforge-manager", Namespace: "nodeforge-system",
			}},
		},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: credentialsSecret, Namespace: ns},
			StringData: map[string]string{
				"accessKeyID":     st.creds.AccessKeyID(),
				"secretAccessKey": st.creds.SecretAccessKey(),
			},
		},
	}
	for _, o := range objs {
		Expect(k8sClient.Create(ctx, o)).To(Succeed())
	}
	// Delete the NodeImages before the namespace (cleanups run last in,
	// first out): deleting the namespace removes the RoleBinding and the
	// Secret too, and a NodeImage with deletionPolicy Delete then cannot
	// reach S3 to delete its artifacts, so its finalizer would hold the
	// namespace in Terminating.
	DeferCleanup(func(ctx SpecContext) {
		if os.Getenv("NODEFORGE_E2E_KEEP") != "" {
			return
		}
		Expect(k8sClient.DeleteAllOf(ctx, &imagev1.NodeImage{}, client.InNamespace(ns))).To(Succeed())
		Eventually(func(g Gomega, ctx context.Context) {
			var list imagev1.NodeImageList
			g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			g.Expect(list.Items).To(BeEmpty())
		}).WithContext(ctx).WithTimeout(3 * time.Minute).Should(Succeed())
	})
	return ns
}

// cloudBaseOffline is the cloud-base sample's offline variant (as
// hack/image.sh makes it: the Kubernetes apt repository replaced by the
// local one and its armored key), published to bucket, deleted with its
// artifacts.
func cloudBaseOffline(st stack, ns, name, bucket string) *imagev1.NodeImage {
	GinkgoHelper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "config", "samples", "image_v1alpha1_nodeimage_cloudbase.yaml"))
	Expect(err).NotTo(HaveOccurred())
	ni := &imagev1.NodeImage{}
	Expect(yaml.UnmarshalStrict(raw, ni)).To(Succeed())
	key, err := os.ReadFile(st.aptKey)
	Expect(err).NotTo(HaveOccurred())

	ni.Namespace, ni.Name = ns, name
	Expect(ni.Spec.Kubernetes).NotTo(BeNil(), "the cloud-base sample installs Kubernetes")
	ni.Spec.Kubernetes.AptRepository.URL = st.aptURL
	ni.Spec.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: string(key)}
	Expect(ni.Spec.Kubernetes.Images).NotTo(BeNil(), "the cloud-base sample preloads the control-plane images")
	ni.Spec.Kubernetes.Images.Mirror = st.registry
	ni.Spec.Destination = &imagev1.DestinationSpec{S3: st.destination(bucket)}
	ni.Spec.DeletionPolicy = imagev1.DeletionPolicyDelete
	ni.Spec.Builder.Timeout = &metav1.Duration{Duration: buildTimeout}
	return ni
}

// apply writes ni as YAML and applies it with kubectl, as a user would.
func apply(ni *imagev1.NodeImage) {
	GinkgoHelper()
	ni.APIVersion, ni.Kind = imagev1.GroupVersion.String(), imagev1.NodeImageKind
	raw, err := json.Marshal(ni)
	Expect(err).NotTo(HaveOccurred())
	var obj map[string]any
	Expect(json.Unmarshal(raw, &obj)).To(Succeed())
	delete(obj, "status")
	if md, ok := obj["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	out, err := yaml.Marshal(obj)
	Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(GinkgoT().TempDir(), ni.Name+".yaml")
	Expect(os.WriteFile(path, out, 0o600)).To(Succeed())
	kubectl("apply", "-f", path)
}

func getNodeImage(ctx context.Context, ns, name string) *imagev1.NodeImage {
	GinkgoHelper()
	ni := &imagev1.NodeImage{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ni)).To(Succeed())
	return ni
}

// builds lists the NodeImageBuilds of a NodeImage, oldest first.
func builds(ctx context.Context, ns, name string) ([]imagev1.NodeImageBuild, error) {
	var list imagev1.NodeImageBuildList
	if err := k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{backend.LabelNodeImage: name}); err != nil {
		return nil, err
	}
	slices.SortFunc(list.Items, func(a, b imagev1.NodeImageBuild) int {
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
	return list.Items, nil
}

func builderPods(ctx context.Context, ns, name string) ([]corev1.Pod, error) {
	var list corev1.PodList
	err := k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{backend.LabelNodeImage: name})
	return list.Items, err
}

// watched is what waitFor saw while a build ran.
type watched struct {
	// pods by name, as last seen.
	pods map[string]corev1.Pod
	// buildProgress and imageProgress are the distinct progress reports
	// seen in NodeImageBuild status and in NodeImage status.currentBuild.
	buildProgress, imageProgress []string
}

func progressString(p *imagev1.Progress) string {
	return fmt.Sprintf("%s %d%% %s", p.Step, p.Percent, p.Message)
}

// waitFor polls a NodeImage every 2 s until done returns true, recording
// its builder Pods and the progress in status; it gives up at once when
// abort returns a message.
func waitFor(ctx context.Context, ns, name string, done func(*imagev1.NodeImage) bool, abort func(*imagev1.NodeImage) string) *watched {
	GinkgoHelper()
	w := &watched{pods: map[string]corev1.Pod{}}
	record := func(list *[]string, p *imagev1.Progress) {
		if p == nil {
			return
		}
		if s := progressString(p); len(*list) == 0 || (*list)[len(*list)-1] != s {
			*list = append(*list, s)
			GinkgoWriter.Printf("%s progress: %s\n", time.Now().Format(time.TimeOnly), s)
		}
	}
	Eventually(func(g Gomega, ctx context.Context) {
		ni := &imagev1.NodeImage{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ni)).To(Succeed())
		if ni.Status.CurrentBuild != nil {
			record(&w.imageProgress, ni.Status.CurrentBuild.Progress)
		}
		bs, err := builds(ctx, ns, name)
		g.Expect(err).NotTo(HaveOccurred())
		for i := range bs {
			record(&w.buildProgress, bs[i].Status.Progress)
		}
		pods, err := builderPods(ctx, ns, name)
		g.Expect(err).NotTo(HaveOccurred())
		for _, p := range pods {
			w.pods[p.Name] = p
		}
		if msg := abort(ni); msg != "" {
			StopTrying(msg).Now()
		}
		g.Expect(done(ni)).To(BeTrue(), "NodeImage %s/%s: %s", ns, name, conditionsString(ni.Status.Conditions))
	}).WithContext(ctx).WithTimeout(buildTimeout).WithPolling(2 * time.Second).Should(Succeed())
	return w
}

// readyAtGeneration: Ready=True for the current generation.
func readyAtGeneration(ni *imagev1.NodeImage) bool {
	return ni.Status.ObservedGeneration == ni.Generation && meta.IsStatusConditionTrue(ni.Status.Conditions, imagev1.ReadyCondition)
}

func stalledMessage(ni *imagev1.NodeImage) string {
	if c := meta.FindStatusCondition(ni.Status.Conditions, imagev1.StalledCondition); c != nil && c.Status == metav1.ConditionTrue {
		return "NodeImage stalled: " + c.Reason + ": " + c.Message
	}
	return ""
}

func conditionsString(cs []metav1.Condition) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s=%s %s %q", c.Type, c.Status, c.Reason, c.Message))
	}
	return strings.Join(parts, "; ")
}

// cacheArchives maps the .debs in the package cache (dir is the cache
// volume's root) to their inode numbers.
func cacheArchives(dir string) map[string]uint64 {
	GinkgoHelper()
	files, err := filepath.Glob(filepath.Join(dir, "cache", "archives", "*.deb"))
	Expect(err).NotTo(HaveOccurred())
	m := map[string]uint64{}
	for _, f := range files {
		fi, err := os.Stat(f)
		Expect(err).NotTo(HaveOccurred())
		m[filepath.Base(f)] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return m
}

// seedCache fills the cache volume dir from the package cache from, as a
// cluster's long-lived cache volume would be filled by earlier builds: the
// .debs and base layers, which builds never change, hard-linked (copied
// across filesystems); the package lists, which a build rewrites, copied.
func seedCache(from, dir string) {
	GinkgoHelper()
	var linked, copied int
	for _, sub := range []string{"archives", "base", "lists"} {
		root := filepath.Join(from, sub)
		if _, err := os.Stat(root); os.IsNotExist(err) {
			continue
		}
		err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(from, path)
			if err != nil {
				return err
			}
			dst := filepath.Join(dir, rel)
			switch {
			case d.IsDir():
				return os.MkdirAll(dst, 0o755)
			case !d.Type().IsRegular() || strings.HasSuffix(path, ".tmp"):
				return nil
			case sub != "lists" && os.Link(path, dst) == nil:
				linked++
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			copied++
			return os.WriteFile(dst, b, 0o644)
		})
		Expect(err).NotTo(HaveOccurred(), "seeding the cache volume from %s", from)
	}
	GinkgoWriter.Printf("cache volume seeded from %s: %d files linked, %d copied\n", from, linked, copied)
}

// createCache makes the package cache volume: a hostPath PersistentVolume
// under the run's state dir, bound to claim cacheClaim in ns (the cluster
// has no storage provisioner), seeded from st.seedCache when set. It
// returns the directory.
func createCache(ctx context.Context, st stack, ns string) string {
	GinkgoHelper()
	dir := filepath.Join(st.stateDir, "cache-"+ns)
	Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
	if st.seedCache != "" {
		seedCache(st.seedCache, dir)
	}
	size := resource.MustParse("40Gi")
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "nodeforge-e2e-" + ns, Labels: map[string]string{"app.kubernetes.io/part-of": "nodeforge-e2e"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "",
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: cacheClaim},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: dir, Type: ptr.To(corev1.HostPathDirectory),
			}},
		},
	}
	Expect(k8sClient.Create(ctx, pv)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, pv))).To(Succeed())
	})
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: cacheClaim, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(""),
			VolumeName:       pv.Name,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}
	Expect(k8sClient.Create(ctx, pvc)).To(Succeed())
	Eventually(func(g Gomega, ctx context.Context) {
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pvc), pvc)).To(Succeed())
		g.Expect(pvc.Status.Phase).To(Equal(corev1.ClaimBound))
	}).WithContext(ctx).Should(Succeed(), "the cache claim binds to its hostPath volume")
	return dir
}

// dumpOnFailure prints the NodeImage's objects and the manager's log when
// the spec failed.
func dumpOnFailure(st stack, ns string) {
	if !CurrentSpecReport().Failed() {
		return
	}
	cmd := func(args ...string) {
		out, _ := runOutput("kubectl", args...)
		GinkgoWriter.Printf("$ kubectl %s\n%s\n", strings.Join(args, " "), out)
	}
	cmd("-n", ns, "get", "nodeimages,nodeimagebuilds,pods,pvc", "-o", "wide")
	cmd("-n", ns, "get", "nodeimages,nodeimagebuilds", "-o", "yaml")
	// The builder Pods' own lines (why a check failed, step errors),
	// without their JSON progress events.
	var pods corev1.PodList
	if err := k8sClient.List(context.Background(), &pods, client.InNamespace(ns), client.HasLabels{backend.LabelNodeImage}); err == nil {
		for _, p := range pods.Items {
			out, _ := runOutput("kubectl", "-n", ns, "logs", p.Name)
			var text []string
			for _, l := range strings.Split(out, "\n") {
				if !strings.HasPrefix(l, "{") {
					text = append(text, l)
				}
			}
			GinkgoWriter.Printf("builder Pod %s, its log without progress events (last 80 lines):\n%s\n", p.Name, strings.Join(text[max(0, len(text)-80):], "\n"))
		}
	}
	if b, err := os.ReadFile(st.managerLog); err == nil {
		lines := strings.Split(string(b), "\n")
		GinkgoWriter.Printf("manager log (last 80 lines):\n%s\n", strings.Join(lines[max(0, len(lines)-80):], "\n"))
	}
}

var _ = Describe("A NodeImage", Ordered, Label("nodeimage"), func() {
	const name = "cloud-base"
	var (
		st       stack
		ns       string
		bucket   string
		cacheDir string
		ni       *imagev1.NodeImage
		pub      *storage.Publisher
		s3       *storage.S3
		repo     *aptrepotest.Repo
		first    imagev1.NodeImageBuild
		second   imagev1.NodeImageBuild
		// firstLayer is the base layer of the first build's manifest.
		firstLayer string
	)

	BeforeAll(func(ctx SpecContext) {
		st = localStack()
		ns = prepareNamespace(ctx, st, "e2e-nodeimage")
		bucket = "nodeforge-" + ns
		pub, s3 = st.store(ctx, bucket, ns)
		cacheDir = createCache(ctx, st, ns)
		ni = cloudBaseOffline(st, ns, name, bucket)
		ni.Spec.Builder.Cache = &corev1.LocalObjectReference{Name: cacheClaim}
		// The Kubernetes packages come from a repository the author
		// controls (the offline one's packages, re-signed), which also
		// offers updatedPackage: it publishes an update later.
		repo = aptrepotest.Start(GinkgoT(), repoRoot, strings.TrimSpace(run("hack/k8s-apt-repo.sh", "path")))
		repo.Publish(GinkgoT(), updatedPackage, "1.0", "")
		ni.Spec.Kubernetes.AptRepository.URL = repo.URL
		ni.Spec.Kubernetes.AptRepository.SigningKey = imagev1.KeySource{Armored: string(repo.Key)}
		ni.Spec.Packages = append(ni.Spec.Packages, updatedPackage)
		// Each image is also pushed as a KubeVirt containerDisk to the
		// local registry, with push credentials from a dockerconfigjson
		// Secret (the registry takes any: it checks none).
		ni.Spec.Destination.OCI = &imagev1.OCIDestination{Repository: st.registry + "/" + ns + "/" + name,
			Tags: []string{"stable"}, Insecure: true, CredentialsSecretRef: &corev1.LocalObjectReference{Name: pushSecret}}
		Expect(k8sClient.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: pushSecret, Namespace: ns},
			Type:       corev1.SecretTypeDockerConfigJson,
			StringData: map[string]string{corev1.DockerConfigJsonKey: `{"auths":{"` + st.registry + `":{"username":"e2e","password":"e2e"}}}`},
		})).To(Succeed())
	})
	AfterEach(func() { dumpOnFailure(st, ns) })

	It("is built in a privileged builder Pod, verified, published and Ready", func(ctx SpecContext) {
		apply(ni)
		w := waitFor(ctx, ns, name, readyAtGeneration, stalledMessage)
		kubectl("-n", ns, "wait", "--for=condition=Ready", "nodeimage/"+name, "--timeout=60s")

		By("one build, Ready with every domain condition")
		bs, err := builds(ctx, ns, name)
		Expect(err).NotTo(HaveOccurred())
		Expect(bs).To(HaveLen(1))
		first = bs[0]
		Expect(first.Spec.Reason).To(Equal(imagev1.BuildReasonFirstBuild))
		for _, c := range []string{imagev1.ReadyCondition, imagev1.BuiltCondition, imagev1.VerifiedCondition, imagev1.PublishedCondition} {
			Expect(meta.IsStatusConditionTrue(first.Status.Conditions, c)).To(BeTrue(), "%s: %s", c, conditionsString(first.Status.Conditions))
		}

		By("the builder Pod was scheduled and ran privileged with /dev/kvm on the node's network")
		Expect(first.Status.BuilderRef).NotTo(BeNil())
		pod, ok := w.pods[first.Status.BuilderRef.Name]
		Expect(ok).To(BeTrue(), "builder Pod %s was never seen; saw %v", first.Status.BuilderRef.Name, w.pods)
		assertBuilderPod(&pod)
		Expect(pod.Spec.Containers[0].Image).To(Equal(os.Getenv("NODEFORGE_E2E_BUILDER_IMAGE")))
		Expect(pod.Status.Phase).To(Equal(corev1.PodSucceeded), describePod(&pod))

		By("progress appeared in status while it ran")
		GinkgoWriter.Printf("build progress: %q\nNodeImage progress: %q\n", w.buildProgress, w.imageProgress)
		Expect(w.buildProgress).NotTo(BeEmpty(), "no progress in NodeImageBuild status")
		Expect(w.imageProgress).NotTo(BeEmpty(), "no progress in NodeImage status.currentBuild")
		Expect(len(w.buildProgress)+len(w.imageProgress)).To(BeNumerically(">=", 3), "progress should move")

		By("every verification check passed and is listed, with the accelerator")
		assertVerified(&first, true)

		By("the image, its .sha256 and its manifest are in S3 and match status")
		got := getNodeImage(ctx, ns, name)
		Expect(got.Status.Artifact).NotTo(BeNil())
		// The manager renewed the builder's presigned URL, whose age it
		// cannot know; the rest is the build's record.
		want := first.Status.Artifact.DeepCopy()
		want.PresignedURL, want.PresignedURLExpiresAt = got.Status.Artifact.PresignedURL, got.Status.Artifact.PresignedURLExpiresAt
		Expect(*got.Status.Artifact).To(Equal(*want))
		Expect(got.Status.Artifact.PresignedURLExpiresAt).NotTo(BeNil())
		Expect(got.Status.Artifact.PresignedURLExpiresAt.Time).To(BeTemporally(">", time.Now().Add(time.Hour)))
		assertDownload(ctx, got.Status.Artifact.PresignedURL, got.Status.Artifact.SHA256)
		Expect(got.Status.Artifact.SpecDigest).To(Equal(got.Status.SpecDigest))
		m := assertPublished(ctx, pub, s3, name, got.Status.Artifact)
		firstLayer = m.Base.Layer

		By("the image is in the registry as a containerDisk, tagged stable and with its revision's tag")
		assertContainerDisk(ctx, ni.Spec.Destination.OCI, got.Status.Artifact, m)
		Expect(firstLayer).To(MatchRegexp(`^[0-9a-f]{64}$`), "built on a base layer in the cache volume")
	})

	It("starts no build when the same spec is applied again", func(ctx SpecContext) {
		before := getNodeImage(ctx, ns, name)
		apply(ni)
		Consistently(func(g Gomega, ctx context.Context) {
			bs, err := builds(ctx, ns, name)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(bs).To(HaveLen(1))
			now := &imagev1.NodeImage{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(before), now)).To(Succeed())
			g.Expect(now.Generation).To(Equal(before.Generation))
			g.Expect(readyAtGeneration(now)).To(BeTrue())
		}).WithContext(ctx).WithTimeout(20 * time.Second).WithPolling(2 * time.Second).Should(Succeed())
	})

	It("starts exactly one build when a package is added, superseding nothing and reusing the package cache and the base layer", func(ctx SpecContext) {
		cached := cacheArchives(cacheDir)
		Expect(cached).NotTo(BeEmpty(), "the first build left no packages in the cache volume %s", cacheDir)
		GinkgoWriter.Printf("%d packages in the cache after the first build\n", len(cached))

		ni.Spec.Packages = append(ni.Spec.Packages, addedPackage)
		// The first build proved the boot; this one proves the rebuild, so
		// it skips the boot test (a delivery field: the digest is the
		// content's) and saves a TCG boot of the same image.
		ni.Spec.Verification.Boot.Enabled = ptr.To(false)
		apply(ni)
		w := waitFor(ctx, ns, name, readyAtGeneration, stalledMessage)

		bs, err := builds(ctx, ns, name)
		Expect(err).NotTo(HaveOccurred())
		Expect(bs).To(HaveLen(2), "exactly one new build")
		second = bs[1]
		Expect(second.Spec.Reason).To(Equal(imagev1.BuildReasonSpecChanged))
		Expect(meta.IsStatusConditionTrue(second.Status.Conditions, imagev1.ReadyCondition)).To(BeTrue(), conditionsString(second.Status.Conditions))
		Expect(second.Status.Attempts).To(Equal(int32(1)))
		assertVerified(&second, false)

		By("the first build was not superseded: it is still the succeeded build it was")
		Expect(bs[0].Name).To(Equal(first.Name))
		ready := meta.FindStatusCondition(bs[0].Status.Conditions, imagev1.ReadyCondition)
		Expect(ready).NotTo(BeNil())
		Expect(ready.Status).To(Equal(metav1.ConditionTrue))
		Expect(ready.Reason).To(Equal(imagev1.SucceededReason))
		Expect(bs[0].Status.CompletionTime).To(Equal(first.Status.CompletionTime))

		By("the new build's Pod mounted the same cache volume")
		pod, ok := w.pods[second.Status.BuilderRef.Name]
		Expect(ok).To(BeTrue())
		assertBuilderPod(&pod)
		Expect(pod.Spec.Volumes).To(ContainElement(HaveField("VolumeSource.PersistentVolumeClaim.ClaimName", cacheClaim)))

		By("every cached package was reused (still the same file) and the new ones were added")
		after := cacheArchives(cacheDir)
		for deb, ino := range cached {
			Expect(after).To(HaveKeyWithValue(deb, ino), "%s was replaced or removed", deb)
		}
		Expect(slices.ContainsFunc(keys(after), func(k string) bool { return strings.HasPrefix(k, addedPackage+"_") })).
			To(BeTrue(), "no %s .deb in the cache", addedPackage)
		GinkgoWriter.Printf("%d packages in the cache after the second build (%d new)\n", len(after), len(after)-len(cached))

		By("the NodeImage now points at the new artifact, which is in S3")
		got := getNodeImage(ctx, ns, name)
		Expect(got.Status.Artifact.SpecDigest).To(Equal(second.Spec.SpecDigest))
		Expect(got.Status.Artifact.SpecDigest).NotTo(Equal(first.Spec.SpecDigest))
		m := assertPublished(ctx, pub, s3, name, got.Status.Artifact)

		By("the registry's stable tag moved to the new image; the first revision's tag did not")
		assertContainerDisk(ctx, ni.Spec.Destination.OCI, got.Status.Artifact, m)
		Expect(got.Status.Artifact.ContainerDisk).NotTo(Equal(first.Status.Artifact.ContainerDisk))
		firstTag := fmt.Sprintf("r%d-%s", first.Status.Artifact.Revision, imagev1.DigestHex(first.Status.Artifact.SpecDigest)[:12])
		Expect(registryTag(ctx, ni.Spec.Destination.OCI, firstTag)).To(Equal(strings.SplitN(first.Status.Artifact.ContainerDisk, "@", 2)[1]))

		By("the base layer the first build cached was reused: only the layer on top was installed")
		Expect(m.Base.Layer).To(Equal(firstLayer))
		Expect(m.Base.LayerReused).To(BeTrue())

		By("the manifest and the build's status name the image before it and the package added since")
		Expect(m.Previous).NotTo(BeNil())
		Expect(m.Previous.SpecDigest).To(Equal(first.Spec.SpecDigest))
		Expect(m.Previous.Changes.Added).To(ContainElement(HaveField("Name", addedPackage)))
		Expect(m.Previous.Changes.Removed).To(BeEmpty())
		pc := second.Status.PackageChanges
		Expect(pc).NotTo(BeNil())
		Expect(pc.PreviousSpecDigest).To(Equal(first.Spec.SpecDigest))
		Expect(pc.Added).To(Equal(int32(len(m.Previous.Changes.Added))))
		Expect(pc.Upgraded).To(Equal(int32(len(m.Previous.Changes.Upgraded))))
		Expect(pc.Removed).To(BeZero())
		Expect(pc.Summary).To(ContainSubstring(addedPackage + " "))
	})

	It("starts exactly one BaseUpdated build when its repository publishes a newer package, and shows the diff", func(ctx SpecContext) {
		repo.Publish(GinkgoT(), updatedPackage, "1.1", "")
		// The first check runs as soon as spec.updates is set (the artifact
		// is published and no build runs); the next one an interval later.
		ni.Spec.Updates = &imagev1.UpdatesSpec{Interval: metav1.Duration{Duration: imagev1.MinUpdatesInterval}}
		apply(ni)

		By("the check Pod finds the update and starts a BaseUpdated build, which publishes the next revision")
		var updated imagev1.NodeImageBuild
		Eventually(func(g Gomega, ctx context.Context) {
			got := getNodeImage(ctx, ns, name)
			u := got.Status.Updates
			g.Expect(u).NotTo(BeNil(), "no update check recorded yet")
			g.Expect(u.Result).To(Equal(imagev1.UpdatesResult("UpdatesAvailable")), "%+v", u)
			g.Expect(u.Summary).To(ContainSubstring(updatedPackage + " 1.0 → 1.1"))
			g.Expect(u.Build).NotTo(BeEmpty())
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: u.Build}, &updated)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(updated.Status.Conditions, imagev1.ReadyCondition)).To(BeTrue(), conditionsString(updated.Status.Conditions))
		}).WithContext(ctx).WithTimeout(buildTimeout).WithPolling(5 * time.Second).Should(Succeed())
		Expect(updated.Spec.Reason).To(Equal(imagev1.BuildReasonBaseUpdated))
		Expect(updated.Spec.SpecDigest).To(Equal(second.Spec.SpecDigest), "the same spec, rebuilt")

		By("its status and manifest show the upgrade against the revision before it")
		pc := updated.Status.PackageChanges
		Expect(pc).NotTo(BeNil())
		Expect(pc.PreviousSpecDigest).To(Equal(second.Spec.SpecDigest))
		Expect(pc.Upgraded).To(BeNumerically(">=", 1))
		Expect(pc.Summary).To(ContainSubstring(updatedPackage + " 1.0 → 1.1"))
		got := getNodeImage(ctx, ns, name)
		Expect(got.Status.Artifact.Revision).To(Equal(second.Status.Artifact.Revision+1), "a new revision of the same digest")
		m := assertPublished(ctx, pub, s3, name, got.Status.Artifact)
		Expect(m.Previous.Changes.Upgraded).To(ContainElement(And(HaveField("Name", updatedPackage), HaveField("From", "1.0"), HaveField("To", "1.1"))))
		earlier, err := pub.Lookup(ctx, name, second.Spec.SpecDigest)
		Expect(err).NotTo(HaveOccurred())
		Expect(earlier.Revision).To(Equal(int(got.Status.Artifact.Revision)), "Lookup finds the newest revision of the digest")

		By("exactly one BaseUpdated build, and no other")
		Consistently(func(g Gomega, ctx context.Context) {
			bs, err := builds(ctx, ns, name)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(bs).To(HaveLen(3))
			g.Expect(bs[2].Name).To(Equal(updated.Name))
		}).WithContext(ctx).WithTimeout(20 * time.Second).WithPolling(2 * time.Second).Should(Succeed())
	})

	It("removes its Pods, builds and objects when deleted with deletionPolicy Delete", func(ctx SpecContext) {
		kubectl("-n", ns, "delete", "nodeimage", name, "--timeout=5m")
		Eventually(func(g Gomega, ctx context.Context) {
			bs, err := builds(ctx, ns, name)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(bs).To(BeEmpty())
			pods, err := builderPods(ctx, ns, name)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(pods).To(BeEmpty())
			var cms corev1.ConfigMapList
			g.Expect(k8sClient.List(ctx, &cms, client.InNamespace(ns), client.MatchingLabels{backend.LabelNodeImage: name})).To(Succeed())
			g.Expect(cms.Items).To(BeEmpty())
		}).WithContext(ctx).WithTimeout(3 * time.Minute).Should(Succeed())
		// The whole bucket: keys are NAMESPACE/PREFIX/NAME/...
		objs, err := s3.List(ctx, "")
		Expect(err).NotTo(HaveOccurred())
		Expect(objs).To(BeEmpty())
	})
})

var _ = Describe("A NodeImage that cannot be built", Label("nodeimage"), func() {
	It("ends Stalled, naming the missing package, with the builder's log in status and nothing in S3", func(ctx SpecContext) {
		const name = "missing-package"
		st := localStack()
		ns := prepareNamespace(ctx, st, "e2e-failure")
		DeferCleanup(func() { dumpOnFailure(st, ns) })
		bucket := "nodeforge-" + ns
		_, s3 := st.store(ctx, bucket, ns)

		ni := cloudBaseOffline(st, ns, name, bucket)
		ni.Spec.Packages = append(ni.Spec.Packages, missingPackage)
		ni.Spec.Builder.Retries = ptr.To[int32](0)
		apply(ni)
		waitFor(ctx, ns, name, func(ni *imagev1.NodeImage) bool { return stalledMessage(ni) != "" },
			func(ni *imagev1.NodeImage) string {
				if meta.IsStatusConditionTrue(ni.Status.Conditions, imagev1.ReadyCondition) {
					return "the NodeImage became Ready with a package that does not exist"
				}
				return ""
			})

		got := getNodeImage(ctx, ns, name)
		stalled := meta.FindStatusCondition(got.Status.Conditions, imagev1.StalledCondition)
		GinkgoWriter.Printf("Stalled: %s: %s\n", stalled.Reason, stalled.Message)
		Expect(stalled.Message).To(ContainSubstring(missingPackage))
		Expect(meta.IsStatusConditionFalse(got.Status.Conditions, imagev1.ReadyCondition)).To(BeTrue())
		Expect(got.Status.Artifact).To(BeNil())
		Expect(got.Status.LastFailure).NotTo(BeNil())
		Expect(got.Status.LastFailure.Message).To(ContainSubstring(missingPackage))

		bs, err := builds(ctx, ns, name)
		Expect(err).NotTo(HaveOccurred())
		Expect(bs).To(HaveLen(1))
		b := bs[0]
		Expect(b.Status.Attempts).To(Equal(int32(1)), "retries: 0 means one attempt")
		Expect(meta.IsStatusConditionTrue(b.Status.Conditions, imagev1.StalledCondition)).To(BeTrue(), conditionsString(b.Status.Conditions))
		Expect(b.Status.LogExcerpt).NotTo(BeEmpty())
		Expect(b.Status.LogExcerpt).To(ContainSubstring(missingPackage))
		GinkgoWriter.Printf("log excerpt in status (%d bytes), last lines:\n%s\n", len(b.Status.LogExcerpt), lastLines(b.Status.LogExcerpt, 8))

		objs, err := s3.List(ctx, "")
		Expect(err).NotTo(HaveOccurred())
		Expect(objs).To(BeEmpty(), "a failed build published nothing")
	})
})

// assertBuilderPod checks the builder Pod was scheduled and ran privileged
// with the node's /dev/kvm.
func assertBuilderPod(p *corev1.Pod) {
	GinkgoHelper()
	Expect(p.Spec.NodeName).NotTo(BeEmpty(), describePod(p))
	Expect(p.Status.Conditions).To(ContainElement(And(
		HaveField("Type", corev1.PodScheduled), HaveField("Status", corev1.ConditionTrue))), describePod(p))
	Expect(p.Spec.HostNetwork).To(BeTrue(), "the manager runs with --builder-host-network")
	Expect(p.Spec.Containers).To(HaveLen(1))
	c := p.Spec.Containers[0]
	Expect(c.SecurityContext).NotTo(BeNil())
	Expect(c.SecurityContext.Privileged).To(HaveValue(BeTrue()))
	if os.Getenv("NODEFORGE_E2E_NO_KVM") != "" {
		// The manager runs with --mount-kvm=false on a host without KVM.
		Expect(p.Spec.Volumes).NotTo(ContainElement(HaveField("Name", "kvm")), "no /dev/kvm to mount on this host")
	} else {
		Expect(c.VolumeMounts).To(ContainElement(And(HaveField("Name", "kvm"), HaveField("MountPath", "/dev/kvm"))))
		Expect(p.Spec.Volumes).To(ContainElement(And(
			HaveField("Name", "kvm"), HaveField("VolumeSource.HostPath.Path", "/dev/kvm"))))
	}
	Expect(p.Status.ContainerStatuses).To(ContainElement(HaveField("State.Terminated.ExitCode", int32(0))), describePod(p))
}

// assertVerified checks every verification check passed and is listed,
// with the boot checks when booted.
func assertVerified(b *imagev1.NodeImageBuild, booted bool) {
	GinkgoHelper()
	v := b.Status.Verification
	Expect(v).NotTo(BeNil(), "no verification in %s status", b.Name)
	GinkgoWriter.Printf("%s: accelerator %s, %d passed, %d failed, %d skipped, %d listed\n",
		b.Name, v.Accelerator, v.Passed, v.Failed, v.Skipped, len(v.Checks))
	if !booted {
		Expect(v.Failed).To(BeZero())
		Expect(v.Checks).To(HaveEach(HaveField("Passed", BeTrue())))
		Expect(v.Checks).To(ContainElement(HaveField("Category", imagev1.CheckCategoryOffline)))
		Expect(v.Checks).NotTo(ContainElement(HaveField("Category", imagev1.CheckCategoryBoot)), "boot.enabled is false")
		return
	}
	Expect(v.Accelerator).To(BeElementOf("kvm", "tcg"))
	if v.Accelerator == "tcg" {
		// The builder chose the accelerator: status says why not KVM.
		Expect(v.AcceleratorNote).NotTo(BeEmpty(), "a tcg boot on a node with /dev/kvm mounted must say why")
	}
	if want := os.Getenv("NODEFORGE_E2E_ACCELERATOR"); want != "" {
		Expect(v.Accelerator).To(Equal(want))
	}
	Expect(v.Failed).To(BeZero())
	Expect(v.Checks).NotTo(BeEmpty())
	Expect(v.Checks).To(HaveEach(HaveField("Passed", BeTrue())))
	// The offline checks that passed may be left out of status when the
	// whole list does not fit in the builder's termination message; every
	// boot and cluster check is listed, with its duration.
	Expect(int(v.Passed)).To(BeNumerically(">=", len(v.Checks)))
	Expect(v.Checks).To(ContainElement(HaveField("Category", imagev1.CheckCategoryBoot)))
	for _, c := range v.Checks {
		if c.Category != imagev1.CheckCategoryOffline {
			Expect(c.Duration).NotTo(BeNil(), "duration of %s", c.Name)
		}
	}
	// The cloud-base sample preloads the control-plane images: the boot
	// ended in a Ready single-node cluster, each step timed.
	for _, n := range []string{"cluster-images-preloaded", "cluster-cni-ready", "cluster-kubeadm-init", "cluster-apiserver-readyz",
		"cluster-node-ready", "cluster-coredns-running", "cluster-test-pod-running"} {
		Expect(v.Checks).To(ContainElement(And(HaveField("Name", n), HaveField("Category", imagev1.CheckCategoryCluster),
			HaveField("Passed", true), HaveField("Duration", Not(BeNil())))), "cluster check %s in status", n)
	}
}

// assertContainerDisk checks that the artifact's containerDisk is in the
// OCI destination, recorded in its manifest, and what the destination's
// tags and the revision's own tag point at, and that it holds the image.
func assertContainerDisk(ctx context.Context, d *imagev1.OCIDestination, a *imagev1.Artifact, m *manifest.Manifest) {
	GinkgoHelper()
	Expect(a.ContainerDisk).To(MatchRegexp(`^` + regexp.QuoteMeta(d.Repository) + `@sha256:[0-9a-f]{64}$`))
	digest := strings.SplitN(a.ContainerDisk, "@", 2)[1]
	Expect(m.ContainerDisk).To(Equal(&manifest.ContainerDisk{Repository: d.Repository, Digest: digest}))
	for _, tag := range append([]string{fmt.Sprintf("r%d-%s", a.Revision, imagev1.DigestHex(a.SpecDigest)[:12])}, d.Tags...) {
		Expect(registryTag(ctx, d, tag)).To(Equal(digest), "tag %s", tag)
	}
	ref, err := name.NewDigest(a.ContainerDisk, name.Insecure)
	Expect(err).NotTo(HaveOccurred())
	img, err := remote.Image(ref, remote.WithContext(ctx))
	Expect(err).NotTo(HaveOccurred())
	sum := sha256.New()
	h, err := containerdisk.ReadDisk(img, sum)
	Expect(err).NotTo(HaveOccurred())
	Expect(h.Name).To(Equal("disk/" + m.Name + ".qcow2"))
	Expect(hex.EncodeToString(sum.Sum(nil))).To(Equal(a.SHA256))
}

// registryTag is the digest a tag of the OCI destination points at.
func registryTag(ctx context.Context, d *imagev1.OCIDestination, tag string) string {
	GinkgoHelper()
	ref, err := name.NewTag(d.Repository+":"+tag, name.Insecure)
	Expect(err).NotTo(HaveOccurred())
	desc, err := remote.Head(ref, remote.WithContext(ctx))
	Expect(err).NotTo(HaveOccurred(), "tag %s", tag)
	return desc.Digest.String()
}

// assertPublished checks the image, its checksum file and its manifest are
// in S3 and agree with the artifact in status, down to the image's bytes,
// and returns the manifest.
func assertPublished(ctx context.Context, pub *storage.Publisher, s3 *storage.S3, name string, a *imagev1.Artifact) *manifest.Manifest {
	GinkgoHelper()
	found, err := pub.Lookup(ctx, name, a.SpecDigest)
	Expect(err).NotTo(HaveOccurred())
	Expect(found.URL).To(Equal(a.URL))
	Expect(found.SHA256).To(Equal(a.SHA256))
	Expect(found.Size).To(Equal(a.Size))
	Expect(found.ChecksumKey).To(Equal(found.ImageKey + ".sha256"))
	Expect(a.ManifestURL).To(HaveSuffix(found.ManifestKey))
	// The builder published under the NodeImage's namespace (pub's prefix
	// is NAMESPACE/e2e).
	Expect(a.URL).To(ContainSubstring("/" + pub.Prefix + "/" + name + "/"))

	info, err := s3.Stat(ctx, found.ImageKey)
	Expect(err).NotTo(HaveOccurred())
	Expect(info.Size).To(Equal(a.Size))
	rc, _, err := s3.Get(ctx, found.ImageKey)
	Expect(err).NotTo(HaveOccurred())
	h := sha256.New()
	_, err = io.Copy(h, rc)
	_ = rc.Close()
	Expect(err).NotTo(HaveOccurred())
	Expect(hex.EncodeToString(h.Sum(nil))).To(Equal(a.SHA256), "the bytes in S3 hash to status.artifact.sha256")

	sum := readObject(ctx, s3, found.ChecksumKey)
	Expect(strings.Fields(string(sum))).To(HaveExactElements(a.SHA256, HaveSuffix(filepath.Base(found.ImageKey))))

	var m manifest.Manifest
	Expect(json.Unmarshal(readObject(ctx, s3, found.ManifestKey), &m)).To(Succeed())
	Expect(m.Image.SHA256).To(Equal(a.SHA256))

	// The SBOM and the provenance lie beside it, named in status.
	for suffix, url := range map[string]string{storage.SBOMSuffix: a.SBOMURL, storage.ProvenanceSuffix: a.ProvenanceURL} {
		key, ok := found.CompanionKeys[name+suffix]
		Expect(ok).To(BeTrue(), "no %s%s beside the image: %v", name, suffix, found.CompanionKeys)
		Expect(url).To(HaveSuffix(key))
		Expect(json.Valid(readObject(ctx, s3, key))).To(BeTrue(), key)
	}
	return &m
}

// assertDownload fetches a presigned URL as a consumer would, without
// credentials, and checks the bytes.
func assertDownload(ctx context.Context, url, sha string) {
	GinkgoHelper()
	Expect(url).To(HavePrefix("http://127.0.0.1:"), "the presigned URL points at the local MinIO")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	Expect(err).NotTo(HaveOccurred())
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	Expect(resp.StatusCode).To(Equal(http.StatusOK))
	h := sha256.New()
	_, err = io.Copy(h, resp.Body)
	Expect(err).NotTo(HaveOccurred())
	Expect(hex.EncodeToString(h.Sum(nil))).To(Equal(sha), "the presigned URL serves the image")
}

func readObject(ctx context.Context, s3 *storage.S3, key string) []byte {
	GinkgoHelper()
	rc, _, err := s3.Get(ctx, key)
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = rc.Close() }()
	b, err := io.ReadAll(rc)
	Expect(err).NotTo(HaveOccurred())
	return b
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
