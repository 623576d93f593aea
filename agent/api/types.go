package api

import "time"

// The types below are the JSON bodies of the local API, shared by the
// server (the agent) and the client (meshctl). Field names are the JSON
// that `meshctl ... -o json` prints, so scripts depend on them: add fields,
// never rename them.

// Status is the local node at a glance (GET /v1/status).
type Status struct {
	Node         string         `json:"node"`
	Cluster      string         `json:"cluster"`
	MeshIP       string         `json:"meshIP,omitempty"`
	CIDRs        []string       `json:"cidrs,omitempty"`
	AgentVersion string         `json:"agentVersion"`
	StartedAt    time.Time      `json:"startedAt"`
	Tunnel       TunnelStatus   `json:"tunnel"`
	Datapath     DatapathStatus `json:"datapath"`
	Etcd         EtcdStatus     `json:"etcd"`
	// Peers is the same list GET /v1/peers returns, so one call is enough
	// for `meshctl status`.
	Peers []Peer `json:"peers"`
}

// TunnelStatus describes the WireGuard device.
type TunnelStatus struct {
	Interface  string `json:"interface"`
	Kind       string `json:"kind"` // "kernel" or "userspace"
	ListenPort int    `json:"listenPort"`
	PublicKey  string `json:"publicKey"`
	Up         bool   `json:"up"`
}

// DatapathStatus describes the eBPF programs and maps.
type DatapathStatus struct {
	Attached bool   `json:"attached"`
	PinPath  string `json:"pinPath,omitempty"`
	// Programs counts the attached programs (per device and direction).
	Programs int    `json:"programs"`
	Error    string `json:"error,omitempty"`
}

// EtcdStatus says whether the control plane is reachable. The datapath keeps
// working from the agent's cache while it is not.
type EtcdStatus struct {
	Endpoints []string `json:"endpoints"`
	Reachable bool     `json:"reachable"`
	Embedded  bool     `json:"embedded"`
	Error     string   `json:"error,omitempty"`
}

// Peer is a remote node as the local tunnel sees it (GET /v1/peers).
type Peer struct {
	Node       string   `json:"node"`
	Cluster    string   `json:"cluster"`
	PublicKey  string   `json:"publicKey"`
	Endpoint   string   `json:"endpoint,omitempty"` // ip:port in use (learned from the handshake behind NAT)
	AllowedIPs []string `json:"allowedIPs"`
	// LastHandshake is zero when no handshake has completed yet.
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
	// Path is how the tunnel reaches the peer (PingResult.Path), PathSince
	// when it last changed and PathChanges how often it did since the
	// agent started; empty before path selection runs.
	Path        string    `json:"path,omitempty"`
	PathSince   time.Time `json:"pathSince,omitzero"`
	PathChanges int       `json:"pathChanges,omitempty"`
}

// Node is a node record of the mesh (GET /v1/nodes).
type Node struct {
	Name         string            `json:"name"`
	Cluster      string            `json:"cluster"`
	MeshIP       string            `json:"meshIP,omitempty"`
	CIDRs        []string          `json:"cidrs,omitempty"`
	Endpoints    []string          `json:"endpoints,omitempty"` // underlay ip:port
	PublicKey    string            `json:"publicKey"`
	Labels       map[string]string `json:"labels,omitempty"`
	AgentVersion string            `json:"agentVersion,omitempty"`
	// Self marks the node this agent runs on.
	Self bool `json:"self,omitempty"`
	// Remote marks a node of a connected cluster (its own etcd and CA,
	// docs/clusters.md): this agent reaches it through the tunnel, but
	// cannot relay requests to its agent, which accepts only its own
	// cluster's certificates.
	Remote bool `json:"remote,omitempty"`
}

// Endpoint is a workload known to the mesh (GET /v1/endpoints): the local
// ones this agent manages and the remote ones it learned from etcd.
type Endpoint struct {
	Name     string   `json:"name"`
	Node     string   `json:"node"`
	Cluster  string   `json:"cluster"`
	IP       string   `json:"ip"`
	Identity uint32   `json:"identity"`
	Labels   []string `json:"labels"` // canonical source:key=value
	// Netns is set for local workloads in a network namespace.
	Netns string `json:"netns,omitempty"`
	Local bool   `json:"local"`
	// Ingress/EgressEnforced say whether a policy isolates the endpoint in
	// that direction (deny by default plus allow rules). Only the agent
	// enforcing an endpoint knows: they are set for local endpoints only
	// (`meshctl endpoints` shows "-" for the others).
	IngressEnforced bool `json:"ingressEnforced"`
	EgressEnforced  bool `json:"egressEnforced"`
}

