package verify

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

func planNames(c *imagev1.ImageContent) (offline, boot []string) {
	c.Default()
	for _, pc := range planOffline(&offlineImage{content: c}) {
		offline = append(offline, pc.name)
	}
	for _, pc := range planGuest(&bootRun{content: c}) {
		boot = append(boot, pc.name)
	}
	return offline, boot
}

func TestPlanFollowsContent(t *testing.T) {
	kube := &imagev1.KubernetesSpec{Version: "v1.37.2", AptRepository: imagev1.AptRepository{URL: "http://127.0.0.1:8080/"}}
	tests := []struct {
		name              string
		content           imagev1.ImageContent
		wantOffline       []string
		notOffline        []string
		wantBoot, notBoot []string
	}{
		{
			name: "defaults imply the seed's checks without kubernetes",
			wantOffline: []string{CheckQemuImgFormat, CheckBootloaderBIOS, CheckBootloaderUEFI, CheckFilesystemESP,
				"package-linux-image-cloud-amd64", "package-containerd", "package-runc", "package-prometheus-node-exporter",
				"service-containerd-enabled", "service-ssh-enabled", CheckContainerdCgroup, CheckFstabNoSwap,
				CheckSSHDPasswordAuth, CheckHygieneSSHKeys, CheckSysctls, CheckKernelModules},
			notOffline: []string{CheckKubePackagesHeld, "package-kubeadm", "service-kubelet-enabled"},
			wantBoot:   []string{CheckBootContainerd, CheckBootNodeExporter, CheckBootNoSwap, CheckBootSysctls},
			notBoot:    []string{CheckBootKubeadmPreflight, CheckBootKubeletVersion},
		},
		{
			name:        "kubernetes adds pinned packages, hold, kubelet and preflight",
			content:     imagev1.ImageContent{Kubernetes: kube.DeepCopy()},
			wantOffline: []string{"package-kubeadm", "package-kubelet", "package-kubectl", CheckKubePackagesHeld, CheckKubeAptRepository, "service-kubelet-enabled"},
			wantBoot:    []string{CheckBootKubeadmVersion, CheckBootKubeletVersion, CheckBootKubectlVersion, CheckBootKubeletInactive, CheckBootKubeadmPreflight},
		},
		{
			name:        "bios only has no ESP checks; uefi only has no MBR check",
			content:     imagev1.ImageContent{Disk: imagev1.DiskSpec{BootMode: imagev1.BootModeBIOS}},
			wantOffline: []string{CheckBootloaderBIOS},
			notOffline:  []string{CheckBootloaderUEFI, CheckFilesystemESP},
		},
		{
			name: "disabled components imply no checks",
			content: imagev1.ImageContent{
				ContainerRuntime: imagev1.ContainerRuntimeSpec{
					Containerd: imagev1.ContainerdSpec{Enabled: ptr.To(false)},
					CNIPlugins: imagev1.CNIPluginsSpec{Enabled: ptr.To(false)},
				},
				Monitoring: imagev1.MonitoringSpec{NodeExporter: imagev1.NodeExporterSpec{Enabled: ptr.To(false)}},
				SSH:        imagev1.SSHSpec{Enabled: ptr.To(false)},
				Swap:       imagev1.SwapSpec{Disabled: ptr.To(false)},
			},
			notOffline: []string{"package-containerd", CheckContainerdCgroup, CheckCNIPlugins, "package-prometheus-node-exporter",
				"package-openssh-server", CheckSSHDPasswordAuth, CheckFstabNoSwap},
			notBoot: []string{CheckBootContainerd, CheckBootCNI, CheckBootNodeExporter, CheckBootSSHDEffective, CheckBootNoSwap},
		},
		{
			name: "extra packages, users and units",
			content: imagev1.ImageContent{
				Packages: []string{"vim", "g++=4:14.2.0-1"},
				Users:    []imagev1.UserSpec{{Name: "ops"}},
				Units:    []imagev1.UnitSpec{{Name: "nf-hello.service", Content: "[Service]\n"}},
				Files:    []imagev1.FileSpec{{Path: "/etc/motd", Content: "hi\n"}},
			},
			wantOffline: []string{"package-vim", "package-gplusplus", "user-ops", "service-nf-hello-enabled", "file-etc-motd"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			off, boot := planNames(tt.content.DeepCopy())
			for _, n := range tt.wantOffline {
				if !slices.Contains(off, n) {
					t.Errorf("offline plan lacks %s: %v", n, off)
				}
			}
			for _, n := range tt.notOffline {
				if slices.Contains(off, n) {
					t.Errorf("offline plan has %s", n)
				}
			}
			for _, n := range tt.wantBoot {
				if !slices.Contains(boot, n) {
					t.Errorf("boot plan lacks %s: %v", n, boot)
				}
			}
			for _, n := range tt.notBoot {
				if slices.Contains(boot, n) {
					t.Errorf("boot plan has %s", n)
				}
			}
			seen := map[string]bool{}
			for _, n := range append(off, boot...) {
				if seen[n] {
					t.Errorf("duplicate check %s", n)
				}
				seen[n] = true
				if len(n) > 63 || !checkNameRE.MatchString(n) {
					t.Errorf("check name %q is not a valid CheckName", n)
				}
			}
		})
	}
}

