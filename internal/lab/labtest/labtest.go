// Package labtest brings up a lab for a privileged test and removes it when
// the test ends, also when it fails.
package labtest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

var seq atomic.Int64

// UniqueName returns a lab name no other test process uses at the same
// time: t<pid><n><random> in base 36 (the random part keeps a leftover of a
// crashed run whose PID is reused from blocking the name).
func UniqueName() string {
	return fmt.Sprintf("t%s%s%s", itoa36(int64(os.Getpid())), itoa36(seq.Add(1)), itoa36(36*36+rand.Int64N(36*36*35)))
}

func itoa36(n int64) string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 36 {
		b = append([]byte{digits[n%36]}, b...)
	}
	return string(b)
}

// New skips t unless it may run privileged tests, then brings up spec and
// registers its teardown with t.Cleanup. A spec without a name gets a
// unique one, so tests running at the same time on one machine never
// collide; the lab's progress lines go to the test log.
func New(t testing.TB, spec *lab.Spec) *lab.Lab {
	t.Helper()
	testutil.Privileged(t)
	if spec.Name == "" {
		c := *spec
		c.Name = UniqueName()
		spec = &c
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	l, err := lab.Up(context.Background(), spec, log)
	if err != nil {
		t.Fatalf("bringing up lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logProcesses(t, l)
		}
		if err := l.Down(); err != nil {
			t.Errorf("removing lab %s: %v", l.Name(), err)
		}
	})
	return l
}

// Generate is New with a generated topology (see lab.Generate): sites
// site1..siteN with nodesPerSite nodes each, the last one behind NAT when
// natSite is set.
func Generate(t testing.TB, sites, nodesPerSite int, natSite bool) *lab.Lab {
	t.Helper()
	return New(t, lab.Generate(UniqueName(), sites, nodesPerSite, natSite))
}

// logProcesses puts the end of every lab process's output in the log of a
// failed test: Down removes the output files.
func logProcesses(t testing.TB, l *lab.Lab) {
	const keep = 60
	for _, p := range l.Status().Processes {
		data, err := os.ReadFile(p.Log)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > keep {
			lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-keep)}, lines[len(lines)-keep:]...)
		}
		t.Logf("output of %s (pid %d, %s, running=%t):\n%s", p.Name, p.Pid, p.Netns, p.Running, strings.Join(lines, "\n"))
	}
}