// EndpointSpec asks the agent to make a network namespace a workload
// (POST /v1/endpoints).
type EndpointSpec struct {
	// Netns is the network namespace name (as in `ip netns`); it also
	// names the endpoint.
	Netns string `json:"netns"`
	// Labels are key=value with an optional vm:/k8s: source.
	Labels map[string]string `json:"labels,omitempty"`
}

// Identity is a numeric security identity and its labels (GET /v1/identities).
type Identity struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
	// Reserved marks the built-in identities (host, world, remote-node...).
	Reserved bool `json:"reserved,omitempty"`
	// Endpoints counts the endpoints that carry this identity.
	Endpoints int `json:"endpoints"`
}

// PolicyState is one policy as this agent enforces it (GET /v1/policies).
type PolicyState struct {
	Name string `json:"name"`
	// Revision is the etcd revision of the document the agent enforces.
	Revision int64 `json:"revision"`
	// SelectedEndpoints are the local endpoints the policy selects.
	SelectedEndpoints []string `json:"selectedEndpoints"`
	// Entries counts the datapath policy entries its rules produce on the
	// local endpoints it selects (an entry two policies produce counts for
	// both).
	Entries int `json:"entries"`
	// File and Line say where the policy was applied from (empty for
	// policies stored before they were recorded).
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
}

// Policy is one stored policy document (GET /v1/policies/{name}).
type Policy struct {
	Name     string `json:"name"`
	Revision int64  `json:"revision"`
	// Document is the YAML as applied.
	Document string `json:"document"`
}

// ApplyPolicyRequest carries a policy file (POST /v1/policies). A file
// may hold several documents separated by ---; all are validated before
// any is written, so an invalid file changes nothing.
type ApplyPolicyRequest struct {
	// Filename is used in error messages (file:line: reason).
	Filename string `json:"filename"`
	Document string `json:"document"`
	// Wait, when set, makes the agent answer only once every node of the
	// mesh reports the stored policies enforced in its datapath, or Wait
	// has passed (then Enforcement names the nodes that did not).
	Wait Duration `json:"wait,omitempty"`
}

// ApplyPolicyResult lists what an apply did.
type ApplyPolicyResult struct {
	Policies []AppliedPolicy `json:"policies"`
	// Revision is the etcd revision the file's policies are stored at
	// (the newest of theirs): a node enforces the file once it reports
	// this revision or a later one.
	Revision int64 `json:"revision"`
	// Enforcement is set when the request asked to wait.
	Enforcement *PolicyEnforcement `json:"enforcement,omitempty"`
}

// PolicyEnforcement says which nodes enforce a policy revision.
type PolicyEnforcement struct {
	Revision int64 `json:"revision"`
	// Complete is true when every node reported the revision enforced
	// within Timeout.
	Complete bool     `json:"complete"`
	Timeout  Duration `json:"timeout"`
	// Nodes are every node of the mesh (their records, and nodes whose
	// record went while their tunnel is alive), sorted by cluster/name.
	Nodes []NodeEnforcement `json:"nodes"`
}

// NodeEnforcement is one node's answer.
type NodeEnforcement struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	// Enforced is true once the node reported the revision compiled into
	// its datapath.
	Enforced bool `json:"enforced"`
	// Revision is the newest policy revision the node reported enforcing
	// (0 when it did not answer).
	Revision int64 `json:"revision"`
	// Took is from the policies being stored until the node's report
	// arrived (the round trip to the node included); set when Enforced.
	Took Duration `json:"took,omitempty"`
	// Error says why the node is not enforcing, when it is not.
	Error string `json:"error,omitempty"`
}

// PolicyRevision is what a node's datapath enforces (GET
// /v1/policy/revision, on the local socket and the agent-to-agent API).
type PolicyRevision struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	// Revision is the etcd revision of the newest policy change this
	// agent has compiled into its datapath.
	Revision   int64     `json:"revision"`
	EnforcedAt time.Time `json:"enforcedAt,omitzero"`
	// Failed names the policies this agent could not compile (it skips
	// them and enforces the rest), with the reason.
	Failed map[string]string `json:"failed,omitempty"`
}

// AppliedPolicy is one document of an applied file.
type AppliedPolicy struct {
	Name     string `json:"name"`
	Action   string `json:"action"` // "created", "updated" or "unchanged"
	Revision int64  `json:"revision"`
}

