package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/embedded"
	"github.com/weftmesh/weft/pki"
)

// controlPlane is the agent's connection to etcd and, on the first node of
// a mesh, the embedded etcd server itself.
//
// The seed of a cluster is the agent holding its CA key: the embedded
// node, or an agent on an existing etcd given etcd.caKeyFile.
type controlPlane struct {
	kv       *kvstore.Client
	embedded *embedded.Server
	// files are the TLS files the agent's etcd client uses; on the seed
	// (the embedded node, or etcd.caKeyFile's) the CA key is among them,
	// which is what makes it the node that can sign join requests.
	files     pki.Files
	endpoints []string
	// node is set when the agent holds a joined node's certificate
	// (CN=node:<cluster>/<node>) rather than the admin's: its etcd role
	// writes only its own keys, so identities and its CIDR come from the
	// seed's node services (svc), and identity garbage collection is left
	// to the seed.
	node *nodeCredential
	// grants mirrors the nodes' label grants (started with the caches).
	grants *kvstore.GrantCache
}

// nodeCredential is a joined node's view of the control plane.
type nodeCredential struct {
	cluster, name string
	svc           *join.ServiceClient
}

// credentialNode reads the certificate's common name: a node's
// (node:<cluster>/<node>) says which node it is; anything else (the
// admin's CN=root, an operator's own) is not a node credential.
func credentialNode(certFile string) (cluster, node string, ok bool, err error) {
	if certFile == "" {
		return "", "", false, nil
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return "", "", false, fmt.Errorf("reading etcd.certFile: %w", err)
	}
	cert, err := pki.ParseCertPEM(data)
	if err != nil {
		return "", "", false, fmt.Errorf("etcd.certFile %s: %w", certFile, err)
	}
	cluster, node, ok = kvstore.ParseNodeUser(cert.Subject.CommonName)
	return cluster, node, ok, nil
}

func startControlPlane(ctx context.Context, cfg *config.Config, log *slog.Logger) (*controlPlane, error) {
	cp := &controlPlane{}
	kcfg := kvstore.Config{
		Endpoints: cfg.Etcd.Endpoints,
		CAFile:    cfg.Etcd.CAFile,
		CertFile:  cfg.Etcd.CertFile,
		KeyFile:   cfg.Etcd.KeyFile,
		Logger:    log.With("component", "kvstore"),
	}
	if cfg.Etcd.Embedded.Enabled && len(cfg.Etcd.Endpoints) == 0 {
		client, err := hostPort(cfg.Etcd.Embedded.ClientURL)
		if err != nil {
			return nil, fmt.Errorf("etcd.embedded.clientURL: %w", err)
		}
		peer, err := hostPort(cfg.Etcd.Embedded.PeerURL)
		if err != nil {
			return nil, fmt.Errorf("etcd.embedded.peerURL: %w", err)
		}
		var hosts []string
		for _, u := range cfg.EtcdClientEndpoints() {
			if hp, err := hostPort(u); err == nil {
				h, _, _ := net.SplitHostPort(hp)
				hosts = append(hosts, h)
			}
		}
		srv, err := embedded.Start(ctx, embedded.Config{
			Dir:         cfg.EtcdDataDir(),
			Name:        cfg.NodeName,
			ClientAddr:  client,
			PeerAddr:    peer,
			ExtraHosts:  hosts,
			DisableAuth: !cfg.Etcd.Embedded.RBAC,
			Logger:      log.With("component", "embedded-etcd"),
		})
		if err != nil {
			return nil, fmt.Errorf("starting embedded etcd: %w", err)
		}
		cp.embedded = srv
		cp.files = srv.Files()
		kcfg = srv.ClientConfig()
		kcfg.Logger = log.With("component", "kvstore")
		cp.endpoints = cfg.EtcdClientEndpoints()
	} else {
		cp.files = pki.Files{CAFile: cfg.Etcd.CAFile, ClientCertFile: cfg.Etcd.CertFile, ClientKey: cfg.Etcd.KeyFile}
		cp.endpoints = cfg.Etcd.Endpoints
		if cfg.Etcd.CAKeyFile != "" {
			if err := checkExternalSeed(cfg.Etcd); err != nil {
				return nil, err
			}
			// The CA key makes this agent the seed of a cluster on an
			// existing etcd: the join service, tokens and the cluster
			// API all look for it here.
			cp.files.CAKeyFile = cfg.Etcd.CAKeyFile
		}
	}
	if cp.embedded == nil {
		cluster, node, isNode, err := credentialNode(cfg.Etcd.CertFile)
		if err != nil {
			return nil, err
		}
		if isNode {
			if cluster != cfg.Cluster || node != cfg.NodeName {
				return nil, fmt.Errorf("the etcd certificate %s is node %s/%s's, but this agent is configured as %s/%s: fix nodeName/cluster or run 'meshctl leave' and join again", cfg.Etcd.CertFile, cluster, node, cfg.Cluster, cfg.NodeName)
			}
			server := cfg.JoinServer()
			if server == "" {
				return nil, fmt.Errorf("a node credential needs the join service's address for new identities and its CIDR: set join.server (host:port of the first node's join service)")
			}
			svc, err := join.NewServiceClient(server, cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile)
			if err != nil {
				return nil, err
			}
			cp.node = &nodeCredential{cluster: cluster, name: node, svc: svc}
		}
	}
	kcfg.DialTimeout = 10 * time.Second
	kv, err := kvstore.New(ctx, kcfg)
	if err != nil {
		cp.Close()
		return nil, fmt.Errorf("connecting to etcd %v: %w", kcfg.Endpoints, err)
	}
	cp.kv = kv
	if cp.embedded == nil && cp.files.CAKeyFile != "" {
		if err := cp.secureExternalEtcd(ctx, cfg.Etcd.CertFile, log); err != nil {
			cp.Close()
			return nil, err
		}
	}
	return cp, nil
}

