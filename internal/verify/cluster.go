package verify

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// Cluster checks (category "cluster"), run one after the other in the same
// boot after the boot checks, when the image has kubeadm, the kubelet and
// the control-plane images (kubernetes.images.controlPlane) and
// verification.cluster.enabled. Each waits for what it names; kubeadm init
// and the checks after it run only when every check before them passed.
//
//	cluster-images-preloaded      containerd's k8s.io store holds every image `kubeadm config images list` names
//	cluster-cni-ready             with a bridge network in /etc/cni/net.d, the CRI reports the network ready
//	cluster-kubeadm-init          kubeadm init (offline, nothing ignored in preflight) sets up the control plane
//	cluster-apiserver-readyz      the API server's /readyz answers ok
//	cluster-node-ready            the node is Ready
//	cluster-coredns-running       CoreDNS's Pods are Running and Ready
//	cluster-test-pod-running      a Pod of the preloaded pause image runs on the node
const (
	CheckClusterImages    = "cluster-images-preloaded"
	CheckClusterCNI       = "cluster-cni-ready"
	CheckClusterInit      = "cluster-kubeadm-init"
	CheckClusterReadyz    = "cluster-apiserver-readyz"
	CheckClusterNodeReady = "cluster-node-ready"
	CheckClusterCoreDNS   = "cluster-coredns-running"
	CheckClusterTestPod   = "cluster-test-pod-running"
)

// Cluster is the category of the cluster checks.
const Cluster = imagev1.CheckCategoryCluster

// ClusterPodSubnet is the Pod network of the test cluster (the bridge
// network's range is its first /24).
const ClusterPodSubnet = "10.244.0.0/16"

// clusterCNIConfig is the network the test cluster's Pods get: a bridge
// with host-local addresses, written where CNI add-ons write theirs.
const clusterCNIConfig = `{"cniVersion":"1.0.0","name":"nodeforge-verify","plugins":[` +
	`{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,` +
	`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},` +
	`{"type":"portmap","capabilities":{"portMappings":true}}]}`

// clusterCNIPath is where clusterCNIConfig is written in the guest.
const clusterCNIPath = "/etc/cni/net.d/10-nodeforge-verify.conflist"

// kubectl as root with the cluster's admin credentials.
const kubectl = "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf "

// clusterApplies reports whether c implies the cluster checks (before
// verification.cluster.enabled and the boot test are considered).
func clusterApplies(c *imagev1.ImageContent) bool {
	k := c.Kubernetes
	if k == nil || k.Images == nil || k.Images.ControlPlane == nil || !*k.Images.ControlPlane {
		return false
	}
	return slices.Contains(k.Components, imagev1.ComponentKubeadm) &&
		slices.Contains(k.Components, imagev1.ComponentKubelet) &&
		boolOf(c.ContainerRuntime.Containerd.Enabled)
}

// clusterNames are the cluster checks in run order.
var clusterNames = []string{
	CheckClusterImages, CheckClusterCNI, CheckClusterInit, CheckClusterReadyz,
	CheckClusterNodeReady, CheckClusterCoreDNS, CheckClusterTestPod,
}

func planCluster(b *bootRun) []plannedCheck {
	g := func(name string, f checkFunc) plannedCheck {
		return plannedCheck{name: name, category: Cluster, run: f}
	}
	return []plannedCheck{
		g(CheckClusterImages, b.checkImagesPreloaded),
		g(CheckClusterCNI, b.checkCNIReady),
		g(CheckClusterInit, b.checkKubeadmInit),
		g(CheckClusterReadyz, b.checkReadyz),
		g(CheckClusterNodeReady, b.checkNodeReady),
		g(CheckClusterCoreDNS, b.checkCoreDNS),
		g(CheckClusterTestPod, b.checkTestPod),
	}
}

