package backend

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// TestDeleteControlled: the build's own objects are deleted, with the UID
// read as a precondition; an object of that name the build does not
// control stays, and one replaced between the read and the delete (a
// Conflict on the precondition) is not deleted either.
func TestDeleteControlled(t *testing.T) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	b := &imagev1.NodeImageBuild{ObjectMeta: metav1.ObjectMeta{Name: "img-abc", Namespace: "ns", UID: types.UID("build-uid")}}
	owned := func(name string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(name + "-uid"),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: imagev1.GroupVersion.String(), Kind: "NodeImageBuild", Name: b.Name, UID: b.UID, Controller: ptr.To(true)}}}}
	}
	foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "img-abc-spec", Namespace: "ns", UID: "foreign"}}

	for _, tc := range []struct {
		name       string
		obj        client.Object
		conflict   bool
		wantExists bool
	}{
		{"owned", owned("img-abc-spec"), false, false},
		{"foreign", foreign, false, true},
		{"replaced in between", owned("img-abc-spec"), true, true},
		{"missing", nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotUID *types.UID
			cb := fake.NewClientBuilder().WithScheme(s).WithInterceptorFuncs(interceptor.Funcs{
				Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
					do := &client.DeleteOptions{}
					do.ApplyOptions(opts)
					if do.Preconditions != nil {
						gotUID = do.Preconditions.UID
					}
					if tc.conflict {
						return apierrors.NewConflict(corev1.Resource("configmaps"), obj.GetName(), nil)
					}
					return c.Delete(ctx, obj, opts...)
				},
			})
			if tc.obj != nil {
				cb = cb.WithObjects(tc.obj)
			}
			c := cb.Build()
			gone, err := DeleteSpecConfigMap(context.Background(), c, c, b)
			if err != nil || !gone {
				t.Fatalf("DeleteSpecConfigMap = %v, %v; want gone", gone, err)
			}
			err = c.Get(context.Background(), client.ObjectKey{Namespace: "ns", Name: "img-abc-spec"}, &corev1.ConfigMap{})
			if exists := err == nil; exists != tc.wantExists {
				t.Errorf("exists after delete = %v (%v); want %v", exists, err, tc.wantExists)
			}
			if tc.name == "owned" && (gotUID == nil || *gotUID != "img-abc-spec-uid") {
				t.Errorf("delete precondition UID = %v; want the UID read", gotUID)
			}
		})
	}
}
