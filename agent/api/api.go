// Package api is the agent's local HTTP/JSON API on a unix socket: the
// server side the agent mounts, and the typed client meshctl uses. The
// socket is root only (mode 0600 in a 0700 directory, and the server also
// checks the peer's credentials), since whoever reaches it can change the
// node's workloads and the mesh's policy.
//
// The server knows nothing of the agent: it serves whatever implements the
// small interfaces below, so its tests run with fakes and without root.
package api

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors, one per Code (errors.go). A backend returns
// Errorf(api.CodeNotFound, "no token %q", id) (or, the older form,
// fmt.Errorf("%w: no token %q", api.ErrNotFound, id)); the server sends
// code and message, and the client returns an *Error that errors.Is
// matches against the same sentinel, so meshctl can test
// errors.Is(err, api.ErrNotFound) across the socket.
var (
	ErrNotFound     = errors.New("api: not found")
	ErrInvalid      = errors.New("api: invalid request")
	ErrConflict     = errors.New("api: conflict")
	ErrUnavailable  = errors.New("api: temporarily unavailable")
	ErrNotSupported = errors.New("api: not supported by this agent")
	ErrInternal     = errors.New("api: internal error")

	// ErrAgentNotRunning and ErrPermission are client-side: the socket is
	// missing or refuses us.
	ErrAgentNotRunning = errors.New("api: the agent is not running")
	ErrPermission      = errors.New("api: permission denied")
)

// StatusSource reports the local node.
type StatusSource interface {
	Status(ctx context.Context) (Status, error)
	Health(ctx context.Context) (Health, error)
}

// MeshView lists what the agent knows of the mesh from its caches.
type MeshView interface {
	Peers(ctx context.Context) ([]Peer, error)
	Nodes(ctx context.Context) ([]Node, error)
	Identities(ctx context.Context) ([]Identity, error)
}

// EndpointManager lists the mesh's endpoints and manages local workloads.
type EndpointManager interface {
	Endpoints(ctx context.Context) ([]Endpoint, error)
	// AddEndpoint makes a network namespace a workload. Adding one that
	// exists with the same labels returns it unchanged; with other labels
	// it is ErrConflict.
	AddEndpoint(ctx context.Context, spec EndpointSpec) (Endpoint, error)
	// RemoveEndpoint removes a local workload by name; ErrNotFound if it
	// is not one.
	RemoveEndpoint(ctx context.Context, name string) error
}

// PolicyManager stores policies in the mesh and explains the local state.
type PolicyManager interface {
	Policies(ctx context.Context) ([]PolicyState, error)
	GetPolicy(ctx context.Context, name string) (Policy, error)
	// ApplyPolicy validates every document of the file and writes them all
	// or none; a bad document is ErrInvalid with file, line and reason.
	ApplyPolicy(ctx context.Context, req ApplyPolicyRequest) (ApplyPolicyResult, error)
	DeletePolicy(ctx context.Context, name string) error
	TracePolicy(ctx context.Context, req TraceRequest) (TraceResult, error)
}

// PolicyStatus reports the policy revision this agent enforces.
type PolicyStatus interface {
	// PolicyRevision answers once the agent enforces atLeast (or a later
	// revision), or wait has passed; the caller compares the revision.
	PolicyRevision(ctx context.Context, atLeast int64, wait time.Duration) (PolicyRevision, error)
}

// TokenManager creates, lists and revokes join tokens. Only an agent that
// holds the mesh CA (the one running the join service) can create tokens.
type TokenManager interface {
	CreateToken(ctx context.Context, req TokenRequest) (CreatedToken, error)
	Tokens(ctx context.Context) ([]Token, error)
	RevokeToken(ctx context.Context, id string) error
}

// NodeAdmin takes other nodes out of the mesh, as an admin: remove (a
// node that is gone; its name may join again) and revoke (a compromised
// node; its certificate is refused everywhere until the revocation is
// cleared). A node credential gets ErrPermission, an unknown node
// ErrNotFound.
type NodeAdmin interface {
	RemoveNode(ctx context.Context, req NodeRemoveRequest) (NodeRemoval, error)
	RevokeNode(ctx context.Context, req NodeRemoveRequest) (NodeRemoval, error)
	Revocations(ctx context.Context) ([]Revocation, error)
	ClearRevocation(ctx context.Context, cluster, node string) (Revocation, error)
}

// Leaver takes the node out of the mesh: it removes the node's records,
// workloads and datapath, then the agent exits.
type Leaver interface {
	Leave(ctx context.Context) error
}

// KeyRotator rotates the node's WireGuard key without interrupting
// traffic: it announces the next key, waits until the peers have installed
// it, switches, and retires the old key (docs/tunnel.md).
type KeyRotator interface {
	RotateKey(ctx context.Context, req RotateKeyRequest) (RotateKeyResult, error)
}

// Backend is what the server serves. A nil member makes its routes answer
// ErrNotSupported, so an agent can grow its API piece by piece.
type Backend struct {
	Status    StatusSource
	Mesh      MeshView
	Endpoints EndpointManager
	Policies  PolicyManager
	Tokens    TokenManager
	Leaver    Leaver
	// Nodes serves /v1/nodes/remove, /v1/nodes/revoke, /v1/revocations.
	Nodes NodeAdmin

	Flows  FlowSource
	Health MeshHealth
	Prober Prober
	// Relay forwards /v1/relay/{cluster}/{node}/... to that node's agent.
	Relay Relayer
	// Rotator serves POST /v1/tunnel/rotate.
	Rotator KeyRotator
	// Pinger serves POST /v1/ping.
	Pinger Pinger
	// PolicyStatus serves GET /v1/policy/revision.
	PolicyStatus PolicyStatus
	// CNI serves /v1/cni/* (the weft-cni plugin) on Kubernetes nodes.
	CNI CNIHandler
	// Clusters serves /v1/clusters (connected clusters; the seed only).
	Clusters ClusterManager
	// NAT serves /v1/nat/* (reflexive addresses, relay tickets) on the
	// agent-to-agent API.
	NAT NATService
	// AdminCredentials serves POST /v1/admin/credentials on the seed's
	// local socket (never on the admin API: a credential cannot mint
	// another).
	AdminCredentials AdminCredentialIssuer
}

// AdminCredentialIssuer makes admin API credentials (the seed only).
type AdminCredentialIssuer interface {
	IssueAdminCredential(ctx context.Context, req AdminCredentialRequest) (AdminCredential, error)
}

// Pinger sends one probe of `meshctl ping` through the tunnel and, when it
// goes unanswered, says why.
type Pinger interface {
	Ping(ctx context.Context, req PingRequest) (PingResult, error)
}
