package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClusters is a seed's cluster manager: one connected cluster, west,
// and a record of what the client sent.
type fakeClusters struct {
	mu           sync.Mutex
	tokenReqs    []ClusterTokenRequest
	connects     []ClusterConnectRequest
	disconnected []string
	connected    []RemoteCluster
}

var westCluster = RemoteCluster{
	Name: "west", ID: 2, MeshPool: "100.65.0.0/16", PodCIDRs: []string{"10.245.0.0/16"},
	EtcdEndpoints: []string{"https://198.18.2.10:2379"}, Mode: "mirror", ConnectedAt: time.Unix(1700000000, 0).UTC(),
	Connected: true, Synced: true, Nodes: 3, Endpoints: 12, Identities: 5, Refused: 1,
	LastError: "etcd: request timed out", LastErrorAt: time.Unix(1700000100, 0).UTC(), UpdatedAt: time.Unix(1700000200, 0).UTC(),
	Lag: Duration(1500 * time.Millisecond),
}

func (f *fakeClusters) CreateClusterToken(_ context.Context, req ClusterTokenRequest) (CreatedToken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenReqs = append(f.tokenReqs, req)
	return CreatedToken{Token: Token{ID: "t1", Cluster: "east", MaxUses: 1, ExpiresAt: time.Unix(0, 0).Add(time.Duration(req.TTL)).UTC()},
		JoinToken: "weft1.CLUSTER", ClusterID: 1, MeshPool: "100.64.0.0/16"}, nil
}

func (f *fakeClusters) ConnectCluster(_ context.Context, req ClusterConnectRequest) (RemoteCluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connects = append(f.connects, req)
	if req.Token == "weft1.OVERLAP" {
		return RemoteCluster{}, Errorf(CodeInvalid, `cluster "west" range 100.65.0.0/16 overlaps cluster "east" range 100.64.0.0/10`)
	}
	f.connected = append(f.connected, westCluster)
	return westCluster, nil
}

func (f *fakeClusters) Clusters(context.Context) ([]RemoteCluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.connected, nil
}

func (f *fakeClusters) DisconnectCluster(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disconnected = append(f.disconnected, name)
	for i, r := range f.connected {
		if r.Name == name {
			f.connected = append(f.connected[:i], f.connected[i+1:]...)
			return nil
		}
	}
	return Errorf(CodeNotFound, "cluster %s is not connected (see `meshctl cluster list`)", name)
}

