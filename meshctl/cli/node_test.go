package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// fakeNodeAdmin answers the node commands as the seed's agent would.
type fakeNodeAdmin struct {
	mu   sync.Mutex
	reqs []string
}

func (f *fakeNodeAdmin) record(s string) {
	f.mu.Lock()
	f.reqs = append(f.reqs, s)
	f.mu.Unlock()
}

func (f *fakeNodeAdmin) RemoveNode(_ context.Context, r api.NodeRemoveRequest) (api.NodeRemoval, error) {
	f.record("remove " + r.Cluster + "/" + r.Node)
	if r.Node == "ghost" {
		return api.NodeRemoval{}, api.Errorf(api.CodeNotFound, "no node %q in cluster east (see 'meshctl nodes')", r.Node)
	}
	if r.Node == "denied" {
		return api.NodeRemoval{}, api.Errorf(api.CodePermission, "removing nodes needs admin rights on the mesh: run the command on the mesh's first node")
	}
	return api.NodeRemoval{Cluster: "east", Node: r.Node, Record: true, Endpoints: 2, CIDRs: []string{"100.64.2.0/24"}, Grant: true, Took: api.Duration(42 * time.Millisecond)}, nil
}

func (f *fakeNodeAdmin) RevokeNode(_ context.Context, r api.NodeRemoveRequest) (api.NodeRemoval, error) {
	f.record("revoke " + r.Cluster + "/" + r.Node + " " + r.Reason)
	return api.NodeRemoval{Cluster: "east", Node: r.Node, Revoked: true, Record: true, Serials: []string{"1f"}, Took: api.Duration(time.Millisecond)}, nil
}

func (f *fakeNodeAdmin) Revocations(context.Context) ([]api.Revocation, error) {
	return []api.Revocation{{Cluster: "east", Node: "b1", RevokedAt: t0, Reason: "leaked", Serials: []string{"1f"}}}, nil
}

func (f *fakeNodeAdmin) ClearRevocation(_ context.Context, cluster, node string) (api.Revocation, error) {
	f.record("clear " + cluster + "/" + node)
	return api.Revocation{Cluster: "east", Node: node}, nil
}

func TestNodeCommands(t *testing.T) {
	f := &fakeNodeAdmin{}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{Mesh: &fakeAgent{}, Nodes: f}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })

	out, _, err := runApp(t, "node", "remove", "b1", "--socket", sock)
	if err != nil || !strings.Contains(out, "node east/b1 removed in 42ms: deleted its node record, 2 endpoints, CIDR 100.64.2.0/24, its label grant, its etcd user.") ||
		!strings.Contains(out, "can join again with a new token") {
		t.Errorf("remove: %v\n%s", err, out)
	}
	out, _, err = runApp(t, "node", "revoke", "b1", "--cluster", "east", "--reason", "leaked", "--socket", sock, "-o", "json")
	var res api.NodeRemoval
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || !res.Revoked || res.Node != "b1" {
		t.Errorf("revoke -o json: %v %+v\n%s", err, res, out)
	}
	out, _, err = runApp(t, "node", "revoke", "--clear", "b1", "--socket", sock)
	if err != nil || !strings.Contains(out, "revocation of node east/b1 cleared") {
		t.Errorf("revoke --clear: %v\n%s", err, out)
	}
	out, _, err = runApp(t, "node", "revoked", "--socket", sock)
	if err != nil || !strings.Contains(out, "b1") || !strings.Contains(out, "leaked") {
		t.Errorf("revoked: %v\n%s", err, out)
	}
	if _, _, err := runApp(t, "node", "remove", "ghost", "--socket", sock); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "removing node ghost") {
		t.Errorf("unknown node: %v", err)
	}
	if _, _, err := runApp(t, "node", "remove", "denied", "--socket", sock); !errors.Is(err, api.ErrPermission) || !strings.Contains(err.Error(), "first node") {
		t.Errorf("non-admin: %v", err)
	}
	if _, _, err := runApp(t, "node", "remove", "B/1", "--socket", sock); err == nil {
		t.Error("an invalid name was sent")
	}
	if _, _, err := runApp(t, "node", "remove", "--socket", sock); err == nil {
		t.Error("remove without a name")
	}
	if _, _, err := runApp(t, "node", "revoke", "--clear", "b1", "--reason", "x", "--socket", sock); err == nil {
		t.Error("--clear with --reason")
	}
	want := []string{"remove /b1", "revoke east/b1 leaked", "clear /b1", "remove /ghost", "remove /denied"}
	if strings.Join(f.reqs, ";") != strings.Join(want, ";") {
		t.Errorf("requests %q, want %q", f.reqs, want)
	}
	if out, _, err := runApp(t, "node", "list", "--socket", sock); err != nil || !strings.Contains(out, "vm-1 *") {
		t.Errorf("node list: %v\n%s", err, out)
	}
	if out, _, err := runApp(t, "node", "revoke", "--help"); err != nil || !strings.Contains(out, "--clear") || !strings.Contains(out, "revoked/<cluster>/<node>") {
		t.Errorf("help: %v\n%s", err, out)
	}
}