// runCluster runs the cluster checks in order within timeout. The first
// two only look at the node (its image store, its network set-up) and
// both run; kubeadm init and the rest run only while everything before
// them passed, and are recorded as not run after a failure. It returns
// whether one failed.
func runCluster(ctx context.Context, r *Report, sel selector, pcs []plannedCheck, timeout time.Duration, progress func(Check)) bool {
	cctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("cluster checks timed out after %s (verification.cluster.timeout)", timeout))
	defer cancel()
	var failed []string
	for _, pc := range pcs {
		gated := pc.name != CheckClusterImages && pc.name != CheckClusterCNI
		if gated && len(failed) > 0 {
			sel.failWith(r, pc.name, Cluster, "not run: "+strings.Join(failed, ", ")+" failed", progress)
			continue
		}
		c := sel.run(cctx, r, pc, progress)
		if !c.Passed && !c.Skipped {
			failed = append(failed, pc.name)
		}
	}
	return len(failed) > 0
}

// clusterDiagnostics is what a failed cluster check carries: the guest's
// load, the API server's failing readiness checks, the Pods, the node's
// conditions, the last events, the containers (CoreDNS's and
// kube-proxy's logs), the routes and the kubelet's last words.
func (b *bootRun) clusterDiagnostics(ctx context.Context) string {
	cmd := "echo \"--- load $(cut -d' ' -f1-3 /proc/loadavg)\"; echo '--- readyz'; " + kubectl + "get --raw '/readyz?verbose' 2>&1 | grep -v '^\\[+\\]' | head -n 8; " +
		"echo '--- pods'; " + kubectl + "get pods -A -o wide 2>&1 | head -n 20; " +
		"echo '--- node'; " + kubectl + "get nodes -o jsonpath='{range .items[*].status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}' 2>&1; " +
		"echo '--- events'; " + kubectl + "get events -A --sort-by=.lastTimestamp -o custom-columns=AGE:.lastTimestamp,OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message --no-headers 2>&1 | tail -n 12 | cut -c1-240; " +
		"echo '--- containers'; sudo crictl ps -a 2>&1 | head -n 15; " +
		"for c in $(sudo crictl ps -a -q --name 'coredns|kube-proxy' 2>/dev/null | head -n 3); do echo \"--- logs $c\"; sudo crictl logs --tail 6 $c 2>&1 | cut -c1-300; done; " +
		"echo '--- routes'; ip route 2>&1; ip -6 route 2>&1 | head -n 5; " +
		"echo '--- kubelet'; sudo journalctl -u kubelet --no-pager -o cat -n 12 2>&1 | cut -c1-300"
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 90*time.Second)
	defer cancel()
	out, _, err := b.run(dctx, cmd, 90*time.Second)
	if err != nil {
		return "(diagnostics: " + err.Error() + ")"
	}
	return clip(out, 4000)
}

// waitFor polls cond (a shell test) in the guest every 5 s until it holds
// or limit passes (by the guest's clock: under TCG each kubectl call takes
// seconds), and returns the output of show after the last poll. cond may
// use $rest, the whole seconds left (at least 1), to wait by itself:
// `kubectl wait --timeout=${rest}s` is one process holding a watch, where
// a kubectl started every few seconds would take a TCG guest's vCPU from
// the cluster it waits for.
func (b *bootRun) waitFor(ctx context.Context, cond, show string, limit time.Duration) (bool, string, error) {
	cmd := fmt.Sprintf("end=$(($(date +%%s) + %d)); while :; do rest=$((end - $(date +%%s))); [ $rest -ge 1 ] || rest=1; "+
		"if %s; then echo NODEFORGE-OK; break; fi; [ $(date +%%s) -lt $end ] || break; sleep 5; done; %s", int(limit.Seconds()), cond, show)
	out, _, err := b.run(ctx, cmd, limit+90*time.Second)
	if err != nil {
		return false, out, fmt.Errorf("%w\n%s", err, b.clusterDiagnostics(ctx))
	}
	ok := strings.Contains(out, "NODEFORGE-OK")
	return ok, strings.TrimSpace(strings.Replace(out, "NODEFORGE-OK", "", 1)), nil
}

func (b *bootRun) hasCrictl() bool {
	k := b.content.Kubernetes
	return k != nil && slices.Contains(k.Components, imagev1.ComponentCRITools)
}

