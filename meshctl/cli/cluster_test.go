package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// fakeClusters is the seed's cluster manager behind the socket: two
// connected clusters, and a record of every request meshctl made.
type fakeClusters struct {
	mu           sync.Mutex
	requests     int
	tokenReqs    []api.ClusterTokenRequest
	connects     []api.ClusterConnectRequest
	disconnected []string
	connected    []api.RemoteCluster
}

func (f *fakeClusters) CreateClusterToken(_ context.Context, req api.ClusterTokenRequest) (api.CreatedToken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	f.tokenReqs = append(f.tokenReqs, req)
	return api.CreatedToken{Token: api.Token{ID: "tc0123", Cluster: "east", MaxUses: 1, CreatedAt: t0, ExpiresAt: t0.Add(time.Duration(req.TTL))},
		JoinToken: "weft1.CLUSTERTOKEN", ClusterID: 1, MeshPool: "100.64.0.0/16"}, nil
}

func (f *fakeClusters) ConnectCluster(_ context.Context, req api.ClusterConnectRequest) (api.RemoteCluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	f.connects = append(f.connects, req)
	if req.Token == "weft1.OVERLAP" {
		return api.RemoteCluster{}, fmt.Errorf(`%w: cluster "north" range 100.64.0.0/16 overlaps cluster "east" range 100.64.0.0/16; connected clusters need disjoint ranges`, api.ErrInvalid)
	}
	return api.RemoteCluster{Name: "north", ID: 4, MeshPool: "100.67.0.0/16", EtcdEndpoints: []string{"https://198.18.4.10:2379"}, Mode: req.Mode, ConnectedAt: t0}, nil
}

func (f *fakeClusters) Clusters(context.Context) ([]api.RemoteCluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	return f.connected, nil
}

func (f *fakeClusters) DisconnectCluster(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	f.disconnected = append(f.disconnected, name)
	if name != "west" {
		return fmt.Errorf("%w: cluster %s is not connected (see `meshctl cluster list`)", api.ErrNotFound, name)
	}
	return nil
}

func (f *fakeClusters) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

// startClusters serves a fake seed with west (connected, synced, lagging
// a little, with an old error) and south (its etcd unreachable).
func startClusters(t *testing.T) (*fakeClusters, string) {
	t.Helper()
	old := now
	now = func() time.Time { return t0 }
	t.Cleanup(func() { now = old })
	f := &fakeClusters{connected: []api.RemoteCluster{
		{Name: "west", ID: 2, MeshPool: "100.65.0.0/16", PodCIDRs: []string{"10.245.0.0/16"}, EtcdEndpoints: []string{"https://198.18.2.10:2379", "https://198.18.2.11:2379"},
			Mode: "mirror", ConnectedAt: t0.Add(-time.Hour), Connected: true, Synced: true, Nodes: 3, Endpoints: 12, Identities: 5,
			LastError: "etcd: request timed out", LastErrorAt: t0.Add(-90 * time.Second), Lag: api.Duration(2 * time.Second)},
		{Name: "south", ID: 3, MeshPool: "100.66.0.0/16", EtcdEndpoints: []string{"https://198.18.3.10:2379"},
			Mode: "direct", ConnectedAt: t0.Add(-time.Minute), Refused: 1, LastError: "connection refused"},
	}}
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{Clusters: f}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return f, path
}

