package api

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
)

type fakePolicyStatus struct {
	atLeast int64
	wait    time.Duration
}

func (f *fakePolicyStatus) PolicyRevision(_ context.Context, atLeast int64, wait time.Duration) (PolicyRevision, error) {
	f.atLeast, f.wait = atLeast, wait
	return PolicyRevision{Node: "a", Cluster: "east", Revision: 41}, nil
}

// GET /v1/policy/revision passes the revision and the wait, bounded, and
// refuses what does not parse.
func TestPolicyRevisionRoute(t *testing.T) {
	f := &fakePolicyStatus{}
	cl, _ := serve(t, Backend{PolicyStatus: f})
	ctx := context.Background()
	r, err := cl.PolicyRevision(ctx, 42, 2*time.Second)
	if err != nil || r.Revision != 41 || r.Node != "a" || f.atLeast != 42 || f.wait != 2*time.Second {
		t.Fatalf("revision: %+v, %v; the agent got atLeast %d wait %v", r, err, f.atLeast, f.wait)
	}
	if _, err := cl.PolicyRevision(ctx, 1, time.Hour); err != nil || f.wait != MaxPolicyRevisionWait {
		t.Fatalf("a wait of an hour reached the agent as %v (%v), want %v", f.wait, err, MaxPolicyRevisionWait)
	}
	var v PolicyRevision
	for _, q := range []string{"atLeast=x", "atLeast=-1", "wait=soon"} {
		if err := cl.do(ctx, http.MethodGet, "/v1/policy/revision?"+q, nil, &v); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", q, err)
		}
	}
}
