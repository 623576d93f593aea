package join

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/weftmesh/weft/pki"
)

// renewPath renews a node certificate: the node sends a CSR for a new key,
// authenticated by its current certificate, and gets the new certificate
// for the same name. The key never leaves the node.
const renewPath = "/v1/renew"

type renewRequest struct {
	CSR string `json:"csr"`
}

type renewResponse struct {
	Certificate string `json:"certificate"`
}

// routeRenew serves renewals beside the node services (the same mTLS
// authentication of the caller by its current certificate).
func (s *Server) routeRenew(mux *http.ServeMux) {
	mux.HandleFunc("POST "+renewPath, s.serve(func(r *http.Request, c Caller, _ NodeServices) (any, error) {
		var req renewRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		// The name comes from the verified certificate, never from the
		// request: a node renews only itself.
		certPEM, err := s.cfg.CA.SignClientCSR([]byte(req.CSR), NodeCommonName(c.Cluster, c.Node), []string{NodeOrganization})
		if err != nil {
			if errors.Is(err, pki.ErrInvalidRequest) {
				return nil, Errorf(CodeInvalid, "%v", err)
			}
			return nil, err
		}
		s.cfg.Log.Info("renewed a node certificate", "node", c.Cluster+"/"+c.Node)
		return renewResponse{Certificate: string(certPEM)}, nil
	}))
}

// Renew asks for a new certificate for this node's key in csrPEM.
func (c *ServiceClient) Renew(ctx context.Context, csrPEM []byte) ([]byte, error) {
	var out renewResponse
	if err := c.call(ctx, renewPath, renewRequest{CSR: string(csrPEM)}, &out); err != nil {
		return nil, err
	}
	return []byte(out.Certificate), nil
}

// RenewDue reports whether a certificate should be renewed at now: when
// less than a third of its lifetime is left.
func RenewDue(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotAfter.Sub(now) < life/3
}

// RenewFiles renews the certificate in certFile when it is due: a new key,
// a CSR, the signed certificate checked against the key and the name,
// then both files replaced. It reports whether it renewed.
func RenewFiles(ctx context.Context, c *ServiceClient, certFile, keyFile string, now time.Time) (bool, error) {
	cur, err := readCert(certFile)
	if err != nil {
		return false, err
	}
	if !RenewDue(cur, now) {
		return false, nil
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(cur.Subject.CommonName)
	if err != nil {
		return false, err
	}
	certPEM, err := c.Renew(ctx, csrPEM)
	if err != nil {
		return false, fmt.Errorf("renewing the node certificate: %w", err)
	}
	got, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return false, fmt.Errorf("the renewed certificate does not parse: %w", err)
	}
	key, err := pki.ParseKeyPEM(keyPEM)
	if err != nil {
		return false, err
	}
	if got.Subject.CommonName != cur.Subject.CommonName || !publicKeysEqual(got, key) || got.NotAfter.Before(cur.NotAfter) {
		return false, fmt.Errorf("the renewed certificate is not for this node's new key and name (got %q until %s)", got.Subject.CommonName, got.NotAfter)
	}
	if err := pki.ReplaceKeyPair(certFile, keyFile, certPEM, keyPEM); err != nil {
		return false, err
	}
	return true, nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the node certificate: %w", err)
	}
	return pki.ParseCertPEM(data)
}

// publicKeysEqual reports whether cert is for key.
func publicKeysEqual(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}