func TestClusterToken(t *testing.T) {
	f, sock := startClusters(t)
	out, _, err := runApp(t, "cluster", "token", "--socket", sock, "--ttl", "30m")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("Cluster token tc0123 (connects a cluster to cluster east, single use, expires %s):\n\n  weft1.CLUSTERTOKEN\n\n", t0.Add(30*time.Minute).Local().Format(time.RFC3339))
	if !strings.HasPrefix(out, want) || !strings.Contains(out, "\n  meshctl cluster connect weft1.CLUSTERTOKEN\n") {
		t.Errorf("output:\n%s\nwant it to start with\n%s", out, want)
	}
	if len(f.tokenReqs) != 1 || time.Duration(f.tokenReqs[0].TTL) != 30*time.Minute {
		t.Errorf("sent %+v", f.tokenReqs)
	}

	out, _, err = runApp(t, "cluster", "token", "--socket", sock, "-o", "json")
	var ct api.CreatedToken
	if err != nil || json.Unmarshal([]byte(out), &ct) != nil || ct.JoinToken != "weft1.CLUSTERTOKEN" || ct.Cluster != "east" || ct.ID != "tc0123" {
		t.Errorf("json: %v %s", err, out)
	}
	if time.Duration(f.tokenReqs[1].TTL) != time.Hour {
		t.Errorf("the default TTL: sent %+v", f.tokenReqs[1])
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ttl", "30s"}, "--ttl 30s is out of range: use 1m to 720h"},
		{[]string{"--ttl", "721h"}, "--ttl 721h0m0s is out of range"},
		{[]string{"extra"}, "takes no arguments"},
	} {
		_, _, err := runApp(t, append([]string{"cluster", "token", "--socket", sock}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
	if f.count() != 2 {
		t.Errorf("refused commands reached the agent: %d requests", f.count())
	}
}

func TestClusterConnect(t *testing.T) {
	f, sock := startClusters(t)
	out, errOut, err := runApp(t, "cluster", "connect", "--socket", sock, "  weft1.NORTH\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := "connected to cluster north (id 4, mesh pool 100.67.0.0/16, mode mirror)\nboth directions are set up; `meshctl cluster status north` shows when its records are in\n"; out != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if !strings.Contains(errOut, "exchanging credentials with the other cluster's join service") {
		t.Errorf("no progress note on stderr: %q", errOut)
	}
	if len(f.connects) != 1 || f.connects[0] != (api.ClusterConnectRequest{Token: "weft1.NORTH", Mode: "mirror"}) {
		t.Errorf("sent %+v: want the token trimmed and the default mode", f.connects)
	}

	// The flag may follow the token, and -o json gives the agent's record.
	out, _, err = runApp(t, "cluster", "connect", "weft1.NORTH", "--socket", sock, "--mode", "direct", "-o", "json")
	var r api.RemoteCluster
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r.Name != "north" || r.Mode != "direct" || f.connects[1].Mode != "direct" {
		t.Errorf("json: %v %s (sent %+v)", err, out, f.connects)
	}

	_, _, err = runApp(t, "cluster", "connect", "--socket", sock, "weft1.OVERLAP")
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), `connecting the cluster: cluster "north" range 100.64.0.0/16 overlaps cluster "east"`) {
		t.Errorf("a refused connect: %v", err)
	}

	before := f.count()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"weft1.NORTH", "--mode", "mirrored"}, `--mode "mirrored": use mirror or direct`},
		{[]string{"weft1.NORTH", "--mode", ""}, `--mode "": use mirror or direct`},
		{[]string{}, "needs the token"},
		{[]string{"weft1.A", "weft1.B"}, "takes one token, got 2 arguments"},
	} {
		_, _, err := runApp(t, append([]string{"cluster", "connect", "--socket", sock}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
	if f.count() != before {
		t.Errorf("refused commands reached the agent: %d requests", f.count()-before)
	}
}

func TestClusterList(t *testing.T) {
	_, sock := startClusters(t)
	out, _, err := runApp(t, "cluster", "list", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^CLUSTER +ID +RANGES +MODE +ETCD +CONNECTED$`,
		`(?m)^west +2 +100\.65\.0\.0/16,10\.245\.0\.0/16 +mirror +https://198\.18\.2\.10:2379,https://198\.18\.2\.11:2379 +` + regexp.QuoteMeta(t0.Add(-time.Hour).Local().Format(time.RFC3339)) + `$`,
		`(?m)^south +3 +100\.66\.0\.0/16 +direct +https://198\.18\.3\.10:2379 +` + regexp.QuoteMeta(t0.Add(-time.Minute).Local().Format(time.RFC3339)) + `$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("list output does not match %s:\n%s", re, out)
		}
	}
	out, _, err = runApp(t, "cluster", "ls", "--socket", sock, "-o", "json")
	var rs []api.RemoteCluster
	if err != nil || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != 2 || rs[0].Name != "west" || len(rs[0].EtcdEndpoints) != 2 {
		t.Errorf("json: %v %s", err, out)
	}
	if _, _, err := runApp(t, "cluster", "list", "--socket", sock, "west"); err == nil || !strings.Contains(err.Error(), "takes no arguments") {
		t.Errorf("list with an argument: %v", err)
	}
}

func TestClusterStatus(t *testing.T) {
	_, sock := startClusters(t)
	out, _, err := runApp(t, "cluster", "status", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^CLUSTER +STATE +SYNCED +NODES +ENDPOINTS +IDENTITIES +REFUSED +LAG +LAST ERROR$`,
		`(?m)^west +connected +yes +3 +12 +5 +0 +2s +etcd: request timed out \(1m30s ago\)$`,
		`(?m)^south +disconnected +no +0 +0 +0 +1 +0s +connection refused$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("status output does not match %s:\n%s", re, out)
		}
	}

	// One cluster, with the name before or after the flags.
	for _, args := range [][]string{{"west", "--socket", sock}, {"--socket", sock, "west"}} {
		out, _, err = runApp(t, append([]string{"cluster", "status"}, args...)...)
		if err != nil || !strings.Contains(out, "\nwest ") || strings.Contains(out, "south") {
			t.Errorf("status %v: %v\n%s", args, err, out)
		}
	}
	out, _, err = runApp(t, "cluster", "status", "south", "--socket", sock, "-o", "json")
	var rs []api.RemoteCluster
	if err != nil || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != 1 || rs[0].Name != "south" || rs[0].Connected || rs[0].LastError != "connection refused" {
		t.Errorf("json: %v %s", err, out)
	}
	if !strings.Contains(out, `"connected": false`) || !strings.Contains(out, `"lag": "0s"`) {
		t.Errorf("json lacks the state fields: %s", out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"north"}, "cluster north is not connected (see `meshctl cluster list`)"},
		{[]string{"North"}, `"North" is not a valid cluster name`},
		{[]string{"west", "south"}, "at most one cluster name, got 2 arguments"},
	} {
		_, _, err := runApp(t, append([]string{"cluster", "status", "--socket", sock}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
}

// A cluster still syncing its first listing is neither connected nor
// disconnected.
func TestClusterStatusSyncing(t *testing.T) {
	var buf strings.Builder
	if err := printClusterStatus(&buf, []api.RemoteCluster{{Name: "west", Connected: true}}); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^west +syncing +no +0 +0 +0 +0 +0s +-$`).MatchString(buf.String()) {
		t.Errorf("output:\n%s", buf.String())
	}
}

func TestClusterDisconnect(t *testing.T) {
	f, sock := startClusters(t)
	out, _, err := runApp(t, "cluster", "disconnect", "west", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	if out != "cluster west disconnected: its nodes and endpoints leave this cluster's datapath\n" || fmt.Sprint(f.disconnected) != "[west]" {
		t.Errorf("output %q, disconnected %v", out, f.disconnected)
	}
	_, _, err = runApp(t, "cluster", "disconnect", "--socket", sock, "north")
	if !errors.Is(err, api.ErrNotFound) || err.Error() != "disconnecting cluster north: cluster north is not connected (see `meshctl cluster list`)" {
		t.Errorf("an unknown cluster: %v", err)
	}

	before := f.count()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"West_1"}, `"West_1" is not a valid cluster name`},
		{[]string{"../west"}, "is not a valid cluster name"},
		{[]string{}, "needs the cluster name"},
		{[]string{"west", "south"}, "takes one cluster name, got 2 arguments"},
		{[]string{"west", "-o", "json"}, "unknown flag -o"},
	} {
		_, _, err := runApp(t, append([]string{"cluster", "disconnect", "--socket", sock}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want %q, got %v", tc.args, tc.want, err)
		}
	}
	if f.count() != before {
		t.Errorf("refused commands reached the agent: %d requests", f.count()-before)
	}
}

func TestClusterHelpListsSubcommands(t *testing.T) {
	out, _, err := runApp(t, "cluster", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"token", "connect", "list, ls", "status", "disconnect"} {
		if !regexp.MustCompile(`(?m)^   ` + regexp.QuoteMeta(sub) + `  +\S`).MatchString(out) {
			t.Errorf("cluster --help does not list %q:\n%s", sub, out)
		}
	}
	for _, want := range []string{"meshctl cluster connect TOKEN [--mode mirror|direct]", "meshctl cluster token", "docs/clusters.md"} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster --help lacks %q:\n%s", want, out)
		}
	}
}

// An agent that is not a seed says the cluster commands belong there.
func TestClusterCommandsNeedTheSeed(t *testing.T) {
	_, sock := startFake(t)
	_, _, err := runApp(t, "cluster", "list", "--socket", sock)
	if !errors.Is(err, api.ErrNotSupported) {
		t.Errorf("cluster list on a non-seed agent: %v", err)
	}
}