// TraceRequest asks what the policy says about a connection between two
// label sets (POST /v1/policy/trace). A side that is not an endpoint is
// its reserved identity's label alone: {"reserved:world": ""},
// {"reserved:host": ""}, {"reserved:remote-node": ""}.
type TraceRequest struct {
	From     map[string]string `json:"from"`
	To       map[string]string `json:"to"`
	Port     uint16            `json:"port"`
	Protocol string            `json:"protocol"` // TCP, UDP, SCTP, ICMP
}

// TraceResult is the verdict of a trace and why.
type TraceResult struct {
	Verdict string `json:"verdict"` // "allow" or "deny"
	// Egress and Ingress are the two halves of the decision: the source's
	// egress policy and the destination's ingress policy.
	Egress  TraceStep `json:"egress"`
	Ingress TraceStep `json:"ingress"`
	// Note is set when the port is one of the agents' control ports:
	// between two nodes' own mesh addresses such a connection passes
	// whatever the verdict above says (docs/datapath.md).
	Note string `json:"note,omitempty"`
}

// TraceStep is one direction of a trace.
type TraceStep struct {
	Verdict  string `json:"verdict"`  // "allow" or "deny"
	Enforced bool   `json:"enforced"` // false: no policy isolates this side
	// Reason explains the verdict in a sentence.
	Reason string `json:"reason"`
	// Policies are the policies whose rules decided it.
	Policies []string `json:"policies,omitempty"`
	// Rule is the rule that decided; nil when the direction's default did.
	Rule *TraceRule `json:"rule,omitempty"`
}

// TraceRule names a rule of a stored policy and where it was written.
type TraceRule struct {
	Policy  string `json:"policy"`
	Section string `json:"section"` // ingress, egress, ingressDeny, egressDeny
	Index   int    `json:"index"`   // 0-based, in its section
	// File and Line are where the rule was written, as applied (empty
	// for policies stored before Weft recorded it).
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
}

// TokenRequest asks for a join token (POST /v1/tokens).
type TokenRequest struct {
	// Cluster the joining node is placed in; empty = the agent's cluster.
	Cluster string            `json:"cluster,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	TTL     Duration          `json:"ttl"`
	// MaxUses is 1 for a single-use token.
	MaxUses int `json:"maxUses"`
	// AllowLabels bounds the labels the admitted nodes may publish
	// endpoints with ("app=web", "app=*", "k8s:tier=db"); empty: any.
	AllowLabels []string `json:"allowLabels,omitempty"`
	// PodCIDRs makes a token for Kubernetes nodes: each may claim the
	// podCIDR of its Node object if it lies inside one of these.
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// ClusterID and MeshPool are asked for a cluster the token creates
	// (a Cluster with no record yet); zero and empty take the lowest free
	// id and the first free /16 of 100.64.0.0/10. For an existing
	// cluster they must be its own, or left out.
	ClusterID int    `json:"clusterID,omitempty"`
	MeshPool  string `json:"meshPool,omitempty"`
}

// Token is a stored join token; its secret is never shown again.
type Token struct {
	ID        string            `json:"id"`
	Cluster   string            `json:"cluster"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	ExpiresAt time.Time         `json:"expiresAt"`
	Uses      int               `json:"uses"`
	MaxUses   int               `json:"maxUses"`
	Revoked   bool              `json:"revoked"`
	// AllowLabels is the token's label grant; empty allows any label.
	AllowLabels []string `json:"allowLabels,omitempty"`
	// PodCIDRs are the ranges admitted Kubernetes nodes claim podCIDRs from.
	PodCIDRs []string `json:"podCIDRs,omitempty"`
}

// CreatedToken is a new token with the one string a user copies.
type CreatedToken struct {
	Token
	// ClusterID and MeshPool are the token's cluster's, from its record;
	// ClusterCreated says the token created that record (a new cluster
	// of the shared etcd).
	ClusterID      int    `json:"clusterID"`
	MeshPool       string `json:"meshPool"`
	ClusterCreated bool   `json:"clusterCreated,omitempty"`
	// JoinToken is what `meshctl join` takes: service address, id, secret
	// and the mesh CA's fingerprint.
	JoinToken string `json:"joinToken"`
}

// Health is the agent's self-check (GET /v1/health). OK is false when any
// check fails.
type Health struct {
	OK     bool          `json:"ok"`
	Checks []HealthCheck `json:"checks"`
	// Peers is the verdict on each peer node behind the "peers" check:
	// a node is unhealthy while a peer has not completed a WireGuard
	// handshake (past a short grace after it was added) or its last one
	// is older than 3 minutes (docs/cli.md, "meshctl status").
	Peers []PeerHealth `json:"peers"`
}

