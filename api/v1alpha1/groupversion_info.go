// Package v1alpha1 contains the API types of the image.nodeforge.dev group:
// NodeImage, the desired content of a virtual-machine node image, and
// NodeImageBuild, one immutable attempt to build, verify and publish it.
//
// +kubebuilder:object:generate=true
// +groupName=image.nodeforge.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "image.nodeforge.dev", Version: "v1alpha1"}

	// SchemeBuilder adds the types of this group to a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
