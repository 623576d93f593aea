package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/flows"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/tunnel/tunneltest"
)

func (f fakeNodes) Len() int { return len(f) }

// fakeMeshNodes is the whole node view: this etcd's nodes and the
// connected clusters'.
type fakeMeshNodes struct{ fakeNodes }

func (f fakeMeshNodes) Revision() int64 { return int64(len(f.fakeNodes)) }

// fakeEndpointCache is an endpoint cache.
type fakeEndpointCache []kvstore.Endpoint

func (f fakeEndpointCache) Range(fn func(string, kvstore.Endpoint) bool) {
	for _, e := range f {
		if !fn(e.IP.String(), e) {
			return
		}
	}
}
func (f fakeEndpointCache) Revision() int64 { return int64(len(f)) }
func (f fakeEndpointCache) Len() int        { return len(f) }

type fakeIdentities map[identity.NumericIdentity]identity.Labels

func (f fakeIdentities) LookupByID(id identity.NumericIdentity) (identity.Labels, bool) {
	l, ok := f[id]
	return l, ok
}

type fakeLen int

func (f fakeLen) Len() int { return int(f) }

// noWorkloads refuses probe workloads (nothing here creates namespaces).
type noWorkloads struct{}

func (noWorkloads) AddEndpoint(context.Context, api.EndpointSpec) (api.Endpoint, error) {
	return api.Endpoint{}, errors.New("no workloads here")
}
func (noWorkloads) RemoveEndpoint(context.Context, string) error { return nil }

// obsHarness runs observability on fakes and a real etcd. Mesh addresses
// are on loopback (127.88.0.0/16), which binds without root.
type obsHarness struct {
	o     *observability
	dp    *bpftest.Datapath
	dev   *tunneltest.Device
	nodes fakeNodes
	// mesh holds nodes and b1 of the connected cluster b.
	mesh fakeNodes
}