func TestSelection(t *testing.T) {
	pass := func(context.Context) (string, error) { return "fine", nil }
	fail := func(context.Context) (string, error) { return "", errors.New("broken") }
	tests := []struct {
		name                      string
		optional, skip            []string
		run                       checkFunc
		passed, skipped, required bool
		summary                   Summary
	}{
		{"required pass", nil, nil, pass, true, false, true, Summary{Passed: 1}},
		{"required fail", nil, nil, fail, false, false, true, Summary{Failed: 1}},
		{"optional fail does not block", []string{"c"}, nil, fail, false, false, false, Summary{Failed: 1}},
		{"skip wins over optional", []string{"c"}, []string{"c"}, fail, false, true, false, Summary{Skipped: 1}},
		{"other names are ignored", []string{"x"}, []string{"y"}, fail, false, false, true, Summary{Failed: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Report{}
			sel := newSelector(Options{Optional: tt.optional, Skip: tt.skip})
			c := sel.run(context.Background(), r, plannedCheck{name: "c", category: Offline, run: tt.run}, nil)
			if c.Passed != tt.passed || c.Skipped != tt.skipped || c.Required != tt.required {
				t.Errorf("check = %+v", c)
			}
			if r.Summary != tt.summary {
				t.Errorf("summary = %+v, want %+v", r.Summary, tt.summary)
			}
			blocking := len(r.RequiredFailures()) > 0
			if want := tt.required && !tt.passed && !tt.skipped; blocking != want {
				t.Errorf("blocking = %v, want %v", blocking, want)
			}
		})
	}
}

func TestPanickingCheckFails(t *testing.T) {
	r := &Report{}
	c := newSelector(Options{}).run(context.Background(), r, plannedCheck{name: "p", run: func(context.Context) (string, error) {
		panic("a bug in a check")
	}}, nil)
	if c.Passed || c.Message == "" {
		t.Errorf("check = %+v", c)
	}
}

func TestReportJSONShape(t *testing.T) {
	r := &Report{}
	r.Add(Check{Name: "a", Category: Offline, Passed: true, Required: true, Message: "ok", DurationSeconds: 0.5})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	c := m["checks"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "category", "passed", "message", "durationSeconds"} {
		if _, ok := c[k]; !ok {
			t.Errorf("check JSON lacks %q: %s", k, b)
		}
	}
	s := m["summary"].(map[string]any)
	for _, k := range []string{"passed", "failed", "skipped"} {
		if _, ok := s[k]; !ok {
			t.Errorf("summary JSON lacks %q: %s", k, b)
		}
	}
}

