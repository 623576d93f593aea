// Package metrics is the agent's Prometheus endpoint: datapath counters by
// direction, verdict and reason, flow records, tunnel peers and handshake
// ages, etcd connectivity, reconcile latencies, the mesh inventory
// (identities, endpoints, policy entries), datapath map usage and node
// reachability. Values are read from the agent when Prometheus scrapes, so
// nothing is polled in between; the package knows the agent only through
// the small Source interface.
package metrics

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/bpf"
)

// Namespace prefixes every metric name.
const Namespace = "weft"

// Peer is a tunnel peer at scrape time.
type Peer struct {
	Node          string // cluster/node
	LastHandshake time.Time
	// Path is "direct" or "relay" (empty before path selection runs);
	// PathChanges counts its changes since the agent started.
	Path        string
	PathChanges int
}

// Inventory counts what the agent knows.
type Inventory struct {
	Nodes           int
	Identities      int
	LocalEndpoints  int
	RemoteEndpoints int
	Policies        int
	PolicyEntries   int
}

// MapUsage is the fill of one datapath map.
type MapUsage struct {
	Name     string
	Entries  int
	Capacity int
}

// Reach is one node's reachability from this one.
type Reach struct {
	Node string // cluster/node
	Up   bool
	RTT  time.Duration
}

// Source is what the collector reads from the agent at scrape time. A
// method may return an error; its metrics are then left out of that scrape
// (and the error logged), the rest are served.
type Source interface {
	DatapathCounters() (bpf.Metrics, error)
	Peers() ([]Peer, error)
	EtcdConnected() bool
	Inventory() Inventory
	MapUsage() ([]MapUsage, error)
	Reachability() []Reach
}

// handshakeFresh is how recent a WireGuard handshake must be for the peer
// to count as up: WireGuard renews sessions every 2 minutes, and rejects a
// session older than 3.
const handshakeFresh = 180 * time.Second

// Metrics holds the agent's registry.
type Metrics struct {
	reg       *prometheus.Registry
	reconcile *prometheus.HistogramVec
	flows     *prometheus.CounterVec
	logs      *prometheus.CounterVec
}