func newObsHarness(t *testing.T) *obsHarness {
	t.Helper()
	srv := kvstoretest.StartEmbedded(t)
	kv := kvstoretest.Connect(t, srv, nil)
	h := &obsHarness{dp: bpftest.New(), dev: tunneltest.New("wt0", 51833), nodes: fakeNodes{}}
	h.nodes.put(kvstore.Node{Name: "n1", Cluster: "c", MeshIP: netip.MustParseAddr("127.88.0.1"), WGPublicKey: h.dev.PublicKey().String()})
	h.nodes.put(kvstore.Node{Name: "n2", Cluster: "c", MeshIP: netip.MustParseAddr("127.88.0.2"), WGPublicKey: testKey(t)})
	h.mesh = fakeNodes{}
	for k, n := range h.nodes {
		h.mesh[k] = n
	}
	h.mesh.put(kvstore.Node{Name: "b1", Cluster: "b", MeshIP: netip.MustParseAddr("100.65.0.1"), CIDRs: []netip.Prefix{netip.MustParsePrefix("100.65.1.0/24")}, WGPublicKey: testKey(t)})
	eps := fakeEndpointCache{
		{IP: netip.MustParseAddr("100.64.1.2"), Identity: 300, Name: "db", Node: "n1", Cluster: "c", Labels: []string{"vm:app=db"}},
		{IP: netip.MustParseAddr("100.64.2.2"), Identity: 301, Name: "web", Node: "n2", Cluster: "c", Labels: []string{"vm:app=web"}},
		{IP: netip.MustParseAddr("100.65.1.2"), Identity: 2<<16 | 300, Name: "api", Node: "b1", Cluster: "b", Labels: []string{"vm:app=api", "mesh:cluster=b"}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	run := func(_ string, f func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = f(ctx) }()
	}
	o, err := startObservability(ctx, obsDeps{
		node: "n1", cluster: "c", meshIP: netip.MustParseAddr("127.88.0.1"), flowBuffer: 64,
		metricsAddr: "127.0.0.1:0", tls: srv.Files,
		nodes: h.nodes, meshNodes: fakeMeshNodes{h.mesh}, endpoints: eps, policies: fakeLen(3),
		identities: fakeIdentities{300: labels(t, "app=db"), 301: labels(t, "app=web")},
		locals:     func() []localEndpoint { return []localEndpoint{{IP: netip.MustParseAddr("100.64.1.2")}} },
		device:     h.dev, dp: fakeDatapath{h.dp}, store: kv, workloads: noWorkloads{},
		underlayIfaces: func() ([]int, error) { return nil, errors.New("none") },
		log:            slog.New(slog.DiscardHandler), run: run,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.o = o
	return h
}

func TestObservabilityEnrichesDatapathEvents(t *testing.T) {
	h := newObsHarness(t)
	h.dp.Emit(bpf.Event{Type: bpf.EventDrop, Reason: bpf.ReasonPolicyDefault, Direction: bpf.Ingress, EndpointID: 2,
		Src: netip.MustParseAddr("100.64.2.2"), Dst: netip.MustParseAddr("100.64.1.2"), SrcIdentity: 301, DstIdentity: 300,
		Protocol: 6, SrcPort: 40000, DstPort: 5432, Length: 60, Time: time.Now()})
	var f api.Flow
	testutil.Eventually(t, 5*time.Second, "the expected state", func() error {
		fs := h.o.ring.Snapshot()
		if len(fs) != 1 {
			return fmt.Errorf("ring holds %d flows", len(fs))
		}
		f = fs[0]
		return nil
	})
	if f.Verdict != "dropped" || f.Node != "n1" || f.Protocol != "tcp" {
		t.Fatalf("flow = %+v", f)
	}
	if f.Source.Name != "web" || f.Source.Node != "n2" || f.Destination.Name != "db" || f.Destination.Port != 5432 {
		t.Fatalf("flow ends = %+v -> %+v, want web on n2 -> db:5432", f.Source, f.Destination)
	}
	if strings.Join(f.Source.Labels, ",") != "vm:app=web" {
		t.Fatalf("source labels = %v", f.Source.Labels)
	}
}

// Both ends of a flow between this cluster and a connected one name their
// cluster and node: the remote workload from the endpoint cache, a remote
// node's own address or an unpublished address in its CIDR from the node
// view, which holds the connected clusters' nodes too.
func TestObservabilityNamesConnectedClusterEnds(t *testing.T) {
	h := newObsHarness(t)
	h.dp.Emit(bpf.Event{Type: bpf.EventNewConn, Direction: bpf.Ingress, EndpointID: 2, Time: time.Now(), Protocol: 6,
		Src: netip.MustParseAddr("100.65.1.2"), Dst: netip.MustParseAddr("100.64.1.2"), SrcIdentity: 2<<16 | 300, DstIdentity: 300, SrcPort: 40000, DstPort: 5432})
	h.dp.Emit(bpf.Event{Type: bpf.EventNewConn, Direction: bpf.Egress, EndpointID: 2, Time: time.Now(), Protocol: 17,
		Src: netip.MustParseAddr("100.64.1.2"), Dst: netip.MustParseAddr("100.65.0.1"), SrcIdentity: 300, DstIdentity: 6, DstPort: 53})
	h.dp.Emit(bpf.Event{Type: bpf.EventDrop, Reason: bpf.ReasonPolicyDefault, Direction: bpf.Egress, EndpointID: 2, Time: time.Now(), Protocol: 17,
		Src: netip.MustParseAddr("100.64.1.2"), Dst: netip.MustParseAddr("100.65.1.77"), SrcIdentity: 300, DstIdentity: 2, DstPort: 53})
	var fs []api.Flow
	testutil.Eventually(t, 5*time.Second, "three flows in the ring", func() error {
		if fs = h.o.ring.Snapshot(); len(fs) != 3 {
			return fmt.Errorf("ring holds %d flows", len(fs))
		}
		return nil
	})
	end := func(e api.FlowEndpoint) string { return e.Cluster + "/" + e.Node + "/" + e.Name }
	for i, want := range [][2]string{{"b/b1/api", "c/n1/db"}, {"c/n1/db", "b/b1/"}, {"c/n1/db", "b/b1/"}} {
		if got := [2]string{end(fs[i].Source), end(fs[i].Destination)}; got != want {
			t.Errorf("flow %d: ends %v, want %v", i, got, want)
		}
	}
	m, err := flows.NewMatcher(api.FlowFilter{Cluster: "b"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range fs {
		if !m.Match(&fs[i]) {
			t.Errorf("flow %d to or from cluster b does not match --cluster b: %+v", i, fs[i])
		}
	}
}

func TestObservabilityInventoryAndMetrics(t *testing.T) {
	h := newObsHarness(t)
	inv := h.o.Inventory()
	if inv.Nodes != 2 || inv.Policies != 3 || inv.LocalEndpoints != 1 || inv.RemoteEndpoints != 2 || inv.Identities != 3 {
		t.Fatalf("inventory = %+v", inv)
	}
	_ = h.dp.UpsertIPCache(netip.MustParsePrefix("100.64.2.2/32"), 301, 0)
	us, err := h.o.MapUsage()
	if err != nil || len(us) != 4 || us[0].Name != "ipcache" || us[0].Entries != 1 {
		t.Fatalf("map usage = %+v, %v", us, err)
	}
	// Read again within 5 s: the counted values, not a new walk.
	_ = h.dp.UpsertIPCache(netip.MustParsePrefix("100.64.2.3/32"), 301, 0)
	if us, _ := h.o.MapUsage(); us[0].Entries != 1 {
		t.Fatalf("map usage was walked again at once: %+v", us)
	}
	testutil.Eventually(t, 5*time.Second, "the expected state", func() error {
		if !h.o.EtcdConnected() {
			return errors.New("etcd reported unreachable")
		}
		return nil
	})
	rec := httptest.NewRecorder()
	h.o.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{"weft_nodes 2", "weft_etcd_connected 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestObservabilityHealthMatrixAndRelay(t *testing.T) {
	h := newObsHarness(t)
	m := h.o.healthMatrix(context.Background())
	if m.From != "c/n1" || len(m.Nodes) != 3 {
		t.Fatalf("matrix = %+v", m)
	}
	// b1 of the connected cluster b is listed, not queried, and not down
	// for that.
	if b := m.Nodes[0]; b.Cluster != "b" || b.Node != "b1" || !b.Remote || b.MeshIP != "100.65.0.1" || b.Error != "" || len(b.Probes) != 0 {
		t.Fatalf("connected cluster's row = %+v", b)
	}
	// n2 has no agent behind its mesh address: it is reported down, with
	// what went wrong; this node is not.
	if len(m.Down) != 1 || m.Down[0] != "c/n2" || m.Nodes[2].Error == "" {
		t.Fatalf("down = %v, rows %+v", m.Down, m.Nodes)
	}
	if _, err := h.o.relay("c", "nobody"); !errors.Is(err, api.ErrNotFound) && !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("relay to an unknown node = %v", err)
	}
	if h.o.meshSrv == nil {
		t.Skip("the agent-to-agent API did not start here; the relay refuses everything")
	}
	// A connected cluster's agent would refuse this node's certificate:
	// the relay says so, and where to run meshctl instead.
	if _, err := h.o.relay("b", "b1"); !errors.Is(err, api.ErrNotSupported) || !strings.Contains(err.Error(), "run meshctl on a node of cluster b") {
		t.Fatalf("relay to a connected cluster's node = %v", err)
	}
	if _, err := h.o.relay("c", "n2"); err != nil {
		t.Fatalf("relay to a node of this cluster = %v", err)
	}
}

func TestMetricsAnswerOnlyMeshNodes(t *testing.T) {
	nodes := fakeNodes{}
	nodes.put(kvstore.Node{Name: "n2", Cluster: "c", MeshIP: netip.MustParseAddr("100.64.2.1")})
	allow := []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24")}
	o := &observability{deps: obsDeps{nodes: nodes, metricsAllow: allow}}
	h := o.metricsGate(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "weft_nodes 2\n") }))
	for _, c := range []struct {
		from string
		want int
	}{
		{"100.64.2.1:40000", http.StatusOK},        // a node's mesh address
		{"127.0.0.1:40000", http.StatusOK},         // this node
		{"198.18.9.7:40000", http.StatusOK},        // metrics.allow
		{"100.64.2.9:40000", http.StatusForbidden}, // a workload of n2
		{"198.18.1.1:40000", http.StatusForbidden}, // the underlay
		{"garbage", http.StatusForbidden},
	} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.RemoteAddr = c.from
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("/metrics from %s: %d, want %d", c.from, rec.Code, c.want)
		}
		if c.want == http.StatusForbidden && !strings.Contains(rec.Body.String(), "metrics.allow") {
			t.Errorf("refusal does not say what to do: %q", rec.Body.String())
		}
	}
}
