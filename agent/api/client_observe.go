package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxFlowLine bounds one NDJSON line of a flow stream.
const maxFlowLine = 1 << 20

// url is the request URL of an API path, through the relay when the
// client targets another node.
func (c *Client) url(path string) string {
	if c.relay != "" {
		path = c.relay + strings.TrimPrefix(path, "/v1")
	}
	if c.base != "" {
		return c.base + path
	}
	return "http://agent" + path
}

// Node returns a client for another node's agent, reached through the
// local agent over the mesh (mTLS with the mesh CA).
func (c *Client) Node(cluster, node string) *Client {
	cp := *c
	cp.relay = "/v1/relay/" + url.PathEscape(cluster) + "/" + url.PathEscape(node)
	return &cp
}

// Flows streams flows: it calls fn for every line until the stream ends
// (without Follow: after the buffered flows), ctx ends or fn fails. A line
// with Error ends the stream with that error.
func (c *Client) Flows(ctx context.Context, req FlowRequest, fn func(FlowLine) error) error {
	if err := req.Filter.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/v1/flows")+"?"+req.Query().Encode(), nil)
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	resp, err := c.stream.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		return errorFromBody(resp, data)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxFlowLine)
	for sc.Scan() {
		var l FlowLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("decoding a flow from the agent: %w", err)
		}
		if l.Error != "" {
			// An agent from before FlowLine.Code only ever ended a stream
			// because its flow source failed.
			code := CodeUnavailable
			if l.Code != "" {
				code = l.Code
			}
			// The stream began with 200; the status is the one the server
			// would have answered had the error come first.
			return &Error{Status: code.Status(), Code: code, Message: l.Error}
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading the flow stream: %w", err)
	}
	return ctx.Err()
}

// NodeHealth returns the agent's own probes to the other nodes.
func (c *Client) NodeHealth(ctx context.Context) (NodeHealth, error) {
	var v NodeHealth
	return v, c.do(ctx, http.MethodGet, "/v1/health/node", nil, &v)
}

// HealthMatrix returns every node's probes, gathered by the agent.
func (c *Client) HealthMatrix(ctx context.Context) (HealthMatrix, error) {
	var v HealthMatrix
	return v, c.do(ctx, http.MethodGet, "/v1/health/mesh", nil, &v)
}

// AddProbeWorkload creates a probe workload with an echo server.
func (c *Client) AddProbeWorkload(ctx context.Context, req ProbeWorkloadRequest) (Endpoint, error) {
	var v Endpoint
	return v, c.do(ctx, http.MethodPost, "/v1/probe/workloads", req, &v)
}

// RemoveProbeWorkload removes a probe workload and its namespace.
func (c *Client) RemoveProbeWorkload(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/probe/workloads/"+url.PathEscape(name), nil, nil)
}

// RunProbe runs one client connection on the agent's node.
func (c *Client) RunProbe(ctx context.Context, req ProbeRequest) (ProbeResult, error) {
	var v ProbeResult
	return v, c.do(ctx, http.MethodPost, "/v1/probe/run", req, &v)
}

// WireCheck watches the node's underlay for a cleartext marker.
func (c *Client) WireCheck(ctx context.Context, req WireCheckRequest) (WireCheckResult, error) {
	var v WireCheckResult
	return v, c.do(ctx, http.MethodPost, "/v1/probe/wire", req, &v)
}

// LogErrors returns the errors the agent logged since a time.
func (c *Client) LogErrors(ctx context.Context, since time.Time) (LogErrors, error) {
	var v LogErrors
	path := "/v1/logs/errors"
	if !since.IsZero() {
		path += "?since=" + url.QueryEscape(since.UTC().Format(time.RFC3339Nano))
	}
	return v, c.do(ctx, http.MethodGet, path, nil, &v)
}

var (
	_ FlowSource = (*Client)(nil)
	_ MeshHealth = (*Client)(nil)
	_ Prober     = (*Client)(nil)
)
