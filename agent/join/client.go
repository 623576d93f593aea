package join

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/pki"
)

// Request is what a node asks for.
type Request struct {
	NodeName string
	// Labels the node would like; the token's labels win on a conflict.
	Labels map[string]string
}

// Credentials are what a join returns: enough to start the agent.
type Credentials struct {
	NodeName string
	Cluster  string
	Labels   map[string]string
	// Overridden are requested labels the token replaced ("vm:app=x").
	Overridden []string
	// CAPEM is the mesh CA; CertPEM and KeyPEM the node's client
	// credentials (the key never left this machine).
	CAPEM, CertPEM, KeyPEM []byte
	EtcdEndpoints          []string
	// Server is the join service's address (the token's): the node asks
	// its node services for new identities and its CIDR.
	Server string
}

// DialTimeout bounds reaching the join service.
const DialTimeout = 10 * time.Second

// Join presents tok to its join service with a certificate request for a
// new key and returns the node's credentials. The service must prove it
// holds a certificate from the CA the token pins, or nothing is sent.
func Join(ctx context.Context, tok Token, req Request) (*Credentials, error) {
	if err := tok.Validate(); err != nil {
		return nil, err
	}
	if tok.IsClusterToken() {
		return nil, Errorf(CodeInvalid, "this is a cluster token (it connects cluster %s to another cluster with `meshctl cluster connect`); a node joins with a token from `meshctl token create`", tok.Cluster)
	}
	if err := config.ValidateName("node", req.NodeName); err != nil {
		return nil, Errorf(CodeInvalid, "--name: %v", err)
	}
	if err := config.ValidateLabels(req.Labels); err != nil {
		return nil, Errorf(CodeInvalid, "--labels: %v", err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(req.NodeName)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(request{TokenID: tok.ID, Secret: tok.Secret, NodeName: req.NodeName, Labels: req.Labels, CSR: string(csrPEM)})

	var pinned *x509.Certificate
	host, _, _ := net.SplitHostPort(tok.Server)
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The usual verification against system roots is replaced, not
		// skipped: VerifyConnection checks the chain against the pinned CA.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			ca, err := verifyPinned(cs.PeerCertificates, tok.CAHash, host, "make a new token with `meshctl token create` on the mesh's first node")
			pinned = ca
			return err
		},
	}
	hc := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:     tlsConf,
			DialContext:         (&net.Dialer{Timeout: DialTimeout}).DialContext,
			TLSHandshakeTimeout: DialTimeout,
			Proxy:               nil, // a proxy would see nothing (TLS) but breaks lab addresses
		},
		Timeout: 60 * time.Second,
	}
	defer hc.CloseIdleConnections()
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+tok.Server+joinPath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("join: building the request: %w", err)
	}
	httpReq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(httpReq)
	if err != nil {
		if errors.Is(err, ErrWrongCA) {
			return nil, unwrapURLError(err)
		}
		return nil, Errorf(CodeService, "cannot reach the join service at %s: %v (is the first node's agent running, and is the address reachable from here?)", tok.Server, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, Errorf(CodeService, "reading the answer from %s: %v", tok.Server, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp, data)
	}
	var r response
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, Errorf(CodeService, "the answer from %s does not decode: %v", tok.Server, err)
	}
	creds := &Credentials{
		NodeName: r.NodeName, Cluster: r.Cluster, Labels: r.Labels, Overridden: r.Overridden,
		CAPEM: []byte(r.CACert), CertPEM: []byte(r.Cert), KeyPEM: keyPEM, EtcdEndpoints: r.EtcdEndpoints,
		Server: tok.Server,
	}
	if err := creds.check(pinned, tok.CAHash); err != nil {
		return nil, Errorf(CodeService, "the join service at %s answered with unusable credentials: %v", tok.Server, err)
	}
	return creds, nil
}

// verifyPinned finds the pinned CA among the certificates the server
// presented and verifies the server's certificate against it alone;
// remake says where a right token comes from.
func verifyPinned(chain []*x509.Certificate, pin, host, remake string) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, Errorf(CodeWrongCA, "it presented no certificate")
	}
	var ca *x509.Certificate
	var seen []string
	for _, c := range chain[1:] {
		fp := pki.Fingerprint(c)
		if fp == pin {
			ca = c
			break
		}
		seen = append(seen, fp)
	}
	if ca == nil {
		presented := "no CA"
		if len(seen) > 0 {
			presented = "CA " + strings.Join(seen, ", ")
		}
		return nil, Errorf(CodeWrongCA, "the token pins CA %s, the service presented %s. The token is for another mesh, or something between here and the service is intercepting the connection; %s", pin, presented, remake)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, Errorf(CodeWrongCA, "the service's certificate does not verify against the pinned CA %s for %s: %v", pin, host, err)
	}
	return ca, nil
}

// check makes sure the credentials work before anything is written: the
// CA is the pinned one and the certificate is for our key and signed by it.
func (c *Credentials) check(pinned *x509.Certificate, pin string) error {
	ca, err := pki.ParseCertPEM(c.CAPEM)
	if err != nil {
		return fmt.Errorf("CA: %v", err)
	}
	if pki.Fingerprint(ca) != pin || (pinned != nil && !ca.Equal(pinned)) {
		return fmt.Errorf("it returned CA %s, not the pinned %s", pki.Fingerprint(ca), pin)
	}
	cert, err := pki.ParseCertPEM(c.CertPEM)
	if err != nil {
		return fmt.Errorf("certificate: %v", err)
	}
	key, err := pki.ParseKeyPEM(c.KeyPEM)
	if err != nil {
		return err
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return errors.New("the certificate is not for this node's key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the certificate does not verify: %v", err)
	}
	if len(c.EtcdEndpoints) == 0 {
		return errors.New("no etcd endpoints")
	}
	for _, ep := range c.EtcdEndpoints {
		if !strings.HasPrefix(ep, "https://") {
			return fmt.Errorf("etcd endpoint %q is not https", ep)
		}
	}
	if err := config.ValidateName("cluster", c.Cluster); err != nil {
		return err
	}
	return config.ValidateLabels(c.Labels)
}

// decodeError rebuilds the *Error the service sent; an answer that is
// not one (a proxy's page) is a service error.
func decodeError(resp *http.Response, data []byte) error {
	var eb errorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
		return Errorf(CodeService, "it answered %s", resp.Status)
	}
	return &Error{Code: eb.Code, Message: eb.Error}
}

// unwrapURLError drops net/http's `Post "https://...": ` prefix, which
// repeats what the message already says.
func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) && strings.HasPrefix(err.Error(), "Post ") {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}
