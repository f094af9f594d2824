// Command gendocs writes the field reference of each CRD under
// config/crd/bases into the matching docs/spec/v1alpha1 page, between the
// markers "<!-- fields:begin -->" and "<!-- fields:end -->", so the docs list
// every field with its type, default and validation exactly as the API
// server enforces them. `make docs` runs it; `make verify` fails when the
// pages are stale.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

const (
	begin = "<!-- fields:begin -->"
	end   = "<!-- fields:end -->"
)

func main() {
	pages := map[string]string{
		"config/crd/bases/image.nodeforge.dev_nodeimages.yaml":      "docs/spec/v1alpha1/nodeimages.md",
		"config/crd/bases/image.nodeforge.dev_nodeimagebuilds.yaml": "docs/spec/v1alpha1/nodeimagebuilds.md",
	}
	for crd, page := range pages {
		if err := render(crd, page); err != nil {
			fmt.Fprintln(os.Stderr, "gendocs:", err)
			os.Exit(1)
		}
	}
}

func render(crdPath, pagePath string) error {
	raw, err := os.ReadFile(crdPath)
	if err != nil {
		return err
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
		return fmt.Errorf("%s: %w", crdPath, err)
	}
	schema := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n<!-- Generated from %s by hack/gendocs; do not edit. -->\n\n", begin, filepath.Base(crdPath))
	for _, top := range []string{"spec", "status"} {
		s, ok := schema.Properties[top]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "### %s\n\n| Field | Type | Default | Validation | Description |\n|---|---|---|---|---|\n", top)
		walk(&b, top, s)
		b.WriteString("\n")
	}
	if len(schema.XValidations) > 0 {
		b.WriteString("### Object rules\n\n")
		for _, r := range schema.XValidations {
			fmt.Fprintf(&b, "- `%s`: %s\n", r.Rule, r.Message)
		}
		b.WriteString("\n")
	}
	b.WriteString(end)

	page, err := os.ReadFile(pagePath)
	if err != nil {
		return err
	}
	i, j := bytes.Index(page, []byte(begin)), bytes.Index(page, []byte(end))
	if i < 0 || j < i {
		return fmt.Errorf("%s: markers %q and %q not found", pagePath, begin, end)
	}
	out := append(append(append([]byte{}, page[:i]...), b.Bytes()...), page[j+len(end):]...)
	return os.WriteFile(pagePath, out, 0o644)
}

// Fields of Kubernetes' own types are listed once, not expanded.
var opaque = map[string]bool{"resources": true, "tolerations": true, "conditions": true, "nodeSelector": true}

func walk(b *bytes.Buffer, path string, s apiextensionsv1.JSONSchemaProps) {
	names := make([]string, 0, len(s.Properties))
	for n := range s.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := s.Properties[n]
		fp := path + "." + n
		req := ""
		for _, r := range s.Required {
			if r == n {
				req = " (required)"
			}
		}
		fmt.Fprintf(b, "| `%s`%s | %s | %s | %s | %s |\n", fp, req, typeOf(p), defaultOf(p), rules(p), cell(p.Description))
		if opaque[n] {
			continue
		}
		switch {
		case len(p.Properties) > 0:
			walk(b, fp, p)
		case p.Items != nil && p.Items.Schema != nil && len(p.Items.Schema.Properties) > 0:
			walk(b, fp+"[]", *p.Items.Schema)
		}
	}
}

func typeOf(p apiextensionsv1.JSONSchemaProps) string {
	switch {
	case p.XIntOrString:
		return "int or string"
	case p.Type == "array" && p.Items != nil && p.Items.Schema != nil:
		return "[]" + typeOf(*p.Items.Schema)
	case p.Type == "":
		return "any"
	}
	return p.Type
}

func defaultOf(p apiextensionsv1.JSONSchemaProps) string {
	if p.Default == nil {
		return ""
	}
	return "`" + strings.ReplaceAll(string(p.Default.Raw), "|", `\|`) + "`"
}

func rules(p apiextensionsv1.JSONSchemaProps) string {
	var r []string
	if len(p.Enum) > 0 {
		var vs []string
		for _, e := range p.Enum {
			vs = append(vs, strings.Trim(string(e.Raw), `"`))
		}
		r = append(r, "one of "+strings.Join(vs, ", "))
	}
	if p.Pattern != "" {
		r = append(r, "pattern `"+p.Pattern+"`")
	}
	if p.MinLength != nil {
		r = append(r, fmt.Sprintf("min length %d", *p.MinLength))
	}
	if p.MaxLength != nil {
		r = append(r, fmt.Sprintf("max length %d", *p.MaxLength))
	}
	if p.Minimum != nil {
		r = append(r, fmt.Sprintf("≥ %g", *p.Minimum))
	}
	if p.Maximum != nil {
		r = append(r, fmt.Sprintf("≤ %g", *p.Maximum))
	}
	if p.MinItems != nil {
		r = append(r, fmt.Sprintf("min items %d", *p.MinItems))
	}
	if p.MaxItems != nil {
		r = append(r, fmt.Sprintf("max items %d", *p.MaxItems))
	}
	if p.XListType != nil && *p.XListType != "atomic" {
		r = append(r, "list type "+*p.XListType)
	}
	for _, x := range p.XValidations {
		r = append(r, x.Message)
	}
	if p.Type == "array" && p.Items != nil && p.Items.Schema != nil && len(p.Items.Schema.Properties) == 0 {
		if ir := rules(*p.Items.Schema); ir != "" {
			r = append(r, "items: "+ir)
		}
	}
	return cell(strings.Join(r, "; "))
}

func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", `\|`)
}
