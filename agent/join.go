package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/pki"
)

// tokenStore adapts the kvstore's tokens to what the join service checks.
type tokenStore struct{ kv *kvstore.Client }

// kvTokenCodes are the join service's codes for kvstore's token refusals.
var kvTokenCodes = map[error]join.Code{
	kvstore.ErrTokenUnknown: join.CodeTokenUnknown, kvstore.ErrTokenExpired: join.CodeTokenExpired,
	kvstore.ErrTokenRevoked: join.CodeTokenRevoked, kvstore.ErrTokenUsedUp: join.CodeTokenUsedUp,
}

func (s tokenStore) ConsumeToken(ctx context.Context, id, secret string, now time.Time) (join.Grant, error) {
	t, err := s.kv.ConsumeToken(ctx, id, secret, now)
	if err != nil {
		return join.Grant{}, join.TokenStoreError(err, kvTokenCodes)
	}
	return join.Grant{TokenID: t.ID, Cluster: t.Cluster, Labels: identity.LabelMap(t.Labels)}, nil
}

// meshCA is the CA the embedded etcd trusts for clients: the join service
// signs node certificates with it, so joined nodes can reach etcd.
func (a *Agent) meshCA() (*pki.CA, error) {
	if a.cp.files.CAKeyFile == "" {
		return nil, api.Errorf(api.CodeNotSupported, "this node does not hold the mesh CA; create tokens on the node that ran `meshctl up`")
	}
	return pki.LoadCAFiles(a.cp.files.CAFile, a.cp.files.CAKeyFile)
}

// serveJoin runs the join service next to the embedded etcd.
func (a *Agent) serveJoin(ctx context.Context) error {
	run := a.goRun
	ca, err := a.meshCA()
	if err != nil {
		return err
	}
	adv := a.cfg.JoinAdvertise()
	host, _, err := net.SplitHostPort(adv)
	if err != nil {
		return fmt.Errorf("join.advertise %q: %w", adv, err)
	}
	hosts := []string{"localhost", "127.0.0.1"}
	if host != "" {
		hosts = append(hosts, host)
	}
	srv, err := join.NewServer(join.ServerConfig{
		CA: ca, Tokens: tokenStore{a.cp.kv}, EtcdEndpoints: a.cp.endpoints,
		Cluster: a.cfg.Cluster, Hosts: hosts, Log: a.log.With("component", "join"),
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", a.cfg.Join.Listen)
	if err != nil {
		return fmt.Errorf("join service: listening on %s: %w", a.cfg.Join.Listen, err)
	}
	a.joinSrv = srv
	// Serve returns nil once Shutdown stopped it.
	run("join service", func(context.Context) error { return srv.Serve(l) })
	a.log.Info("join service listening", "listen", a.cfg.Join.Listen, "advertise", adv)
	return nil
}

// CreateToken implements api.TokenManager.
func (a *Agent) CreateToken(ctx context.Context, req api.TokenRequest) (api.CreatedToken, error) {
	ca, err := a.meshCA()
	if err != nil {
		return api.CreatedToken{}, err
	}
	cluster := req.Cluster
	if cluster == "" {
		cluster = a.cfg.Cluster
	}
	labels, err := identity.ParseUserLabelMap(req.Labels)
	if err != nil {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "labels: %v", err)
	}
	ttl := time.Duration(req.TTL)
	if ttl <= 0 {
		ttl = time.Hour
	}
	maxUses := req.MaxUses
	if maxUses <= 0 {
		maxUses = 1
	}
	t, secret, err := a.cp.kv.CreateToken(ctx, kvstore.TokenSpec{Cluster: cluster, Labels: labels.Strings(), TTL: ttl, MaxUses: maxUses}, time.Now())
	if err != nil {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	jt := join.Token{Server: a.cfg.JoinAdvertise(), ID: t.ID, Secret: secret, CAHash: ca.Fingerprint()}
	if err := jt.Validate(); err != nil {
		return api.CreatedToken{}, fmt.Errorf("the join service address %q cannot go into a token (set --join-advertise): %w", a.cfg.JoinAdvertise(), err)
	}
	return api.CreatedToken{Token: apiToken(t), JoinToken: jt.String()}, nil
}

// Tokens implements api.TokenManager.
func (a *Agent) Tokens(ctx context.Context) ([]api.Token, error) {
	ts, err := a.cp.kv.ListTokens(ctx)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "%v", err)
	}
	out := make([]api.Token, 0, len(ts))
	for _, t := range ts {
		out = append(out, apiToken(t))
	}
	return out, nil
}

// RevokeToken implements api.TokenManager.
func (a *Agent) RevokeToken(ctx context.Context, id string) error {
	err := a.cp.kv.RevokeToken(ctx, id)
	if errors.Is(err, kvstore.ErrNotFound) || errors.Is(err, kvstore.ErrTokenUnknown) {
		return api.Errorf(api.CodeNotFound, "no token %q (see `meshctl token list`)", id)
	}
	return err
}

func apiToken(t kvstore.Token) api.Token {
	return api.Token{ID: t.ID, Cluster: t.Cluster, Labels: identity.LabelMap(t.Labels), CreatedAt: t.Created, ExpiresAt: t.Expires, Uses: t.Uses, MaxUses: t.MaxUses, Revoked: t.Revoked}
}
