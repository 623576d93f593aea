package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

type fakeRotator struct {
	busy bool
	got  []RotateKeyRequest
}

func (f *fakeRotator) RotateKey(_ context.Context, req RotateKeyRequest) (RotateKeyResult, error) {
	f.got = append(f.got, req)
	if f.busy {
		return RotateKeyResult{}, fmt.Errorf("%w: a key rotation is already running", ErrConflict)
	}
	return RotateKeyResult{OldPublicKey: "old=", NewPublicKey: "new=", Took: Duration(1500 * time.Millisecond),
		Peers: []RotatedPeer{{Node: "vm-2", Cluster: "east", Installed: true, Handshake: true}}}, nil
}

func TestRotateKey(t *testing.T) {
	f := &fakeRotator{}
	c, _ := serve(t, Backend{Rotator: f})
	ctx := context.Background()
	res, err := c.RotateKey(ctx, RotateKeyRequest{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.NewPublicKey != "new=" || time.Duration(res.Took) != 1500*time.Millisecond || len(res.Peers) != 1 || !res.Peers[0].Handshake {
		t.Errorf("result changed on the way: %+v", res)
	}
	if len(f.got) != 1 || !f.got[0].Force {
		t.Errorf("the backend saw %+v, want one request with Force", f.got)
	}
	f.busy = true
	if _, err := c.RotateKey(ctx, RotateKeyRequest{}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "already running") {
		t.Errorf("a second rotation: want a conflict, got %v", err)
	}
}

func TestRotateKeyNotSupported(t *testing.T) {
	c, _ := serve(t, Backend{Status: newFake()})
	if _, err := c.RotateKey(context.Background(), RotateKeyRequest{}); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "/v1/tunnel/rotate") {
		t.Errorf("an agent without rotation: want not supported, got %v", err)
	}
}
