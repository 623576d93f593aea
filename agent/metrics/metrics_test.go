package metrics

import (
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/internal/testutil"
)

type fakeSource struct {
	dpErr error
}

var scrapeTime = time.Now()

func (f fakeSource) DatapathCounters() (bpf.Metrics, error) {
	if f.dpErr != nil {
		return bpf.Metrics{}, f.dpErr
	}
	return bpf.Metrics{Counters: []bpf.Counter{
		{Direction: bpf.Ingress, Dropped: true, Reason: bpf.ReasonPolicyDeny, Packets: 7, Bytes: 420},
		{Direction: bpf.Egress, Packets: 100, Bytes: 9000},
	}, EventsLost: 2, DropEventsSuppressed: 3}, nil
}

func (fakeSource) Peers() ([]Peer, error) {
	return []Peer{
		{Node: "east/a", LastHandshake: scrapeTime.Add(-10 * time.Second)},
		{Node: "east/b", LastHandshake: scrapeTime.Add(-10 * time.Minute)},
		{Node: "east/c"},
	}, nil
}
func (fakeSource) EtcdConnected() bool { return true }
func (fakeSource) Inventory() Inventory {
	return Inventory{Nodes: 3, Identities: 5, LocalEndpoints: 2, RemoteEndpoints: 4, Policies: 1, PolicyEntries: 6}
}
func (fakeSource) MapUsage() ([]MapUsage, error) {
	return []MapUsage{{Name: "ct", Entries: 12, Capacity: 131072}}, nil
}
func (fakeSource) Reachability() []Reach {
	return []Reach{{Node: "east/a", Up: true, RTT: 2 * time.Millisecond}, {Node: "east/b"}}
}

// scrape serves m over HTTP and parses the answer as Prometheus does.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	return testutil.ScrapeMetrics(t, nil, srv.URL)
}

func TestExposition(t *testing.T) {
	m := New(fakeSource{}, nil)
	m.ObserveReconcile("policy", 3*time.Millisecond)
	m.ObserveReconcile("policy", 4*time.Millisecond)
	m.ObserveFlow(api.Flow{Verdict: "dropped", Reason: "policy-deny-rule", Direction: "ingress"})
	fams := scrape(t, m)
	cases := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"weft_datapath_packets_total", map[string]string{"direction": "ingress", "verdict": "dropped", "reason": bpf.ReasonPolicyDeny.String()}, 7},
		{"weft_datapath_bytes_total", map[string]string{"direction": "egress", "verdict": "forwarded", "reason": ""}, 9000},
		{"weft_datapath_events_lost_total", nil, 2},
		{"weft_datapath_drop_events_suppressed_total", nil, 3},
		{"weft_tunnel_peers", map[string]string{"state": "up"}, 1},
		{"weft_tunnel_peers", map[string]string{"state": "down"}, 2},
		{"weft_etcd_connected", nil, 1},
		{"weft_endpoints", map[string]string{"scope": "remote"}, 4},
		{"weft_policy_entries", nil, 6},
		{"weft_identities", nil, 5},
		{"weft_datapath_map_capacity", map[string]string{"map": "ct"}, 131072},
		{"weft_node_reachable", map[string]string{"node": "east/b"}, 0},
		{"weft_node_reachable", map[string]string{"node": "east/a"}, 1},
		{"weft_reconcile_duration_seconds", map[string]string{"reconciler": "policy"}, 2},
		{"weft_flows_total", map[string]string{"verdict": "dropped", "reason": "policy-deny-rule"}, 1},
	}
	for _, c := range cases {
		got, ok := testutil.MetricValue(fams, c.name, c.labels)
		if !ok {
			t.Errorf("%s%v missing", c.name, c.labels)
			continue
		}
		if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	age, ok := testutil.MetricValue(fams, "weft_tunnel_peer_handshake_age_seconds", map[string]string{"peer": "east/a"})
	if !ok || age < 10 || age > 60 {
		t.Errorf("handshake age of east/a = %v (present %v), want about 10s", age, ok)
	}
	if _, ok := testutil.MetricValue(fams, "weft_tunnel_peer_handshake_age_seconds", map[string]string{"peer": "east/c"}); ok {
		t.Error("a peer without a handshake has an age")
	}
}

func TestAFailingSourceLeavesOnlyItsMetricsOut(t *testing.T) {
	m := New(fakeSource{dpErr: errors.New("map gone")}, nil)
	fams := scrape(t, m)
	if _, ok := fams["weft_datapath_packets_total"]; ok {
		t.Fatal("datapath counters served although reading them failed")
	}
	if v, ok := testutil.MetricValue(fams, "weft_etcd_connected", nil); !ok || v != 1 {
		t.Fatal("the other metrics must still be served")
	}
}

func TestLogCounter(t *testing.T) {
	var out strings.Builder
	lc := NewLogCounter(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	log := slog.New(lc).With("component", "x")
	log.Info("hidden")
	before := time.Now()
	log.Error("boom", "err", "disk full")
	m := New(fakeSource{}, nil)
	lc.Attach(m)
	log.Warn("careful")
	n, msgs := lc.ErrorsSince(before)
	if n != 1 || !strings.Contains(msgs[0], "boom err=disk full") {
		t.Fatalf("errors since = %d %q", n, msgs)
	}
	if n, _ := lc.ErrorsSince(time.Now().Add(time.Hour)); n != 0 {
		t.Fatal("an error in the future")
	}
	if strings.Contains(out.String(), "hidden") || !strings.Contains(out.String(), "boom") {
		t.Fatalf("the wrapped handler's level is not respected: %s", out.String())
	}
	fams := scrape(t, m)
	for level, want := range map[string]float64{"ERROR": 1, "WARN": 1, "INFO": 0} {
		if v, _ := testutil.MetricValue(fams, "weft_log_messages_total", map[string]string{"level": level}); v != want {
			t.Errorf("log messages %s = %v, want %v", level, v, want)
		}
	}
}
