package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/kvstore"
)

// revocationSet is the agent's cache of revoked/ (docs/security.md,
// "Removal and revocation") and the checks made on it: the peer
// reconciler and the ipcache skip revoked nodes, the agent-to-agent API
// and the seed's node services refuse their certificates.
type revocationSet struct {
	cache *kvstore.RevocationCache
	log   *slog.Logger
}

// revoked reports whether an admin revoked node. Nil-safe: an agent whose
// cache is not started yet knows of no revocation.
func (s *revocationSet) revoked(cluster, node string) bool {
	if s == nil || s.cache == nil {
		return false
	}
	_, ok := s.cache.Revoked(cluster, node)
	return ok
}

// checkCert refuses a certificate of a revoked node: by its name
// (CN=node:<cluster>/<node>, which covers every certificate of the node,
// renewed ones too) or by its serial number.
func (s *revocationSet) checkCert(cert *x509.Certificate) error {
	if s == nil || s.cache == nil || cert == nil {
		return nil
	}
	if c, ok := join.ParseNodeCommonName(cert.Subject.CommonName); ok {
		if r, ok := s.cache.Revoked(c.Cluster, c.Node); ok {
			return kvstore.RevokedError(r)
		}
	}
	if cert.SerialNumber != nil {
		if r, ok := s.cache.BySerial(serialHex(cert)); ok {
			return kvstore.RevokedError(r)
		}
	}
	return nil
}

