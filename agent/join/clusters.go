package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
	"github.com/weftmesh/weft/pki"
)

// Connecting clusters (docs/clusters.md). The admin of cluster B makes a
// cluster token (`meshctl cluster token`); the admin of cluster A runs
// `meshctl cluster connect <token>` on A's seed, whose agent presents the
// token to B's join service with A's offer: A's name, id and ranges, where
// A's etcd is, A's CA and a read-only credential for A's etcd that A issued
// for B. B checks the offer against its own clusters and connections,
// stores it, issues a credential for its own etcd for A and answers with
// B's offer. Both directions are set up in one exchange; the token is used
// once. The connection runs over TLS to B's service, whose CA the token
// pins, as a node's join does.
//
// A cluster disconnecting tells the other side with the credential it was
// given (CN=cluster:<name>, signed by the other side's CA), so `cluster
// disconnect` also removes both directions in one step.

// Paths of the cluster routes.
const (
	clusterConnectPath    = "/v1/clusters/connect"
	clusterDisconnectPath = "/v1/clusters/disconnect"
)

// ClusterOrganization is the organization of every cluster credential.
const ClusterOrganization = "weft:clusters"

// ClusterCommonName is the subject of a cluster credential: etcd takes it
// as the user name (kvstore.ClusterUser).
func ClusterCommonName(reader string) string { return "cluster:" + reader }

