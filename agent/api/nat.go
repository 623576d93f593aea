package api

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
)

// MeshCaller is the node that sent a request over the agent-to-agent API:
// the mesh address it came from, which WireGuard's cryptokey routing binds
// to one node's key, and its certificate's node (cluster and name, from
// CN node:<cluster>/<name>; empty for the seed's admin certificate, whose
// node only its address names). Requests on the local socket have none.
type MeshCaller struct {
	Cluster, Node string
	Addr          netip.Addr
	// CommonName is the client certificate's.
	CommonName string
}

// callerOf reads the caller of a mesh API request; it refuses requests on
// the local socket and certificates that are no node's.
func callerOf(r *http.Request) (MeshCaller, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return MeshCaller{}, Errorf(CodePermission, "this question is for mesh nodes over the agent-to-agent API (mTLS with a node certificate)")
	}
	cn := r.TLS.PeerCertificates[0].Subject.CommonName
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return MeshCaller{}, Errorf(CodePermission, "the request's address %q is no ip:port", r.RemoteAddr)
	}
	c := MeshCaller{Addr: ap.Addr().Unmap(), CommonName: cn}
	if rest, ok := strings.CutPrefix(cn, "node:"); ok {
		cluster, node, ok := strings.Cut(rest, "/")
		if !ok || cluster == "" || node == "" {
			return MeshCaller{}, Errorf(CodePermission, "the certificate %q names no node (node:CLUSTER/NODE)", cn)
		}
		c.Cluster, c.Node = cluster, node
	}
	return c, nil
}

// NATService answers the questions NAT traversal asks another node
// (docs/nat.md). Both are served on the agent-to-agent API only.
type NATService interface {
	// Reflexive says where this node's WireGuard device sees the caller:
	// the caller's address behind its NAT.
	Reflexive(ctx context.Context, caller MeshCaller) (ReflexiveAnswer, error)
	// RelayTicket gives the caller a one-use ticket to register its
	// underlay address with this node's relay.
	RelayTicket(ctx context.Context, caller MeshCaller) (RelayTicket, error)
}

// ReflexiveAnswer is GET /v1/nat/reflexive.
type ReflexiveAnswer struct {
	// Endpoint is the caller's WireGuard endpoint as this node's device
	// has it (ip:port); empty when the device has none.
	Endpoint string `json:"endpoint,omitempty"`
	// Node is the answering node (cluster/name).
	Node string `json:"node"`
}

// RelayTicket is POST /v1/nat/relay-ticket.
type RelayTicket struct {
	// Ticket is 16 bytes, base64; present it in the relay's REGISTER
	// message before it expires.
	Ticket []byte `json:"ticket"`
	// Relay is the relay's UDP address (ip:port).
	Relay string `json:"relay"`
	// ExpiresInSeconds says how long the ticket is good for.
	ExpiresInSeconds int `json:"expiresInSeconds"`
}

func natRoutes(route func(string, bool, func(http.ResponseWriter, *http.Request) (any, error)), b NATService) {
	caller := callerOf
	route("GET /v1/nat/reflexive", b != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		c, err := caller(r)
		if err != nil {
			return nil, err
		}
		return b.Reflexive(r.Context(), c)
	})
	route("POST /v1/nat/relay-ticket", b != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		c, err := caller(r)
		if err != nil {
			return nil, err
		}
		return b.RelayTicket(r.Context(), c)
	})
}
