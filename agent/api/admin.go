package api

import (
	"context"
	"net/http"
	"time"
)

// AdminCredentialRequest asks the seed for an admin API credential
// (POST /v1/admin/credentials, local socket only).
type AdminCredentialRequest struct {
	// Name identifies the holder in the seed's audit log.
	Name string `json:"name"`
	// TTL is the certificate's lifetime; 0 means DefaultAdminCredentialTTL.
	TTL Duration `json:"ttl,omitempty"`
	// Server is the host:port the holder reaches the join service at;
	// empty: the address the seed writes into join tokens.
	Server string `json:"server,omitempty"`
}

// Admin credential lifetimes: there is no revocation list for them, so
// they are short by default.
const (
	DefaultAdminCredentialTTL = 30 * 24 * time.Hour
	MinAdminCredentialTTL     = time.Hour
	MaxAdminCredentialTTL     = 365 * 24 * time.Hour
)

// adminRoutes are the local API's routes the admin API serves: the
// mesh-wide reads and writes. What acts on the seed machine itself
// (endpoints, leave, key rotation, ping, flows, CNI, relaying to other
// agents) and the minting of admin credentials stay on the root-only
// socket.
var adminRoutes = map[string]bool{
	"GET /v1/status": true, "GET /v1/health": true, "GET /v1/version": true,
	"GET /v1/peers": true, "GET /v1/nodes": true, "GET /v1/identities": true,
	"GET /v1/policies": true, "GET /v1/policies/{name}": true, "POST /v1/policies": true,
	"DELETE /v1/policies/{name}": true, "POST /v1/policy/trace": true, "GET /v1/policy/revision": true,
	"GET /v1/tokens": true, "POST /v1/tokens": true, "DELETE /v1/tokens/{id}": true,
	"POST /v1/nodes/remove": true, "POST /v1/nodes/revoke": true,
	"GET /v1/revocations": true, "DELETE /v1/revocations/{node}": true,
	"POST /v1/clusters/token": true, "POST /v1/clusters": true, "GET /v1/clusters": true,
	"DELETE /v1/clusters/{name}": true,
}

// AdminHandler serves the admin subset of the API (adminRoutes), paths
// without AdminPrefix. The caller authenticates: the join service mounts
// it behind its admin certificate check.
func (s *Server) AdminHandler() http.Handler {
	inner := s.mux()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := inner.Handler(r); !adminRoutes[pattern] {
			s.fail(w, r, Errorf(CodeNotSupported, "%s %s is not part of the admin API: run that meshctl command as root on the node it concerns", r.Method, r.URL.Path))
			return
		}
		inner.ServeHTTP(w, r)
	})
}

// IssueAdminCredential asks the seed's agent for an admin API credential.
func (c *Client) IssueAdminCredential(ctx context.Context, req AdminCredentialRequest) (AdminCredential, error) {
	var out AdminCredential
	return out, c.do(ctx, http.MethodPost, "/v1/admin/credentials", req, &out)
}
