package backend

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

// PlacementPolicy decides on which nodes builders run. Builders are
// privileged, so where they land is the platform admin's choice, not the
// NodeImage author's: the admin's node selector and tolerations apply to
// every builder, and spec.builder.nodeSelector and spec.builder.tolerations
// are accepted only within what the admin allows (nothing by default), so
// an author cannot place a builder on a control-plane node or any other
// node the admin did not open to builds.
type PlacementPolicy struct {
	// NodeSelector is added to every builder; an author cannot change
	// these keys.
	NodeSelector map[string]string
	// Tolerations are given to every builder.
	Tolerations []corev1.Toleration
	// AllowedNodeSelectorKeys are the label keys spec.builder.nodeSelector
	// may use.
	AllowedNodeSelectorKeys []string
	// AllowedTolerations are the tolerations spec.builder.tolerations may
	// contain: a toleration of the spec is accepted when one of these has
	// the same key, operator and value, and the same effect or none (any
	// effect).
	AllowedTolerations []corev1.Toleration
}

// Place returns the node selector and tolerations of a builder for spec,
// or an ErrInvalidConfig error naming each field the policy refuses.
func (p PlacementPolicy) Place(spec imagev1.BuilderSpec) (map[string]string, []corev1.Toleration, error) {
	var problems []string
	selector := maps.Clone(p.NodeSelector)
	if selector == nil {
		selector = map[string]string{}
	}
	for _, k := range slices.Sorted(maps.Keys(spec.NodeSelector)) {
		v := spec.NodeSelector[k]
		switch admin, ok := p.NodeSelector[k]; {
		case ok && admin != v:
			problems = append(problems, fmt.Sprintf("spec.builder.nodeSelector[%s]: the manager places builders on %s=%s (--builder-node-selector)", k, k, admin))
		case ok:
		case !slices.Contains(p.AllowedNodeSelectorKeys, k):
			problems = append(problems, fmt.Sprintf("spec.builder.nodeSelector[%s]: label key not allowed (the manager's --allowed-node-selector-keys: %s)", k, listOrNone(p.AllowedNodeSelectorKeys)))
		default:
			selector[k] = v
		}
	}
	tolerations := slices.Clone(p.Tolerations)
	for i, t := range spec.Tolerations {
		if !slices.ContainsFunc(p.AllowedTolerations, func(a corev1.Toleration) bool { return covers(a, t) }) {
			problems = append(problems, fmt.Sprintf("spec.builder.tolerations[%d]: %s is not allowed (the manager's --allowed-builder-tolerations: %s)", i, FormatToleration(t), formatTolerations(p.AllowedTolerations)))
			continue
		}
		tolerations = append(tolerations, t)
	}
	if len(problems) > 0 {
		return nil, nil, fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	if len(selector) == 0 {
		selector = nil
	}
	if len(tolerations) == 0 {
		tolerations = nil
	}
	return selector, tolerations, nil
}

// covers reports whether the allowed toleration a admits t. A toleration
// with a time bound (tolerationSeconds) is admitted like the same one
// without it: it tolerates less.
func covers(a, t corev1.Toleration) bool {
	return a.Key == t.Key && operator(a) == operator(t) && a.Value == t.Value &&
		(a.Effect == "" || a.Effect == t.Effect)
}

func operator(t corev1.Toleration) corev1.TolerationOperator {
	if t.Operator == "" {
		return corev1.TolerationOpEqual
	}
	return t.Operator
}

// ParseNodeSelector reads "key=value,key=value" (a flag's value).
func ParseNodeSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range SplitList(s) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want key=value", kv)
		}
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return nil, fmt.Errorf("label key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return nil, fmt.Errorf("label value %q: %s", v, strings.Join(errs, "; "))
		}
		out[k] = v
	}
	return out, nil
}

// ParseLabelKeys reads "key,key" (a flag's value).
func ParseLabelKeys(s string) ([]string, error) {
	keys := SplitList(s)
	for _, k := range keys {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return nil, fmt.Errorf("label key %q: %s", k, strings.Join(errs, "; "))
		}
	}
	return keys, nil
}

// ParseTolerations reads a comma-separated list of tolerations in the
// form of kubectl taint: KEY[=VALUE][:EFFECT]. With a value the operator
// is Equal, without it Exists; without an effect every effect is meant.
func ParseTolerations(s string) ([]corev1.Toleration, error) {
	var out []corev1.Toleration
	for _, item := range SplitList(s) {
		rest, effect, _ := strings.Cut(item, ":")
		key, value, hasValue := strings.Cut(rest, "=")
		t := corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffect(effect)}
		if hasValue {
			t.Operator, t.Value = corev1.TolerationOpEqual, value
		}
		if errs := validation.IsQualifiedName(key); len(errs) > 0 {
			return nil, fmt.Errorf("toleration %q: key: %s", item, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(value); len(errs) > 0 {
			return nil, fmt.Errorf("toleration %q: value: %s", item, strings.Join(errs, "; "))
		}
		switch t.Effect {
		case "", corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		default:
			return nil, fmt.Errorf("toleration %q: effect %q: want NoSchedule, PreferNoSchedule or NoExecute", item, effect)
		}
		out = append(out, t)
	}
	return out, nil
}

// FormatToleration writes t in the form ParseTolerations reads.
func FormatToleration(t corev1.Toleration) string {
	s := t.Key
	if s == "" {
		s = "(every key)"
	}
	if operator(t) == corev1.TolerationOpEqual {
		s += "=" + t.Value
	}
	if t.Effect != "" {
		s += ":" + string(t.Effect)
	}
	return s
}

func formatTolerations(ts []corev1.Toleration) string {
	var s []string
	for _, t := range ts {
		s = append(s, FormatToleration(t))
	}
	return listOrNone(s)
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// SplitList returns the non-empty, trimmed items of a comma-separated
// list (a flag's value).
func SplitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
