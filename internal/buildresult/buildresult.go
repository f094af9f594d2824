// Package buildresult is the contract between the nodeforge manager and a
// builder (the builder Pod's container, or the builder appliance in a
// KubeVirt VirtualMachineInstance). The builder has no Kubernetes API
// rights; everything crosses through files, its exit status and its log.
//
// # Input
//
// The builder runs
//
//	nodeforge run --spec /etc/nodeforge/build/spec.json --result /dev/termination-log
//
// SpecPath holds the NodeImageBuild as JSON (apiVersion, kind, metadata
// name, namespace and uid, and the resolved, defaulted spec: no ConfigMap
// references are left). It comes from a ConfigMap named "<build>-spec",
// owned by the NodeImageBuild and mounted read-only at SpecDir.
//
// When spec.destination.s3 is set, the Secret named by credentialsSecretRef
// is mounted read-only at CredentialsDir: one file per key (accessKeyID,
// secretAccessKey, optionally sessionToken; storage.CredentialsFromSecretData
// accepts the same keys). A caSecretRef Secret is mounted at CADir (ca.crt).
// spec.builder.registryCredentials adds RegistryConfigKey,
// spec.destination.oci.credentialsSecretRef adds its RegistryConfigKey as
// PushConfigFile, and spec.destination.signing adds SigningKeyFile and
// SigningPasswordFile to CredentialsDir (backend.CredentialSecrets lists
// them).
// Credentials are never passed through environment variables, never
// logged, and never written to the result.
//
// Scratch space is mounted at ScratchDir (an emptyDir with a size limit, or
// the PersistentVolumeClaim named by spec.builder.cache, which keeps the
// package cache between builds). /dev/kvm is available when the node has it.
//
// # Progress
//
// While it runs, the builder prints progress on stdout, one JSON object per
// line, for example
//
//	{"progress":{"step":"rootfs","percent":35,"message":"installing packages"}}
//
// Other lines (plain text, {"plan":...}) are allowed and ignored. The
// manager reads the tail of the container log (it needs pods/log get; the
// builder needs nothing) and records the last progress line in
// status.progress. LastProgress parses a log tail.
//
// # Result
//
// Before it exits the builder writes one Result as JSON to the result path
// (the Pod's terminationMessagePath, /dev/termination-log). The encoding is
// at most MaxResultSize bytes (Kubernetes keeps 4096); Encode shortens the
// message and the list of failed checks to fit. The exit status is 0 when
// Outcome is succeeded and non-zero otherwise. Full detail (every check,
// every package, timings) is in the build manifest uploaded next to the
// image; Artifact.ManifestURL points at it.
//
// A KubeVirt builder appliance follows the same contract: the spec is on a
// ConfigMap disk with the same file name, progress and the result are
// printed on the serial console as {"progress":...} and {"result":...}
// lines, and the appliance powers off when done.
//
// # Update checks
//
// The manager checks a published image for newer packages (NodeImage
// spec.updates) in a short-lived Pod made like a builder Pod (the same
// image, placement, credential keys and CA, and spec file), which runs
//
//	nodeforge run --check-updates --spec /etc/nodeforge/build/spec.json --result /dev/termination-log
//
// The spec file holds a NodeImageBuild-shaped document whose name is the
// check Pod's and whose spec carries the NodeImage's resolved content and
// destination (no such NodeImageBuild exists). The check reads the
// manifest published for spec.specDigest from the destination, resolves
// its installed packages against the content's repositories
// (builder.CheckUpdates) and writes one UpdatesResult as JSON to the result
// path: at most MaxResultSize bytes, the list of changes shortened to fit.
// The exit status is 0 when Outcome is succeeded, whether or not there are
// updates, and non-zero when the check failed.
package buildresult

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Paths inside the builder.
const (
	// SpecDir is where the spec ConfigMap is mounted.
	SpecDir = "/etc/nodeforge/build"
	// SpecFile is the spec's key in the ConfigMap and its file name.
	SpecFile = "spec.json"
	// SpecPath is the spec file.
	SpecPath = SpecDir + "/" + SpecFile
	// CredentialsDir is where the object-store credentials Secret is mounted.
	CredentialsDir = "/etc/nodeforge/credentials"
	// RegistryConfigKey is the key of a kubernetes.io/dockerconfigjson
	// Secret (spec.builder.registryCredentials), and its file name in
	// CredentialsDir, where the builder reads it.
	RegistryConfigKey = ".dockerconfigjson"
	// SigningKeyFile and SigningPasswordFile are the keys of the signing
	// Secret (spec.destination.signing.keySecretRef, as cosign writes it)
	// and their file names in CredentialsDir.
	SigningKeyFile      = "cosign.key"
	SigningPasswordFile = "cosign.password"
	// PushConfigFile is where the .dockerconfigjson of the
	// spec.destination.oci credentials Secret is in CredentialsDir: a
	// name of its own, as spec.builder.registryCredentials, which pulls,
	// may name another Secret.
	PushConfigFile = "oci-push.dockerconfigjson"
	// CAKey is the key of a caSecretRef Secret: a PEM CA bundle.
	CAKey = "ca.crt"
	// PushCAFile is where the ca.crt of spec.destination.oci.caSecretRef
	// is in CredentialsDir.
	PushCAFile = "oci-ca.crt"
	// CADir is where the object-store CA Secret is mounted.
	CADir = "/etc/nodeforge/ca"
	// ScratchDir is the builder's work and cache directory.
	ScratchDir = "/var/lib/nodeforge"
	// ResultPath is where the builder writes its Result.
	ResultPath = "/dev/termination-log"
)

