// Package resolve turns a NodeImage's image content into the self-contained
// form a build needs: every ConfigMap reference replaced by the bytes it
// names, and every default written out. The result is what a
// NodeImageBuild carries and what the spec digest addresses.
package resolve

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// ErrMissingReference is wrapped by errors about a ConfigMap or key that
// does not exist: the user must act, so callers treat it as stalling.
var ErrMissingReference = errors.New("referenced ConfigMap key not found")

// ConfigMapGetter returns the value of key in the ConfigMap name. It wraps
// ErrMissingReference when the ConfigMap or key does not exist.
type ConfigMapGetter func(ctx context.Context, name, key string) (string, error)

// FromClient reads ConfigMaps in namespace ns.
func FromClient(r client.Reader, ns string) ConfigMapGetter {
	return func(ctx context.Context, name, key string) (string, error) {
		var cm corev1.ConfigMap
		if err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &cm); err != nil {
			if apierrors.IsNotFound(err) {
				return "", fmt.Errorf("%w: ConfigMap %s/%s does not exist", ErrMissingReference, ns, name)
			}
			return "", fmt.Errorf("reading ConfigMap %s/%s: %w", ns, name, err)
		}
		return valueOf(&cm, key)
	}
}

// FromConfigMaps reads from a fixed set of ConfigMaps, such as those in a
// file next to a NodeImage.
func FromConfigMaps(cms []corev1.ConfigMap) ConfigMapGetter {
	return func(_ context.Context, name, key string) (string, error) {
		for i := range cms {
			if cms[i].Name == name {
				return valueOf(&cms[i], key)
			}
		}
		return "", fmt.Errorf("%w: ConfigMap %s is not defined", ErrMissingReference, name)
	}
}

func valueOf(cm *corev1.ConfigMap, key string) (string, error) {
	if v, ok := cm.Data[key]; ok {
		return v, nil
	}
	if v, ok := cm.BinaryData[key]; ok {
		return string(v), nil
	}
	return "", fmt.Errorf("%w: ConfigMap %s has no key %q", ErrMissingReference, cm.Name, key)
}

// Content returns a defaulted copy of c whose ConfigMap references are
// replaced by their content. Errors name the field that refers to the
// missing data.
func Content(ctx context.Context, c *imagev1.ImageContent, get ConfigMapGetter) (*imagev1.ImageContent, error) {
	out := c.DeepCopy()
	if k := out.Kubernetes; k != nil && k.AptRepository.SigningKey.ConfigMapKeyRef != nil {
		ref := k.AptRepository.SigningKey.ConfigMapKeyRef
		v, err := get(ctx, ref.Name, ref.Key)
		if err != nil {
			return nil, fmt.Errorf("spec.kubernetes.aptRepository.signingKey.configMapKeyRef: %w", err)
		}
		k.AptRepository.SigningKey = imagev1.KeySource{Armored: v}
	}
	for i := range out.Files {
		f := &out.Files[i]
		if f.ConfigMapKeyRef == nil {
			continue
		}
		v, err := get(ctx, f.ConfigMapKeyRef.Name, f.ConfigMapKeyRef.Key)
		if err != nil {
			return nil, fmt.Errorf("spec.files[%d].configMapKeyRef: %w", i, err)
		}
		f.Content, f.ConfigMapKeyRef = v, nil
	}
	for i := range out.Provisioners {
		a := out.Provisioners[i].Ansible
		if a == nil || a.PlaybookRef == nil {
			continue
		}
		v, err := get(ctx, a.PlaybookRef.Name, a.PlaybookRef.Key)
		if err != nil {
			return nil, fmt.Errorf("spec.provisioners[%d].ansible.playbookRef: %w", i, err)
		}
		a.Playbook, a.PlaybookRef = v, nil
	}
	out.Default()
	return out, nil
}