func serialHex(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// startRevocations makes the revocation cache and hands it to the peer
// reconciler (which keeps it for the other checks); the caller runs it
// with the node cache, so that no revoked node becomes a peer even at
// startup.
func (a *Agent) startRevocations() (*revocationSet, error) {
	s := &revocationSet{log: a.log}
	var err error
	s.cache, err = kvstore.NewRevocationCache(a.cp.kv.Source(), a.revocationEvent, a.log)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// revocationEvent drops a node the moment its revocation arrives: its
// peer goes from the device in this event's reconcile, its addresses from
// the ipcache, without waiting for its records to go.
func (a *Agent) revocationEvent(ev kvstore.Event[kvstore.Revocation]) {
	r := ev.Value
	if ev.Kind == kvstore.EventDelete {
		a.log.Info("a node's revocation was cleared: its name may join again with a new token", "node", ev.Old.Cluster+"/"+ev.Old.Node)
		// Records of the name, should any be there, count again.
		if a.peers != nil {
			a.peers.trigger()
		}
		if ipc := a.ipcache.Load(); ipc != nil {
			ipc.resyncNode(ev.Old.Cluster, ev.Old.Node)
		}
		return
	}
	if r.Cluster == a.cfg.Cluster && r.Node == a.cfg.NodeName {
		a.log.Error("this node was revoked by an admin: the mesh refuses its certificate; reinstall it and join with a new token after 'meshctl node revoke --clear'", "revoked_at", r.RevokedAt)
		return
	}
	a.log.Warn("node revoked by an admin: dropping its peer, its endpoints and its access to this agent", "node", r.Cluster+"/"+r.Node, "revoked_at", r.RevokedAt, "reason", r.Reason)
	if a.peers != nil {
		a.peers.dropRevoked(r.Cluster, r.Node)
	}
	if ipc := a.ipcache.Load(); ipc != nil {
		ipc.dropRevoked(r.Cluster, r.Node)
	}
}

// RemoveNode implements api.NodeAdmin.
func (a *Agent) RemoveNode(ctx context.Context, req api.NodeRemoveRequest) (api.NodeRemoval, error) {
	return a.removeNode(ctx, req, false)
}

// RevokeNode implements api.NodeAdmin.
func (a *Agent) RevokeNode(ctx context.Context, req api.NodeRemoveRequest) (api.NodeRemoval, error) {
	return a.removeNode(ctx, req, true)
}

func (a *Agent) removeNode(ctx context.Context, req api.NodeRemoveRequest, revoke bool) (api.NodeRemoval, error) {
	start := time.Now()
	what := "removing nodes"
	if revoke {
		what = "revoking nodes"
	}
	cluster := req.Cluster
	if cluster == "" {
		cluster = a.cfg.Cluster
	}
	if err := kvstore.ValidateName("cluster", cluster); err != nil {
		return api.NodeRemoval{}, api.Errorf(api.CodeInvalid, "--cluster: %v", err)
	}
	if err := kvstore.ValidateName("node", req.Node); err != nil {
		return api.NodeRemoval{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if cluster == a.cfg.Cluster && req.Node == a.cfg.NodeName {
		return api.NodeRemoval{}, api.Errorf(api.CodeInvalid, "%s/%s is this node: run 'meshctl leave' to take it out of the mesh", cluster, req.Node)
	}
	var rev *kvstore.Revocation
	if revoke {
		rev = &kvstore.Revocation{Reason: req.Reason, RevokedAt: time.Now().UTC()}
		// The certificates the join service recorded in the grant, so the
		// revocation names them (the name refuses them anyway).
		if g, err := a.cp.kv.GetGrant(ctx, cluster, req.Node); err == nil {
			rev.Serials = slices.Clone(g.CertSerials)
		}
	}
	res, err := a.cp.kv.RemoveNode(ctx, cluster, req.Node, rev)
	switch {
	case kvstore.IsPermissionDenied(err):
		return api.NodeRemoval{}, needAdmin(what)
	case errors.Is(err, kvstore.ErrNotFound):
		return api.NodeRemoval{}, api.Errorf(api.CodeNotFound, "no node %q in cluster %s (see 'meshctl nodes'; --cluster names another cluster)", req.Node, cluster)
	case errors.Is(err, kvstore.ErrInvalidRecord), errors.Is(err, kvstore.ErrInvalidKey):
		return api.NodeRemoval{}, api.Errorf(api.CodeInvalid, "%v", err)
	case errors.Is(err, kvstore.ErrConflict):
		return api.NodeRemoval{}, api.Errorf(api.CodeConflict, "%v", err)
	case err != nil:
		return api.NodeRemoval{}, api.Errorf(api.CodeUnavailable, "%s %s/%s: %v", what, cluster, req.Node, err)
	}
	out := api.NodeRemoval{Cluster: res.Cluster, Node: res.Node, Revoked: res.Revoked, Record: res.Record,
		Endpoints: res.Endpoints, IdentityRefs: res.IdentityRefs, Grant: res.Grant, Took: api.Duration(time.Since(start))}
	for _, c := range res.CIDRs {
		out.CIDRs = append(out.CIDRs, c.String())
	}
	if rev != nil {
		out.Serials = rev.Serials
	}
	a.log.Warn("node taken out of the mesh by an admin", "node", cluster+"/"+req.Node, "revoked", res.Revoked,
		"endpoints", res.Endpoints, "cidrs", out.CIDRs, "took", time.Since(start))
	return out, nil
}

// Revocations implements api.NodeAdmin.
func (a *Agent) Revocations(ctx context.Context) ([]api.Revocation, error) {
	rs, err := a.cp.kv.ListRevocations(ctx)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "listing revocations: %v", err)
	}
	out := make([]api.Revocation, 0, len(rs))
	for _, r := range rs {
		out = append(out, apiRevocation(r))
	}
	slices.SortFunc(out, func(x, y api.Revocation) int {
		if c := strings.Compare(x.Cluster, y.Cluster); c != 0 {
			return c
		}
		return strings.Compare(x.Node, y.Node)
	})
	return out, nil
}

// ClearRevocation implements api.NodeAdmin.
func (a *Agent) ClearRevocation(ctx context.Context, cluster, node string) (api.Revocation, error) {
	if cluster == "" {
		cluster = a.cfg.Cluster
	}
	if err := kvstore.ValidateName("cluster", cluster); err != nil {
		return api.Revocation{}, api.Errorf(api.CodeInvalid, "--cluster: %v", err)
	}
	if err := kvstore.ValidateName("node", node); err != nil {
		return api.Revocation{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	r, err := a.cp.kv.ClearRevocation(ctx, cluster, node)
	switch {
	case kvstore.IsPermissionDenied(err):
		return api.Revocation{}, needAdmin("clearing revocations")
	case errors.Is(err, kvstore.ErrNotFound):
		return api.Revocation{}, api.Errorf(api.CodeNotFound, "node %q of cluster %s is not revoked (see 'meshctl node revoked')", node, cluster)
	case errors.Is(err, kvstore.ErrConflict):
		return api.Revocation{}, api.Errorf(api.CodeConflict, "%v", err)
	case err != nil:
		return api.Revocation{}, api.Errorf(api.CodeUnavailable, "clearing the revocation of %s/%s: %v", cluster, node, err)
	}
	a.log.Warn("revocation cleared by an admin: the name may join again with a new token", "node", cluster+"/"+node)
	return apiRevocation(r), nil
}

func apiRevocation(r kvstore.Revocation) api.Revocation {
	return api.Revocation{Cluster: r.Cluster, Node: r.Node, Serials: r.Serials, RevokedAt: r.RevokedAt, Reason: r.Reason}
}