// MaxResultSize bounds an encoded Result: Kubernetes truncates termination
// messages at 4096 bytes.
const MaxResultSize = 4000

// Outcome of a build attempt.
type Outcome string

// Outcomes.
const (
	OutcomeSucceeded Outcome = "succeeded"
	OutcomeFailed    Outcome = "failed"
)

// Failure reasons, equal to the NodeImageBuild condition reasons.
const (
	ReasonBuildFailed        = "BuildFailed"
	ReasonVerificationFailed = "VerificationFailed"
	ReasonPublishFailed      = "PublishFailed"
)

// Result is what a builder reports when it exits.
type Result struct {
	// Outcome is succeeded or failed.
	Outcome Outcome `json:"outcome"`
	// Step is the failing step (empty on success).
	Step string `json:"step,omitempty"`
	// Reason is BuildFailed, VerificationFailed or PublishFailed when
	// Outcome is failed.
	Reason string `json:"reason,omitempty"`
	// Message is a short human-readable explanation. It must not contain
	// credentials.
	Message string `json:"message,omitempty"`
	// Artifact is the published image (set on success; also on a
	// verification failure when the image was built but not published, with
	// an empty URL).
	Artifact *Artifact `json:"artifact,omitempty"`
	// Verification summarizes the checks (nil when verification did not run).
	Verification *Verification `json:"verification,omitempty"`
	// Changes counts the package changes from the image published before
	// this one (the manifest's previous).
	Changes *Changes `json:"changes,omitempty"`
	// Accelerator the boot test ran under: kvm or tcg.
	Accelerator string `json:"accelerator,omitempty"`
	// AcceleratorNote says why the boot test ran under TCG (verify.Report).
	AcceleratorNote string `json:"acceleratorNote,omitempty"`
}

// Artifact describes the published image.
type Artifact struct {
	URL          string `json:"url,omitempty"`
	PresignedURL string `json:"presignedURL,omitempty"`
	ManifestURL  string `json:"manifestURL,omitempty"`
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
	VirtualSize  int64  `json:"virtualSize,omitempty"`
	Format       string `json:"format"`
	// Revision is the published revision (0: not published).
	Revision int32 `json:"revision,omitempty"`
	// Companions name the files published next to the image, in the
	// manifest's directory (NAME.spdx.json, NAME.provenance.json).
	Companions []string `json:"companions,omitempty"`
	// ContainerDisk is the image pushed to spec.destination.oci, by
	// digest (host/path@sha256:...).
	ContainerDisk string `json:"containerDisk,omitempty"`
}

// Verification counts check outcomes.
type Verification struct {
	Passed  int32 `json:"passed"`
	Failed  int32 `json:"failed"`
	Skipped int32 `json:"skipped"`
	// FailedChecks names the checks that failed (required ones first).
	FailedChecks []string `json:"failedChecks,omitempty"`
	// Checks lists the checks in the order they ran, compactly (see
	// EncodeCheck). When the whole list does not fit in the termination
	// message, Encode leaves out the offline checks that passed, and then
	// the list; the counts always cover every check.
	Checks []string `json:"checks,omitempty"`
}

// CheckEntry is one check of Verification.Checks.
type CheckEntry struct {
	Name string
	// Category is offline, boot or cluster.
	Category string
	Passed   bool
	Skipped  bool
	Required bool
	// Duration is how long the check took, rounded to a tenth of a second
	// (at least 0.1s when it is not zero); zero is not encoded.
	Duration time.Duration
}

// checkCategories maps a category to its flag character in EncodeCheck.
var checkCategories = map[string]byte{"offline": 'o', "boot": 'b', "cluster": 'c'}

