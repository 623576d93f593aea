package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

type fakeRotator struct {
	req  []api.RotateKeyRequest
	fail error
}

func (f *fakeRotator) RotateKey(_ context.Context, req api.RotateKeyRequest) (api.RotateKeyResult, error) {
	f.req = append(f.req, req)
	if f.fail != nil {
		return api.RotateKeyResult{}, f.fail
	}
	return api.RotateKeyResult{OldPublicKey: "OLD=", NewPublicKey: "NEW=", Took: api.Duration(2345 * time.Millisecond),
		Peers: []api.RotatedPeer{
			{Node: "vm-2", Cluster: "east", Installed: true, Handshake: true},
			{Node: "vm-3", Cluster: "west", Error: "no answer from its agent: i/o timeout"},
		}}, nil
}

func serveRotator(t *testing.T, f *fakeRotator) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{Rotator: f}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return path
}

func TestRotateKeyCommand(t *testing.T) {
	f := &fakeRotator{}
	sock := serveRotator(t, f)
	out, _, err := runApp(t, "rotate-key", "--socket", sock, "--force")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Old key: OLD=", "New key: NEW=", "Took:    2.345s",
		"PEER", "vm-2  east     yes        yes", "vm-3  west     no         no         no answer from its agent: i/o timeout"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if len(f.req) != 1 || !f.req[0].Force {
		t.Errorf("agent saw %+v; want one request with force", f.req)
	}

	out, _, err = runApp(t, "rotate-key", "--socket", sock, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res api.RotateKeyResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("-o json is not JSON: %v\n%s", err, out)
	}
	if res.OldPublicKey != "OLD=" || res.NewPublicKey != "NEW=" || !strings.Contains(out, `"took": "2.345s"`) || len(res.Peers) != 2 {
		t.Errorf("json output: %s", out)
	}
	if f.req[1].Force {
		t.Errorf("force sent without --force")
	}
}

func TestRotateKeyCommandErrors(t *testing.T) {
	f := &fakeRotator{fail: fmt.Errorf("%w: rotation aborted, the node keeps its key: 1 of 2 peers did not confirm", api.ErrUnavailable)}
	sock := serveRotator(t, f)
	_, _, err := runApp(t, "rotate-key", "--socket", sock)
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "rotating the WireGuard key: rotation aborted, the node keeps its key") {
		t.Errorf("want the agent's reason, got %v", err)
	}
	_, _, err = runApp(t, "rotate-key", "--socket", sock, "extra")
	if err == nil || len(f.req) != 1 {
		t.Errorf("an argument must be refused before the agent is asked: %v (agent asked %d times)", err, len(f.req))
	}
	_, _, err = runApp(t, "rotate-key", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if !errors.Is(err, api.ErrAgentNotRunning) {
		t.Errorf("no agent: %v", err)
	}
}
