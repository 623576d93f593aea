package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/kvstore"
)

// Connected clusters, the seed's side (docs/clusters.md): cluster tokens,
// connecting and disconnecting (both directions in one step), and the list
// with each connection's status. The records of a connected cluster reach
// this cluster's agents through the mirror (clusterMirrors) or, in direct
// mode, from the remote etcd itself.

// ConsumeClusterToken implements join.ClusterTokens.
func (s tokenStore) ConsumeClusterToken(ctx context.Context, id, secret string, now time.Time) (join.Grant, error) {
	t, err := s.kv.ConsumeTokenFor(ctx, id, secret, kvstore.PurposeCluster, now)
	if err != nil {
		return join.Grant{}, join.TokenStoreError(err, kvTokenCodes)
	}
	return join.Grant{TokenID: t.ID, Cluster: t.Cluster}, nil
}

// clusterMesh is the join service's join.ClusterConnector.
type clusterMesh struct{ a *Agent }

// ownOffer is this cluster's side of a connection with a fresh read-only
// credential for reader's use of this etcd (its etcd user is created
// first, so the credential works once it is handed over); with
// readerPushes the credential may also write reader's mirror here.
func (a *Agent) ownOffer(ctx context.Context, reader string, readerPushes bool) (join.ClusterOffer, error) {
	if reader == a.cfg.Cluster {
		return join.ClusterOffer{}, join.Errorf(join.CodeInvalid, "cluster %q cannot connect to itself (both sides are named %q; cluster names must be unique in a mesh)", reader, reader)
	}
	ca, err := a.meshCA()
	if err != nil {
		return join.ClusterOffer{}, err
	}
	cl, err := a.cp.kv.GetCluster(ctx, a.cfg.Cluster)
	if err != nil {
		return join.ClusterOffer{}, fmt.Errorf("reading this cluster's record: %w", err)
	}
	if err := a.cp.kv.EnsureClusterUser(ctx, reader, a.cfg.Cluster, readerPushes); err != nil {
		return join.ClusterOffer{}, fmt.Errorf("creating the etcd user of cluster %s: %w", reader, err)
	}
	cert, key, err := ca.IssueClient(join.ClusterCommonName(reader), []string{join.ClusterOrganization})
	if err != nil {
		return join.ClusterOffer{}, fmt.Errorf("issuing the credential of cluster %s: %w", reader, err)
	}
	return join.ClusterOffer{
		Name: cl.Name, ID: cl.ID, MeshPool: cl.MeshPool.String(), PodCIDRs: prefixStrings(cl.PodCIDRs),
		JoinServer: a.cfg.JoinAdvertise(), EtcdEndpoints: a.cp.endpoints, CACert: string(ca.CertPEM),
		Cert: string(cert), Key: string(key),
	}, nil
}

// remoteFromOffer is the record of a connection to the offering cluster.
func remoteFromOffer(o join.ClusterOffer, mode string, now time.Time) (kvstore.RemoteCluster, error) {
	pool, err := netip.ParsePrefix(o.MeshPool)
	if err != nil {
		return kvstore.RemoteCluster{}, err
	}
	var pods []netip.Prefix
	for _, s := range o.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return kvstore.RemoteCluster{}, err
		}
		pods = append(pods, p)
	}
	r := kvstore.RemoteCluster{
		Name: o.Name, ID: o.ID, MeshPool: pool, PodCIDRs: pods, JoinServer: o.JoinServer,
		EtcdEndpoints: o.EtcdEndpoints, CACert: o.CACert, Cert: o.Cert, Key: o.Key,
		Mode: mode, Connected: now.UTC(),
	}
	return r, r.Validate()
}

// conflictError turns kvstore's refusal of a connection into the join
// service's or the API's invalid-input error; other errors pass.
func conflictError(err error) error {
	if errors.Is(err, kvstore.ErrConflict) || errors.Is(err, kvstore.ErrOverlap) || errors.Is(err, kvstore.ErrInvalidRecord) {
		return join.Errorf(join.CodeInvalid, "%v", err)
	}
	return err
}