// EncodeCheck writes a check as two flag characters, its name, and
// "@seconds" when it has a duration: the flags are the category's initial
// (o offline, b boot, c cluster), upper case when the check is required,
// then + (passed), - (failed) or ~ (skipped). Check names never hold "@".
func EncodeCheck(c CheckEntry) string {
	cat, ok := checkCategories[c.Category]
	if !ok {
		cat = 'o'
	}
	if c.Required {
		cat -= 'a' - 'A'
	}
	outcome := "-"
	switch {
	case c.Skipped:
		outcome = "~"
	case c.Passed:
		outcome = "+"
	}
	s := string(cat) + outcome + c.Name
	if c.Duration > 0 {
		d := max(c.Duration.Round(100*time.Millisecond), 100*time.Millisecond)
		s += "@" + strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
	}
	return s
}

// DecodeCheck parses what EncodeCheck wrote.
func DecodeCheck(s string) (CheckEntry, error) {
	if len(s) < 3 {
		return CheckEntry{}, fmt.Errorf("buildresult: check %q is too short", s)
	}
	c := CheckEntry{Name: s[2:], Required: s[0] >= 'A' && s[0] <= 'Z'}
	for name, flag := range checkCategories {
		if s[0] == flag || s[0] == flag-('a'-'A') {
			c.Category = name
		}
	}
	if c.Category == "" {
		return CheckEntry{}, fmt.Errorf("buildresult: check %q has an unknown category", s)
	}
	switch s[1] {
	case '+':
		c.Passed = true
	case '~':
		c.Skipped = true
	case '-':
	default:
		return CheckEntry{}, fmt.Errorf("buildresult: check %q has an unknown outcome", s)
	}
	if name, secs, ok := strings.Cut(c.Name, "@"); ok {
		f, err := strconv.ParseFloat(secs, 64)
		if err != nil || f < 0 || f > 1e6 {
			return CheckEntry{}, fmt.Errorf("buildresult: check %q has an invalid duration", s)
		}
		c.Name, c.Duration = name, time.Duration(f*10+0.5)*100*time.Millisecond
	}
	if c.Name == "" {
		return CheckEntry{}, fmt.Errorf("buildresult: check %q has no name", s)
	}
	return c, nil
}

// Progress is one progress report of a builder.
type Progress struct {
	Step    string `json:"step"`
	Percent int32  `json:"percent"`
	Message string `json:"message,omitempty"`
}

// ValidateFor is Validate for a build that has (or has not) a
// destination: a succeeded build with a destination must name the
// published image's URL; one without keeps the image on its scratch volume
// and has no URL.
func (r *Result) ValidateFor(hasDestination bool) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if hasDestination && r.Outcome == OutcomeSucceeded && r.Artifact.URL == "" {
		return errors.New("buildresult: a succeeded result of a build with a destination needs the artifact's url")
	}
	return nil
}

// Validate checks the fields the manager relies on whatever the build's
// destination (see ValidateFor).
func (r *Result) Validate() error {
	switch r.Outcome {
	case OutcomeSucceeded:
		if r.Artifact == nil || r.Artifact.SHA256 == "" {
			return errors.New("buildresult: a succeeded result needs an artifact with a sha256")
		}
	case OutcomeFailed:
		switch r.Reason {
		case ReasonBuildFailed, ReasonVerificationFailed, ReasonPublishFailed:
		default:
			return fmt.Errorf("buildresult: failed result with unknown reason %q", r.Reason)
		}
	default:
		return fmt.Errorf("buildresult: unknown outcome %q", r.Outcome)
	}
	return nil
}

// Encode returns the JSON form of r, at most MaxResultSize bytes: the
// message is shortened, the offline checks that passed left out of the
// check list, the list dropped and the failed check names shortened, in
// that order, when needed.
func (r *Result) Encode() ([]byte, error) {
	c := *r
	if r.Verification != nil {
		v := *r.Verification
		v.FailedChecks = append([]string(nil), v.FailedChecks...)
		v.Checks = append([]string(nil), v.Checks...)
		c.Verification = &v
	}
	offlinePassedDropped := false
	return encodeShrinking(&c, "result", func(excess int) bool {
		switch {
		case len(c.Message) > 256:
			c.Message = Truncate(c.Message, len(c.Message)-excess-16)
		case c.Verification != nil && !offlinePassedDropped && len(c.Verification.Checks) > 0:
			// The failed, skipped, boot and cluster checks stay listed.
			offlinePassedDropped = true
			kept := c.Verification.Checks[:0]
			for _, e := range c.Verification.Checks {
				if ce, err := DecodeCheck(e); err != nil || ce.Category != "offline" || !ce.Passed {
					kept = append(kept, e)
				}
			}
			c.Verification.Checks = kept
		case c.Changes != nil && c.Changes.Summary != "":
			// The counts stay; the manifest names every change.
			ch := *c.Changes
			ch.Summary = ""
			c.Changes = &ch
		case c.Verification != nil && len(c.Verification.Checks) > 0:
			// The counts and the failed checks stay.
			c.Verification.Checks = nil
		case c.Verification != nil && len(c.Verification.FailedChecks) > 0:
			c.Verification.FailedChecks = c.Verification.FailedChecks[:len(c.Verification.FailedChecks)-1]
		case c.Message != "":
			c.Message = ""
		default:
			return false
		}
		return true
	})
}

