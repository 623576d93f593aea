package api

import (
	"context"
	"time"
)

// Observability: flows, mesh health and connectivity probes. The same
// routes are served on the local socket and, read-only apart from the probe
// workloads, on every agent's mesh listener (mTLS with the mesh CA), which
// is how one agent reaches another: /v1/relay/{cluster}/{node}/... on the
// local socket forwards the rest of the path to that node's agent.

// The health probe every agent answers on its mesh address: a UDP
// datagram of HealthProbeLen bytes that starts with HealthProbeMagic comes
// back unchanged from HealthProbePort. The port is one of the agents'
// control ports, which the datapath passes between nodes' own addresses
// whatever the policy (docs/datapath.md), so anything on a node can check
// through the tunnel that another node, even one of a connected cluster
// whose agent it cannot call, is reachable (`meshctl connectivity test`).
const (
	HealthProbePort  = 51837
	HealthProbeMagic = "WFTP"
	HealthProbeLen   = len(HealthProbeMagic) + 8
)

// FlowSource streams the node's flow records.
type FlowSource interface {
	// Flows sends the buffered flows that match req, oldest first, then,
	// with req.Follow, new ones as they come, until ctx ends or emit fails.
	// While following it also sends heartbeats (a line with only Time) so
	// a reader merging several nodes knows this one has nothing older.
	Flows(ctx context.Context, req FlowRequest, emit func(FlowLine) error) error
}

// MeshHealth reports liveness and reachability.
type MeshHealth interface {
	// NodeHealth is this node's own view: its probes to every other node.
	NodeHealth(ctx context.Context) (NodeHealth, error)
	// HealthMatrix gathers every node's view (over the mesh).
	HealthMatrix(ctx context.Context) (HealthMatrix, error)
}

// Prober runs connectivity probes on this node: probe workloads (a network
// namespace with an echo server) and client connections from them or from
// the host.
type Prober interface {
	AddProbeWorkload(ctx context.Context, req ProbeWorkloadRequest) (Endpoint, error)
	RemoveProbeWorkload(ctx context.Context, name string) error
	RunProbe(ctx context.Context, req ProbeRequest) (ProbeResult, error)
	// WireCheck watches the node's underlay for a marker in cleartext.
	WireCheck(ctx context.Context, req WireCheckRequest) (WireCheckResult, error)
	// LogErrors returns the errors the agent logged since a time.
	LogErrors(ctx context.Context, since time.Time) (LogErrors, error)
}

// Flow is one flow record: a new connection the policy admitted, or a
// dropped packet, seen by the datapath of Node, with both ends named.
type Flow struct {
	Time time.Time `json:"time"`
	// Node and Cluster name the node whose datapath saw the packet.
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	// Verdict is "forwarded" or "dropped"; Reason names the drop reason
	// (docs/datapath.md), empty when forwarded.
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
	// Type is "new-connection" or "drop".
	Type string `json:"type"`
	// Direction is "ingress" (to the local endpoint) or "egress" (from it).
	Direction   string       `json:"direction"`
	Protocol    string       `json:"protocol"` // tcp, udp, icmp, icmpv6, sctp or the number
	Source      FlowEndpoint `json:"source"`
	Destination FlowEndpoint `json:"destination"`
	TCPFlags    string       `json:"tcpFlags,omitempty"`
	// Length is the packet's IP length in bytes.
	Length uint32 `json:"length"`
	// NodeControl marks a connection between two nodes' own mesh addresses
	// on the agents' control ports, which passes whatever user policy says
	// (docs/datapath.md, "Control traffic between nodes").
	NodeControl bool `json:"nodeControl,omitempty"`
	// Seq numbers the node's flows in the order the agent read them.
	Seq uint64 `json:"seq"`
}

// FlowEndpoint is one end of a flow, named from the mesh's endpoints and
// identities.
type FlowEndpoint struct {
	IP       string   `json:"ip"`
	Port     uint16   `json:"port,omitempty"`
	Identity uint32   `json:"identity"`
	Labels   []string `json:"labels,omitempty"`
	// Name is set when the address is a mesh endpoint (the workload).
	// Node and Cluster name the node holding the address: the endpoint's
	// node, or the node whose mesh address or CIDRs hold it, in this
	// cluster or a connected one (node names are unique only within a
	// cluster, so the pair names the node). Cluster alone is set when only
	// the identity's mesh:cluster label names it.
	Name    string `json:"name,omitempty"`
	Node    string `json:"node,omitempty"`
	Cluster string `json:"cluster,omitempty"`
}

