package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/weftmesh/weft/internal/version"
)

// Client talks to the agent's local API. Its errors wrap the package's
// sentinels: ErrAgentNotRunning and ErrPermission when the socket cannot
// be reached, the server's ErrNotFound, ErrInvalid... otherwise.
type Client struct {
	socket string
	http   *http.Client
	// stream has no overall timeout: flow streams stay open.
	stream *http.Client
	// relay, when set, sends every request to another node's agent
	// through the local one (/v1/relay/<cluster>/<node>/...).
	relay string
	// base, when set, is the admin API's URL (NewAdminClient); socket
	// then names its host:port in errors.
	base string
}

// DefaultTimeout bounds one request; applying a policy to a large mesh is
// the slowest call.
const DefaultTimeout = 60 * time.Second

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 2,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: DefaultTimeout}, stream: &http.Client{Transport: tr}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.doWith(ctx, c.http, method, path, in, out)
}

func (c *Client) doWith(ctx context.Context, hc *http.Client, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding the request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), body)
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		return errorFromBody(resp, data)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the agent's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// errorFromBody rebuilds the *Error the server sent; an answer that is
// not one (a proxy's page, a crash) is internal, quoted.
func errorFromBody(resp *http.Response, data []byte) *Error {
	var eb errorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
		return &Error{Status: resp.StatusCode, Code: CodeInternal, Message: fmt.Sprintf("the agent answered %s: %q", resp.Status, truncate(data))}
	}
	return &Error{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// dialError turns "connect: no such file" into what the user should do.
func (c *Client) dialError(err error) error {
	if c.base != "" {
		return fmt.Errorf("%w: the admin API at %s: %w (is the seed's agent running, and its join service reachable from here?)", ErrAgentNotRunning, c.socket, err)
	}
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (nothing listens on %s): start it with `meshctl up` on the first node, `meshctl join TOKEN` on the others, or `systemctl start weft-agent`; or point --socket (WEFT_SOCKET) at the agent's socket",
			ErrAgentNotRunning, c.socket)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w on %s: the agent's socket is root only: run as root (sudo meshctl ...)", ErrPermission, c.socket)
	}
	return fmt.Errorf("talking to the agent on %s: %w", c.socket, err)
}

// Status returns the local node's status, peers included.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var v Status
	return v, c.do(ctx, http.MethodGet, "/v1/status", nil, &v)
}

// Health returns the agent's self-check.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var v Health
	return v, c.do(ctx, http.MethodGet, "/v1/health", nil, &v)
}

// Peers lists the tunnel's peers.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var v []Peer
	return v, c.do(ctx, http.MethodGet, "/v1/peers", nil, &v)
}

// Nodes lists the mesh's nodes.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var v []Node
	return v, c.do(ctx, http.MethodGet, "/v1/nodes", nil, &v)
}

// Identities lists the identities in use.
func (c *Client) Identities(ctx context.Context) ([]Identity, error) {
	var v []Identity
	return v, c.do(ctx, http.MethodGet, "/v1/identities", nil, &v)
}

// Endpoints lists the mesh's endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var v []Endpoint
	return v, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &v)
}

// AddEndpoint makes a network namespace a workload of this node.
func (c *Client) AddEndpoint(ctx context.Context, spec EndpointSpec) (Endpoint, error) {
	var v Endpoint
	return v, c.do(ctx, http.MethodPost, "/v1/endpoints", spec, &v)
}

// RemoveEndpoint removes a local workload.
func (c *Client) RemoveEndpoint(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/endpoints/"+url.PathEscape(name), nil, nil)
}

// Policies lists the policies as this agent enforces them.
func (c *Client) Policies(ctx context.Context) ([]PolicyState, error) {
	var v []PolicyState
	return v, c.do(ctx, http.MethodGet, "/v1/policies", nil, &v)
}

// GetPolicy returns one stored policy document.
func (c *Client) GetPolicy(ctx context.Context, name string) (Policy, error) {
	var v Policy
	return v, c.do(ctx, http.MethodGet, "/v1/policies/"+url.PathEscape(name), nil, &v)
}

