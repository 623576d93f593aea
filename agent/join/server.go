package join

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
	"github.com/weftmesh/weft/pki"
)

// Grant is what a valid token allows: the cluster the node joins and the
// labels the token's creator gave it.
type Grant struct {
	TokenID string
	// Cluster is empty when the token leaves it to the service's default.
	Cluster string
	// Labels use the configuration form: key (optionally vm:key or
	// k8s:key) to value.
	Labels map[string]string
	// AllowLabels bounds the labels the node may publish endpoints with
	// (kvstore/grant patterns); empty allows every label.
	AllowLabels []string
	// PodCIDRs admits Kubernetes nodes: the ranges a node may claim its
	// podCIDR from.
	PodCIDRs []netip.Prefix
}

// Admission is a node the service is about to sign a certificate for.
type Admission struct {
	Cluster, Node string
	TokenID       string
	// AllowLabels is the token's label allow-list (empty: any label).
	AllowLabels []string
	// TokenLabels are the labels the token gave the node: always within
	// its grant, since the token's creator chose them.
	TokenLabels map[string]string
	// PodCIDRs are the ranges the node may claim its CIDR from.
	PodCIDRs []netip.Prefix
}

// Admitter prepares the control plane for a node before its certificate
// is signed: the agent creates the node's etcd user and role (which write
// only its own keys) and records its label grant. A failure refuses the
// join, so no certificate exists that etcd does not know.
type Admitter interface {
	AdmitNode(ctx context.Context, a Admission) error
}

// TokenStore checks a presented token and counts one use of it,
// atomically. A refusal is an *Error of CodeTokenUnknown (also for a
// wrong secret), CodeTokenExpired, CodeTokenRevoked or CodeTokenUsedUp,
// with a message for the person joining (Errorf, or TokenStoreError over
// the store's own errors); fmt.Errorf("%w: message", ErrTokenExpired)
// works too. Anything else is a service failure.
type TokenStore interface {
	ConsumeToken(ctx context.Context, id, secret string, now time.Time) (Grant, error)
}

// ServerConfig configures a join service.
type ServerConfig struct {
	// CA signs the service's certificate and the nodes' certificates. It
	// must be the CA the etcd servers trust for clients.
	CA     *pki.CA
	Tokens TokenStore
	// EtcdEndpoints are given to joining nodes (https URLs they can reach).
	EtcdEndpoints []string
	// Cluster is the cluster of nodes whose token names none.
	Cluster string
	// Hosts are the names and addresses the service's certificate is valid
	// for: at least the host of the address written into tokens.
	Hosts []string
	Log   *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Admitter, if set, is called for every node before its certificate
	// is signed.
	Admitter Admitter
	// Services, if set, answers joined nodes' requests for the writes
	// their etcd roles do not allow (new identities, their CIDR): mTLS with
	// the node's certificate, on the same listener (services.go).
	Services NodeServices
	// CheckCertificate, if set, is asked about every verified client
	// certificate before any route runs; an error refuses the request
	// with CodeRevoked and the error's text (the agent refuses revoked
	// nodes' certificates with it: 'meshctl node revoke').
	CheckCertificate func(*x509.Certificate) error
	// Clusters, if set (with a Tokens that is also ClusterTokens), connects
	// other clusters to this one (clusters.go).
	Clusters ClusterConnector
	// Admin, if set, is served under /admin/ to clients with an admin
	// certificate (admin.go): the local API's mesh-wide routes, paths
	// without the prefix (api.Server.AdminHandler).
	Admin http.Handler
}

// CertificateRecorder is an Admitter that also wants the serial number
// (lower-case hex) of each certificate the service signs, so that a later
// revocation can name it. A failure is logged, not fatal: the node's
// name identifies its certificates anyway.
type CertificateRecorder interface {
	CertificateIssued(ctx context.Context, cluster, node, serial string) error
}