func TestClusterRoutes(t *testing.T) {
	f := &fakeClusters{}
	c, _ := serve(t, Backend{Clusters: f})
	ctx := context.Background()

	rs, err := c.Clusters(ctx)
	if err != nil || rs == nil || len(rs) != 0 {
		t.Errorf("no cluster connected must list as an empty, non-nil slice: %#v %v", rs, err)
	}

	tok, err := c.CreateClusterToken(ctx, ClusterTokenRequest{TTL: Duration(30 * time.Minute)})
	if err != nil || tok.JoinToken != "weft1.CLUSTER" || tok.Cluster != "east" || !tok.ExpiresAt.Equal(time.Unix(1800, 0)) {
		t.Errorf("token: %+v %v", tok, err)
	}
	if len(f.tokenReqs) != 1 || time.Duration(f.tokenReqs[0].TTL) != 30*time.Minute {
		t.Errorf("the backend saw %+v", f.tokenReqs)
	}

	r, err := c.ConnectCluster(ctx, ClusterConnectRequest{Token: "weft1.WEST", Mode: "direct"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, westCluster) {
		t.Errorf("connect answer changed on the way:\n got %+v\nwant %+v", r, westCluster)
	}
	if len(f.connects) != 1 || f.connects[0] != (ClusterConnectRequest{Token: "weft1.WEST", Mode: "direct"}) {
		t.Errorf("the backend saw %+v", f.connects)
	}
	_, err = c.ConnectCluster(ctx, ClusterConnectRequest{Token: "weft1.OVERLAP"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `range 100.65.0.0/16 overlaps cluster "east"`) {
		t.Errorf("a refused connect: want invalid naming the overlap, got %v", err)
	}

	rs, err = c.Clusters(ctx)
	if err != nil || len(rs) != 1 || !reflect.DeepEqual(rs[0], westCluster) {
		t.Errorf("list: %+v %v", rs, err)
	}

	if err := c.DisconnectCluster(ctx, "west"); err != nil {
		t.Fatal(err)
	}
	err = c.DisconnectCluster(ctx, "west")
	if !errors.Is(err, ErrNotFound) || err.Error() != "cluster west is not connected (see `meshctl cluster list`)" {
		t.Errorf("disconnecting twice: %v", err)
	}
	// The name is one path segment whatever it holds: the backend, which
	// validates it, sees it as given.
	_ = c.DisconnectCluster(ctx, "a/b c")
	if fmt.Sprint(f.disconnected) != "[west west a/b c]" {
		t.Errorf("the backend saw disconnects of %q", f.disconnected)
	}
}

// The wire form of a remote cluster is what -o json scripts read.
func TestRemoteClusterJSON(t *testing.T) {
	f := &fakeClusters{connected: []RemoteCluster{westCluster, {Name: "north", ID: 3, MeshPool: "100.66.0.0/16", EtcdEndpoints: []string{"https://198.18.3.10:2379"}, Mode: "mirror"}}}
	_, path := serve(t, Backend{Clusters: f})
	body, status := call(t, path, "GET", "/v1/clusters", "")
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	for _, want := range []string{`"name":"west"`, `"id":2`, `"meshPool":"100.65.0.0/16"`, `"podCIDRs":["10.245.0.0/16"]`, `"mode":"mirror"`,
		`"connected":true`, `"synced":true`, `"lag":"1.5s"`, `"lastError":"etcd: request timed out"`, `"lastErrorAt":"2023-11-14T22:15:00Z"`} {
		if !strings.Contains(body, want) {
			t.Errorf("list lacks %s: %s", want, body)
		}
	}
	// Never-set times and errors of a cluster are left out, not zero.
	north := body[strings.Index(body, `"name":"north"`):]
	for _, absent := range []string{"lastError", "updatedAt", "podCIDRs"} {
		if strings.Contains(north, absent) {
			t.Errorf("north has %s: %s", absent, north)
		}
	}
}

func TestClusterRequestsAreDecodedStrictly(t *testing.T) {
	f := &fakeClusters{}
	_, path := serve(t, Backend{Clusters: f})
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "/v1/clusters/token", `{"ttl":"1h","maxUses":3}`, `unknown field \"maxUses\"`},
		{"POST", "/v1/clusters/token", `{"ttl":"soon"}`, "decoding the request body"},
		{"POST", "/v1/clusters", `{"token":"weft1.X","mdoe":"direct"}`, `unknown field \"mdoe\"`},
		{"POST", "/v1/clusters", `{"token":"weft1.X"}{"token":"weft1.Y"}`, "more than one JSON value"},
		{"POST", "/v1/clusters", `not json`, "decoding the request body"},
		{"PUT", "/v1/clusters", `{}`, "no API route PUT /v1/clusters"},
	} {
		body, status := call(t, path, tc.method, tc.path, tc.body)
		if status < 400 || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s %s: got %d %s, want an error containing %q", tc.method, tc.path, tc.body, status, body, tc.want)
		}
	}
	if len(f.tokenReqs)+len(f.connects) != 0 {
		t.Errorf("a refused request reached the backend: %+v %+v", f.tokenReqs, f.connects)
	}
}

// An agent that is not a seed (no cluster manager) says so on every
// cluster route.
func TestClusterRoutesNotSupported(t *testing.T) {
	c, _ := serve(t, Backend{Status: newFake()})
	ctx := context.Background()
	for route, do := range map[string]func() error{
		"POST /v1/clusters/token": func() error {
			_, err := c.CreateClusterToken(ctx, ClusterTokenRequest{})
			return err
		},
		"POST /v1/clusters": func() error {
			_, err := c.ConnectCluster(ctx, ClusterConnectRequest{Token: "weft1.X"})
			return err
		},
		"GET /v1/clusters":           func() error { _, err := c.Clusters(ctx); return err },
		"DELETE /v1/clusters/{name}": func() error { return c.DisconnectCluster(ctx, "west") },
	} {
		if err := do(); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), route) {
			t.Errorf("%s: want not supported naming the route, got %v", route, err)
		}
	}
}

// call sends one raw request to the API socket at path.
func call(t *testing.T, path, method, route, body string) (string, int) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://agent"+route, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode
}
