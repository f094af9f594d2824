package resolve

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/nodeforge/nodeforge/config/crd"
)

// schema is one CRD version's schema, ready to prune, default and validate
// objects the way the API server does.
type schema struct {
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

var (
	schemasOnce sync.Once
	schemas     map[string]*schema // by kind
	schemasErr  error
)

func loadSchemas() (map[string]*schema, error) {
	schemasOnce.Do(func() {
		schemas, schemasErr = readSchemas()
	})
	return schemas, schemasErr
}

func readSchemas() (map[string]*schema, error) {
	files, err := crd.Bases.ReadDir("bases")
	if err != nil {
		return nil, err
	}
	out := map[string]*schema{}
	for _, f := range files {
		raw, err := crd.Bases.ReadFile(path.Join("bases", f.Name()))
		if err != nil {
			return nil, err
		}
		var def apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(raw, &def); err != nil {
			return nil, fmt.Errorf("CRD %s: %w", f.Name(), err)
		}
		var internal apiextensions.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(
			def.Spec.Versions[0].Schema.OpenAPIV3Schema, &internal, nil); err != nil {
			return nil, fmt.Errorf("CRD %s: %w", f.Name(), err)
		}
		st, err := structuralschema.NewStructural(&internal)
		if err != nil {
			return nil, fmt.Errorf("CRD %s: %w", f.Name(), err)
		}
		v, _, err := apiservervalidation.NewSchemaValidator(&internal)
		if err != nil {
			return nil, fmt.Errorf("CRD %s: %w", f.Name(), err)
		}
		out[def.Spec.Names.Kind] = &schema{structural: st, validator: v, cel: cel.NewValidator(st, true, celconfig.PerCallLimit)}
	}
	return out, nil
}

// Admit applies to a decoded YAML document of the given kind what the API
// server applies on create: unknown fields are rejected, schema defaults are
// filled in, and the OpenAPI and CEL rules are checked. It returns the
// defaulted document as JSON, or an error listing every offending field.
func Admit(ctx context.Context, kind string, doc []byte) ([]byte, error) {
	all, err := loadSchemas()
	if err != nil {
		return nil, fmt.Errorf("loading CRD schemas: %w", err)
	}
	s, ok := all[kind]
	if !ok {
		return nil, fmt.Errorf("no schema for kind %q", kind)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, err
	}
	unknown := pruning.PruneWithOptions(obj, s.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	msgs := make([]string, 0, len(unknown))
	for _, p := range unknown {
		msgs = append(msgs, p+": unknown field")
	}
	structuraldefaulting.Default(obj, s.structural)
	errs := apiservervalidation.ValidateCustomResource(nil, obj, s.validator)
	celErrs, _ := s.cel.Validate(ctx, nil, s.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	for _, e := range append(errs, celErrs...) {
		msgs = append(msgs, e.Error())
	}
	if len(msgs) > 0 {
		return nil, aggregate(kind, msgs)
	}
	return json.Marshal(obj)
}

func aggregate(kind string, msgs []string) error {
	sort.Strings(msgs)
	return fmt.Errorf("invalid %s:\n  %s", kind, strings.Join(msgs, "\n  "))
}