func (b *bootRun) checkImagesPreloaded(ctx context.Context) (string, error) {
	want, code, err := b.run(ctx, "kubeadm config images list --kubernetes-version "+b.content.Kubernetes.Version+" 2>&1", 2*time.Minute)
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", fmt.Errorf("kubeadm config images list exited %d: %s", code, clip(want, 400))
	}
	list := "sudo ctr -n k8s.io images ls -q"
	if b.hasCrictl() {
		list = "sudo crictl images -o json | python3 -c 'import json,sys; [print(t) for i in json.load(sys.stdin)[\"images\"] for t in i.get(\"repoTags\") or []]' 2>/dev/null || sudo crictl images -o json"
	}
	have, code, err := b.run(ctx, list, cmdLimit)
	if err != nil {
		return "", err
	}
	if code != 0 {
		return "", fmt.Errorf("listing containerd's images exited %d: %s", code, clip(have, 400))
	}
	present := map[string]bool{}
	for _, l := range strings.Fields(have) {
		present[l] = true
	}
	if strings.HasPrefix(strings.TrimSpace(have), "{") { // crictl's JSON without python3
		var doc struct {
			Images []struct {
				RepoTags []string `json:"repoTags"`
			} `json:"images"`
		}
		if err := json.Unmarshal([]byte(have), &doc); err != nil {
			return "", fmt.Errorf("crictl images -o json: %w", err)
		}
		for _, i := range doc.Images {
			for _, t := range i.RepoTags {
				present[t] = true
			}
		}
	}
	var missing []string
	names := strings.Fields(want)
	for _, w := range names {
		if !present[w] {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("not in containerd's k8s.io store: %s (kubeadm would pull them)", strings.Join(missing, ", "))
	}
	return fmt.Sprintf("all %d images kubeadm names are in the store: %s", len(names), strings.Join(names, ", ")), nil
}

func (b *bootRun) checkCNIReady(ctx context.Context) (string, error) {
	if !b.hasCrictl() {
		return "", fmt.Errorf("needs crictl (kubernetes.components cri-tools) to read the CRI's network status")
	}
	// A CRI that reads its CNI configurations elsewhere would never see the
	// one written below (nor a CNI add-on's): say so without waiting.
	dir, _, err := b.run(ctx, "sudo crictl info 2>/dev/null | grep -m1 -o '\"confDir\": *\"[^\"]*\"'", cmdLimit)
	if err != nil {
		return "", err
	}
	if _, v, ok := strings.Cut(strings.TrimSpace(dir), ":"); ok {
		if d := strings.Trim(strings.TrimSpace(v), `"`); d != path.Dir(clusterCNIPath) {
			return "", fmt.Errorf("the CRI loads CNI configurations from %s, not %s where kubeadm's network add-ons install them (crictl info)", d, path.Dir(clusterCNIPath))
		}
	}
	write := "sudo mkdir -p /etc/cni/net.d && printf '%s' '" + clusterCNIConfig + "' | sudo tee " + clusterCNIPath + " >/dev/null"
	if out, code, err := b.run(ctx, write, cmdLimit); err != nil || code != 0 {
		return "", commandFailed("writing "+clusterCNIPath, out, code, err)
	}
	cond := "sudo crictl info -o go-template --template '{{range .status.conditions}}{{.type}}={{.status}} {{end}}' 2>/dev/null | grep -q 'NetworkReady=true'"
	show := "sudo crictl info -o go-template --template '{{range .status.conditions}}{{.type}}={{.status}} {{.reason}} {{.message}}; {{end}}' 2>&1; " +
		"echo; sudo crictl info 2>/dev/null | grep -m1 -o '\"confDir\": *\"[^\"]*\"'"
	ok, out, err := b.waitFor(ctx, cond, show, time.Minute)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the CRI did not report the network ready within 1m with %s written: %s", clusterCNIPath, clip(out, 600))
	}
	return "NetworkReady with the bridge network in " + clusterCNIPath, nil
}

