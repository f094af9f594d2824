package buildresult

import (
	"fmt"
	"strings"
	"testing"
)

func TestUpdatesResultRoundTripAndBounds(t *testing.T) {
	r := &UpdatesResult{Outcome: OutcomeSucceeded, SpecDigest: "sha256:" + strings.Repeat("a", 64),
		Checked: 245, Upgrades: 400, Digest: "sha256:" + strings.Repeat("b", 64)}
	for i := range 400 {
		r.Changes = append(r.Changes, fmt.Sprintf("libpackage-number-%03d 1.2.3-4 → 1.2.3-4+deb13u1", i))
	}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxResultSize {
		t.Fatalf("encoded %d bytes, over %d", len(b), MaxResultSize)
	}
	got, err := DecodeUpdates(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Upgrades != 400 || len(got.Changes) == 0 || len(got.Changes) >= 400 || got.Changes[0] != r.Changes[0] {
		t.Errorf("decoded upgrades %d with %d changes (first %q)", got.Upgrades, len(got.Changes), got.Changes)
	}
	if len(r.Changes) != 400 {
		t.Error("Encode changed its receiver")
	}
	s := got.Summary(1024)
	if len(s) > 1024 || !strings.HasPrefix(s, "400 of 245 packages have newer versions: libpackage-number-000 1.2.3-4 → 1.2.3-4+deb13u1, ") {
		t.Errorf("summary = %q", s)
	}
	few := &UpdatesResult{Outcome: OutcomeSucceeded, Checked: 10, Upgrades: 3, Unavailable: 1,
		Changes: []string{"a 1 → 2", "b 1 → 2"}}
	if s := few.Summary(1024); s != "3 of 10 packages have newer versions: a 1 → 2, b 1 → 2 and 1 more; 1 no longer offered by any repository" {
		t.Errorf("summary = %q", s)
	}
	if s := (&UpdatesResult{Checked: 10}).Summary(1024); s != "all 10 packages are current" {
		t.Errorf("summary = %q", s)
	}
}

func TestDecodeUpdatesRejectsBadResults(t *testing.T) {
	digest := "sha256:" + strings.Repeat("c", 64)
	for name, raw := range map[string]string{
		"empty":               "",
		"not JSON":            "Error: exit status 1",
		"a build result":      `{"outcome":"succeeded","artifact":{"sha256":"x","size":1,"format":"qcow2"}}`,
		"unknown outcome":     `{"outcome":"maybe","checked":3}`,
		"upgrades, no digest": `{"outcome":"succeeded","checked":3,"upgrades":1}`,
		"digest, no upgrades": `{"outcome":"succeeded","checked":3,"digest":"` + digest + `"}`,
		"malformed digest":    `{"outcome":"succeeded","checked":3,"upgrades":1,"digest":"sha256:xyz"}`,
	} {
		if _, err := DecodeUpdates([]byte(raw)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	for name, raw := range map[string]string{
		"current": `{"outcome":"succeeded","specDigest":"` + digest + `","checked":3}`,
		"updates": `{"outcome":"succeeded","checked":3,"upgrades":1,"digest":"` + digest + `","changes":["a 1 → 2"]}`,
		"failed":  `{"outcome":"failed","message":"fetching the manifest: not found"}`,
	} {
		if _, err := DecodeUpdates([]byte(raw)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
