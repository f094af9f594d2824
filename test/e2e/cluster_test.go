//go:build e2e

package e2e

import (
	"context"
	"os"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The cluster does what nodeforge needs before any nodeforge component is
// involved: a Ready node, and privileged Pods that run from imported images
// and can use the node's /dev/kvm, as the builder Pod does.
var _ = Describe("The cluster", Label("cluster"), func() {
	It("has a Ready node", func(ctx SpecContext) {
		nodes, err := clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(nodes.Items).NotTo(BeEmpty())
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		Expect(ready).To(BeNumerically(">=", 1), "no node is Ready")
	})

	It("runs a privileged Pod that opens /dev/kvm", func(ctx SpecContext) {
		if os.Getenv("NODEFORGE_E2E_NO_KVM") != "" {
			Skip("this host has no /dev/kvm (run.sh found none): builders run without it, under TCG")
		}
		ref, tarball := imageTarball("./test/e2e/images/kvmprobe", "nodeforge.local/e2e-kvmprobe")
		loadImage(tarball)
		ns := newNamespace(ctx, "e2e-cluster")

		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "kvmprobe", Namespace: ns},
			Spec: corev1.PodSpec{
				RestartPolicy:                corev1.RestartPolicyNever,
				AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{
					Name:            "probe",
					Image:           ref,
					ImagePullPolicy: corev1.PullIfNotPresent,
					SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
					VolumeMounts:    []corev1.VolumeMount{{Name: "kvm", MountPath: "/dev/kvm"}},
				}},
				Volumes: []corev1.Volume{{
					Name: "kvm",
					VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
						Path: "/dev/kvm",
						Type: ptr.To(corev1.HostPathCharDev),
					}},
				}},
			},
		}
		_, err := clientset.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())

		var got *corev1.Pod
		Eventually(func(g Gomega, ctx context.Context) {
			got, err = clientset.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.Phase).To(BeElementOf(corev1.PodSucceeded, corev1.PodFailed), describePod(got))
		}).WithContext(ctx).Should(Succeed())

		Expect(got.Status.ContainerStatuses).To(HaveLen(1))
		term := got.Status.ContainerStatuses[0].State.Terminated
		Expect(term).NotTo(BeNil(), describePod(got))
		Expect(term.ExitCode).To(BeZero(), describePod(got))
		Expect(term.Message).To(HavePrefix("ok: opened /dev/kvm"))
		Expect(got.Status.Phase).To(Equal(corev1.PodSucceeded))
	})
})
