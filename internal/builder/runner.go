package builder

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TailLines is how many lines of a failed tool's output an error carries.
const TailLines = 30

// Command is one external tool invocation.
type Command struct {
	// Name is the program, looked up in PATH.
	Name string
	Args []string
	// Env is added to the command's environment: the builder's own (see
	// hostEnv), or none when Clean is set.
	Env []string
	// Clean runs the command with Env and the proxy variables only, none
	// of the builder's environment: for commands that run inside the
	// image, where host paths (TMPDIR) do not exist and host secrets
	// have no business.
	Clean bool
	// Dir is the working directory; empty means the builder's.
	Dir string
	// Stdin is the standard input; nil means none.
	Stdin io.Reader
	// Stdout, when set, receives standard output instead of the log (used
	// for commands whose output is data, such as a generated config file).
	Stdout io.Writer
	// OnLine is called with each line of combined output, for progress.
	OnLine func(line string)
}

// String renders the command for logs and errors.
func (c Command) String() string {
	return strings.TrimSpace(c.Name + " " + strings.Join(c.Args, " "))
}

// Short renders the command for error messages: long or multi-line
// arguments (mmdebstrap hooks) are abbreviated; the build log has them whole.
func (c Command) Short() string {
	parts := []string{c.Name}
	for _, a := range c.Args {
		if i := strings.IndexByte(a, '\n'); i >= 0 {
			a = a[:i] + "…"
		}
		if r := []rune(a); len(r) > 80 {
			a = string(r[:77]) + "…"
		}
		parts = append(parts, a)
	}
	s := strings.Join(parts, " ")
	if r := []rune(s); len(r) > 400 {
		s = string(r[:397]) + "…"
	}
	return s
}

// Runner runs external tools. The real one executes them; tests inject a
// fake to exercise planning, failure reporting and cleanup without root.
type Runner interface {
	Run(ctx context.Context, c Command) error
}

// CommandError is a failed tool invocation with the end of its output.
type CommandError struct {
	Command string
	Err     error
	// Tail is the last TailLines lines of combined output.
	Tail []string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s: %v", e.Command, e.Err)
}

func (e *CommandError) Unwrap() error { return e.Err }

// ExecRunner runs commands as child processes in their own process group.
// Every line of output is appended to Log (the build log); the last lines
// are kept for errors. On context cancellation the whole group gets SIGTERM
// (so mmdebstrap can unmount what it mounted), then SIGKILL after
// KillDelay.
type ExecRunner struct {
	Log       io.Writer
	KillDelay time.Duration

	mu sync.Mutex
}

var _ Runner = &ExecRunner{}

// Run implements Runner.
func (r *ExecRunner) Run(ctx context.Context, c Command) error {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Env = commandEnv(c)
	cmd.Dir = c.Dir
	cmd.Stdin = c.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	delay := r.KillDelay
	if delay == 0 {
		delay = 30 * time.Second
	}
	cmd.WaitDelay = delay

	tail := newTail(TailLines)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	} else {
		cmd.Stdout = pw
	}
	r.logf("+ %s\n", c.String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			tail.add(line)
			r.logf("%s\n", line)
			if c.OnLine != nil {
				c.OnLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
		// Kill whatever the tool left behind in its group (a daemon a
		// provisioner started, say): nothing outlives its step.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	pw.Close()
	<-done
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return &CommandError{Command: c.Short(), Err: err, Tail: tail.lines()}
	}
	return nil
}

func (r *ExecRunner) logf(format string, args ...any) {
	if r.Log == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.Log, format, args...)
}

// proxyVars are passed to every command, Clean ones included, so that apt
// in the image reaches the mirror the way the host does.
var proxyVars = []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"}

// commandEnv is the environment c runs with.
func commandEnv(c Command) []string {
	var env []string
	if c.Clean {
		for _, k := range proxyVars {
			if v, ok := os.LookupEnv(k); ok {
				env = append(env, k+"="+v)
			}
		}
	} else {
		env = hostEnv()
	}
	return append(env, c.Env...)
}

// hostEnv is the builder's environment without credentials: no AWS_*
// variable (nodeforge build's S3 credentials) and no NODEFORGE_* variable
// whose name looks like a secret. No child process needs them, and spec
// provisioners, package maintainer scripts and Ansible run as children.
func hostEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !secretVar(k) {
			out = append(out, kv)
		}
	}
	return out
}

func secretVar(name string) bool {
	u := strings.ToUpper(name)
	if strings.HasPrefix(u, "AWS_") {
		return true
	}
	if !strings.HasPrefix(u, "NODEFORGE_") {
		return false
	}
	for _, w := range []string{"SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "KEY", "AUTH"} {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}

// tailBuffer keeps the last n lines written to it.
type tailBuffer struct {
	mu  sync.Mutex
	n   int
	buf []string
}

func newTail(n int) *tailBuffer { return &tailBuffer{n: n} }

func (t *tailBuffer) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, line)
	if len(t.buf) > t.n {
		t.buf = t.buf[len(t.buf)-t.n:]
	}
}

func (t *tailBuffer) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.buf...)
}

// output runs c and returns its standard output.
func output(ctx context.Context, r Runner, c Command) ([]byte, error) {
	var b bytes.Buffer
	c.Stdout = &b
	err := r.Run(ctx, c)
	return b.Bytes(), err
}

// tailOf returns the output tail carried by err, if any.
func tailOf(err error) []string {
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce.Tail
	}
	return nil
}
