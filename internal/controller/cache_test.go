package controller_test

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/controller"
)

// The manager's cache holds builder and update check Pods only, and only in
// its namespaces.
func TestCacheOptionsHoldBuilderPodsOnly(t *testing.T) {
	needEnv(t)
	g := NewWithT(t)
	watched, other := newNamespace(t), newNamespace(t)
	c, err := cache.New(env.Config, withScheme(controller.CacheOptions([]string{watched}, &corev1.Pod{})))
	g.Expect(err).NotTo(HaveOccurred())
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = c.Start(cctx) }()

	pod := func(ns, name string, l map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}
	}
	for _, p := range []*corev1.Pod{
		pod(watched, "builder", backend.BuilderSelector),
		pod(watched, "update-check", backend.UpdateCheckSelector),
		pod(watched, "unmanaged-check", map[string]string{backend.LabelComponent: backend.ComponentUpdateCheck}),
		pod(watched, "someone-elses", map[string]string{"app": "web"}),
		pod(other, "builder-elsewhere", backend.BuilderSelector),
	} {
		g.Expect(k8s.Create(ctx, p)).To(Succeed())
	}
	g.Expect(c.WaitForCacheSync(cctx)).To(BeTrue())
	g.Eventually(func(g Gomega) {
		var l corev1.PodList
		g.Expect(c.List(cctx, &l)).To(Succeed())
		var names []string
		for _, p := range l.Items {
			names = append(names, p.Namespace+"/"+p.Name)
		}
		g.Expect(names).To(ConsistOf(watched+"/builder", watched+"/update-check"))
	}, testTimeout).Should(Succeed())
	// The unlabelled Pod exists; the cache just does not hold it.
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: watched, Name: "someone-elses"}, &corev1.Pod{})).To(Succeed())
}

func withScheme(o cache.Options) cache.Options {
	o.Scheme = env.Scheme
	return o
}