// New registers the agent's collectors, Go runtime and process metrics on
// a registry of its own.
func New(src Source, log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "reconcile_duration_seconds",
			Help:    "Time one reconcile pass took, by reconciler (peers: tunnel peers from node records; policy: datapath policy entries from policies and identities).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"reconciler"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "flows_total",
			Help: "Flow records read from the datapath (new connections and drop events; drops beyond the event rate limit are in weft_datapath_packets_total only).",
		}, []string{"verdict", "reason", "direction"}),
		logs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "log_messages_total",
			Help: "Log records the agent wrote, by level.",
		}, []string{"level"}),
	}
	m.reg.MustRegister(m.reconcile, m.flows, m.logs, &collector{src: src, log: log},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// ObserveReconcile records one reconcile pass.
func (m *Metrics) ObserveReconcile(reconciler string, d time.Duration) {
	m.reconcile.WithLabelValues(reconciler).Observe(d.Seconds())
}

// ObserveFlow counts one flow record.
func (m *Metrics) ObserveFlow(f api.Flow) {
	m.flows.WithLabelValues(f.Verdict, f.Reason, f.Direction).Inc()
}

// ObserveLog counts one log record.
func (m *Metrics) ObserveLog(level slog.Level) {
	m.logs.WithLabelValues(level.String()).Inc()
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

var (
	descPackets       = desc("datapath_packets_total", "Packets the datapath judged, by direction (seen from the local endpoint), verdict (forwarded, dropped) and drop reason.", "direction", "verdict", "reason")
	descBytes         = desc("datapath_bytes_total", "IP bytes the datapath judged, by direction, verdict and drop reason.", "direction", "verdict", "reason")
	descEventsLost    = desc("datapath_events_lost_total", "Flow events the datapath's ring buffer had no room for.")
	descDropSupressed = desc("datapath_drop_events_suppressed_total", "Drops not reported as flow events because of the per-CPU rate limit (they are counted in weft_datapath_packets_total).")
	descPeers         = desc("tunnel_peers", "WireGuard peers, by state: up (handshake within 3 minutes) or down.", "state")
	descHandshakeAge  = desc("tunnel_peer_handshake_age_seconds", "Seconds since the last WireGuard handshake with a peer (absent before the first one).", "peer")
	descPeerPath      = desc("tunnel_peer_path", "1 for the path the tunnel takes to a peer: direct, or relay (through another node, docs/nat.md).", "peer", "path")
	descPathChanges   = desc("tunnel_peer_path_changes_total", "Times the path to a peer changed (direct to relay and back) since the agent started.", "peer")
	descEtcd          = desc("etcd_connected", "1 when the agent reached etcd in its last check, else 0 (the datapath keeps working from the cache).")
	descNodes         = desc("nodes", "Nodes of the mesh in the agent's cache.")
	descIdentities    = desc("identities", "Security identities in use by the mesh's endpoints.")
	descEndpoints     = desc("endpoints", "Endpoints of the mesh, by scope (local: on this node; remote).", "scope")
	descPolicies      = desc("policies", "Policies in the mesh.")
	descPolicyEntries = desc("policy_entries", "Datapath policy entries this node holds for its local endpoints.")
	descMapEntries    = desc("datapath_map_entries", "Entries in a datapath map.", "map")
	descMapCapacity   = desc("datapath_map_capacity", "Maximum entries of a datapath map.", "map")
	descReachable     = desc("node_reachable", "1 when probes from this node to another one succeed through the tunnel, else 0.", "node")
	descProbeRTT      = desc("node_probe_rtt_seconds", "Round trip of the last successful probe to another node.", "node")
)

type collector struct {
	src Source
	log *slog.Logger
	now func() time.Time
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descEventsLost, descDropSupressed, descPeers, descHandshakeAge, descPeerPath, descPathChanges, descEtcd,
		descNodes, descIdentities, descEndpoints, descPolicies, descPolicyEntries, descMapEntries, descMapCapacity, descReachable, descProbeRTT} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now
	if c.now != nil {
		now = c.now
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if dm, err := c.src.DatapathCounters(); err != nil {
		c.log.Warn("metrics: reading datapath counters", "err", err)
	} else {
		for _, k := range dm.Counters {
			verdict, reason := "forwarded", ""
			if k.Dropped {
				verdict, reason = "dropped", k.Reason.String()
			}
			counter(descPackets, float64(k.Packets), k.Direction.String(), verdict, reason)
			counter(descBytes, float64(k.Bytes), k.Direction.String(), verdict, reason)
		}
		counter(descEventsLost, float64(dm.EventsLost))
		counter(descDropSupressed, float64(dm.DropEventsSuppressed))
	}
	if peers, err := c.src.Peers(); err != nil {
		c.log.Warn("metrics: reading tunnel peers", "err", err)
	} else {
		up := 0
		for _, p := range peers {
			if p.Path != "" {
				gauge(descPeerPath, 1, p.Node, p.Path)
				counter(descPathChanges, float64(p.PathChanges), p.Node)
			}
			if p.LastHandshake.IsZero() {
				continue
			}
			age := now().Sub(p.LastHandshake)
			if age < handshakeFresh {
				up++
			}
			gauge(descHandshakeAge, age.Seconds(), p.Node)
		}
		gauge(descPeers, float64(up), "up")
		gauge(descPeers, float64(len(peers)-up), "down")
	}
	etcd := 0.0
	if c.src.EtcdConnected() {
		etcd = 1
	}
	gauge(descEtcd, etcd)
	inv := c.src.Inventory()
	gauge(descNodes, float64(inv.Nodes))
	gauge(descIdentities, float64(inv.Identities))
	gauge(descEndpoints, float64(inv.LocalEndpoints), "local")
	gauge(descEndpoints, float64(inv.RemoteEndpoints), "remote")
	gauge(descPolicies, float64(inv.Policies))
	gauge(descPolicyEntries, float64(inv.PolicyEntries))
	if usage, err := c.src.MapUsage(); err != nil {
		c.log.Warn("metrics: reading datapath map usage", "err", err)
	} else {
		for _, u := range usage {
			gauge(descMapEntries, float64(u.Entries), u.Name)
			gauge(descMapCapacity, float64(u.Capacity), u.Name)
		}
	}
	for _, r := range c.src.Reachability() {
		v := 0.0
		if r.Up {
			v = 1
			gauge(descProbeRTT, r.RTT.Seconds(), r.Node)
		}
		gauge(descReachable, v, r.Node)
	}
}
