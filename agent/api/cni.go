package api

import (
	"context"
	"net/http"
	"net/netip"
)

// The CNI plugin (weft-cni) asks the local agent to connect a pod; the
// agent does the work (address from the node's podCIDR, veth, identity,
// policy, datapath) and answers only when the pod is enforced, so a pod
// never runs unprotected. Routes: POST /v1/cni/add, /v1/cni/del,
// /v1/cni/check.

// CNIRequest is one CNI call as the plugin received it.
type CNIRequest struct {
	// ContainerID is the pod sandbox's id (CNI_CONTAINERID): the key of
	// the attachment.
	ContainerID string `json:"containerID"`
	// Netns is the path of the pod's network namespace (CNI_NETNS); DEL
	// may come without it once the namespace is gone.
	Netns string `json:"netns,omitempty"`
	// IfName is the interface inside the pod (CNI_IFNAME, usually eth0).
	IfName string `json:"ifName"`
	// PodNamespace, PodName and PodUID come from CNI_ARGS (K8S_POD_*).
	PodNamespace string `json:"podNamespace"`
	PodName      string `json:"podName"`
	PodUID       string `json:"podUID,omitempty"`
	// Chained is set when weft-cni runs after another plugin that made
	// the interface and gave the address (policy and encryption only).
	Chained *CNIChained `json:"chained,omitempty"`
}

// CNIChained is what the previous plugin in the chain made.
type CNIChained struct {
	// IP is the pod's address from the previous plugin's result.
	IP netip.Addr `json:"ip"`
	// HostIface is the host end of the pod's veth (the result's interface
	// without a sandbox), where the datapath attaches.
	HostIface string `json:"hostIface"`
}

// CNIResult is the pod's attachment, enforced when returned.
type CNIResult struct {
	IP netip.Addr `json:"ip"`
	// Gateway is the pod's default route's next hop (primary mode).
	Gateway   netip.Addr `json:"gateway,omitzero"`
	HostIface string     `json:"hostIface"`
	// PodMAC is the MAC of the pod's interface (primary mode).
	PodMAC   string   `json:"podMAC,omitempty"`
	Identity uint32   `json:"identity"`
	Labels   []string `json:"labels"`
	MTU      int      `json:"mtu,omitempty"`
}

// CNIHandler serves the CNI plugin's calls.
type CNIHandler interface {
	// CNIAdd connects the pod (or, again, returns its attachment).
	CNIAdd(ctx context.Context, req CNIRequest) (CNIResult, error)
	// CNIDel disconnects it; deleting what is not there is not an error.
	CNIDel(ctx context.Context, req CNIRequest) error
	// CNICheck reports an error when the attachment is not as ADD left it.
	CNICheck(ctx context.Context, req CNIRequest) error
}

func (s *Server) routeCNI(mux *http.ServeMux, route routeFunc) {
	h := s.backend.CNI
	route("POST /v1/cni/add", h != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req CNIRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return h.CNIAdd(r.Context(), req)
	})
	route("POST /v1/cni/del", h != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req CNIRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return nil, h.CNIDel(r.Context(), req)
	})
	route("POST /v1/cni/check", h != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req CNIRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return nil, h.CNICheck(r.Context(), req)
	})
}

// CNIAdd is POST /v1/cni/add.
func (c *Client) CNIAdd(ctx context.Context, req CNIRequest) (CNIResult, error) {
	var out CNIResult
	err := c.do(ctx, http.MethodPost, "/v1/cni/add", req, &out)
	return out, err
}

// CNIDel is POST /v1/cni/del.
func (c *Client) CNIDel(ctx context.Context, req CNIRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/cni/del", req, nil)
}

// CNICheck is POST /v1/cni/check.
func (c *Client) CNICheck(ctx context.Context, req CNIRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/cni/check", req, nil)
}
