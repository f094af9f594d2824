package builder

import (
	"errors"
	"fmt"
	"strings"
)

// StepError is a failed build step: which step, why, and the last lines of
// the output of the tool that failed, so that the cause is visible without
// the full build log.
type StepError struct {
	Step  string
	Cause error
	// Output is the last lines (at most TailLines) of the failing tool's
	// output; empty when the step failed before or outside a tool.
	Output []string
}

func (e *StepError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "step %s failed: %v", e.Step, e.Cause)
	if len(e.Output) > 0 {
		fmt.Fprintf(&b, "\n--- last %d lines of output ---\n%s", len(e.Output), strings.Join(e.Output, "\n"))
	}
	return b.String()
}

func (e *StepError) Unwrap() error { return e.Cause }

// stepError wraps err for step, picking up the tool output tail if err
// carries one.
func stepError(step string, err error) *StepError {
	var se *StepError
	if errors.As(err, &se) {
		return se
	}
	return &StepError{Step: step, Cause: err, Output: tailOf(err)}
}

// InputError is a spec the builder cannot satisfy (an unknown package, a
// version constraint no candidate meets, a disk too small for the content).
// Retrying the same spec cannot succeed.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

func inputErrorf(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// IsInputError reports whether err is (or wraps) an InputError.
func IsInputError(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}
