package main

import (
	"strings"
	"testing"
)

func TestOptionsValidate(t *testing.T) {
	valid := options{builderImage: "builder:dev", maxConcurrentBuilds: 4, maxBuildsPerNode: 1,
		maxConcurrentReconciles: 2, enableKubeVirt: "auto", scratchSize: "40Gi"}
	if err := valid.validate(); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*options)
		want   string
	}{
		"no builder image":     {func(o *options) { o.builderImage = "" }, "--builder-image"},
		"negative build limit": {func(o *options) { o.maxConcurrentBuilds = -1 }, "--max-concurrent-builds=-1"},
		"per-node limit of 2":  {func(o *options) { o.maxBuildsPerNode = 2 }, "--max-builds-per-node=2"},
		"no reconcilers":       {func(o *options) { o.maxConcurrentReconciles = 0 }, "--max-concurrent-reconciles=0"},
		"kubevirt typo":        {func(o *options) { o.enableKubeVirt = "yes" }, `--kubevirt="yes"`},
		"kubevirt, no image":   {func(o *options) { o.enableKubeVirt = "true" }, "--builder-appliance-image"},
		"scratch not quantity": {func(o *options) { o.scratchSize = "lots" }, `--scratch-size="lots"`},
		"scratch zero":         {func(o *options) { o.scratchSize = "0" }, `--scratch-size="0"`},
		"selector without =":   {func(o *options) { o.builderNodeSelector = "pool" }, "--builder-node-selector"},
		"toleration effect":    {func(o *options) { o.builderTolerations = "dedicated=builds:Never" }, "--builder-tolerations"},
		"allowed key invalid":  {func(o *options) { o.allowedNodeSelectorKeys = "a b" }, "--allowed-node-selector-keys"},
		"wildcard toleration":  {func(o *options) { o.allowedTolerations = ":NoSchedule" }, "--allowed-builder-tolerations"},
	} {
		t.Run(name, func(t *testing.T) {
			o := valid
			tc.mutate(&o)
			err := o.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