// AcceptCluster implements join.ClusterConnector: the requesting cluster
// is checked against this side's clusters and connections and stored,
// and this side's offer returned. Nothing is left behind on a refusal.
func (m clusterMesh) AcceptCluster(ctx context.Context, tokenCluster string, offer join.ClusterOffer) (join.ClusterOffer, error) {
	a := m.a
	if tokenCluster != a.cfg.Cluster {
		return join.ClusterOffer{}, join.Errorf(join.CodeForbidden, "the token was made for cluster %s, this is cluster %s", tokenCluster, a.cfg.Cluster)
	}
	mode := kvstore.ModeMirror
	if offer.Push {
		mode = kvstore.ModePushed // it cannot be reached: it pushes its records here
	}
	r, err := remoteFromOffer(offer, mode, time.Now())
	if err != nil {
		return join.ClusterOffer{}, join.Errorf(join.CodeInvalid, "offer of cluster %s: %v", offer.Name, err)
	}
	if _, err := a.cp.kv.GetRemoteCluster(ctx, r.Name); err == nil {
		return join.ClusterOffer{}, join.Errorf(join.CodeInvalid, "cluster %s is connected already: disconnect it first (`meshctl cluster disconnect %s` on either side)", r.Name, r.Name)
	}
	mine, err := a.ownOffer(ctx, r.Name, offer.Push)
	if err != nil {
		return join.ClusterOffer{}, err
	}
	if err := a.cp.kv.PutRemoteCluster(ctx, r); err != nil {
		a.dropClusterUser(ctx, r.Name)
		return join.ClusterOffer{}, conflictError(err)
	}
	a.log.Info("cluster connected", "cluster", r.Name, "id", r.ID, "mesh_pool", r.MeshPool, "etcd", r.EtcdEndpoints)
	return mine, nil
}

// DropCluster implements join.ClusterConnector.
func (m clusterMesh) DropCluster(ctx context.Context, name string) error {
	return m.a.dropCluster(ctx, name)
}

// dropCluster removes the connection to name on this side: its etcd user
// first (a cluster that pushes its records here can write no more), then
// its record and its mirror.
func (a *Agent) dropCluster(ctx context.Context, name string) error {
	a.dropClusterUser(ctx, name)
	if err := a.cp.kv.DeleteRemoteCluster(ctx, name); err != nil {
		return err
	}
	a.log.Info("cluster disconnected", "cluster", name)
	return nil
}

func (a *Agent) dropClusterUser(ctx context.Context, name string) {
	if err := a.cp.kv.RemoveClusterUser(ctx, name); err != nil {
		a.log.Warn("removing a remote cluster's etcd user", "cluster", name, "err", err)
	}
}

// clusterAPIError maps the join package's refusals to the local API's.
func clusterAPIError(err error) error {
	var je *join.Error
	if errors.As(err, &je) {
		switch je.Code {
		case join.CodeInvalid, join.CodeForbidden, join.CodeWrongCA, join.CodeTokenUnknown, join.CodeTokenExpired, join.CodeTokenRevoked, join.CodeTokenUsedUp:
			return api.Errorf(api.CodeInvalid, "%s", je.Message)
		}
		return api.Errorf(api.CodeUnavailable, "%s", je.Message)
	}
	if kvstore.IsPermissionDenied(err) {
		return needAdmin("connecting clusters")
	}
	return err
}

// CreateClusterToken implements api.ClusterManager.
func (a *Agent) CreateClusterToken(ctx context.Context, req api.ClusterTokenRequest) (api.CreatedToken, error) {
	ca, err := a.meshCA()
	if err != nil {
		return api.CreatedToken{}, err
	}
	ttl := time.Duration(req.TTL)
	if ttl <= 0 {
		ttl = time.Hour
	}
	t, secret, err := a.cp.kv.CreateToken(ctx, kvstore.TokenSpec{Cluster: a.cfg.Cluster, TTL: ttl, MaxUses: 1, Purpose: kvstore.PurposeCluster}, time.Now())
	if err != nil {
		return api.CreatedToken{}, clusterAPIError(err)
	}
	jt := join.Token{Server: a.cfg.JoinAdvertise(), ID: t.ID, Secret: secret, CAHash: ca.Fingerprint(), Cluster: a.cfg.Cluster}
	if err := jt.Validate(); err != nil {
		return api.CreatedToken{}, fmt.Errorf("the join service address %q cannot go into a token (set --join-advertise): %w", a.cfg.JoinAdvertise(), err)
	}
	return api.CreatedToken{Token: apiToken(t), JoinToken: jt.String()}, nil
}

