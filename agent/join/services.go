package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/names"
	"github.com/weftmesh/weft/pki"
)

// Node services: the writes a joined node needs that its etcd role cannot
// be scoped to (identities/ and ipam/ are shared; a role can only say
// "all of it" or "none"). The node asks the seed, authenticated by its own
// certificate (mTLS on the join service's listener); the seed, with the
// admin credential, checks the request against who is asking and only
// creates: a node gets a number for a label set its grant allows, and a
// CIDR for itself, never anyone else's.
const (
	identitiesPath  = "/v1/identities"
	ipamPath        = "/v1/ipam"
	ipamReleasePath = "/v1/ipam/release"
)

// Caller is the node a service request comes from, as its certificate
// says (CN=node:<cluster>/<node>, O=weft:nodes, signed by the mesh CA).
type Caller struct {
	Cluster, Node string
}

// CIDRRequest asks for the calling node's CIDR. MeshPool and ClusterID
// are used only if the node's cluster is not registered yet (its first
// node registers it).
type CIDRRequest struct {
	PrefixLength int    `json:"prefixLength"`
	MeshPool     string `json:"meshPool,omitempty"`
	ClusterID    int    `json:"clusterID,omitempty"`
	// Claim, when set, asks for this CIDR instead of one from the pool: a
	// Kubernetes node's podCIDR, allowed when the node's token granted a
	// range holding it (join.Grant.PodCIDRs).
	Claim netip.Prefix `json:"claim,omitzero"`
}

// NodeServices does, for a Caller, what its etcd role may not. A refusal
// is an *Error (CodeInvalid, CodeForbidden); anything else is a failure.
type NodeServices interface {
	// CreateIdentity returns the number of the label set (canonical
	// source:key=value strings), creating it if the mesh has none; the
	// node then writes its own leased reference to it.
	CreateIdentity(ctx context.Context, c Caller, labels []string) (uint32, error)
	// AllocateCIDR returns the caller's CIDR (the same one again on a
	// restart), registering its cluster first if needed.
	AllocateCIDR(ctx context.Context, c Caller, req CIDRRequest) (netip.Prefix, error)
	// ReleaseCIDR gives the caller's CIDR back (a leaving node).
	ReleaseCIDR(ctx context.Context, c Caller, cidr netip.Prefix) error
}

type identityRequest struct {
	Labels []string `json:"labels"`
}

type identityResponse struct {
	ID uint32 `json:"id"`
}

type cidrResponse struct {
	CIDR netip.Prefix `json:"cidr"`
}

type releaseRequest struct {
	CIDR netip.Prefix `json:"cidr"`
}

// ParseNodeCommonName is the inverse of NodeCommonName.
func ParseNodeCommonName(cn string) (Caller, bool) {
	rest, ok := strings.CutPrefix(cn, "node:")
	if !ok {
		return Caller{}, false
	}
	cluster, node, ok := strings.Cut(rest, "/")
	if !ok || !names.Valid(cluster) || !names.Valid(node) {
		return Caller{}, false
	}
	return Caller{Cluster: cluster, Node: node}, true
}

// callerOf is the node whose verified certificate made the request.
func callerOf(r *http.Request) (Caller, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return Caller{}, Errorf(CodeForbidden, "this endpoint answers joined nodes only: present the node's certificate (the agent does so with etcd.certFile)")
	}
	cert := r.TLS.VerifiedChains[0][0]
	c, ok := ParseNodeCommonName(cert.Subject.CommonName)
	if !ok || !slices.Contains(cert.Subject.Organization, NodeOrganization) {
		return Caller{}, Errorf(CodeForbidden, "certificate %q is not a node certificate of this mesh (CN=node:<cluster>/<node>, O=%s)", cert.Subject.CommonName, NodeOrganization)
	}
	return c, nil
}

