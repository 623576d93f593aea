package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// AdminPrefix is where the seed's join service serves the admin API: the
// local API's mesh-wide routes (tokens, policies, clusters, nodes,
// identities), for clients with an admin credential (mTLS).
const AdminPrefix = "/admin"

// AdminCredential is what 'meshctl admin credential create' writes: where
// the admin API is and the mTLS material to use it. The file is a secret
// (mode 0600): whoever holds it administers the mesh until it expires.
type AdminCredential struct {
	// Name identifies the holder in the seed's audit log.
	Name string `json:"name"`
	// Server is the join service's host:port (the admin API's).
	Server string `json:"server"`
	// CA is the mesh CA (PEM) the server's certificate must chain to.
	CA string `json:"ca"`
	// Cert and Key are the client certificate and its key (PEM).
	Cert      string    `json:"cert"`
	Key       string    `json:"key"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// LoadAdminCredential reads and checks a credential file.
func LoadAdminCredential(path string) (AdminCredential, error) {
	var c AdminCredential
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("reading the admin credential: %w (make one on the seed with 'meshctl admin credential create NAME --out FILE')", err)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("admin credential %s: not a credential file (%v): use the file 'meshctl admin credential create' wrote", path, err)
	}
	if err := c.check(); err != nil {
		return c, fmt.Errorf("admin credential %s: %w", path, err)
	}
	return c, nil
}

func (c AdminCredential) check() error {
	if _, _, err := net.SplitHostPort(c.Server); err != nil || c.Server == "" {
		return fmt.Errorf("server %q is not host:port (the seed's join service, e.g. 198.51.100.7:51834)", c.Server)
	}
	if c.CA == "" || c.Cert == "" || c.Key == "" {
		return errors.New("ca, cert and key must all be set: make a new one with 'meshctl admin credential create'")
	}
	return nil
}

// Dialer opens the connection to the admin API; a lab's seed is reached
// from inside its network namespace (see internal/netnsdial).
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// NewAdminClient returns a client for the admin API that cred names, its
// server replaced by server when that is not empty. dial nil: a plain TCP
// dial.
func NewAdminClient(cred AdminCredential, server string, dial Dialer) (*Client, error) {
	if server != "" {
		cred.Server = server
	}
	if err := cred.check(); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cred.CA)) {
		return nil, errors.New("admin credential: ca holds no PEM certificate")
	}
	pair, err := tls.X509KeyPair([]byte(cred.Cert), []byte(cred.Key))
	if err != nil {
		return nil, fmt.Errorf("admin credential: cert and key: %w", err)
	}
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	host, _, _ := net.SplitHostPort(cred.Server)
	tr := &http.Transport{
		DialContext: dial,
		TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{pair},
			ServerName: strings.Trim(host, "[]"), MinVersion: tls.VersionTLS13,
		},
		MaxIdleConns:        2,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &Client{
		socket: cred.Server,
		base:   "https://" + cred.Server + AdminPrefix,
		http:   &http.Client{Transport: tr, Timeout: DefaultTimeout},
		stream: &http.Client{Transport: tr},
	}, nil
}