// encodeShrinking marshals v (what names it in errors) until the JSON fits
// MaxResultSize, calling shrink with the excess bytes each time it does
// not; shrink makes v smaller and returns false when nothing is left to
// drop.
func encodeShrinking(v any, what string, shrink func(excess int) bool) ([]byte, error) {
	for {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		if len(b) <= MaxResultSize {
			return b, nil
		}
		if !shrink(len(b) - MaxResultSize) {
			return nil, fmt.Errorf("buildresult: %s is %d bytes even without message", what, len(b))
		}
	}
}

// Write encodes r into path.
func (r *Result) Write(path string) error {
	b, err := r.Encode()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Decode parses and validates a termination message.
func Decode(b []byte) (*Result, error) {
	return decodeValid[Result](b, "result")
}

// decodeValid parses a termination message as a T (what names it in
// errors) and validates it.
func decodeValid[T any, P interface {
	*T
	Validate() error
}](b []byte, what string) (*T, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("buildresult: empty %s", what)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("buildresult: decoding %s: %w", what, err)
	}
	if err := P(&v).Validate(); err != nil {
		return nil, err
	}
	return &v, nil
}

// ProgressLine returns the log line reporting p, with a trailing newline.
func ProgressLine(p Progress) []byte {
	b, _ := json.Marshal(struct {
		Progress Progress `json:"progress"`
	}{p})
	return append(b, '\n')
}

// ResultLine returns the console line carrying r, used by builders that
// have no termination message (the KubeVirt appliance).
func ResultLine(r *Result) ([]byte, error) {
	b, err := r.Encode()
	if err != nil {
		return nil, err
	}
	return append(append([]byte(`{"result":`), b...), '}', '\n'), nil
}

// Bounds of what LastProgress reports: the builder's log is written by the
// builder, not the manager, so its lines are untrusted input to status.
const (
	// MaxProgressStep bounds Progress.Step ("provisioner/" and a
	// provisioner's name fit).
	MaxProgressStep = 128
	// MaxProgressMessage bounds Progress.Message.
	MaxProgressMessage = 256
)

// LastProgress returns the last progress line in a log tail, with Step
// and Message shortened to MaxProgressStep and MaxProgressMessage bytes.
func LastProgress(log []byte) (Progress, bool) {
	var last Progress
	found := false
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if !bytes.HasPrefix(line, []byte(`{"progress"`)) {
			continue
		}
		var l struct {
			Progress *Progress `json:"progress"`
		}
		if json.Unmarshal(line, &l) != nil || l.Progress == nil || l.Progress.Step == "" {
			continue
		}
		p := *l.Progress
		p.Percent = min(max(p.Percent, 0), 100)
		p.Step = Truncate(p.Step, MaxProgressStep)
		p.Message = Truncate(p.Message, MaxProgressMessage)
		last, found = p, true
	}
	return last, found
}

// LastResult returns the last {"result":...} line in a log or console
// tail.
func LastResult(log []byte) (*Result, bool) {
	var last *Result
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if !bytes.HasPrefix(line, []byte(`{"result"`)) {
			continue
		}
		var l struct {
			Result json.RawMessage `json:"result"`
		}
		if json.Unmarshal(line, &l) != nil {
			continue
		}
		if r, err := Decode(l.Result); err == nil {
			last = r
		}
	}
	return last, last != nil
}

// Truncate shortens s to at most n bytes on a rune boundary, marking the
// cut with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n <= 3 {
		return ""
	}
	cut := n - len("…")
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return strings.TrimRight(s[:cut], " ") + "…"
}

// TailBytes returns at most n bytes from the end of s, starting on a line
// boundary when one is close.
func TailBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < 256 {
		s = s[i+1:]
	}
	for len(s) > 0 && !utf8Start(s[0]) {
		s = s[1:]
	}
	return s
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// ChangesSummaryLimit bounds Changes.Summary: the result travels in a
// termination message of at most 4 KiB.
const ChangesSummaryLimit = 400

// Changes is the result's account of the package changes from the
// previously published image: counts, and a summary of the first ones.
type Changes struct {
	Previous   string `json:"previous"`
	Upgraded   int32  `json:"upgraded,omitempty"`
	Downgraded int32  `json:"downgraded,omitempty"`
	Added      int32  `json:"added,omitempty"`
	Removed    int32  `json:"removed,omitempty"`
	Summary    string `json:"summary,omitempty"`
}
