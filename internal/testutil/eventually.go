package testutil

import (
	"testing"
	"time"
)

// Condition is what Eventually polls: a func() bool that says whether it
// holds yet, or a func() error that says why not (nil once it holds),
// which the failure then quotes.
type Condition interface {
	func() bool | func() error
}

// Eventually polls cond until it holds, and fails t with what it waited
// for when timeout passes first. The timeout only keeps a broken test
// from hanging; it is a bound, not a speed requirement (those are
// benchmarks). Polls start at 10ms and back off to 250ms, so a quick
// condition is seen at once and a costly one (a dial through the lab) is
// not hammered.
func Eventually[C Condition](t testing.TB, timeout time.Duration, what string, cond C) {
	t.Helper()
	var check func() error
	switch c := any(cond).(type) {
	case func() bool:
		check = func() error {
			if c() {
				return nil
			}
			return errNotYet
		}
	case func() error:
		check = c
	}
	deadline := time.Now().Add(timeout)
	wait := 10 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("gave up after %v waiting for %s", timeout, what)
			}
			t.Fatalf("gave up after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// errNotYet is a func() bool condition that does not hold: nothing to
// quote.
var errNotYet = notYet{}

type notYet struct{}

func (notYet) Error() string { return "not yet" }
