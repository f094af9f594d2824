// Command manager runs the nodeforge controllers: NodeImage and
// NodeImageBuild, with builds in Pods (default) or KubeVirt VMs.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	kubevirtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/backend/kubevirt"
	"github.com/nodeforge/nodeforge/internal/backend/pod"
	"github.com/nodeforge/nodeforge/internal/controller"
	_ "github.com/nodeforge/nodeforge/internal/metrics" // registers nodeforge metrics
)

func main() {
	if err := run(); err != nil {
		ctrl.Log.WithName("setup").Error(err, "manager failed")
		os.Exit(1)
	}
}

type options struct {
	metricsAddr, probeAddr  string
	secureMetrics           bool
	enableHTTP2             bool
	leaderElect             bool
	leaderElectionNamespace string
	builderImage            string
	applianceImage          string
	allowedImages           string
	builderServiceAccount   string
	namespaces              string
	maxConcurrentBuilds     int
	maxBuildsPerNode        int
	maxConcurrentReconciles int
	useKVMResource          bool
	mountKVM                bool
	builderHostNetwork      bool
	scratchSize             string
	enableKubeVirt          string

	builderNodeSelector, builderTolerations     string
	allowedNodeSelectorKeys, allowedTolerations string
	placement                                   backend.PlacementPolicy // parsed by validate
}

