package buildresult

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEncodeBounded(t *testing.T) {
	r := &Result{
		Outcome: OutcomeFailed, Reason: ReasonVerificationFailed, Step: "verify",
		Message:      strings.Repeat("é long message ", 1000),
		Verification: &Verification{Failed: 300},
	}
	for i := 0; i < 300; i++ {
		r.Verification.FailedChecks = append(r.Verification.FailedChecks, strings.Repeat("c", 40))
	}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxResultSize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Reason != ReasonVerificationFailed || got.Step != "verify" || got.Verification.Failed != 300 {
		t.Fatalf("lost fields: %+v", got)
	}
	if len(r.Verification.FailedChecks) != 300 {
		t.Fatal("Encode modified its receiver")
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name, in string
		wantErr  bool
	}{
		{"succeeded", `{"outcome":"succeeded","artifact":{"url":"s3://b/k","sha256":"ab","size":1,"format":"qcow2"}}`, false},
		{"succeeded without artifact", `{"outcome":"succeeded"}`, true},
		{"failed", `{"outcome":"failed","reason":"PublishFailed","step":"publish"}`, false},
		{"unknown reason", `{"outcome":"failed","reason":"Oops"}`, true},
		{"empty", "  ", true},
		{"garbage", "panic: runtime error", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

func TestLastProgress(t *testing.T) {
	log := "starting\n" + string(ProgressLine(Progress{Step: "rootfs", Percent: 10})) +
		`{"plan":{"steps":["a"]}}` + "\n" +
		`{"progress":{"step":"image","percent":140,"state":"running","elapsedSeconds":3}}` + "\n" +
		`{"progress":{"step":` + "\n"
	p, ok := LastProgress([]byte(log))
	if !ok || p.Step != "image" || p.Percent != 100 {
		t.Fatalf("got %+v %v", p, ok)
	}
	if _, ok := LastProgress([]byte("nothing\n")); ok {
		t.Fatal("found progress in a log without any")
	}
	// A builder cannot put an unbounded step or message into status.
	long := strings.Repeat("s", 100000)
	p, ok = LastProgress(ProgressLine(Progress{Step: long, Message: long}))
	if !ok || len(p.Step) > MaxProgressStep || len(p.Message) > MaxProgressMessage || !strings.HasPrefix(p.Step, "sss") {
		t.Fatalf("got step of %d bytes, message of %d (%v)", len(p.Step), len(p.Message), ok)
	}
}

func TestResultLine(t *testing.T) {
	r := &Result{Outcome: OutcomeFailed, Reason: ReasonBuildFailed, Message: "x"}
	line, err := ResultLine(r)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := LastResult(append([]byte("[  1.0] boot\n"), line...))
	if !ok || got.Reason != ReasonBuildFailed {
		t.Fatalf("got %+v", got)
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"ééé", 4, "…"},        // never a cut rune
		{"abcdef", 5, "ab…"},   // the mark counts
		{"ab  cdef", 7, "ab…"}, // no space before the mark
		{"abc", 3, "abc"},
		{"abcd", 3, ""},
	} {
		if got := Truncate(tc.in, tc.n); got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	if got := TailBytes("line1\nline2\nline3", 8); got != "line3" {
		t.Fatalf("got %q", got)
	}
}

func TestCheckEncoding(t *testing.T) {
	for _, tc := range []struct {
		c    CheckEntry
		want string
	}{
		{CheckEntry{Name: "boot-ssh", Category: "boot", Passed: true, Required: true}, "B+boot-ssh"},
		{CheckEntry{Name: "hygiene-logs", Category: "offline", Passed: false}, "o-hygiene-logs"},
		{CheckEntry{Name: "package-vim", Category: "offline", Skipped: true, Required: true}, "O~package-vim"},
		{CheckEntry{Name: "cluster-node-ready", Category: "cluster", Passed: true, Required: true, Duration: 42500 * time.Millisecond}, "C+cluster-node-ready@42.5"},
		{CheckEntry{Name: "cluster-kubeadm-init", Category: "cluster", Duration: 162 * time.Second}, "c-cluster-kubeadm-init@162"},
		{CheckEntry{Name: "boot-ssh", Category: "boot", Passed: true, Duration: 100 * time.Millisecond}, "b+boot-ssh@0.1"},
	} {
		got := EncodeCheck(tc.c)
		if got != tc.want {
			t.Errorf("EncodeCheck(%+v) = %q, want %q", tc.c, got, tc.want)
		}
		back, err := DecodeCheck(got)
		if err != nil || back != tc.c {
			t.Errorf("DecodeCheck(%q) = %+v, %v; want %+v", got, back, err, tc.c)
		}
	}
	// Durations are rounded to a tenth of a second, and are at least that.
	if got := EncodeCheck(CheckEntry{Name: "boot-ssh", Category: "boot", Passed: true, Duration: 1234 * time.Millisecond}); got != "b+boot-ssh@1.2" {
		t.Errorf("EncodeCheck rounds 1.234s to %q", got)
	}
	if got := EncodeCheck(CheckEntry{Name: "boot-ssh", Category: "boot", Passed: true, Duration: 40 * time.Millisecond}); got != "b+boot-ssh@0.1" {
		t.Errorf("EncodeCheck of 40ms = %q", got)
	}
	for _, bad := range []string{"", "B+", "x+name", "B?name", "C+@1", "c+name@", "c+name@x", "c+name@-1"} {
		if _, err := DecodeCheck(bad); err == nil {
			t.Errorf("DecodeCheck(%q) succeeded", bad)
		}
	}
}

// A successful result with the whole check list fits; when it cannot, the
// offline checks that passed are left out first, then the whole list,
// before the counts or the failed checks are touched.
func TestEncodeCheckList(t *testing.T) {
	r := &Result{
		Outcome:      OutcomeSucceeded,
		Artifact:     &Artifact{URL: "s3://b/k", PresignedURL: strings.Repeat("p", 700), SHA256: strings.Repeat("a", 64), Size: 1, Format: "qcow2"},
		Verification: &Verification{Passed: 80},
	}
	for i := 0; i < 80; i++ {
		r.Verification.Checks = append(r.Verification.Checks, EncodeCheck(CheckEntry{Name: "hygiene-cloud-init-state", Category: "offline", Passed: true, Required: true}))
	}
	got := encodeDecode(t, r)
	if len(got.Verification.Checks) != 80 {
		t.Fatalf("%d checks survived Encode, want 80", len(got.Verification.Checks))
	}

	// Too many offline checks: the boot and cluster checks, and the failed
	// offline one, stay listed with their durations.
	r.Verification.Failed, r.Verification.FailedChecks = 1, []string{"hygiene-logs"}
	for i := 0; i < 60; i++ {
		r.Verification.Checks = append(r.Verification.Checks, EncodeCheck(CheckEntry{Name: "hygiene-cloud-init-state", Category: "offline", Passed: true}))
	}
	r.Verification.Checks = append(r.Verification.Checks,
		EncodeCheck(CheckEntry{Name: "hygiene-logs", Category: "offline", Required: true}),
		EncodeCheck(CheckEntry{Name: "boot-ssh", Category: "boot", Passed: true, Required: true, Duration: 31 * time.Second}),
		EncodeCheck(CheckEntry{Name: "cluster-node-ready", Category: "cluster", Passed: true, Required: true, Duration: 302 * time.Second}))
	r.Outcome, r.Reason, r.Step = OutcomeFailed, ReasonVerificationFailed, "verify"
	got = encodeDecode(t, r)
	want := []string{"O-hygiene-logs", "B+boot-ssh@31", "C+cluster-node-ready@302"}
	if !slices.Equal(got.Verification.Checks, want) || got.Verification.Passed != 80 || len(got.Verification.FailedChecks) != 1 {
		t.Fatalf("over-long offline list: got %+v, want checks %q", got.Verification, want)
	}

	// Even the others do not fit: the list goes, the counts stay.
	for i := 0; i < 200; i++ {
		r.Verification.Checks = append(r.Verification.Checks, EncodeCheck(CheckEntry{Name: "boot-cloud-init-done", Category: "boot", Passed: true, Duration: time.Second}))
	}
	got = encodeDecode(t, r)
	if len(got.Verification.Checks) != 0 || len(got.Verification.FailedChecks) != 1 || got.Verification.Passed != 80 {
		t.Fatalf("over-long check list: got %+v", got.Verification)
	}
	if len(r.Verification.Checks) != 343 {
		t.Fatalf("Encode changed its input: %d checks", len(r.Verification.Checks))
	}
}

// The package changes' summary goes before the boot and cluster checks;
// their counts always stay.
func TestEncodeDropsTheChangesSummaryBeforeTheChecks(t *testing.T) {
	r := &Result{
		Outcome:      OutcomeSucceeded,
		Artifact:     &Artifact{URL: "s3://b/k", PresignedURL: strings.Repeat("p", 2600), SHA256: strings.Repeat("a", 64), Size: 1, Format: "qcow2"},
		Verification: &Verification{Passed: 3},
		Changes:      &Changes{Previous: "sha256:" + strings.Repeat("1", 64), Upgraded: 40, Added: 2, Summary: strings.Repeat("s", ChangesSummaryLimit)},
	}
	for _, n := range []string{"boot-ssh", "cluster-node-ready", "cluster-coredns-running"} {
		r.Verification.Checks = append(r.Verification.Checks, EncodeCheck(CheckEntry{Name: n, Category: "cluster", Passed: true, Required: true, Duration: time.Second}))
	}
	got := encodeDecode(t, r)
	if got.Changes.Summary != r.Changes.Summary || len(got.Verification.Checks) != 3 {
		t.Fatalf("everything fits, yet got summary %d bytes, %d checks", len(got.Changes.Summary), len(got.Verification.Checks))
	}
	r.Artifact.PresignedURL = strings.Repeat("p", 3300)
	got = encodeDecode(t, r)
	if got.Changes.Summary != "" || got.Changes.Upgraded != 40 || got.Changes.Added != 2 || len(got.Verification.Checks) != 3 {
		t.Fatalf("got changes %+v, %d checks; want the counts and every check", got.Changes, len(got.Verification.Checks))
	}
	if r.Changes.Summary == "" {
		t.Fatal("Encode changed its input's summary")
	}
}

func encodeDecode(t *testing.T, r *Result) *Result {
	t.Helper()
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxResultSize {
		t.Fatalf("encoded %d bytes, more than %d", len(b), MaxResultSize)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestValidateFor(t *testing.T) {
	noURL := &Result{Outcome: OutcomeSucceeded, Artifact: &Artifact{SHA256: "ab", Size: 1, Format: "qcow2"}}
	withURL := &Result{Outcome: OutcomeSucceeded, Artifact: &Artifact{URL: "s3://b/k", SHA256: "ab", Size: 1, Format: "qcow2"}}
	failed := &Result{Outcome: OutcomeFailed, Reason: ReasonVerificationFailed, Artifact: &Artifact{SHA256: "ab"}}
	for _, tc := range []struct {
		name           string
		r              *Result
		hasDestination bool
		wantErr        bool
	}{
		{"destination, url", withURL, true, false},
		{"destination, no url", noURL, true, true},
		{"no destination, no url", noURL, false, false},
		{"failed without url", failed, true, false},
		{"invalid", &Result{Outcome: OutcomeSucceeded}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.r.ValidateFor(tc.hasDestination); (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}
