package backend

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	imagev1 "github.com/nodeforge/nodeforge/api/v1alpha1"
)

var controlPlane = corev1.Toleration{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}

func TestPlace(t *testing.T) {
	builds := corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "builds", Effect: corev1.TaintEffectNoSchedule}
	admin := PlacementPolicy{
		NodeSelector:            map[string]string{"nodeforge.dev/builder": "true"},
		Tolerations:             []corev1.Toleration{builds},
		AllowedNodeSelectorKeys: []string{"topology.kubernetes.io/zone"},
		AllowedTolerations: []corev1.Toleration{
			{Key: "gpu", Operator: corev1.TolerationOpExists}, // any effect
		},
	}
	for _, tc := range []struct {
		name      string
		policy    PlacementPolicy
		spec      imagev1.BuilderSpec
		selector  map[string]string
		tolerates []corev1.Toleration
		wantErr   []string // each must be in the error
	}{
		{name: "default policy, empty spec"},
		{
			name: "default policy refuses a control-plane node", spec: imagev1.BuilderSpec{
				NodeSelector: map[string]string{"node-role.kubernetes.io/control-plane": ""},
				Tolerations:  []corev1.Toleration{controlPlane},
			},
			wantErr: []string{
				"spec.builder.nodeSelector[node-role.kubernetes.io/control-plane]: label key not allowed (the manager's --allowed-node-selector-keys: none)",
				"spec.builder.tolerations[0]: node-role.kubernetes.io/control-plane:NoSchedule is not allowed",
			},
		},
		{
			name: "admin placement only", policy: admin,
			selector: map[string]string{"nodeforge.dev/builder": "true"}, tolerates: []corev1.Toleration{builds},
		},
		{
			name: "allowed additions", policy: admin, spec: imagev1.BuilderSpec{
				NodeSelector: map[string]string{"topology.kubernetes.io/zone": "a", "nodeforge.dev/builder": "true"},
				Tolerations:  []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
			},
			selector:  map[string]string{"nodeforge.dev/builder": "true", "topology.kubernetes.io/zone": "a"},
			tolerates: []corev1.Toleration{builds, {Key: "gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
		},
		{
			name: "the admin's key cannot be changed", policy: admin,
			spec:    imagev1.BuilderSpec{NodeSelector: map[string]string{"nodeforge.dev/builder": "false"}},
			wantErr: []string{"spec.builder.nodeSelector[nodeforge.dev/builder]: the manager places builders on nodeforge.dev/builder=true"},
		},
		{
			// Exists for a key tolerates every value: not covered by an
			// allowed Equal toleration.
			name:    "a wider toleration than allowed",
			policy:  PlacementPolicy{AllowedTolerations: []corev1.Toleration{builds}},
			spec:    imagev1.BuilderSpec{Tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}},
			wantErr: []string{"spec.builder.tolerations[0]: dedicated:NoSchedule is not allowed (the manager's --allowed-builder-tolerations: dedicated=builds:NoSchedule)"},
		},
		{
			name:    "the tolerate-everything toleration",
			policy:  admin,
			spec:    imagev1.BuilderSpec{Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}},
			wantErr: []string{"spec.builder.tolerations[0]: (every key) is not allowed"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sel, tol, err := tc.policy.Place(tc.spec)
			if len(tc.wantErr) > 0 {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("err = %v, want ErrInvalidConfig", err)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(sel, tc.selector) || !reflect.DeepEqual(tol, tc.tolerates) {
				t.Errorf("Place = %v, %v; want %v, %v", sel, tol, tc.selector, tc.tolerates)
			}
		})
	}
}

func TestParsePlacementFlags(t *testing.T) {
	tol, err := ParseTolerations("dedicated=builds:NoSchedule, gpu ,node-role.kubernetes.io/control-plane:NoSchedule")
	if err != nil {
		t.Fatal(err)
	}
	want := []corev1.Toleration{
		{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "builds", Effect: corev1.TaintEffectNoSchedule},
		{Key: "gpu", Operator: corev1.TolerationOpExists},
		controlPlane,
	}
	if !reflect.DeepEqual(tol, want) {
		t.Errorf("ParseTolerations = %+v, want %+v", tol, want)
	}
	for _, bad := range []string{":NoSchedule", "=x", "k:Sometimes", "k=v v"} {
		if _, err := ParseTolerations(bad); err == nil {
			t.Errorf("ParseTolerations(%q): no error", bad)
		}
	}
	sel, err := ParseNodeSelector("a=b,nodeforge.dev/builder=true")
	if err != nil || !reflect.DeepEqual(sel, map[string]string{"a": "b", "nodeforge.dev/builder": "true"}) {
		t.Errorf("ParseNodeSelector = %v, %v", sel, err)
	}
	for _, bad := range []string{"a", "a=b c", "-a=b"} {
		if _, err := ParseNodeSelector(bad); err == nil {
			t.Errorf("ParseNodeSelector(%q): no error", bad)
		}
	}
}