// FlowFilter selects flows; every set field must match.
type FlowFilter struct {
	// FromLabels/ToLabels are key=value or source:key=value; a key without
	// a source matches that key from any source.
	FromLabels []string `json:"fromLabels,omitempty"`
	ToLabels   []string `json:"toLabels,omitempty"`
	FromIP     string   `json:"fromIP,omitempty"`
	ToIP       string   `json:"toIP,omitempty"`
	// Port matches either end's port.
	Port     uint16 `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"` // tcp, udp, icmp
	Verdict  string `json:"verdict,omitempty"`  // forwarded, dropped
	// Cluster matches a flow either end of which belongs to the cluster:
	// an endpoint or node of it, or an identity whose labels carry
	// mesh:cluster=Cluster (a remote workload the agent knows only by its
	// identity).
	Cluster string `json:"cluster,omitempty"`
}

// FlowRequest asks for flows (GET /v1/flows, as query parameters).
type FlowRequest struct {
	Filter FlowFilter
	// Last bounds the buffered flows sent first (the newest Last); 0 sends
	// none, a negative value all of them.
	Last int
	// Since drops flows older than this time (zero: no bound).
	Since time.Time
	// Follow keeps the stream open for new flows.
	Follow bool
}

// FlowLine is one line of the NDJSON flow stream: a flow, a heartbeat
// (only Time), a count of flows a slow reader missed, or an error that
// ended the stream.
type FlowLine struct {
	Flow  *Flow     `json:"flow,omitempty"`
	Time  time.Time `json:"time,omitzero"`
	Lost  uint64    `json:"lost,omitempty"`
	Error string    `json:"error,omitempty"`
	// Code is the kind of the error that ended the stream.
	Code Code `json:"code,omitempty"`
}

// NodeHealth is one node's view of the mesh (GET /v1/health/node).
type NodeHealth struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	MeshIP  string `json:"meshIP,omitempty"`
	// Probes are this node's probes to every other node it knows.
	Probes []Probe `json:"probes"`
	// Error says why this row could not be read (HealthMatrix only).
	Error string `json:"error,omitempty"`
	// Remote marks a node of a connected cluster (HealthMatrix only): its
	// agent is not queried, since the agent-to-agent API accepts only its
	// own cluster's certificates, so the row holds no probes; whether it is
	// down is judged by the gathering node's probes to it.
	Remote bool `json:"remote,omitempty"`
}

// Probe is what one node knows of another: gossip membership and the
// result of its probes through the tunnel.
type Probe struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	MeshIP  string `json:"meshIP,omitempty"`
	// State is "up", "down" or "unknown" (not probed yet).
	State string `json:"state"`
	// Member is the gossip state: "alive", "suspect", "dead", "left" or
	// "unknown" (never seen).
	Member string `json:"member"`
	// RTT is the last successful probe's round trip.
	RTT         Duration  `json:"rtt"`
	LastSuccess time.Time `json:"lastSuccess,omitzero"`
	// Failures counts probes failed in a row.
	Failures int    `json:"failures"`
	Error    string `json:"error,omitempty"`
}

// HealthMatrix is every node's view (GET /v1/health/mesh): the
// reachability matrix of `meshctl status --all`.
type HealthMatrix struct {
	Time time.Time `json:"time"`
	// From names the node that gathered the matrix.
	From  string       `json:"from"`
	Nodes []NodeHealth `json:"nodes"`
	// Down lists nodes shown down: the gathering node's gossip or probes
	// say so, or their row could not be read and they do not answer
	// probes.
	Down []string `json:"down"`
}

// ProbeWorkloadRequest asks an agent to create a probe workload: a network
// namespace named Name, made a mesh endpoint with Labels, running an echo
// server on each of Ports for TCP and UDP (POST /v1/probe/workloads).
type ProbeWorkloadRequest struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Ports  []uint16          `json:"ports"`
}

// ProbeRequest runs one client connection (POST /v1/probe/run).
type ProbeRequest struct {
	// From is a probe workload of this node, or "" for the host itself.
	From     string   `json:"from,omitempty"`
	To       string   `json:"to"` // ip:port
	Protocol string   `json:"protocol"`
	Timeout  Duration `json:"timeout"`
	// Payload is sent and must come back; scenarios put a marker in it to
	// look for on the wire.
	Payload string `json:"payload,omitempty"`
}

// ProbeResult is the outcome of a probe.
type ProbeResult struct {
	OK    bool     `json:"ok"`
	RTT   Duration `json:"rtt"`
	Error string   `json:"error,omitempty"`
}

// WireCheckRequest watches the node's underlay interfaces for Duration and
// looks for Marker in any packet (POST /v1/probe/wire).
type WireCheckRequest struct {
	Marker   string   `json:"marker"`
	Duration Duration `json:"duration"`
}

// WireCheckResult says what the underlay carried.
type WireCheckResult struct {
	// Packets counts the packets seen; Tunnel those to or from the
	// WireGuard port.
	Packets int `json:"packets"`
	Tunnel  int `json:"tunnel"`
	// Cleartext counts packets that carried the marker in the clear.
	Cleartext int `json:"cleartext"`
}

// LogErrors are error-level records the agent logged (GET /v1/logs/errors).
type LogErrors struct {
	Count  int      `json:"count"`
	Recent []string `json:"recent"`
}
