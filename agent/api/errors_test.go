package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
)

// failing is a backend whose calls fail with err.
type failing struct{ err error }

func (f failing) Leave(context.Context) error { return f.err }
func (f failing) Flows(context.Context, FlowRequest, func(FlowLine) error) error {
	return f.err
}

// Every code crosses the socket: the client gets an *Error with the code,
// the status, the message without the sentinel's words, and errors.Is
// matching the code's sentinel, whether the backend used Errorf or the
// fmt.Errorf("%w: ...", sentinel) form.
func TestErrorCodesRoundTrip(t *testing.T) {
	for _, c := range codes {
		for _, tc := range []struct {
			form    string
			err     error
			message string
		}{
			{"Errorf", Errorf(c.code, "node %s: %d things", "vm-1", 2), "node vm-1: 2 things"},
			{"wrapped sentinel", fmt.Errorf("%w: node %s", c.sentinel, "vm-1"), "node vm-1"},
			{"context around Errorf", fmt.Errorf("leaving: %w", Errorf(c.code, "no such node")), "leaving: no such node"},
			{"Errorf wrapping a cause", Errorf(c.code, "reading: %w", io.ErrUnexpectedEOF), "reading: unexpected EOF"},
		} {
			t.Run(string(c.code)+"/"+tc.form, func(t *testing.T) {
				b := failing{tc.err}
				cl, _ := serve(t, Backend{Leaver: b, Flows: b})
				check := func(what string, err error) {
					t.Helper()
					var e *Error
					if !errors.As(err, &e) {
						t.Fatalf("%s: %T %v, want an *Error", what, err, err)
					}
					if e.Code != c.code || e.Status != c.status || e.Message != tc.message || err.Error() != tc.message {
						t.Errorf("%s: got code %q status %d message %q, want %q %d %q", what, e.Code, e.Status, e.Message, c.code, c.status, tc.message)
					}
					for _, other := range codes {
						if got := errors.Is(err, other.sentinel); got != (other.code == c.code) {
							t.Errorf("%s: errors.Is(err, %v) = %v", what, other.sentinel, got)
						}
					}
				}
				check("request", cl.Leave(context.Background()))
				// A stream that fails after it began carries the code too.
				check("flow stream", cl.Flows(context.Background(), FlowRequest{}, func(FlowLine) error { return nil }))
			})
		}
	}
}

// On the server side an *Error is matched by its sentinel and keeps what
// Errorf's %w wrapped.
func TestErrorfWrapsItsCause(t *testing.T) {
	err := Errorf(CodeUnavailable, "reading the node list: %w", io.ErrUnexpectedEOF)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrInternal) {
		t.Errorf("%v: sentinel or cause lost", err)
	}
	if got := errorOf(fmt.Errorf("api: looks like a sentinel: %w", errors.New("but is not"))); got.Code != CodeInternal || got.Message != "api: looks like a sentinel: but is not" {
		t.Errorf("an unclassified error: %+v", got)
	}
}

// A code this client does not know (a newer agent) is internal, message
// kept.
func TestUnknownCodeIsInternal(t *testing.T) {
	e := &Error{Code: "rate_limited", Message: "slow down", Status: http.StatusTooManyRequests}
	if !errors.Is(e, ErrInternal) || e.Code.Status() != http.StatusInternalServerError || e.Error() != "slow down" {
		t.Errorf("%+v", e)
	}
}

// Closing the listener stops Serve without an error, as Shutdown does: the
// agent stops it either way and should not have to read error texts.
func TestServeReturnsNilWhenItsListenerCloses(t *testing.T) {
	l, err := Listen(filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- NewServer(Backend{}, discard()).Serve(l) }()
	l.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve after its listener closed: %v", err)
	}
}