// ApplyPolicy validates and stores a policy file. With req.Wait it lasts
// until every node enforces it or Wait has passed, longer than
// DefaultTimeout allows: ctx bounds it then.
func (c *Client) ApplyPolicy(ctx context.Context, req ApplyPolicyRequest) (ApplyPolicyResult, error) {
	var v ApplyPolicyResult
	hc := c.http
	if req.Wait > 0 {
		hc = c.stream
	}
	return v, c.doWith(ctx, hc, http.MethodPost, "/v1/policies", req, &v)
}

// PolicyRevision returns the policy revision the agent enforces, once it
// is atLeast or wait has passed.
func (c *Client) PolicyRevision(ctx context.Context, atLeast int64, wait time.Duration) (PolicyRevision, error) {
	var v PolicyRevision
	q := url.Values{"atLeast": {strconv.FormatInt(atLeast, 10)}, "wait": {wait.String()}}
	return v, c.do(ctx, http.MethodGet, "/v1/policy/revision?"+q.Encode(), nil, &v)
}

// DeletePolicy removes a policy from the mesh.
func (c *Client) DeletePolicy(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/policies/"+url.PathEscape(name), nil, nil)
}

// TracePolicy explains the verdict for a connection.
func (c *Client) TracePolicy(ctx context.Context, req TraceRequest) (TraceResult, error) {
	var v TraceResult
	return v, c.do(ctx, http.MethodPost, "/v1/policy/trace", req, &v)
}

// CreateToken makes a join token.
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (CreatedToken, error) {
	var v CreatedToken
	return v, c.do(ctx, http.MethodPost, "/v1/tokens", req, &v)
}

// Tokens lists the join tokens (without their secrets).
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var v []Token
	return v, c.do(ctx, http.MethodGet, "/v1/tokens", nil, &v)
}

// RevokeToken revokes a join token by id.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// RemoveNode takes a node that is gone out of the mesh (admin only).
func (c *Client) RemoveNode(ctx context.Context, req NodeRemoveRequest) (NodeRemoval, error) {
	var v NodeRemoval
	return v, c.do(ctx, http.MethodPost, "/v1/nodes/remove", req, &v)
}

// RevokeNode removes a node and refuses its certificate everywhere
// (admin only).
func (c *Client) RevokeNode(ctx context.Context, req NodeRemoveRequest) (NodeRemoval, error) {
	var v NodeRemoval
	return v, c.do(ctx, http.MethodPost, "/v1/nodes/revoke", req, &v)
}

// Revocations lists the revoked nodes.
func (c *Client) Revocations(ctx context.Context) ([]Revocation, error) {
	var v []Revocation
	return v, c.do(ctx, http.MethodGet, "/v1/revocations", nil, &v)
}

// ClearRevocation lifts a node's revocation, so its name may join again
// with a new token (admin only).
func (c *Client) ClearRevocation(ctx context.Context, cluster, node string) (Revocation, error) {
	var v Revocation
	path := "/v1/revocations/" + url.PathEscape(node)
	if cluster != "" {
		path += "?cluster=" + url.QueryEscape(cluster)
	}
	return v, c.do(ctx, http.MethodDelete, path, nil, &v)
}

// Leave takes the node out of the mesh.
func (c *Client) Leave(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/leave", nil, nil)
}

// The client implements the server's interfaces, so meshctl code and
// tests can take either.
var (
	_ StatusSource    = (*Client)(nil)
	_ MeshView        = (*Client)(nil)
	_ EndpointManager = (*Client)(nil)
	_ PolicyManager   = (*Client)(nil)
	_ TokenManager    = (*Client)(nil)
	_ Leaver          = (*Client)(nil)
	_ KeyRotator      = (*Client)(nil)
)

// RotateKey rotates the node's WireGuard key; it returns once the old key
// is retired (tens of seconds at most).
func (c *Client) RotateKey(ctx context.Context, req RotateKeyRequest) (RotateKeyResult, error) {
	var out RotateKeyResult
	return out, c.do(ctx, http.MethodPost, "/v1/tunnel/rotate", req, &out)
}

// Ping sends one probe through the tunnel to req.Target.
func (c *Client) Ping(ctx context.Context, req PingRequest) (PingResult, error) {
	var out PingResult
	err := c.do(ctx, http.MethodPost, "/v1/ping", req, &out)
	return out, err
}

// Version returns the agent's build.
func (c *Client) Version(ctx context.Context) (version.Info, error) {
	var out version.Info
	err := c.do(ctx, http.MethodGet, "/v1/version", nil, &out)
	return out, err
}