func run() error {
	var o options
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "Address of the metrics endpoint (HTTPS unless --metrics-secure=false); 0 disables it.")
	flag.BoolVar(&o.secureMetrics, "metrics-secure", true, "Serve metrics over HTTPS with Kubernetes authentication and authorization.")
	flag.BoolVar(&o.enableHTTP2, "enable-http2", false, "Enable HTTP/2 for the metrics server (off by default: CVE-2023-44487).")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	flag.BoolVar(&o.leaderElect, "leader-elect", false, "Use leader election so that only one replica reconciles.")
	flag.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the manager's namespace).")
	flag.StringVar(&o.builderImage, "builder-image", os.Getenv("NODEFORGE_BUILDER_IMAGE"), "Builder container image (env NODEFORGE_BUILDER_IMAGE); spec.builder.image overrides it.")
	flag.StringVar(&o.allowedImages, "allowed-builder-images", "", "Comma-separated image prefixes that spec.builder.image may use (builders run privileged); a prefix matches at a /, : or @ boundary of the reference only. Empty: no overrides, only --builder-image runs.")
	flag.StringVar(&o.applianceImage, "builder-appliance-image", os.Getenv("NODEFORGE_APPLIANCE_IMAGE"), "KubeVirt builder appliance containerDisk image (env NODEFORGE_APPLIANCE_IMAGE).")
	flag.StringVar(&o.builderNodeSelector, "builder-node-selector", "", "Comma-separated key=value node labels every builder gets (for example nodeforge.dev/builder=true); NodeImages cannot change these keys.")
	flag.StringVar(&o.builderTolerations, "builder-tolerations", "", "Comma-separated tolerations every builder gets, as KEY[=VALUE][:EFFECT] (kubectl taint form; without a value the operator is Exists, without an effect every effect).")
	flag.StringVar(&o.allowedNodeSelectorKeys, "allowed-node-selector-keys", "", "Comma-separated node label keys that spec.builder.nodeSelector may use. Empty: a NodeImage cannot choose nodes (builders are privileged).")
	flag.StringVar(&o.allowedTolerations, "allowed-builder-tolerations", "", "Comma-separated tolerations (KEY[=VALUE][:EFFECT]) that spec.builder.tolerations may contain. Empty: a NodeImage cannot add tolerations, so it cannot reach tainted nodes such as control-plane nodes.")
	flag.StringVar(&o.builderServiceAccount, "builder-service-account", pod.DefaultServiceAccount, "ServiceAccount of builder Pods; it must exist in every namespace with NodeImages and have no API rights.")
	flag.StringVar(&o.namespaces, "build-namespace", os.Getenv("NODEFORGE_BUILD_NAMESPACE"), "Comma-separated namespaces whose NodeImages this manager builds (builds, builder Pods and Secrets stay in the NodeImage's namespace); empty means all.")
	flag.IntVar(&o.maxConcurrentBuilds, "max-concurrent-builds", 4, "Builds running at once, cluster-wide (0: no limit).")
	flag.IntVar(&o.maxBuildsPerNode, "max-builds-per-node", 1, "Builder Pods per node: 1 (pod anti-affinity) or 0 (no limit); other values are refused until they can be enforced.")
	flag.IntVar(&o.maxConcurrentReconciles, "max-concurrent-reconciles", 2, "Parallel reconciles per controller.")
	flag.BoolVar(&o.useKVMResource, "kvm-device-resource", false, "Request the devices.kubevirt.io/kvm extended resource instead of mounting /dev/kvm from the host.")
	flag.BoolVar(&o.mountKVM, "mount-kvm", true, "Mount the node's /dev/kvm into builder Pods. false: for nodes without KVM; builders then boot their test VM under TCG (slower), and status says why.")
	flag.BoolVar(&o.builderHostNetwork, "builder-host-network", false, "Run builder Pods with hostNetwork (dnsPolicy ClusterFirstWithHostNet). For single-node development clusters such as hack/local-cluster.sh, whose Pods have no default route: the builder then reaches the package mirror and services on the node's 127.0.0.1 (a local S3 server or apt repository).")
	flag.StringVar(&o.scratchSize, "scratch-size", pod.DefaultScratchSize, "Size limit of the builder's emptyDir scratch volume.")
	flag.StringVar(&o.enableKubeVirt, "kubevirt", "auto", "KubeVirt backend: auto (when the VirtualMachineInstance API exists), true or false.")
	zapOpts := zap.Options{Development: false}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	setupLog := ctrl.Log.WithName("setup")

	if err := o.validate(); err != nil {
		return err
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, imagev1.AddToScheme, kubevirtv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return err
		}
	}

	var tlsOpts []func(*tls.Config)
	if !o.enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{BindAddress: o.metricsAddr, SecureServing: o.secureMetrics, TLSOpts: tlsOpts}
	if o.secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	cfg := ctrl.GetConfigOrDie()
	kubevirtOn, err := o.kubevirtEnabled(cfg)
	if err != nil {
		setupLog.Error(err, "checking for the KubeVirt API; the KubeVirt backend stays disabled")
	}
	builderKinds := []client.Object{&corev1.Pod{}}
	if kubevirtOn {
		builderKinds = append(builderKinds, &kubevirtv1.VirtualMachineInstance{})
	}
	namespaces := backend.SplitList(o.namespaces)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsOpts,
		HealthProbeBindAddress:        o.probeAddr,
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              "nodeforge-manager.image.nodeforge.dev",
		LeaderElectionNamespace:       o.leaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controller.CacheOptions(namespaces, builderKinds...),
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	podBackend := &pod.Backend{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Scheme: scheme,
		Logs:  pod.ClientsetLogs{Clientset: clientset},
		Image: o.builderImage, ServiceAccount: o.builderServiceAccount,
		UseKVMResource: o.useKVMResource, NoKVM: !o.mountKVM, ScratchSize: o.scratchSize,
		OneBuildPerNode: o.maxBuildsPerNode == 1,
		HostNetwork:     o.builderHostNetwork,
		Images:          o.imagePolicy(),
		Placement:       o.placement,
	}
	backends := map[imagev1.BuilderBackend]backend.Backend{imagev1.BuilderBackendPod: podBackend}
	var owned []client.Object
	if kubevirtOn {
		artifacts := controller.PublisherStore{Open: controller.S3Opener(mgr.GetAPIReader())}
		backends[imagev1.BuilderBackendKubeVirt] = &kubevirt.Backend{
			Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Scheme: scheme, Image: o.applianceImage, Images: o.imagePolicy(),
			Placement:      o.placement,
			ArtifactLookup: controller.BuildArtifactLookup(artifacts),
		}
		owned = append(owned, &kubevirtv1.VirtualMachineInstance{})
	}
	setupLog.Info("starting", "builderImage", o.builderImage, "builderHostNetwork", o.builderHostNetwork, "kubevirt", kubevirtOn,
		"maxConcurrentBuilds", o.maxConcurrentBuilds, "maxBuildsPerNode", o.maxBuildsPerNode)

	ctrlOpts := crcontroller.Options{MaxConcurrentReconciles: o.maxConcurrentReconciles}
	if err := (&controller.NodeImageBuildReconciler{
		Client:              mgr.GetClient(),
		Recorder:            mgr.GetEventRecorder("nodeimagebuild-controller"),
		Backends:            backends,
		MaxConcurrentBuilds: o.maxConcurrentBuilds,
		Namespaces:          namespaces,
	}).SetupWithManager(mgr, owned, ctrlOpts); err != nil {
		return fmt.Errorf("setting up the NodeImageBuild controller: %w", err)
	}
	if err := (&controller.NodeImageReconciler{
		Client:    mgr.GetClient(),
		Recorder:  mgr.GetEventRecorder("nodeimage-controller"),
		Artifacts: controller.PublisherStore{Open: controller.S3Opener(mgr.GetAPIReader())},
		// spec.updates' checks run in Pods made like builder Pods.
		UpdateChecks: podBackend,
	}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("setting up the NodeImage controller: %w", err)
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// validate refuses flag values the manager cannot honor, instead of
// running with a silent substitute.
func (o *options) validate() error {
	var errs []error
	if o.builderImage == "" {
		errs = append(errs, errors.New("--builder-image (or NODEFORGE_BUILDER_IMAGE) is required"))
	}
	if o.useKVMResource && !o.mountKVM {
		errs = append(errs, errors.New("--kvm-device-resource and --mount-kvm=false contradict each other: request the KVM device or give builders none"))
	}
	if o.maxConcurrentBuilds < 0 {
		errs = append(errs, fmt.Errorf("--max-concurrent-builds=%d: must be 0 (no limit) or more", o.maxConcurrentBuilds))
	}
	if o.maxBuildsPerNode != 0 && o.maxBuildsPerNode != 1 {
		errs = append(errs, fmt.Errorf("--max-builds-per-node=%d: only 0 (no limit) and 1 are supported", o.maxBuildsPerNode))
	}
	if o.maxConcurrentReconciles < 1 {
		errs = append(errs, fmt.Errorf("--max-concurrent-reconciles=%d: must be at least 1", o.maxConcurrentReconciles))
	}
	switch o.enableKubeVirt {
	case "auto", "false":
	case "true":
		if o.applianceImage == "" {
			errs = append(errs, errors.New("--kubevirt=true needs --builder-appliance-image (or NODEFORGE_APPLIANCE_IMAGE)"))
		}
	default:
		errs = append(errs, fmt.Errorf("--kubevirt=%q: want auto, true or false", o.enableKubeVirt))
	}
	if q, err := resource.ParseQuantity(o.scratchSize); err != nil || q.Sign() <= 0 {
		errs = append(errs, fmt.Errorf("--scratch-size=%q: want a positive quantity such as 40Gi", o.scratchSize))
	}
	var err error
	if o.placement.NodeSelector, err = backend.ParseNodeSelector(o.builderNodeSelector); err != nil {
		errs = append(errs, fmt.Errorf("--builder-node-selector: %w", err))
	}
	if o.placement.Tolerations, err = backend.ParseTolerations(o.builderTolerations); err != nil {
		errs = append(errs, fmt.Errorf("--builder-tolerations: %w", err))
	}
	if o.placement.AllowedNodeSelectorKeys, err = backend.ParseLabelKeys(o.allowedNodeSelectorKeys); err != nil {
		errs = append(errs, fmt.Errorf("--allowed-node-selector-keys: %w", err))
	}
	if o.placement.AllowedTolerations, err = backend.ParseTolerations(o.allowedTolerations); err != nil {
		errs = append(errs, fmt.Errorf("--allowed-builder-tolerations: %w", err))
	}
	return errors.Join(errs...)
}

func (o *options) imagePolicy() backend.ImagePolicy {
	return backend.ImagePolicy{AllowedPrefixes: backend.SplitList(o.allowedImages)}
}

// kubevirtEnabled decides the KubeVirt backend before the manager starts,
// so that its cache can be told to hold builder VMIs only: --kubevirt=auto
// asks the API server's discovery whether VirtualMachineInstances exist.
func (o *options) kubevirtEnabled(cfg *rest.Config) (bool, error) {
	if o.enableKubeVirt != "auto" {
		return o.enableKubeVirt == "true", nil
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return false, err
	}
	gv := kubevirtv1.VirtualMachineInstanceGroupVersionKind.GroupVersion().String()
	list, err := dc.ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discovering %s: %w", gv, err)
	}
	for _, r := range list.APIResources {
		if r.Name == "virtualmachineinstances" {
			return true, nil
		}
	}
	return false, nil
}
