package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/pki"
)

// certRenewer renews a joined node's certificate through the seed's node
// services before it expires (30 days by default; renewed when a third is
// left). The etcd client, the node-service client and the agent-to-agent
// API read the files at every handshake (pki.KeyPair), so a renewal takes
// effect without a restart. The seed's own certificates are the admin's
// and not renewed here.
type certRenewer struct {
	renew          func(ctx context.Context, now time.Time) (bool, error)
	certFile       string
	log            *slog.Logger
	retry, maxWait time.Duration
}

// startRenewal starts the renewer on a node that joined with a node
// certificate.
func (a *Agent) startRenewal(context.Context) error {
	if a.cp.node == nil {
		return nil
	}
	svc, certFile, keyFile := a.cp.node.svc, a.cfg.Etcd.CertFile, a.cfg.Etcd.KeyFile
	r := &certRenewer{
		renew: func(ctx context.Context, now time.Time) (bool, error) {
			return join.RenewFiles(ctx, svc, certFile, keyFile, now)
		},
		certFile: certFile, log: a.log.With("component", "certificates"),
		retry: 30 * time.Second, maxWait: time.Hour,
	}
	a.goRun("certificate renewal", r.run)
	return nil
}

func (r *certRenewer) run(ctx context.Context) error {
	for {
		wait := r.maxWait
		renewed, err := r.renew(ctx, time.Now())
		switch {
		case err != nil:
			r.log.Warn("renewing the node certificate failed; trying again", "err", err, "retry_in", r.retry)
			wait = r.retry
		case renewed:
			r.log.Info("renewed the node certificate")
		}
		if err == nil {
			if d, derr := r.untilDue(time.Now()); derr == nil {
				wait = min(wait, d)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(max(wait, time.Second)):
		}
	}
}

// untilDue is how long until the certificate is due for renewal.
func (r *certRenewer) untilDue(now time.Time) (time.Duration, error) {
	data, err := os.ReadFile(r.certFile)
	if err != nil {
		return 0, err
	}
	c, err := pki.ParseCertPEM(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", r.certFile, err)
	}
	due := c.NotAfter.Add(-c.NotAfter.Sub(c.NotBefore) / 3)
	return due.Sub(now), nil
}
