package resolve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// LoadFile reads a YAML file holding exactly one NodeImage and any number of
// ConfigMaps it refers to (separated by ---). The NodeImage goes through the
// same admission as on an API server (see Admit): unknown fields, schema
// and CEL violations are errors naming the field, so a typo never turns into
// a silent default. The returned getter serves the file's ConfigMaps.
func LoadFile(path string) (*imagev1.NodeImage, ConfigMapGetter, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return Load(f, path)
}

// Load is LoadFile for a reader; name is used in errors.
func Load(r io.Reader, name string) (*imagev1.NodeImage, ConfigMapGetter, error) {
	var (
		image *imagev1.NodeImage
		cms   []corev1.ConfigMap
	)
	docs := yaml.NewYAMLReader(bufio.NewReader(r))
	for n := 1; ; n++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: reading document %d: %w", name, n, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := sigsyaml.Unmarshal(doc, &meta); err != nil {
			return nil, nil, fmt.Errorf("%s: document %d: %w", name, n, err)
		}
		switch {
		case meta.APIVersion == imagev1.GroupVersion.String() && meta.Kind == imagev1.NodeImageKind:
			if image != nil {
				return nil, nil, fmt.Errorf("%s: document %d: more than one NodeImage; give one per file", name, n)
			}
			admitted, err := Admit(context.TODO(), imagev1.NodeImageKind, doc)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
			image = &imagev1.NodeImage{}
			if err := sigsyaml.UnmarshalStrict(admitted, image); err != nil {
				return nil, nil, fmt.Errorf("%s: NodeImage: %w", name, err)
			}
		case meta.APIVersion == "v1" && meta.Kind == "ConfigMap":
			var cm corev1.ConfigMap
			if err := sigsyaml.UnmarshalStrict(doc, &cm); err != nil {
				return nil, nil, fmt.Errorf("%s: document %d (ConfigMap): %w", name, n, err)
			}
			cms = append(cms, cm)
		default:
			return nil, nil, fmt.Errorf("%s: document %d: unexpected %s %s; want an %s NodeImage and ConfigMaps",
				name, n, meta.APIVersion, meta.Kind, imagev1.GroupVersion)
		}
	}
	if image == nil {
		return nil, nil, fmt.Errorf("%s: no %s NodeImage found", name, imagev1.GroupVersion)
	}
	return image, FromConfigMaps(cms), nil
}