func TestOptionsFromSpec(t *testing.T) {
	v := imagev1.VerificationSpec{Optional: []imagev1.CheckName{"boot-node-exporter"}, Skip: []imagev1.CheckName{"hygiene-logs"}}
	v.Default()
	o := OptionsFromSpec(v)
	if !o.Boot || o.BootTimeout != imagev1.DefaultBootTimeout || o.Optional[0] != "boot-node-exporter" || o.Skip[0] != "hygiene-logs" {
		t.Errorf("options = %+v", o)
	}
	if !o.Cluster || o.ClusterTimeout != imagev1.DefaultClusterTimeout {
		t.Errorf("cluster options = %v, %s; want on, %s", o.Cluster, o.ClusterTimeout, imagev1.DefaultClusterTimeout)
	}
	v.Cluster = imagev1.ClusterVerificationSpec{Enabled: ptr.To(false), Timeout: &metav1.Duration{Duration: 30 * time.Minute}}
	if o := OptionsFromSpec(v); o.Cluster || o.ClusterTimeout != 30*time.Minute {
		t.Errorf("cluster options = %v, %s; want off, 30m", o.Cluster, o.ClusterTimeout)
	}
}

func withImages(k *imagev1.KubernetesSpec) *imagev1.KubernetesSpec {
	k = k.DeepCopy()
	k.Images = &imagev1.KubernetesImagesSpec{}
	return k
}

