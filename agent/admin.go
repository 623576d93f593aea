package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/pki"
)

// IssueAdminCredential implements api.AdminCredentialIssuer: a client
// certificate of the mesh CA for the admin API, with the address to reach
// it at. Served on the root-only socket only, so minting one needs root on
// the seed.
func (a *Agent) IssueAdminCredential(_ context.Context, req api.AdminCredentialRequest) (api.AdminCredential, error) {
	var out api.AdminCredential
	if err := config.ValidateName("credential", req.Name); err != nil {
		return out, api.Errorf(api.CodeInvalid, "%v", err)
	}
	ttl := time.Duration(req.TTL)
	if ttl == 0 {
		ttl = api.DefaultAdminCredentialTTL
	}
	if ttl < api.MinAdminCredentialTTL || ttl > api.MaxAdminCredentialTTL {
		return out, api.Errorf(api.CodeInvalid, "ttl %s is out of range: use 1h to 8760h", ttl)
	}
	server := req.Server
	if server == "" {
		server = a.cfg.JoinAdvertise()
	}
	host, port, err := net.SplitHostPort(server)
	if err != nil || host == "" || port == "" {
		return out, api.Errorf(api.CodeInvalid, "server %q is not HOST:PORT with a host: give --server with the address the admin reaches this seed's join service at (e.g. 198.51.100.7:51834)", server)
	}
	if a.cp.files.CAKeyFile == "" {
		return out, api.Errorf(api.CodeNotSupported, "admin credentials are made by the seed, which holds the mesh CA, and this node does not: run 'meshctl admin credential create' as root on the seed (where 'meshctl up' ran)")
	}
	ca, err := a.meshCA()
	if err != nil {
		return out, err
	}
	hosts := a.joinHosts.Load()
	if hosts == nil {
		return out, api.Errorf(api.CodeUnavailable, "the join service, which serves the admin API, is not running yet: try again in a moment")
	}
	if !slices.Contains(*hosts, host) {
		return out, api.Errorf(api.CodeInvalid, "server %q: the join service's certificate is not valid for %s (it is for %s): give one of those, or start this agent with --join-advertise HOST:PORT", server, host, strings.Join(*hosts, ", "))
	}
	certPEM, keyPEM, err := ca.IssueClientFor(join.AdminCommonName(req.Name), []string{join.AdminOrganization}, ttl)
	if err != nil {
		return out, fmt.Errorf("issuing the admin credential: %w", err)
	}
	cert, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return out, err
	}
	a.log.Info("admin credential issued", "name", req.Name, "serial", cert.SerialNumber.Text(16), "expires", cert.NotAfter, "server", server)
	return api.AdminCredential{
		Name: req.Name, Server: server, CA: string(ca.CertPEM),
		Cert: string(certPEM), Key: string(keyPEM), ExpiresAt: cert.NotAfter,
	}, nil
}

// adminAPI is the admin API the join service mounts: the local API's
// admin routes, once the local API is up (it starts before the join
// service).
func (a *Agent) adminAPI() http.Handler {
	if a.apiSrv == nil {
		return nil
	}
	return a.apiSrv.AdminHandler()
}
