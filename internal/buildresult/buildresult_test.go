package buildresult

import (
	"strings"
	"testing"
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
	if got := Truncate("ééé", 4); got != "…" && len(got) > 4 {
		t.Fatalf("got %q", got)
	}
	if got := TailBytes("line1\nline2\nline3", 8); got != "line3" {
		t.Fatalf("got %q", got)
	}
}
