package buildresult

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// UpdatesResult is what an update check reports when it exits.
type UpdatesResult struct {
	// Outcome is succeeded (the comparison ran) or failed.
	Outcome Outcome `json:"outcome"`
	// Message says why the check failed. It must not contain credentials.
	Message string `json:"message,omitempty"`
	// SpecDigest is the spec digest whose artifact was checked.
	SpecDigest string `json:"specDigest"`
	// Checked is how many installed packages were compared.
	Checked int32 `json:"checked,omitempty"`
	// Upgrades is how many installed packages have newer versions.
	Upgrades int32 `json:"upgrades,omitempty"`
	// Unavailable is how many installed packages no repository offers.
	Unavailable int32 `json:"unavailable,omitempty"`
	// Digest identifies the set of newer versions ("sha256:" and 64 hex
	// digits); empty without upgrades.
	Digest string `json:"digest,omitempty"`
	// Changes names the first upgrades, "name installed → new" each, in
	// name order; Encode drops the last ones to fit. Upgrades counts all.
	Changes []string `json:"changes,omitempty"`
}

var updatesDigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Validate checks the fields the manager relies on.
func (r *UpdatesResult) Validate() error {
	switch r.Outcome {
	case OutcomeSucceeded:
		if r.Checked <= 0 {
			return errors.New("buildresult: a succeeded update check compared no packages")
		}
		if r.Upgrades < 0 || r.Unavailable < 0 {
			return errors.New("buildresult: negative update counts")
		}
		if (r.Upgrades > 0) != (r.Digest != "") {
			return errors.New("buildresult: an update check has a digest exactly when it found upgrades")
		}
		if r.Digest != "" && !updatesDigestRE.MatchString(r.Digest) {
			return fmt.Errorf("buildresult: update digest %q is not sha256:<64 hex digits>", r.Digest)
		}
	case OutcomeFailed:
	default:
		return fmt.Errorf("buildresult: unknown outcome %q", r.Outcome)
	}
	return nil
}

// Summary is one line for status: how many packages have newer versions
// and the first of them, at most n bytes.
func (r *UpdatesResult) Summary(n int) string {
	var parts []string
	if r.Upgrades == 0 {
		parts = append(parts, fmt.Sprintf("all %d packages are current", r.Checked))
	} else {
		s := fmt.Sprintf("%d of %d packages have newer versions", r.Upgrades, r.Checked)
		if len(r.Changes) > 0 {
			s += ": " + strings.Join(r.Changes, ", ")
			if more := int(r.Upgrades) - len(r.Changes); more > 0 {
				s += fmt.Sprintf(" and %d more", more)
			}
		}
		parts = append(parts, s)
	}
	if r.Unavailable > 0 {
		parts = append(parts, fmt.Sprintf("%d no longer offered by any repository", r.Unavailable))
	}
	return Truncate(strings.Join(parts, "; "), n)
}

// Encode returns the JSON form of r, at most MaxResultSize bytes: the
// message is shortened and the last changes dropped when needed.
func (r *UpdatesResult) Encode() ([]byte, error) {
	c := *r
	c.Changes = append([]string(nil), r.Changes...)
	return encodeShrinking(&c, "update result", func(excess int) bool {
		switch {
		case len(c.Message) > 256:
			c.Message = Truncate(c.Message, len(c.Message)-excess-16)
		case len(c.Changes) > 0:
			c.Changes = c.Changes[:len(c.Changes)-1]
		case c.Message != "":
			c.Message = ""
		default:
			return false
		}
		return true
	})
}

// DecodeUpdates parses and validates an update check's termination
// message.
func DecodeUpdates(b []byte) (*UpdatesResult, error) {
	return decodeValid[UpdatesResult](b, "update result")
}
