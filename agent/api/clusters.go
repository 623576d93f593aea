package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// ClusterTokenRequest asks for a cluster token: another cluster presents it
// once to `meshctl cluster connect`.
type ClusterTokenRequest struct {
	TTL Duration `json:"ttl"`
}

// ClusterConnectRequest connects this cluster to the one whose cluster
// token is given.
type ClusterConnectRequest struct {
	Token string `json:"token"`
	// Mode is "mirror" (the default: this cluster's seed copies the remote
	// records into the local etcd) or "direct" (agents watch the remote
	// etcd themselves).
	Mode string `json:"mode,omitempty"`
	// Push: this cluster cannot be reached from the other one (behind
	// NAT); it pushes its own records into the other cluster's etcd.
	Push bool `json:"push,omitempty"`
}

// RemoteCluster is a connected cluster and how its records reach this one.
type RemoteCluster struct {
	Name          string   `json:"name"`
	ID            int      `json:"id"`
	MeshPool      string   `json:"meshPool"`
	PodCIDRs      []string `json:"podCIDRs,omitempty"`
	EtcdEndpoints []string `json:"etcdEndpoints"`
	Mode          string   `json:"mode"`
	// Push: this side pushes its own records into that cluster's etcd.
	Push        bool      `json:"push,omitempty"`
	ConnectedAt time.Time `json:"connectedAt"`
	// Connected is whether the remote etcd answers now (the mirror's view,
	// or this agent's in direct mode).
	Connected bool `json:"connected"`
	// Synced is whether its records have been listed in full at least once.
	Synced     bool `json:"synced"`
	Nodes      int  `json:"nodes"`
	Endpoints  int  `json:"endpoints"`
	Identities int  `json:"identities"`
	// Refused counts remote records refused (corrupt, or not the remote
	// cluster's to publish).
	Refused     int       `json:"refused"`
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	// UpdatedAt is when the mirror last wrote its status; Lag is how far
	// the mirror's copy is known to trail the remote (0 when current).
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
	Lag       Duration  `json:"lag"`
}

// ClusterManager connects this cluster to others (the seed's agent, with
// the admin credential).
type ClusterManager interface {
	CreateClusterToken(ctx context.Context, req ClusterTokenRequest) (CreatedToken, error)
	ConnectCluster(ctx context.Context, req ClusterConnectRequest) (RemoteCluster, error)
	Clusters(ctx context.Context) ([]RemoteCluster, error)
	// DisconnectCluster removes the connection in both directions.
	DisconnectCluster(ctx context.Context, name string) error
}

func (s *Server) routeClusters(mux *http.ServeMux, route routeFunc) {
	h := s.backend.Clusters
	route("POST /v1/clusters/token", h != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req ClusterTokenRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return h.CreateClusterToken(r.Context(), req)
	})
	route("POST /v1/clusters", h != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req ClusterConnectRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return h.ConnectCluster(r.Context(), req)
	})
	route("GET /v1/clusters", h != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(h.Clusters(r.Context()))
	})
	route("DELETE /v1/clusters/{name}", h != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nil, h.DisconnectCluster(r.Context(), r.PathValue("name"))
	})
}

// CreateClusterToken makes a cluster token.
func (c *Client) CreateClusterToken(ctx context.Context, req ClusterTokenRequest) (CreatedToken, error) {
	var v CreatedToken
	return v, c.do(ctx, http.MethodPost, "/v1/clusters/token", req, &v)
}

// ConnectCluster connects to the cluster of a cluster token.
func (c *Client) ConnectCluster(ctx context.Context, req ClusterConnectRequest) (RemoteCluster, error) {
	var v RemoteCluster
	return v, c.do(ctx, http.MethodPost, "/v1/clusters", req, &v)
}

// Clusters lists the connected clusters with their status.
func (c *Client) Clusters(ctx context.Context) ([]RemoteCluster, error) {
	var v []RemoteCluster
	return v, c.do(ctx, http.MethodGet, "/v1/clusters", nil, &v)
}

// DisconnectCluster disconnects a cluster by name.
func (c *Client) DisconnectCluster(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/clusters/"+url.PathEscape(name), nil, nil)
}
