package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/embedded"
	"github.com/weftmesh/weft/pki"
)

// controlPlane is the agent's connection to etcd and, on the first node of
// a mesh, the embedded etcd server itself.
type controlPlane struct {
	kv       *kvstore.Client
	embedded *embedded.Server
	// files are the TLS files the agent's etcd client uses; on the
	// embedded node the CA key is among them, which is what makes it the
	// node that can sign join requests.
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
	return cp, nil
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
