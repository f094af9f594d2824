package controller_test

import (
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
	"github.com/nodeforge/nodeforge/internal/backend"
	"github.com/nodeforge/nodeforge/internal/backend/kubevirt"
	"github.com/nodeforge/nodeforge/internal/backend/pod"
)

// A builder stuck Terminating (its node is NotReady, so the kubelet never
// confirms) counts as gone: the build's finalizer must not wait for it.
func TestBackendDeleteTerminatingBuilder(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	// Not created: the builders only need an owner to point at.
	b := &imagev1.NodeImageBuild{
		ObjectMeta: metav1.ObjectMeta{Name: "stuck", Namespace: ns, UID: "0b7e2a43-5a6c-4f55-9d7e-6b1f3f7f0a01"},
		Spec:       imagev1.NodeImageBuildSpec{NodeImageName: "img"},
	}
	b.SetGroupVersionKind(imagev1.GroupVersion.WithKind(imagev1.NodeImageBuildKind))
	// The finalizer stands for the kubelet that never answers.
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: ns, Name: backend.BuilderName(b.Name, 1),
			Labels: backend.Labels(b, "builder", 1), Finalizers: []string{"test.nodeforge.dev/kubelet"}}
	}
	podSpec := corev1.PodSpec{Containers: []corev1.Container{{Name: "builder", Image: "x"}}, NodeName: "gone-node"}
	for _, tc := range []struct {
		name    string
		builder client.Object
		be      backend.Backend
	}{
		{"pod", &corev1.Pod{ObjectMeta: meta(), Spec: podSpec},
			&pod.Backend{Client: k8s, Scheme: env.Scheme}},
		{"kubevirt", &kubevirtv1.VirtualMachineInstance{ObjectMeta: meta()},
			&kubevirt.Backend{Client: k8s, Scheme: env.Scheme}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(controllerutil.SetControllerReference(b, tc.builder, env.Scheme)).To(Succeed())
			g.Expect(k8s.Create(ctx, tc.builder)).To(Succeed())
			defer func() {
				_ = k8s.Get(ctx, client.ObjectKeyFromObject(tc.builder), tc.builder)
				tc.builder.SetFinalizers(nil)
				_ = k8s.Update(ctx, tc.builder)
			}()
			for _, attempt := range []int32{1, 0} {
				gone, err := tc.be.Delete(ctx, b, attempt)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(gone).To(BeTrue(), "attempt %d", attempt)
			}
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(tc.builder), tc.builder)).To(Succeed())
			g.Expect(tc.builder.GetDeletionTimestamp()).NotTo(BeNil(), "still Terminating")
		})
	}
}