// kubeadmConfig initializes the test cluster on the guest's IPv4 address
// (ADDR, filled in the guest), which the API server advertises and the
// kubelet registers, as a node with several addresses would be set up.
// The timeouts are generous: under TCG the API server takes minutes to
// start. The controller-manager and the scheduler, alone on their node,
// do not elect a leader: under TCG a lease renewal misses its 10 s
// deadline, the component exits, and its restarts held CoreDNS and
// kube-proxy back for minutes.
func (b *bootRun) kubeadmConfig() string {
	return fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: ADDR
nodeRegistration:
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
  - name: node-ip
    value: ADDR
timeouts:
  controlPlaneComponentHealthCheck: 10m0s
  kubeletHealthCheck: 5m0s
  kubernetesAPICall: 5m0s
  tlsBootstrap: 5m0s
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %s
networking:
  podSubnet: %s
controllerManager:
  extraArgs:
  - name: leader-elect
    value: "false"
scheduler:
  extraArgs:
  - name: leader-elect
    value: "false"
`, b.content.Kubernetes.Version, ClusterPodSubnet)
}

// testNetwork gives the guest what DHCP gives a node on a real network and
// the test VM's (QEMU user mode, restrict=on) does not: an IPv4 default
// route and a DNS server, both QEMU's own addresses. Nothing answers
// there; but kubeadm and the kubelet pick the node's address by the
// default route, and CoreDNS's forward plugin exits without a nameserver
// in the resolv.conf the kubelet gives it. Only what is missing is added.
const testNetwork = "link=$(ip -4 -o addr show scope global | awk '{print $2; exit}'); " +
	"ip -4 route show default | grep -q . || sudo ip route add default via 10.0.2.2 dev \"$link\"; " +
	"if systemctl is-active -q systemd-resolved; then " +
	"grep -q '^nameserver' /run/systemd/resolve/resolv.conf || sudo resolvectl dns \"$link\" 10.0.2.3; " +
	"elif ! grep -q '^nameserver' /etc/resolv.conf; then echo 'nameserver 10.0.2.3' | sudo tee -a /etc/resolv.conf >/dev/null; fi; "

func (b *bootRun) checkKubeadmInit(ctx context.Context) (string, error) {
	cmd := testNetwork +
		"addr=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1); " +
		"printf '%s' '" + b.kubeadmConfig() + "' | sed \"s/ADDR/$addr/\" > /tmp/nodeforge-cluster.yaml && " +
		"sudo kubeadm init --config /tmp/nodeforge-cluster.yaml 2>&1; echo \"exit=$?\""
	out, _, err := b.run(ctx, cmd, time.Until(deadlineOf(ctx)))
	if err != nil {
		return "", fmt.Errorf("kubeadm init: %w; %s", err, b.clusterDiagnostics(ctx))
	}
	if !strings.Contains(out, "\nexit=0") {
		return "", fmt.Errorf("kubeadm init failed: %s\n%s", lastLines(out, 12), b.clusterDiagnostics(ctx))
	}
	// A single node runs every Pod: take the control plane's taint off.
	if tout, code, err := b.run(ctx, kubectl+"taint nodes --all node-role.kubernetes.io/control-plane- 2>&1", 2*time.Minute); err != nil || code != 0 {
		return "", commandFailed("removing the control-plane taint", tout, code, err)
	}
	return "kubeadm init: the control plane initialized offline with the preloaded images", nil
}

func (b *bootRun) checkReadyz(ctx context.Context) (string, error) {
	ok, out, err := b.waitFor(ctx, kubectl+"get --raw /readyz >/dev/null 2>&1", kubectl+"get --raw '/readyz?verbose' 2>&1 | grep -v '^\\[+\\]'", 3*time.Minute)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("/readyz did not answer ok within 3m: %s", clip(out, 800))
	}
	return "/readyz: ok", nil
}

func (b *bootRun) checkNodeReady(ctx context.Context) (string, error) {
	jp := `{.items[0].metadata.name} Ready={.items[0].status.conditions[?(@.type=="Ready")].status} {.items[0].status.conditions[?(@.type=="Ready")].message}`
	ok, out, err := b.waitFor(ctx, readyWait("nodes --all"), kubectl+"get nodes -o jsonpath='"+jp+"' 2>&1", 4*time.Minute)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the node is not Ready after 4m: %s\n%s", clip(out, 400), b.clusterDiagnostics(ctx))
	}
	b.nodeReadyAt = time.Now()
	return fmt.Sprintf("%s, %.0f s after QEMU started", clip(out, 200), b.nodeReadyAt.Sub(b.started).Seconds()), nil
}

// readyWait is a waitFor condition: the objects kubectl names by what
// are Ready. kubectl wait fails at once while nothing matches, and waitFor
// tries again.
func readyWait(what string) string {
	return kubectl + "wait --for=condition=Ready " + what + " --timeout=${rest}s >/dev/null 2>&1"
}

// podsReadyNow is a shell test that every Pod selected by sel in ns is
// Running and Ready at one moment, and that there is one. kubectl wait
// sees each Pod Ready in turn; under TCG a readiness probe can fail
// again meanwhile, and the check's message must not show a Pod 0/1.
func podsReadyNow(ns, sel string) string {
	jp := `{range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="Ready")].status} {end}`
	q := kubectl + "-n " + ns + " get pods " + sel + " -o jsonpath='" + jp + "' 2>/dev/null"
	return "s=$(" + q + ") && [ -n \"$s\" ] && ! printf '%s' \"$s\" | tr ' ' '\\n' | grep -v '^$' | grep -qv '^Running/True$'"
}

func (b *bootRun) checkCoreDNS(ctx context.Context) (string, error) {
	show := kubectl + "-n kube-system get pods -l k8s-app=kube-dns -o wide 2>&1"
	ok, out, err := b.waitFor(ctx, readyWait("-n kube-system pods -l k8s-app=kube-dns")+" && "+podsReadyNow("kube-system", "-l k8s-app=kube-dns"), show, 8*time.Minute)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("CoreDNS is not Running and Ready after 8m: %s\n%s", clip(out, 600), b.clusterDiagnostics(ctx))
	}
	return clip(out, 400), nil
}

// startTestPod creates the test Pod, of kubeadm's pause image with pulls
// forbidden, and returns that image.
func (b *bootRun) startTestPod(ctx context.Context) (string, error) {
	out, _, err := b.run(ctx, "kubeadm config images list --kubernetes-version "+b.content.Kubernetes.Version+" 2>/dev/null | grep '/pause:'", cmdLimit)
	if err != nil {
		return "", err
	}
	pause := strings.TrimSpace(out)
	if pause == "" {
		return "", fmt.Errorf("kubeadm names no pause image")
	}
	// Right after kubeadm init the controller-manager may not have made
	// the namespace's default ServiceAccount yet, and admission refuses
	// the Pod until it has: retry for up to 2 min (a Pod an earlier try
	// created counts).
	run := "for i in $(seq 1 24); do " +
		kubectl + "run nodeforge-verify --image=" + pause + " --image-pull-policy=Never --restart=Never 2>&1 && exit 0; " +
		kubectl + "get pod nodeforge-verify >/dev/null 2>&1 && exit 0; sleep 5; done; exit 1"
	if rout, code, err := b.run(ctx, run, 3*time.Minute); err != nil || code != 0 {
		return "", commandFailed("kubectl run", lastLines(rout, 3), code, err)
	}
	return pause, nil
}

func (b *bootRun) checkTestPod(ctx context.Context) (string, error) {
	// Created once CoreDNS is Ready, not beside it right after node Ready:
	// there the creation's retries (no default ServiceAccount yet) took
	// the guest's TCG vCPUs, and in a CI run CoreDNS missed its 5 min.
	pause, err := b.startTestPod(ctx)
	if err != nil {
		return "", err
	}
	show := kubectl + "get pod nodeforge-verify -o wide 2>&1; " + kubectl + "get events --field-selector involvedObject.name=nodeforge-verify -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers 2>&1 | tail -n 5"
	ok, out, err := b.waitFor(ctx, readyWait("pod/nodeforge-verify"), show, 3*time.Minute)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the test Pod (%s) is not Running after 3m: %s", pause, clip(out, 800))
	}
	return "Pod nodeforge-verify (" + pause + ", imagePullPolicy Never) Running and Ready", nil
}

// commandFailed describes a guest command that failed to run (err) or
// exited non-zero (code, with its output).
func commandFailed(what, out string, code int, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s exited %d: %s", what, code, clip(out, 300))
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}
