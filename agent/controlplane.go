package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/weftmesh/weft/agent/config"
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
			Dir:        cfg.EtcdDataDir(),
			Name:       cfg.NodeName,
			ClientAddr: client,
			PeerAddr:   peer,
			ExtraHosts: hosts,
			// Until joined nodes get their etcd users at join.
			DisableAuth: true,
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
