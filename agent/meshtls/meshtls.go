// Package meshtls secures the agent-to-agent API: every agent serves its
// read-only observability routes (flows, health) and the connectivity
// probes on its mesh address over TLS, presenting the certificate it was
// issued at join, and requires the caller to present a certificate from
// the same mesh CA. The local agent is the only client: meshctl asks it to
// relay (/v1/relay/<cluster>/<node>/...), so the node's key never leaves
// the agent and meshctl needs nothing but the local socket.
//
// Node certificates are client certificates (their extended key usage says
// so); both sides therefore verify the chain to the mesh CA themselves,
// accepting any key usage, instead of relying on the stock server checks.
// The traffic also travels inside WireGuard, whose cryptokey routing
// already binds the mesh address to the node's key.
package meshtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/weftmesh/weft/pki"
)

// DefaultPort is the TCP port of the agent-to-agent API on the mesh
// address.
const DefaultPort = 51835

// ErrUntrusted is wrapped when a peer's certificate is not from the mesh
// CA.
var ErrUntrusted = errors.New("meshtls: peer certificate is not from the mesh CA")

// ErrRevoked is wrapped when the peer check refused a certificate that
// chains to the mesh CA (an admin revoked its node).
var ErrRevoked = errors.New("meshtls: peer certificate revoked")

// Credentials are the node's certificate and the mesh CA.
type Credentials struct {
	cert tls.Certificate
	// pair, when set, is read at every handshake instead of cert, so a
	// renewed node certificate is used without a restart.
	pair *pki.KeyPair
	pool *x509.CertPool
	// peerCheck, when set, judges a peer certificate that chains to the
	// mesh CA (the agent refuses revoked nodes with it).
	peerCheck func(*x509.Certificate) error
}

// SetPeerCheck makes both sides of every later handshake also ask check
// about the peer's certificate, once its chain is verified; an error
// refuses the handshake (wrapped in ErrRevoked). Call it before the
// configurations are used.
func (c *Credentials) SetPeerCheck(check func(*x509.Certificate) error) { c.peerCheck = check }

// Load reads the mesh CA and the node's certificate and key (PEM).
func Load(caFile, certFile, keyFile string) (*Credentials, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("meshtls: reading the mesh CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("meshtls: %s holds no PEM certificate", caFile)
	}
	pair, err := pki.NewKeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("meshtls: loading the node certificate %s: %w", certFile, err)
	}
	return &Credentials{pair: pair, pool: pool}, nil
}

// New builds credentials from parsed parts (tests).
func New(cert tls.Certificate, pool *x509.CertPool) *Credentials {
	return &Credentials{cert: cert, pool: pool}
}

// verify checks the chain of the presented certificates to the mesh CA,
// whatever their key usage.
func (c *Credentials) verify(rawCerts [][]byte) error {
	if len(rawCerts) == 0 {
		return fmt.Errorf("%w: none presented", ErrUntrusted)
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, raw := range rawCerts {
		cert, err := x509.ParseCertificate(raw)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUntrusted, err)
		}
		certs = append(certs, cert)
	}
	inter := x509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: c.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUntrusted, certs[0].Subject.CommonName, err)
	}
	if c.peerCheck != nil {
		if err := c.peerCheck(certs[0]); err != nil {
			return fmt.Errorf("%w: %s (serial %s): %v", ErrRevoked, certs[0].Subject.CommonName, certs[0].SerialNumber.Text(16), err)
		}
	}
	return nil
}

// ServerConfig requires a client certificate from the mesh CA.
func (c *Credentials) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          c.certificates(),
		GetCertificate:        c.getCertificate(),
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error { return c.verify(raw) },
	}
}

// ClientConfig presents the node's certificate and accepts a server whose
// certificate chains to the mesh CA. (Stock verification is off because
// it insists on a server key usage and a host name; verify does the
// chain check.)
func (c *Credentials) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          c.certificates(),
		GetClientCertificate:  c.getClientCertificate(),
		InsecureSkipVerify:    true, // replaced by VerifyPeerCertificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error { return c.verify(raw) },
	}
}

// Transport is an HTTP transport to other agents.
func (c *Credentials) Transport() *http.Transport {
	return &http.Transport{
		TLSClientConfig:     c.ClientConfig(),
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		TLSHandshakeTimeout: 3 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	}
}

// Relay returns a handler forwarding requests to the agent at addr,
// streaming responses (flows) as they come.
func Relay(tr http.RoundTripper, addr netip.AddrPort) http.Handler {
	host := net.JoinHostPort(addr.Addr().String(), strconv.Itoa(int(addr.Port())))
	return &httputil.ReverseProxy{
		Transport:     tr,
		FlushInterval: -1,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = host
			pr.Out.Host = host
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "{\"error\":%q,\"code\":\"unavailable\"}\n", fmt.Sprintf("the agent at %s does not answer over the mesh: %v", host, err))
		},
	}
}

// certificates is the fixed certificate of credentials made with New; nil
// for loaded ones, whose pair is asked at each handshake.
func (c *Credentials) certificates() []tls.Certificate {
	if c.pair != nil {
		return nil
	}
	return []tls.Certificate{c.cert}
}

func (c *Credentials) getCertificate() func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c.pair == nil {
		return nil
	}
	return c.pair.GetCertificate
}

func (c *Credentials) getClientCertificate() func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c.pair == nil {
		return nil
	}
	return c.pair.GetClientCertificate
}