func (s *Server) routeServices(mux *http.ServeMux) {
	s.routeRenew(mux)
	mux.HandleFunc("POST "+identitiesPath, s.serve(func(r *http.Request, c Caller, svc NodeServices) (any, error) {
		var req identityRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		id, err := svc.CreateIdentity(r.Context(), c, req.Labels)
		return identityResponse{ID: id}, err
	}))
	mux.HandleFunc("POST "+ipamPath, s.serve(func(r *http.Request, c Caller, svc NodeServices) (any, error) {
		var req CIDRRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		cidr, err := svc.AllocateCIDR(r.Context(), c, req)
		return cidrResponse{CIDR: cidr}, err
	}))
	mux.HandleFunc("POST "+ipamReleasePath, s.serve(func(r *http.Request, c Caller, svc NodeServices) (any, error) {
		var req releaseRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return struct{}{}, svc.ReleaseCIDR(r.Context(), c, req.CIDR)
	}))
}

// serve authenticates the caller, runs h and answers its result or error.
func (s *Server) serve(h func(*http.Request, Caller, NodeServices) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		log := s.cfg.Log.With("remote", r.RemoteAddr, "path", r.URL.Path)
		c, err := callerOf(r)
		var out any
		if err == nil {
			log = log.With("node", c.Cluster+"/"+c.Node)
			if s.cfg.Services == nil {
				err = Errorf(CodeForbidden, "this join service offers no node services")
			} else {
				out, err = h(r, c, s.cfg.Services)
			}
		}
		if err != nil {
			e := errorOf(err)
			st := codes[e.Code.entry()].status
			msg := e.Message
			if st == http.StatusInternalServerError {
				log.Error("node service failed", "err", err)
				msg = "the node service failed; its log on the mesh's first node says why"
			} else {
				log.Info("node service refused", "code", e.Code, "err", err)
			}
			writeJSON(w, st, errorBody{Error: msg, Code: e.Code})
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeInvalid, "decoding the request: %v", err)
	}
	return nil
}

// ServiceClient is a joined node's client of the node services.
type ServiceClient struct {
	server string
	hc     *http.Client
}

// NewServiceClient reaches the service at server (host:port, the join
// service's address from the token) with the node's certificate, trusting
// only the mesh CA in caFile.
func NewServiceClient(server, caFile, certFile, keyFile string) (*ServiceClient, error) {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return nil, fmt.Errorf("join service address %q: %w", server, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the mesh CA for the node services: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	// Read at every handshake, so a renewed certificate is used at once.
	pair, err := pki.NewKeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the node certificate for the node services: %w", err)
	}
	return &ServiceClient{server: server, hc: &http.Client{
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host, GetClientCertificate: pair.GetClientCertificate, MinVersion: tls.VersionTLS13},
			DialContext:     (&net.Dialer{Timeout: DialTimeout}).DialContext,
			Proxy:           nil,
		},
		Timeout: 30 * time.Second,
	}}, nil
}

func (c *ServiceClient) call(ctx context.Context, path string, in, out any) error {
	body, _ := json.Marshal(in)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+c.server+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("node service: building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return Errorf(CodeService, "cannot reach the node services at %s: %v (is the first node's agent running?)", c.server, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Errorf(CodeService, "reading the answer from %s: %v", c.server, err)
	}
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return Errorf(CodeService, "the answer from %s does not decode: %v", c.server, err)
	}
	return nil
}

// CreateIdentity asks for the number of a label set.
func (c *ServiceClient) CreateIdentity(ctx context.Context, labels []string) (uint32, error) {
	var out identityResponse
	if err := c.call(ctx, identitiesPath, identityRequest{Labels: labels}, &out); err != nil {
		return 0, err
	}
	if out.ID == 0 {
		return 0, Errorf(CodeService, "the node service at %s answered identity 0", c.server)
	}
	return out.ID, nil
}

// AllocateCIDR asks for this node's CIDR.
func (c *ServiceClient) AllocateCIDR(ctx context.Context, req CIDRRequest) (netip.Prefix, error) {
	var out cidrResponse
	if err := c.call(ctx, ipamPath, req, &out); err != nil {
		return netip.Prefix{}, err
	}
	if !out.CIDR.IsValid() {
		return netip.Prefix{}, Errorf(CodeService, "the node service at %s answered no CIDR", c.server)
	}
	return out.CIDR, nil
}

// ReleaseCIDR gives this node's CIDR back.
func (c *ServiceClient) ReleaseCIDR(ctx context.Context, cidr netip.Prefix) error {
	var out struct{}
	return c.call(ctx, ipamReleasePath, releaseRequest{CIDR: cidr}, &out)
}
