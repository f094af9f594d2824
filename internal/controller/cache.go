package controller

import (
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nodeforge/nodeforge/internal/backend"
)

// CacheOptions returns the manager's cache options, which keep its memory
// independent of the size of the cluster:
//
//   - builder objects (Pods, and VirtualMachineInstances when the KubeVirt
//     backend is on, passed as builderKinds) are cached only when they carry
//     backend.BuilderSelector's labels, or backend.UpdateCheckSelector's
//     (update check Pods), so the cluster's other Pods and VMs never enter
//     the cache;
//   - ConfigMaps are not cached at all: the NodeImage controller watches
//     their metadata only and reads the ones a NodeImage refers to through
//     the API reader;
//   - namespaces, when not empty, limit every informer to those namespaces
//     (--build-namespace).
func CacheOptions(namespaces []string, builderKinds ...client.Object) cache.Options {
	opts := cache.Options{ByObject: map[client.Object]cache.ByObject{}}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	builders := labels.NewSelector()
	managed, err := labels.NewRequirement(backend.LabelManagedBy, selection.Equals, []string{"nodeforge"})
	if err != nil {
		panic(err) // constant input
	}
	component, err := labels.NewRequirement(backend.LabelComponent, selection.In,
		[]string{backend.ComponentBuilder, backend.ComponentUpdateCheck})
	if err != nil {
		panic(err)
	}
	builders = builders.Add(*managed, *component)
	for _, o := range builderKinds {
		opts.ByObject[o] = cache.ByObject{Label: builders}
	}
	return opts
}