// Server is a running join service.
type Server struct {
	cfg  ServerConfig
	http *http.Server
	cert tls.Certificate
}

// NodeOrganization is the organization of every node client certificate.
const NodeOrganization = "weft:nodes"

// NodeCommonName is the subject of a node's client certificate; etcd
// takes it as the user name, so per-node roles can key on it later.
func NodeCommonName(cluster, node string) string { return "node:" + cluster + "/" + node }

// NewServer checks cfg and issues the service's own certificate.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.CA == nil:
		return nil, errors.New("join: no CA")
	case cfg.Tokens == nil:
		return nil, errors.New("join: no token store")
	case len(cfg.EtcdEndpoints) == 0:
		return nil, errors.New("join: no etcd endpoints to give joining nodes")
	case len(cfg.Hosts) == 0:
		return nil, errors.New("join: no host for the service's certificate (the address in tokens)")
	}
	if err := config.ValidateName("cluster", cfg.Cluster); err != nil {
		return nil, fmt.Errorf("join: default cluster: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	certPEM, keyPEM, err := cfg.CA.IssueServer("weft join service", cfg.Hosts)
	if err != nil {
		return nil, fmt.Errorf("join: issuing the service certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(append(certPEM, cfg.CA.CertPEM...), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("join: loading the service certificate: %w", err)
	}
	s := &Server{cfg: cfg, cert: cert}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+joinPath, s.handleJoin)
	s.routeServices(mux)
	s.routeClusters(mux)
	s.routeAdmin(mux)
	s.http = &http.Server{
		Handler:           s.refuseRevoked(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// ListenAndServe listens on addr (host:port) and serves until Shutdown.
func (s *Server) ListenAndServe(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("join service: listening on %s: %w", addr, err)
	}
	return s.Serve(l)
}

// Serve serves TLS on l until Shutdown; it returns nil after a shutdown
// or once l is closed, so callers stopping it need not tell those apart
// from failures by the error's text.
func (s *Server) Serve(l net.Listener) error {
	tl := tls.NewListener(l, &tls.Config{
		Certificates: []tls.Certificate{s.cert},
		MinVersion:   tls.VersionTLS13,
		// Joining nodes have no certificate yet; joined ones present
		// theirs to use the node services, verified against the mesh CA.
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  s.cfg.CA.Pool(),
	})
	if err := s.http.Serve(tl); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("join service: %w", err)
	}
	return nil
}

// Shutdown stops the service, waiting for joins in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	log := s.cfg.Log.With("remote", r.RemoteAddr)
	resp, err := s.join(r)
	if err != nil {
		e := errorOf(err)
		c := codes[e.Code.entry()]
		msg := e.Message
		if c.status == http.StatusInternalServerError {
			// Details of an internal failure stay in the service's log.
			log.Error("join failed", "err", err)
			msg = "the join service failed; its log on the mesh's first node says why"
		} else {
			log.Info("join refused", "code", e.Code, "err", err)
			if msg == "" {
				msg = c.hint
			}
		}
		writeJSON(w, c.status, errorBody{Error: msg, Code: c.code})
		return
	}
	log.Info("node joined", "node", resp.NodeName, "cluster", resp.Cluster, "duration", time.Since(start))
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) join(r *http.Request) (*response, error) {
	var req request
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, Errorf(CodeInvalid, "decoding the request: %v", err)
	}
	// Everything the node sends is checked before the token is consumed,
	// so a typo in --name does not burn a single-use token.
	if err := config.ValidateName("node", req.NodeName); err != nil {
		return nil, Errorf(CodeInvalid, "%v", err)
	}
	if err := config.ValidateLabels(req.Labels); err != nil {
		return nil, Errorf(CodeInvalid, "%v", err)
	}
	if _, err := pki.CheckCSR([]byte(req.CSR)); err != nil {
		return nil, Errorf(CodeInvalid, "%v", err)
	}
	if !names.Valid(req.TokenID) || !tokenSecretRE.MatchString(req.Secret) {
		return nil, Errorf(CodeTokenUnknown, "the token is not known to this mesh")
	}

	grant, err := s.cfg.Tokens.ConsumeToken(r.Context(), req.TokenID, req.Secret, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	cluster := grant.Cluster
	if cluster == "" {
		cluster = s.cfg.Cluster
	}
	labels, overridden, err := mergeLabels(grant.Labels, req.Labels)
	if err != nil {
		return nil, fmt.Errorf("token %s carries labels this service cannot use: %w", grant.TokenID, err)
	}
	if s.cfg.Admitter != nil {
		a := Admission{Cluster: cluster, Node: req.NodeName, TokenID: grant.TokenID, AllowLabels: grant.AllowLabels, TokenLabels: grant.Labels, PodCIDRs: grant.PodCIDRs}
		if err := s.cfg.Admitter.AdmitNode(r.Context(), a); err != nil {
			return nil, fmt.Errorf("preparing etcd for node %s/%s: %w", cluster, req.NodeName, err)
		}
	}
	certPEM, err := s.cfg.CA.SignClientCSR([]byte(req.CSR), NodeCommonName(cluster, req.NodeName), []string{NodeOrganization})
	if err != nil {
		return nil, fmt.Errorf("signing the node certificate: %w", err)
	}
	s.recordCertificate(r.Context(), cluster, req.NodeName, certPEM)
	return &response{
		NodeName:      req.NodeName,
		Cluster:       cluster,
		Labels:        labels,
		Overridden:    overridden,
		CACert:        string(s.cfg.CA.CertPEM),
		Cert:          string(certPEM),
		EtcdEndpoints: s.cfg.EtcdEndpoints,
	}, nil
}

// mergeLabels adds the node's requested labels to the token's; on the same
// label key the token wins (whoever made it decides what a node may be),
// and the replaced requests are reported back. Keys come out canonical
// (vm:app), so app and vm:app cannot both survive.
func mergeLabels(token, requested map[string]string) (map[string]string, []string, error) {
	tl, err := identity.ParseUserLabelMap(token)
	if err != nil {
		return nil, nil, err
	}
	rl, err := identity.ParseUserLabelMap(requested)
	if err != nil {
		return nil, nil, err
	}
	out := map[string]string{}
	maps.Copy(out, rl.Map())
	var overridden []string
	for k, v := range tl.Map() {
		if old, ok := out[k]; ok && old != v {
			overridden = append(overridden, k+"="+old)
		}
		out[k] = v
	}
	slices.Sort(overridden)
	return out, overridden, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// refuseRevoked answers every request that presents a revoked node's
// certificate with CodeRevoked, whatever its route (node services,
// renewal, a join), so that no route can forget the check.
func (s *Server) refuseRevoked(next http.Handler) http.Handler {
	if s.cfg.CheckCertificate == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			cert := r.TLS.PeerCertificates[0]
			if err := s.cfg.CheckCertificate(cert); err != nil {
				s.cfg.Log.Warn("refused a revoked node's certificate", "remote", r.RemoteAddr, "path", r.URL.Path,
					"subject", cert.Subject.CommonName, "serial", cert.SerialNumber.Text(16), "err", err)
				writeJSON(w, http.StatusForbidden, errorBody{Error: err.Error(), Code: CodeRevoked})
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// recordCertificate tells a CertificateRecorder admitter the new
// certificate's serial; best effort.
func (s *Server) recordCertificate(ctx context.Context, cluster, node string, certPEM []byte) {
	rec, ok := s.cfg.Admitter.(CertificateRecorder)
	if !ok {
		return
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return
	}
	if err := rec.CertificateIssued(ctx, cluster, node, cert.SerialNumber.Text(16)); err != nil {
		s.cfg.Log.Warn("recording a node certificate's serial (a revocation will name the node only)", "node", cluster+"/"+node, "err", err)
	}
}