// ConnectCluster implements api.ClusterManager: both directions in one
// exchange with the other cluster's join service.
func (a *Agent) ConnectCluster(ctx context.Context, req api.ClusterConnectRequest) (api.RemoteCluster, error) {
	mode := req.Mode
	if mode == "" {
		mode = kvstore.ModeMirror
	}
	if mode != kvstore.ModeMirror && mode != kvstore.ModeDirect {
		return api.RemoteCluster{}, api.Errorf(api.CodeInvalid, "--mode %q: use %s or %s", mode, kvstore.ModeMirror, kvstore.ModeDirect)
	}
	tok, err := join.ParseToken(req.Token)
	if err != nil {
		return api.RemoteCluster{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if !tok.IsClusterToken() {
		return api.RemoteCluster{}, api.Errorf(api.CodeInvalid, "this is a join token for nodes (`meshctl join`); connecting clusters takes a cluster token: run `meshctl cluster token` on the other cluster's first node")
	}
	if _, err := a.cp.kv.GetRemoteCluster(ctx, tok.Cluster); err == nil {
		return api.RemoteCluster{}, api.Errorf(api.CodeInvalid, "cluster %s is connected already (see `meshctl cluster list`); disconnect it first to connect again", tok.Cluster)
	}
	mine, err := a.ownOffer(ctx, tok.Cluster, false)
	if err != nil {
		return api.RemoteCluster{}, clusterAPIError(err)
	}
	mine.Push = req.Push
	theirs, err := join.ConnectCluster(ctx, tok, mine)
	if err != nil {
		a.dropClusterUser(ctx, tok.Cluster)
		return api.RemoteCluster{}, clusterAPIError(err)
	}
	r, err := remoteFromOffer(theirs, mode, time.Now())
	if err == nil {
		r.Push = req.Push
		err = a.cp.kv.PutRemoteCluster(ctx, r)
	}
	if err != nil {
		// The other side stored the connection already: undo it there, so
		// a refusal here leaves neither side connected.
		if derr := join.DisconnectCluster(ctx, theirs.JoinServer, a.cfg.Cluster, []byte(theirs.CACert), []byte(theirs.Cert), []byte(theirs.Key)); derr != nil {
			a.log.Warn("undoing the other side of a refused connection", "cluster", theirs.Name, "err", derr)
		}
		a.dropClusterUser(ctx, tok.Cluster)
		return api.RemoteCluster{}, clusterAPIError(conflictError(err))
	}
	a.log.Info("cluster connected", "cluster", r.Name, "id", r.ID, "mode", r.Mode, "mesh_pool", r.MeshPool)
	return a.remoteStatus(ctx, r), nil
}

// DisconnectCluster implements api.ClusterManager: the other side is told
// first (with the credential it issued), then this side's connection is
// removed; an unreachable other side is logged and does not keep this side
// connected.
func (a *Agent) DisconnectCluster(ctx context.Context, name string) error {
	if err := kvstore.ValidateName("cluster", name); err != nil {
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	r, err := a.cp.kv.GetRemoteCluster(ctx, name)
	if errors.Is(err, kvstore.ErrNotFound) {
		return api.Errorf(api.CodeNotFound, "cluster %s is not connected (see `meshctl cluster list`)", name)
	}
	if err != nil {
		return clusterAPIError(err)
	}
	if err := join.DisconnectCluster(ctx, r.JoinServer, a.cfg.Cluster, []byte(r.CACert), []byte(r.Cert), []byte(r.Key)); err != nil {
		a.log.Warn("the other cluster could not be told about the disconnect; it keeps its side until `meshctl cluster disconnect` runs there", "cluster", name, "err", err)
	}
	return clusterAPIError(a.dropCluster(ctx, name))
}

// Clusters implements api.ClusterManager.
func (a *Agent) Clusters(ctx context.Context) ([]api.RemoteCluster, error) {
	rs, err := a.cp.kv.ListRemoteClusters(ctx)
	if err != nil {
		return nil, clusterAPIError(err)
	}
	out := make([]api.RemoteCluster, 0, len(rs))
	for _, r := range rs {
		out = append(out, a.remoteStatus(ctx, r))
	}
	return out, nil
}

// remoteStatus is r as the API shows it, with what this cluster knows of
// its state.
func (a *Agent) remoteStatus(_ context.Context, r kvstore.RemoteCluster) api.RemoteCluster {
	out := api.RemoteCluster{
		Name: r.Name, ID: r.ID, MeshPool: r.MeshPool.String(), PodCIDRs: prefixStrings(r.PodCIDRs),
		EtcdEndpoints: r.EtcdEndpoints, Mode: r.Mode, Push: r.Push, ConnectedAt: r.Connected,
	}
	if st, ok := a.remoteClusterState(r.Name); ok {
		out.Connected, out.Synced = st.Connected, st.Synced
		out.Nodes, out.Endpoints, out.Identities, out.Refused = st.Nodes, st.Endpoints, st.Identities, st.Refused
		out.LastError, out.LastErrorAt, out.UpdatedAt, out.Lag = st.LastError, st.LastErrorAt, st.UpdatedAt, api.Duration(st.Lag)
	}
	return out
}

// remoteState is what this agent knows of a connected cluster's records.
type remoteState struct {
	Connected, Synced            bool
	Nodes, Endpoints, Identities int
	Refused                      int
	LastError                    string
	LastErrorAt, UpdatedAt       time.Time
	Lag                          time.Duration
}

// remoteClusterState reports what the agent's remote-cluster members know
// of cluster name.
func (a *Agent) remoteClusterState(name string) (remoteState, bool) {
	rc := a.remotes
	if rc == nil {
		return remoteState{}, false
	}
	return rc.state(name)
}
