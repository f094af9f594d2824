// Package v1alpha1 contains the API types of the image.nodeforge.dev group:
// NodeImage, the desired content of a virtual-machine node image, and
// NodeImageBuild, one immutable attempt to build, verify and publish it.
//
// +kubebuilder:object:generate=true
// +groupName=image.nodeforge.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "image.nodeforge.dev", Version: "v1alpha1"}

	// SchemeBuilder adds the types of this group to a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this group to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &NodeImage{}, &NodeImageList{}, &NodeImageBuild{}, &NodeImageBuildList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