// ClusterOffer is one side of a connection.
type ClusterOffer struct {
	Name     string   `json:"name"`
	ID       int      `json:"id"`
	MeshPool string   `json:"meshPool"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// JoinServer is the offering cluster's join service (host:port), where
	// a disconnect is announced.
	JoinServer string `json:"joinServer"`
	// EtcdEndpoints are the offering cluster's etcd client URLs, reachable
	// from the other cluster.
	EtcdEndpoints []string `json:"etcdEndpoints"`
	// CACert (PEM) is the offering cluster's CA: its etcd's server
	// certificate and the credential below are signed by it.
	CACert string `json:"caCert"`
	// Cert and Key (PEM) are the read-only credential for the offering
	// cluster's etcd, issued for the other cluster.
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// Push says the offering cluster cannot be reached from the other one
	// (its etcd is behind NAT): instead of being read, it pushes its own
	// records into the other cluster's etcd, under mirror/<its name>/ only,
	// with the credential the other side issues it.
	Push bool `json:"push,omitempty"`
}

// Validate checks the offer's shape; the receiver checks it against its
// own clusters. It refuses whatever the receiver's connection record
// (kvstore.RemoteCluster) would, so that a bad offer is refused before the
// single-use token is consumed rather than after.
func (o ClusterOffer) Validate() error {
	if err := config.ValidateName("cluster", o.Name); err != nil {
		return Errorf(CodeInvalid, "offer: %v", err)
	}
	if o.ID < 1 || o.ID > identity.MaxClusterID {
		return Errorf(CodeInvalid, "offer: cluster %s: id %d out of range 1..%d", o.Name, o.ID, identity.MaxClusterID)
	}
	if err := checkServer(o.JoinServer); err != nil {
		return Errorf(CodeInvalid, "offer: cluster %s: join service: %v", o.Name, err)
	}
	pool, err := parseCanonicalPrefix(o.MeshPool)
	if err != nil {
		return Errorf(CodeInvalid, "offer: cluster %s: meshPool: %v", o.Name, err)
	}
	if rng := meshRange(pool); !rng.Contains(pool.Addr()) || pool.Bits() < rng.Bits() {
		return Errorf(CodeInvalid, "offer: cluster %s: meshPool %s is outside the mesh range %s", o.Name, pool, rng)
	}
	if len(o.PodCIDRs) > maxOfferPodCIDRs {
		return Errorf(CodeInvalid, "offer: cluster %s: %d pod CIDRs, at most %d", o.Name, len(o.PodCIDRs), maxOfferPodCIDRs)
	}
	ranges := []netip.Prefix{pool}
	for _, s := range o.PodCIDRs {
		p, err := parseCanonicalPrefix(s)
		if err != nil {
			return Errorf(CodeInvalid, "offer: cluster %s: podCIDRs: %v", o.Name, err)
		}
		for _, q := range ranges {
			if p.Overlaps(q) {
				return Errorf(CodeInvalid, "offer: cluster %s: podCIDRs: %s overlaps %s", o.Name, p, q)
			}
		}
		ranges = append(ranges, p)
	}
	if len(o.EtcdEndpoints) == 0 || len(o.EtcdEndpoints) > maxOfferEtcdEndpoints {
		return Errorf(CodeInvalid, "offer: cluster %s: %d etcd endpoints, want 1..%d", o.Name, len(o.EtcdEndpoints), maxOfferEtcdEndpoints)
	}
	for _, e := range o.EtcdEndpoints {
		u, err := url.Parse(e)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return Errorf(CodeInvalid, "offer: cluster %s: etcdEndpoints: %q is not https://host:port", o.Name, e)
		}
	}
	ca, err := pki.ParseCertPEM([]byte(o.CACert))
	if err != nil {
		return Errorf(CodeInvalid, "offer: cluster %s: CA: %v", o.Name, err)
	}
	pair, err := tls.X509KeyPair([]byte(o.Cert), []byte(o.Key))
	if err != nil {
		return Errorf(CodeInvalid, "offer: cluster %s: credential: %v", o.Name, err)
	}
	// A credential the offering cluster's etcd would refuse is caught
	// here, not by the mirror failing to connect later.
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err == nil {
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		_, err = cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	}
	if err != nil {
		return Errorf(CodeInvalid, "offer: cluster %s: credential: not a client certificate of the offer's CA: %v", o.Name, err)
	}
	return nil
}

// Bounds of an offer, as kvstore bounds the connection record.
const (
	maxOfferPodCIDRs      = 64
	maxOfferEtcdEndpoints = 16
)

// meshRange is where a mesh pool of p's family must lie: kvstore's
// MeshRangeV4 and MeshRangeV6, which this package cannot import (meshctl
// links it and links no etcd); a test checks they agree.
func meshRange(p netip.Prefix) netip.Prefix {
	if p.Addr().Is6() {
		return meshRangeV6
	}
	return meshRangeV4
}

var (
	meshRangeV4 = netip.MustParsePrefix("100.64.0.0/10")
	meshRangeV6 = netip.MustParsePrefix("fc00::/7")
)

// parseCanonicalPrefix parses a CIDR in the one form kvstore stores:
// masked, plain IPv4 or IPv6 (no IPv4-mapped addresses).
func parseCanonicalPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p != p.Masked() || p.Addr().Is4In6() || p.String() != s {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR in canonical form", s)
	}
	return p, nil
}

// ClusterConnector is what the service asks to set up and tear down
// connections; the seed's agent implements it with its admin credential.
type ClusterConnector interface {
	// AcceptCluster checks the requester's offer (name, id and ranges
	// against this side's clusters and connections), stores it, and
	// returns this side's offer with a credential issued for the
	// requester. An *Error of CodeInvalid or CodeForbidden refuses it.
	AcceptCluster(ctx context.Context, tokenCluster string, offer ClusterOffer) (ClusterOffer, error)
	// DropCluster removes the connection to name (the caller proved to be
	// that cluster). Absent is not an error.
	DropCluster(ctx context.Context, name string) error
}

// ClusterTokens is a TokenStore that also consumes cluster tokens (made
// for `meshctl cluster connect`, never accepted to join a node).
type ClusterTokens interface {
	ConsumeClusterToken(ctx context.Context, id, secret string, now time.Time) (Grant, error)
}

type clusterConnectRequest struct {
	TokenID string       `json:"tokenID"`
	Secret  string       `json:"secret"`
	Offer   ClusterOffer `json:"offer"`
}

type clusterDisconnectRequest struct {
	Name string `json:"name"`
}

func (s *Server) routeClusters(mux *http.ServeMux) {
	mux.HandleFunc("POST "+clusterConnectPath, func(w http.ResponseWriter, r *http.Request) {
		log := s.cfg.Log.With("remote", r.RemoteAddr, "path", r.URL.Path)
		out, err := s.connectCluster(r)
		s.answer(w, log, "cluster connect", out, err)
		if err == nil {
			log.Info("cluster connected", "cluster", out.Name, "remote_cluster", out)
		}
	})
	mux.HandleFunc("POST "+clusterDisconnectPath, func(w http.ResponseWriter, r *http.Request) {
		log := s.cfg.Log.With("remote", r.RemoteAddr, "path", r.URL.Path)
		name, err := s.disconnectCluster(r)
		s.answer(w, log, "cluster disconnect", struct{}{}, err)
		if err == nil {
			log.Info("remote cluster disconnected itself", "cluster", name)
		}
	})
}

func (s *Server) connectCluster(r *http.Request) (ClusterOffer, error) {
	if s.cfg.Clusters == nil {
		return ClusterOffer{}, Errorf(CodeForbidden, "this join service does not connect clusters")
	}
	var req clusterConnectRequest
	if err := decodeBody(r, &req); err != nil {
		return ClusterOffer{}, err
	}
	// Checked before the token is consumed: a bad offer keeps the token.
	if err := req.Offer.Validate(); err != nil {
		return ClusterOffer{}, err
	}
	if !names.Valid(req.TokenID) || !tokenSecretRE.MatchString(req.Secret) {
		return ClusterOffer{}, Errorf(CodeTokenUnknown, "the token is not known to this mesh")
	}
	ct, ok := s.cfg.Tokens.(ClusterTokens)
	if !ok {
		return ClusterOffer{}, Errorf(CodeForbidden, "this join service does not connect clusters")
	}
	grant, err := ct.ConsumeClusterToken(r.Context(), req.TokenID, req.Secret, s.cfg.Now())
	if err != nil {
		return ClusterOffer{}, err
	}
	return s.cfg.Clusters.AcceptCluster(r.Context(), grant.Cluster, req.Offer)
}

func (s *Server) disconnectCluster(r *http.Request) (string, error) {
	if s.cfg.Clusters == nil {
		return "", Errorf(CodeForbidden, "this join service does not connect clusters")
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", Errorf(CodeForbidden, "present the cluster credential this cluster issued")
	}
	cert := r.TLS.VerifiedChains[0][0]
	var req clusterDisconnectRequest
	if err := decodeBody(r, &req); err != nil {
		return "", err
	}
	if cert.Subject.CommonName != ClusterCommonName(req.Name) || !slices.Contains(cert.Subject.Organization, ClusterOrganization) {
		return "", Errorf(CodeForbidden, "certificate %q may not disconnect cluster %q", cert.Subject.CommonName, req.Name)
	}
	return req.Name, s.cfg.Clusters.DropCluster(r.Context(), req.Name)
}

// answer writes out or err as the node services do.
func (s *Server) answer(w http.ResponseWriter, log interface {
	Error(string, ...any)
	Info(string, ...any)
}, what string, out any, err error) {
	if err != nil {
		e := errorOf(err)
		st := codes[e.Code.entry()].status
		msg := e.Message
		if st == http.StatusInternalServerError {
			log.Error(what+" failed", "err", err)
			msg = "the " + what + " failed; the agent's log on the cluster's first node says why"
		} else {
			log.Info(what+" refused", "code", e.Code, "err", err)
			if msg == "" {
				// A store refuses an unknown token with no detail; an empty
				// message would reach the client as no error body at all.
				msg = clusterHint(e.Code)
			}
		}
		writeJSON(w, st, errorBody{Error: msg, Code: e.Code})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// clusterHint is what a bare refusal of a cluster route says: the node
// join hints would send the user to `meshctl token create`.
func clusterHint(c Code) string {
	switch c {
	case CodeTokenUnknown:
		return "the other cluster does not know the token: check it was copied whole, or make a new one with `meshctl cluster token` on the other cluster's first node"
	case CodeTokenExpired, CodeTokenRevoked, CodeTokenUsedUp:
		return "make a new one with `meshctl cluster token` on the other cluster's first node"
	}
	return codes[c.entry()].hint
}

// ConnectCluster presents a cluster token to the other cluster's join
// service with this cluster's offer and returns the other side's. The
// service's certificate must chain to the CA the token pins, and the
// answer's CA must be that CA.
func ConnectCluster(ctx context.Context, tok Token, offer ClusterOffer) (ClusterOffer, error) {
	if err := tok.Validate(); err != nil {
		return ClusterOffer{}, err
	}
	if !tok.IsClusterToken() {
		return ClusterOffer{}, Errorf(CodeInvalid, "this is a join token for nodes (`meshctl join`); connecting clusters takes a cluster token: `meshctl cluster token` on the other cluster's first node")
	}
	if err := offer.Validate(); err != nil {
		return ClusterOffer{}, err
	}
	host, _, _ := net.SplitHostPort(tok.Server)
	var pinnedFP string
	hc := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				MinVersion: tls.VersionTLS13,
				// Verified below against the CA the token pins, as Join does.
				InsecureSkipVerify: true,
				VerifyConnection: func(cs tls.ConnectionState) error {
					ca, err := verifyPinned(cs.PeerCertificates, tok.CAHash, host, "make a new cluster token with `meshctl cluster token` on the other cluster's first node")
					if ca != nil {
						pinnedFP = pki.Fingerprint(ca)
					}
					return err
				},
			},
			DialContext:         (&net.Dialer{Timeout: DialTimeout}).DialContext,
			TLSHandshakeTimeout: DialTimeout,
			Proxy:               nil,
		},
		Timeout: 60 * time.Second,
	}
	defer hc.CloseIdleConnections()
	var theirs ClusterOffer
	req := clusterConnectRequest{TokenID: tok.ID, Secret: tok.Secret, Offer: offer}
	if err := postJSON(ctx, hc, tok.Server, clusterConnectPath, req, &theirs); err != nil {
		return ClusterOffer{}, err
	}
	if err := theirs.Validate(); err != nil {
		return ClusterOffer{}, Errorf(CodeService, "the other cluster's answer is unusable: %v", err)
	}
	ca, _ := pki.ParseCertPEM([]byte(theirs.CACert))
	if fp := pki.Fingerprint(ca); fp != tok.CAHash || fp != pinnedFP {
		return ClusterOffer{}, Errorf(CodeWrongCA, "the other cluster answered with CA %s, not the pinned %s", fp, tok.CAHash)
	}
	if theirs.Name != tok.Cluster {
		return ClusterOffer{}, Errorf(CodeService, "the token is for cluster %q, the service answered as cluster %q", tok.Cluster, theirs.Name)
	}
	return theirs, nil
}

// DisconnectCluster tells the other cluster's join service at server
// (host:port, verified against caPEM) that cluster self leaves the
// connection, authenticated by the credential that cluster issued to self.
func DisconnectCluster(ctx context.Context, server, self string, caPEM, certPEM, keyPEM []byte) error {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return fmt.Errorf("join service address %q: %w", server, err)
	}
	ca, err := pki.ParseCertPEM(caPEM)
	if err != nil {
		return fmt.Errorf("the other cluster's CA: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("the credential for the other cluster: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	hc := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13},
			DialContext:     (&net.Dialer{Timeout: DialTimeout}).DialContext,
			Proxy:           nil,
		},
		Timeout: 30 * time.Second,
	}
	defer hc.CloseIdleConnections()
	var out struct{}
	return postJSON(ctx, hc, server, clusterDisconnectPath, clusterDisconnectRequest{Name: self}, &out)
}

// postJSON posts in to https://server+path and decodes a 200 answer into
// out, or the service's error.
func postJSON(ctx context.Context, hc *http.Client, server, path string, in, out any) error {
	body, _ := json.Marshal(in)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+server+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		// A service the token's pin refuses is told as that, not as an
		// unreachable one: nothing was sent to it.
		if errors.Is(err, ErrWrongCA) {
			return unwrapURLError(err)
		}
		return Errorf(CodeService, "cannot reach the join service at %s: %v (is the other cluster's first node running, and is the address reachable from here?)", server, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Errorf(CodeService, "reading the answer from %s: %v", server, err)
	}
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return Errorf(CodeService, "the answer from %s does not decode: %v", server, err)
	}
	return nil
}
