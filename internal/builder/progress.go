package builder

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// State is where a step stands.
type State string

// Step states.
const (
	StateRunning State = "running"
	StateDone    State = "done"
	StateFailed  State = "failed"
)

// Event is one progress report.
type Event struct {
	// Step is the step's name, as in the plan.
	Step string `json:"step"`
	// Percent is the progress of the whole build, 0-100.
	Percent int    `json:"percent"`
	State   State  `json:"state"`
	Message string `json:"message,omitempty"`
	// ElapsedSeconds is the step's running time so far (or in total, when
	// done or failed).
	ElapsedSeconds float64 `json:"elapsedSeconds"`
}

// Reporter receives progress. Plan is called once with the step names
// before the first step runs; Report for every change.
type Reporter interface {
	Plan(steps []string)
	Report(Event)
}

// NopReporter discards progress.
type NopReporter struct{}

// Plan implements Reporter.
func (NopReporter) Plan([]string) {}

// Report implements Reporter.
func (NopReporter) Report(Event) {}

// JSONReporter writes one JSON object per line: {"progress":{...}}. The
// controller tails the builder Pod's log for these lines, so the builder
// needs no API rights.
type JSONReporter struct {
	W  io.Writer
	mu sync.Mutex
}

// Plan implements Reporter.
func (r *JSONReporter) Plan(steps []string) {
	r.write(map[string]any{"plan": map[string]any{"steps": steps}})
}

// Report implements Reporter.
func (r *JSONReporter) Report(e Event) {
	e.ElapsedSeconds = roundSeconds(e.ElapsedSeconds)
	r.write(map[string]any{"progress": e})
}

func (r *JSONReporter) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.W.Write(append(b, '\n'))
}

// PlainReporter writes a line when a step starts, says something new, and
// ends: for logs and pipes.
type PlainReporter struct {
	W    io.Writer
	mu   sync.Mutex
	last map[string]string
}

// Plan implements Reporter.
func (r *PlainReporter) Plan(steps []string) {
	fmt.Fprintf(r.W, "plan: %s\n", strings.Join(steps, " → "))
}

// Report implements Reporter.
func (r *PlainReporter) Report(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]string{}
	}
	key := string(e.State) + "\x00" + e.Message
	if r.last[e.Step] == key {
		return
	}
	r.last[e.Step] = key
	switch e.State {
	case StateDone:
		fmt.Fprintf(r.W, "[%3d%%] %-24s done in %s\n", e.Percent, e.Step, fmtSeconds(e.ElapsedSeconds))
	case StateFailed:
		fmt.Fprintf(r.W, "[%3d%%] %-24s FAILED after %s: %s\n", e.Percent, e.Step, fmtSeconds(e.ElapsedSeconds), e.Message)
	default:
		if e.Message == "" {
			fmt.Fprintf(r.W, "[%3d%%] %-24s started\n", e.Percent, e.Step)
		} else {
			fmt.Fprintf(r.W, "[%3d%%] %-24s %s\n", e.Percent, e.Step, e.Message)
		}
	}
}

// TerminalReporter draws a live step list (state, percent, elapsed time,
// latest message) and redraws it in place; for an interactive terminal.
// Call Close when the build ends.
type TerminalReporter struct {
	W     io.Writer
	Width int // terminal columns; 0 means 100

	mu      sync.Mutex
	steps   []string
	rows    map[string]*row
	percent int
	drawn   int
	start   time.Time
	stop    chan struct{}
	stopped chan struct{}
}

type row struct {
	state   State
	message string
	started time.Time
	elapsed float64
}

// Plan implements Reporter and starts the redraw ticker.
func (r *TerminalReporter) Plan(steps []string) {
	r.mu.Lock()
	r.steps = steps
	r.rows = map[string]*row{}
	r.start = time.Now()
	r.stop = make(chan struct{})
	r.stopped = make(chan struct{})
	r.drawLocked()
	r.mu.Unlock()
	go func() {
		defer close(r.stopped)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
				r.mu.Lock()
				r.drawLocked()
				r.mu.Unlock()
			}
		}
	}()
}

// Report implements Reporter.
func (r *TerminalReporter) Report(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rows == nil {
		r.rows = map[string]*row{}
	}
	rw := r.rows[e.Step]
	if rw == nil {
		rw = &row{started: time.Now()}
		r.rows[e.Step] = rw
	}
	rw.state = e.State
	if e.Message != "" || e.State != StateRunning {
		rw.message = e.Message
	}
	rw.elapsed = e.ElapsedSeconds
	r.percent = e.Percent
	r.drawLocked()
}

// Close stops redrawing and leaves the final list on screen.
func (r *TerminalReporter) Close() {
	r.mu.Lock()
	stop := r.stop
	r.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-r.stopped
	r.mu.Lock()
	r.drawLocked()
	r.stop = nil
	r.mu.Unlock()
}

func (r *TerminalReporter) drawLocked() {
	width := r.Width
	if width <= 0 {
		width = 100
	}
	var b strings.Builder
	if r.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", r.drawn)
	}
	lines := 0
	for _, s := range r.steps {
		rw := r.rows[s]
		mark, el, msg := "·", "", ""
		if rw != nil {
			msg = rw.message
			switch rw.state {
			case StateRunning:
				mark = "▸"
				el = fmtSeconds(time.Since(rw.started).Seconds())
			case StateDone:
				mark = "✓"
				el = fmtSeconds(rw.elapsed)
			case StateFailed:
				mark = "✗"
				el = fmtSeconds(rw.elapsed)
			}
		}
		line := fmt.Sprintf(" %s %-22s %7s  %s", mark, s, el, msg)
		if n := []rune(line); len(n) > width-1 {
			line = string(n[:width-1])
		}
		b.WriteString("\r\x1b[2K" + line + "\n")
		lines++
	}
	total := ""
	if !r.start.IsZero() {
		total = fmtSeconds(time.Since(r.start).Seconds())
	}
	fmt.Fprintf(&b, "\r\x1b[2K   %-22s %7s  %d%%\n", "total", total, r.percent)
	lines++
	r.drawn = lines
	_, _ = io.WriteString(r.W, b.String())
}

func fmtSeconds(s float64) string {
	if s < 60 {
		return fmt.Sprintf("%.1fs", s)
	}
	d := time.Duration(s * float64(time.Second)).Round(time.Second)
	return d.String()
}

func roundSeconds(s float64) float64 {
	return float64(int64(s*10+0.5)) / 10
}