// TestClusterChecksFollowContent: the cluster checks come with kubeadm,
// the kubelet, containerd and the control-plane images, after every boot
// check, and not otherwise.
func TestClusterChecksFollowContent(t *testing.T) {
	kube := &imagev1.KubernetesSpec{Version: "v1.37.2", AptRepository: imagev1.AptRepository{URL: "http://127.0.0.1:8080/"}}
	for _, tc := range []struct {
		name string
		c    imagev1.ImageContent
		want bool
	}{
		{"no kubernetes", imagev1.ImageContent{}, false},
		{"no images", imagev1.ImageContent{Kubernetes: kube.DeepCopy()}, false},
		{"control-plane images", imagev1.ImageContent{Kubernetes: withImages(kube)}, true},
		{"extra images only", func() imagev1.ImageContent {
			k := withImages(kube)
			k.Images.ControlPlane = ptr.To(false)
			k.Images.Extra = []string{"quay.io/a/b:1"}
			return imagev1.ImageContent{Kubernetes: k}
		}(), false},
		{"no kubelet", func() imagev1.ImageContent {
			k := withImages(kube)
			k.Components = []imagev1.KubernetesComponent{imagev1.ComponentKubeadm, imagev1.ComponentCRITools}
			return imagev1.ImageContent{Kubernetes: k}
		}(), false},
		{"no containerd", imagev1.ImageContent{Kubernetes: withImages(kube), ContainerRuntime: imagev1.ContainerRuntimeSpec{Containerd: imagev1.ContainerdSpec{Enabled: ptr.To(false)}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c.DeepCopy()
			c.Default()
			names := plannedNames(c)
			if got := slices.Contains(names, CheckClusterInit); got != tc.want || clusterApplies(c) != tc.want {
				t.Fatalf("cluster checks planned = %v, want %v", got, tc.want)
			}
			if tc.want && !slices.Equal(names[len(names)-len(clusterNames):], clusterNames) {
				t.Fatalf("the cluster checks are not last, in order: %q", names)
			}
		})
	}
}

// TestRunAllKeepsPlanOrderAndRunsConcurrently runs checks that finish in
// reverse order and overlap: the report keeps the plan's order, and the
// limit bounds how many run at once.
func TestRunAllKeepsPlanOrderAndRunsConcurrently(t *testing.T) {
	var running, peak atomic.Int32
	mk := func(name string, d time.Duration, fail bool) plannedCheck {
		return plannedCheck{name: name, category: Boot, run: func(context.Context) (string, error) {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(d)
			running.Add(-1)
			if fail {
				return "", errors.New("broken")
			}
			return "fine", nil
		}}
	}
	pcs := []plannedCheck{mk("a", 80*time.Millisecond, false), mk("b", 60*time.Millisecond, true),
		mk("c", 40*time.Millisecond, false), mk("d", 20*time.Millisecond, false), mk("e", time.Millisecond, false)}
	sel := newSelector(Options{Skip: []string{"e"}})
	var r Report
	var seen []string
	failed := sel.runAll(context.Background(), &r, pcs, 3, func(c Check) { seen = append(seen, c.Name) })
	if !failed {
		t.Error("a failed check was not reported")
	}
	if got := strings.Join(seen, ","); got != "a,b,c,d,e" {
		t.Errorf("order %s, want a,b,c,d,e", got)
	}
	if p := peak.Load(); p < 2 || p > 3 {
		t.Errorf("peak concurrency %d, want 2..3", p)
	}
	if r.Summary != (Summary{Passed: 3, Failed: 1, Skipped: 1}) {
		t.Errorf("summary %+v", r.Summary)
	}
}

func TestCheckSelectionRejectsUnknownNames(t *testing.T) {
	kube := &imagev1.KubernetesSpec{Version: "v1.37.2", AptRepository: imagev1.AptRepository{URL: "http://127.0.0.1:8080/"}}
	tests := []struct {
		name              string
		content           imagev1.ImageContent
		optional, skip    []string
		wantErr, notInErr []string
	}{
		{name: "none"},
		{name: "planned offline and boot names", optional: []string{CheckQemuImgCompression, CheckBootFailedUnits}, skip: []string{CheckBootSSH, CheckBootCloudInit}},
		{name: "typo in skip", skip: []string{CheckBootSSH, "boot-shh"}, wantErr: []string{`"boot-shh"`, CheckBootSSH, "docs/verification.md"}},
		{name: "typo in optional", optional: []string{"qemu-img-formt"}, wantErr: []string{`"qemu-img-formt"`}},
		{name: "malformed", skip: []string{"Boot SSH"}, wantErr: []string{`"Boot SSH"`}},
		{name: "check of another content", skip: []string{CheckKubeAptRepository}, wantErr: []string{`"` + CheckKubeAptRepository + `"`}},
		{name: "check this content implies", content: imagev1.ImageContent{Kubernetes: kube}, skip: []string{CheckKubeAptRepository}},
		{name: "cluster check without the control-plane images", content: imagev1.ImageContent{Kubernetes: kube}, skip: []string{CheckClusterNodeReady}, wantErr: []string{`"` + CheckClusterNodeReady + `"`}},
		{name: "cluster check with them", content: imagev1.ImageContent{Kubernetes: withImages(kube)}, optional: []string{CheckClusterCoreDNS}, skip: []string{CheckClusterTestPod}},
		{name: "all unknown names listed once", optional: []string{"a1", "b2"}, skip: []string{"a1", CheckBootSSH},
			wantErr: []string{`"a1", "b2";`}, notInErr: []string{`"a1", "b2", "a1"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckSelection(tt.content, Options{Optional: tt.optional, Skip: tt.skip})
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			for _, s := range tt.notInErr {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q has %q", err, s)
				}
			}
		})
	}
}

func TestVerifyRejectsUnknownNamesBeforeRunning(t *testing.T) {
	var ran atomic.Int32
	_, err := Verify(context.Background(), "/nonexistent/image.qcow2", imagev1.ImageContent{}, Options{
		Skip: []string{"boot-shh"}, Progress: func(Check) { ran.Add(1) }})
	if err == nil || !strings.Contains(err.Error(), `"boot-shh"`) {
		t.Fatalf("want an error naming boot-shh, got %v", err)
	}
	if ran.Load() != 0 {
		t.Fatalf("%d checks ran", ran.Load())
	}
}

// crictl info of containerd 1.7.24 (Debian 13), cut to the keys read.
const crictlInfo = `{
  "status": {"conditions": [
    {"type": "RuntimeReady", "status": true, "reason": "", "message": ""},
    {"type": "NetworkReady", "status": false, "reason": "NetworkPluginNotReady", "message": "Network plugin returns error: cni plugin not initialized"}]},
  "cniconfig": {"PluginDirs": ["/opt/cni/bin"], "PluginConfDir": "/etc/cni/net.d"},
  "config": {
    "containerd": {"snapshotter": "overlayfs", "defaultRuntimeName": "runc",
      "runtimes": {"runc": {"runtimeType": "io.containerd.runc.v2", "sandboxMode": "podsandbox",
        "options": {"BinaryName": "", "Root": "", "ShimCgroup": "", "SystemdCgroup": true}}}},
    "cni": {"binDir": "/opt/cni/bin", "confDir": "/etc/cni/net.d", "maxConfNum": 1}
  }
}`

func TestParseCrictlInfo(t *testing.T) {
	s, ready, err := parseCrictlInfo([]byte(crictlInfo))
	if err != nil {
		t.Fatal(err)
	}
	if !ready || s.DefaultRuntime != "runc" || s.SystemdCgroup == nil || !*s.SystemdCgroup ||
		len(s.CNIBinDirs) != 1 || s.CNIBinDirs[0] != "/opt/cni/bin" || s.CNIConfDir != "/etc/cni/net.d" {
		t.Fatalf("parsed %+v ready=%v", s, ready)
	}
	notReady := strings.Replace(crictlInfo, `"type": "RuntimeReady", "status": true`, `"type": "RuntimeReady", "status": false`, 1)
	if _, ready, _ := parseCrictlInfo([]byte(notReady)); ready {
		t.Error("RuntimeReady false read as ready")
	}
	noCgroup := strings.Replace(crictlInfo, `, "SystemdCgroup": true`, ``, 1)
	if s, _, _ := parseCrictlInfo([]byte(noCgroup)); s.SystemdCgroup != nil {
		t.Errorf("SystemdCgroup %v read from info without it", *s.SystemdCgroup)
	}
	if _, _, err := parseCrictlInfo([]byte("level=fatal msg=\"connect: connection refused\"")); err == nil {
		t.Error("non-JSON output parsed")
	}
}

// TestRunClusterGatesKubeadmInit: the two checks that only look at the
// node both run; kubeadm init and what follows run only when all before
// them passed, and are recorded as not run (required, failed) otherwise.
func TestRunClusterGatesKubeadmInit(t *testing.T) {
	plan := func(fail map[string]bool, ran *[]string) []plannedCheck {
		var pcs []plannedCheck
		for _, n := range clusterNames {
			pcs = append(pcs, plannedCheck{name: n, category: Cluster, run: func(context.Context) (string, error) {
				*ran = append(*ran, n)
				if fail[n] {
					return "", errors.New("broken")
				}
				return "ok", nil
			}})
		}
		return pcs
	}
	for _, tc := range []struct {
		name    string
		fail    map[string]bool
		wantRan []string
	}{
		{"all pass", nil, clusterNames},
		{"an image missing and the CNI dir wrong", map[string]bool{CheckClusterImages: true, CheckClusterCNI: true}, []string{CheckClusterImages, CheckClusterCNI}},
		{"an image missing", map[string]bool{CheckClusterImages: true}, []string{CheckClusterImages, CheckClusterCNI}},
		{"node not ready", map[string]bool{CheckClusterNodeReady: true}, clusterNames[:5]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []string
			r := &Report{}
			failed := runCluster(context.Background(), r, newSelector(Options{}), plan(tc.fail, &ran), time.Minute, nil)
			if !slices.Equal(ran, tc.wantRan) {
				t.Fatalf("ran %q, want %q", ran, tc.wantRan)
			}
			if failed != (len(tc.fail) > 0) || len(r.Checks) != len(clusterNames) {
				t.Fatalf("failed = %v with %d checks recorded", failed, len(r.Checks))
			}
			for _, c := range r.Checks[len(tc.wantRan):] {
				if c.Passed || !c.Required || c.Category != Cluster || !strings.HasPrefix(c.Message, "not run: ") {
					t.Errorf("%s after a failure = %+v, want a required failure saying it did not run", c.Name, c)
				}
			}
		})
	}
}