// seed reports whether this agent is its cluster's seed: it holds the CA
// key (the embedded etcd's, or etcd.caKeyFile's), so it runs the join
// service and offers the cluster API.
func (cp *controlPlane) seed() bool { return cp.files.CAKeyFile != "" }

// checkExternalSeed checks, before anything connects, what a seed on an
// existing etcd needs: the CA key matches etcd.caFile (the node
// certificates it signs must be ones etcd trusts, and the tokens pin that
// CA), and etcd.certFile is an admin's certificate issued by that CA, not a
// joined node's.
func checkExternalSeed(e config.Etcd) error {
	if e.CAFile == "" || e.CertFile == "" || e.KeyFile == "" {
		return fmt.Errorf("etcd.caKeyFile needs etcd.caFile (the CA certificate whose key it is) and the admin client certificate and key (etcd.certFile, etcd.keyFile)")
	}
	ca, err := pki.LoadCAFiles(e.CAFile, e.CAKeyFile)
	if err != nil {
		return fmt.Errorf("etcd.caKeyFile %s with etcd.caFile %s: %v: give the key of the CA etcd trusts for client certificates (its --trusted-ca-file), the one etcd.caFile holds", e.CAKeyFile, e.CAFile, err)
	}
	data, err := os.ReadFile(e.CertFile)
	if err != nil {
		return fmt.Errorf("reading etcd.certFile: %w", err)
	}
	cert, err := pki.ParseCertPEM(data)
	if err != nil {
		return fmt.Errorf("etcd.certFile %s: %w", e.CertFile, err)
	}
	if c, n, ok := kvstore.ParseNodeUser(cert.Subject.CommonName); ok {
		return fmt.Errorf("etcd.certFile %s is joined node %s/%s's certificate, which may write only its own keys: a seed (etcd.caKeyFile) needs the etcd admin's client certificate (CN=%s)", e.CertFile, c, n, kvstore.AdminUser)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		return fmt.Errorf("etcd.certFile %s was not issued by the CA of etcd.caFile %s (%v): the seed signs node certificates with that CA, so etcd must trust it and the admin certificate must come from it", e.CertFile, e.CAFile, err)
	}
	return nil
}

// secureExternalEtcd makes sure a seed's existing etcd checks who writes:
// with authentication off, every certificate the seed signs would be etcd
// root, and a joined node could write any key. The admin certificate
// CN=root turns it on (idempotent; the etcd root user logs in by that
// certificate); any other admin must have turned it on already, as its
// user needs the root role to give nodes their users.
func (cp *controlPlane) secureExternalEtcd(ctx context.Context, certFile string, log *slog.Logger) error {
	on, err := cp.kv.AuthEnabled(ctx)
	// etcd before 3.5 cannot say (no AuthStatus): EnableAuth is then
	// idempotent by itself, and another admin is trusted with a warning.
	unknown := err != nil && strings.Contains(err.Error(), "Unimplemented")
	if err != nil && !unknown {
		return fmt.Errorf("seed on an existing etcd: %w", err)
	}
	if on {
		return nil
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("reading etcd.certFile: %w", err)
	}
	cert, err := pki.ParseCertPEM(data)
	if err != nil {
		return fmt.Errorf("etcd.certFile %s: %w", certFile, err)
	}
	if cert.Subject.CommonName != kvstore.AdminUser && unknown {
		log.Warn("this etcd (before 3.5) does not tell whether its authentication is on: with it off, every certificate this seed signs is etcd root; turn it on (etcdctl auth enable) with the root role for this certificate's user", "user", cert.Subject.CommonName)
		return nil
	}
	if cert.Subject.CommonName != kvstore.AdminUser {
		return fmt.Errorf("etcd's authentication is off, so every certificate this seed signs would be etcd root: use an admin certificate with CN=%s (the seed then turns authentication on), or turn it on yourself (etcdctl user add %s --no-password; etcdctl user grant-role %s root; etcdctl auth enable) with the root role for this certificate's user %q", kvstore.AdminUser, kvstore.AdminUser, kvstore.AdminUser, cert.Subject.CommonName)
	}
	if err := cp.kv.EnableAuth(ctx); err != nil {
		return fmt.Errorf("turning on the existing etcd's authentication (the seed's admin certificate is CN=%s): %w", kvstore.AdminUser, err)
	}
	log.Info("turned on the existing etcd's authentication: the admin certificate is etcd root, joined nodes get per-node roles", "endpoints", cp.endpoints)
	return nil
}

// fatal reports a failure of the embedded server; nil (blocks forever)
// when etcd is external.
func (cp *controlPlane) fatal() <-chan error {
	if cp.embedded == nil {
		return nil
	}
	return cp.embedded.Err()
}

func (cp *controlPlane) Close() {
	if cp.kv != nil {
		_ = cp.kv.Close()
	}
	if cp.embedded != nil {
		cp.embedded.Close()
	}
}

// hostPort turns https://host:port into host:port.
func hostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("%q: the embedded etcd only speaks TLS, use an https:// URL", raw)
	}
	if u.Port() == "" {
		return "", fmt.Errorf("%q: missing port", raw)
	}
	return u.Host, nil
}
