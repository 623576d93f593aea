package api

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

type fakePinger struct{ got PingRequest }

func (f *fakePinger) Ping(_ context.Context, req PingRequest) (PingResult, error) {
	f.got = req
	return PingResult{Node: "b", OK: true, RTT: Duration(time.Millisecond)}, nil
}

func TestPingAndVersionRoutes(t *testing.T) {
	f := &fakePinger{}
	cl, _ := serve(t, Backend{Pinger: f})
	ctx := context.Background()
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r, err := cl.Ping(ctx, PingRequest{Target: "b", Timeout: Duration(time.Second), Since: since})
	if err != nil || !r.OK || r.Node != "b" || f.got.Target != "b" || time.Duration(f.got.Timeout) != time.Second || !f.got.Since.Equal(since) {
		t.Fatalf("ping: %+v, %v; the agent got %+v", r, err, f.got)
	}
	if _, err := cl.Ping(ctx, PingRequest{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ping without a target: %v, want ErrInvalid", err)
	}
	// The version needs no backend: it is the serving binary's.
	v, err := cl.Version(ctx)
	if err != nil || v.GoVersion != runtime.Version() || v.Version == "" {
		t.Fatalf("version: %+v, %v", v, err)
	}
	noPing, _ := serve(t, Backend{})
	if _, err := noPing.Ping(ctx, PingRequest{Target: "b"}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("ping on an agent without it: %v, want ErrNotSupported", err)
	}
}