// PeerHealth is one peer node's handshake verdict.
type PeerHealth struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	// State is "ok", "waiting" (added moments ago, no handshake yet),
	// "never" (no handshake since it was added) or "stale" (the last one
	// is older than 3 minutes).
	State    string `json:"state"`
	Endpoint string `json:"endpoint,omitempty"`
	// LastHandshake is zero when none completed.
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	// Added is when this agent first had the peer on its device.
	Added   time.Time `json:"added,omitzero"`
	Message string    `json:"message,omitempty"`
}

// HealthCheck is one component's state.
type HealthCheck struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Message string `json:"message,omitempty"`
}

// RotateKeyRequest asks the agent to rotate its WireGuard key.
type RotateKeyRequest struct {
	// Force switches even when some peers did not confirm the next key in
	// time; those lose traffic to this node until they read its new record.
	Force bool `json:"force,omitempty"`
}

// RotateKeyResult is a finished rotation.
type RotateKeyResult struct {
	OldPublicKey string        `json:"oldPublicKey"`
	NewPublicKey string        `json:"newPublicKey"`
	Took         Duration      `json:"took"`
	Peers        []RotatedPeer `json:"peers"`
}

// RotatedPeer is what one peer did during a rotation.
type RotatedPeer struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	// Installed: the peer reported the announced key before the switch.
	Installed bool `json:"installed"`
	// Handshake: the peer completed a handshake with the new key before
	// the old one was retired.
	Handshake bool `json:"handshake"`
	// Error says why the peer could not confirm, when it did not.
	Error string `json:"error,omitempty"`
}

// Duration is a time.Duration sent as a string ("1h0m0s").
type Duration time.Duration

// MarshalText writes the Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// errorBody is the JSON of every error response.
type errorBody struct {
	Error string `json:"error"`
	Code  Code   `json:"code"`
}

// NodeRemoveRequest names a node to remove or revoke (POST
// /v1/nodes/remove, /v1/nodes/revoke).
type NodeRemoveRequest struct {
	// Cluster of the node; empty = the agent's cluster.
	Cluster string `json:"cluster,omitempty"`
	Node    string `json:"node"`
	// Reason is kept in the revocation record (revoke only).
	Reason string `json:"reason,omitempty"`
}

// NodeRemoval is what a removal or revocation did.
type NodeRemoval struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Revoked: the node's certificate is refused everywhere.
	Revoked bool `json:"revoked"`
	// Record: the node had a record (marked leaving, then deleted).
	Record       bool     `json:"record"`
	Endpoints    int      `json:"endpoints"`
	IdentityRefs int      `json:"identityRefs"`
	CIDRs        []string `json:"cidrs,omitempty"`
	Grant        bool     `json:"grant"`
	// Serials are the revoked certificates the mesh knew of (every
	// certificate of the node's name is refused).
	Serials []string `json:"serials,omitempty"`
	Took    Duration `json:"took"`
}

// Revocation is a revoked node (GET /v1/revocations).
type Revocation struct {
	Cluster   string    `json:"cluster"`
	Node      string    `json:"node"`
	Serials   []string  `json:"serials,omitempty"`
	RevokedAt time.Time `json:"revokedAt"`
	Reason    string    `json:"reason,omitempty"`
}

// PingRequest sends one probe through the tunnel to a node (POST
// /v1/ping): `meshctl ping` sends one request per probe.
type PingRequest struct {
	// Target is a node name, cluster/node, or an IP address (a node's mesh
	// or underlay address, or any address inside a node's CIDRs).
	Target  string   `json:"target"`
	Timeout Duration `json:"timeout"`
	// Since, when set, is when the ping began: an unanswered probe's
	// explanation looks for the target's drops of our probes since then.
	Since time.Time `json:"since,omitzero"`
}

// PingResult is one probe's outcome and the path it took.
type PingResult struct {
	Node    string `json:"node"`
	Cluster string `json:"cluster"`
	MeshIP  string `json:"meshIP"`
	// Path is how the tunnel reaches the node: "direct IP:PORT", "direct
	// (learned)" (the endpoint came from the peer's handshakes) or "relay
	// via NODE" (docs/nat.md); PathSince is when it last changed.
	Path      string    `json:"path"`
	PathSince time.Time `json:"pathSince,omitzero"`
	// Endpoint is the peer's underlay ip:port the tunnel sends to.
	Endpoint      string    `json:"endpoint,omitempty"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	OK            bool      `json:"ok"`
	RTT           Duration  `json:"rtt,omitempty"`
	// Error is what happened to the probe; Why, when it went unanswered,
	// is the most likely reason and what to check.
	Error string `json:"error,omitempty"`
	Why   string `json:"why,omitempty"`
}
