package metrics

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// keepErrors is how many recent error records LogCounter remembers.
const keepErrors = 32

// LogCounter is a slog.Handler in front of the agent's own: it counts
// records by level (weft_log_messages_total) and remembers the last error
// records, which `meshctl connectivity test` checks ("no errors in agent
// logs").
type LogCounter struct {
	next  slog.Handler
	state *logState
}

type logState struct {
	mu      sync.Mutex
	m       *Metrics
	pending map[slog.Level]int // counted before metrics were attached
	errors  []loggedError
	total   int
}

type loggedError struct {
	at  time.Time
	msg string
}

// NewLogCounter wraps h.
func NewLogCounter(h slog.Handler) *LogCounter {
	return &LogCounter{next: h, state: &logState{pending: map[slog.Level]int{}}}
}

// Attach starts counting into m (records logged before are added).
func (c *LogCounter) Attach(m *Metrics) {
	s := c.state
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = m
	for l, n := range s.pending {
		for range n {
			m.ObserveLog(l)
		}
	}
	s.pending = nil
}

// Enabled implements slog.Handler.
func (c *LogCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || c.next.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (c *LogCounter) Handle(ctx context.Context, r slog.Record) error {
	s := c.state
	s.mu.Lock()
	if s.m != nil {
		s.m.ObserveLog(r.Level)
	} else {
		s.pending[r.Level]++
	}
	if r.Level >= slog.LevelError {
		s.total++
		msg := r.Message
		r.Attrs(func(a slog.Attr) bool {
			msg += " " + a.String()
			return true
		})
		s.errors = append(s.errors, loggedError{at: r.Time, msg: msg})
		if len(s.errors) > keepErrors {
			s.errors = s.errors[len(s.errors)-keepErrors:]
		}
	}
	s.mu.Unlock()
	if !c.next.Enabled(ctx, r.Level) {
		return nil
	}
	return c.next.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (c *LogCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &LogCounter{next: c.next.WithAttrs(as), state: c.state}
}

// WithGroup implements slog.Handler.
func (c *LogCounter) WithGroup(name string) slog.Handler {
	return &LogCounter{next: c.next.WithGroup(name), state: c.state}
}

// ErrorsSince returns how many error records were logged at or after t
// (among the remembered ones) and their messages, oldest first.
func (c *LogCounter) ErrorsSince(t time.Time) (int, []string) {
	s := c.state
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.errors {
		if !e.at.Before(t) {
			out = append(out, e.at.UTC().Format(time.RFC3339Nano)+" "+e.msg)
		}
	}
	return len(out), out
}
