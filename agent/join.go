package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/join"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/grant"
	"github.com/weftmesh/weft/pki"
)

// tokenStore adapts the kvstore's tokens to what the join service checks.
type tokenStore struct{ kv *kvstore.Client }

// kvTokenCodes are the join service's codes for kvstore's token refusals.
var kvTokenCodes = map[error]join.Code{
	kvstore.ErrTokenUnknown: join.CodeTokenUnknown, kvstore.ErrTokenExpired: join.CodeTokenExpired,
	kvstore.ErrTokenRevoked: join.CodeTokenRevoked, kvstore.ErrTokenUsedUp: join.CodeTokenUsedUp,
	kvstore.ErrTokenWrongPurpose: join.CodeForbidden,
}

func (s tokenStore) ConsumeToken(ctx context.Context, id, secret string, now time.Time) (join.Grant, error) {
	t, err := s.kv.ConsumeToken(ctx, id, secret, now)
	if err != nil {
		return join.Grant{}, join.TokenStoreError(err, kvTokenCodes)
	}
	return join.Grant{TokenID: t.ID, Cluster: t.Cluster, Labels: identity.LabelMap(t.Labels), AllowLabels: t.AllowLabels, PodCIDRs: t.PodCIDRs}, nil
}

// admitter gives a joining node its etcd user (a role that writes only
// its own keys) and records its label grant, before the join service signs
// its certificate.
type admitter struct{ kv *kvstore.Client }

func (ad admitter) AdmitNode(ctx context.Context, a join.Admission) error {
	// A token admits new nodes; it does not hand out the identity (and
	// etcd user) of a node the mesh has: that node's keys would be the
	// newcomer's to write.
	if err := ad.nameFree(ctx, a.Cluster, a.Node); err != nil {
		return err
	}
	if err := ad.kv.EnsureNodeUser(ctx, a.Cluster, a.Node); err != nil {
		return err
	}
	allow := a.AllowLabels
	if len(allow) == 0 {
		allow = []string{grant.Any}
	} else {
		own, err := identity.ParseUserLabelMap(a.TokenLabels)
		if err != nil {
			return fmt.Errorf("token %s's labels: %w", a.TokenID, err)
		}
		allow = append(slices.Clone(allow), own.Strings()...)
	}
	return ad.kv.PutGrant(ctx, kvstore.Grant{Cluster: a.Cluster, Node: a.Node, AllowLabels: allow, TokenID: a.TokenID, PodCIDRs: a.PodCIDRs})
}

// nameFree refuses a node name the mesh uses: one with a node record (a
// live node) or a CIDR (a node that is down but did not leave), and a
// revoked one until an admin clears it.
func (ad admitter) nameFree(ctx context.Context, cluster, node string) error {
	if r, err := ad.kv.GetRevocation(ctx, cluster, node); err == nil {
		return join.Errorf(join.CodeRevoked, "node name %q of cluster %s was revoked at %s: an admin must clear it first ('meshctl node revoke --clear %s --cluster %s' on the first node), or choose another --name", node, cluster, r.RevokedAt.UTC().Format(time.RFC3339), node, cluster)
	} else if !errors.Is(err, kvstore.ErrNotFound) {
		return err
	}
	_, _, err := kvstore.Get(ctx, ad.kv, kvstore.NodeKey(cluster, node), kvstore.DecodeNode)
	inUse := err == nil || !errors.Is(err, kvstore.ErrNotFound) && errors.Is(err, kvstore.ErrInvalidRecord)
	if err != nil && !errors.Is(err, kvstore.ErrNotFound) && !inUse {
		return err
	}
	if !inUse {
		cidrs, err := ad.kv.NodeCIDRs(ctx, cluster, node)
		if err != nil {
			return err
		}
		inUse = len(cidrs) > 0
	}
	if inUse {
		return join.Errorf(join.CodeInvalid, "node name %q is in use in cluster %s (a node with it is registered or holds a CIDR): choose another --name, or run 'meshctl leave' on that node first", node, cluster)
	}
	return nil
}

// CertificateIssued implements join.CertificateRecorder: the serial goes
// into the node's grant (written just before, in AdmitNode), the newest
// last, so that 'meshctl node revoke' can name it.
func (ad admitter) CertificateIssued(ctx context.Context, cluster, node, serial string) error {
	g, err := ad.kv.GetGrant(ctx, cluster, node)
	if err != nil {
		return err
	}
	g.CertSerials = append(g.CertSerials, serial)
	if n := len(g.CertSerials) - kvstore.MaxCertSerials; n > 0 {
		g.CertSerials = g.CertSerials[n:]
	}
	return ad.kv.PutGrant(ctx, g)
}

// nodeServices does on the seed, with the admin credential, the writes a
// joined node's etcd role does not allow, for that node only.
type nodeServices struct{ a *Agent }

// CreateIdentity implements join.NodeServices: the labels must name the
// caller's cluster and be within the caller's grant; the seed's allocator
// finds or creates the number, in the range of the caller's cluster (its
// clusters/<name> record's id: several clusters may share this etcd), and
// lets go of its own reference at once (the caller writes its own; garbage
// collection waits DefaultGCGrace before collecting anything).
func (s nodeServices) CreateIdentity(ctx context.Context, c join.Caller, labels []string) (uint32, error) {
	ls, err := identity.ParseLabels(labels, "")
	if err != nil || len(ls) == 0 {
		return 0, join.Errorf(join.CodeInvalid, "labels %q: %v", labels, err)
	}
	// The number is of the cluster the labels name, so they must name
	// one, and only the caller's: an identity of another cluster's range
	// would let the caller speak for that cluster.
	switch name, ok := ls.Get(identity.SourceMesh + ":cluster"); {
	case !ok:
		return 0, join.Errorf(join.CodeInvalid, "labels %s carry no mesh:cluster label: a node's identities carry mesh:cluster=%s (its agent adds it; upgrade the node)", ls, c.Cluster)
	case name != c.Cluster:
		return 0, join.Errorf(join.CodeForbidden, "mesh:cluster=%s: a node of cluster %s cannot claim another cluster", name, c.Cluster)
	}
	if err := s.checkGrant(ctx, c, ls.Strings()); err != nil {
		return 0, err
	}
	alloc := s.a.alloc
	if alloc == nil {
		return 0, join.Errorf(join.CodeService, "the seed's identity allocator is not running yet; retry")
	}
	id, err := alloc.Allocate(ctx, ls)
	if err != nil {
		if errors.Is(err, allocator.ErrInvalidLabels) {
			return 0, join.Errorf(join.CodeInvalid, "%v", err)
		}
		return 0, err
	}
	if err := alloc.Release(ctx, id); err != nil {
		s.a.log.Warn("releasing the seed's reference to a node's identity", "identity", id, "err", err)
	}
	s.a.log.Debug("identity for a node", "node", c.Cluster+"/"+c.Node, "identity", id, "labels", ls)
	return uint32(id), nil
}

// checkGrant refuses labels outside the caller's grant. A node without a
// grant record joined before grants existed: it keeps its old freedom.
func (s nodeServices) checkGrant(ctx context.Context, c join.Caller, labels []string) error {
	g, err := s.a.cp.kv.GetGrant(ctx, c.Cluster, c.Node)
	if errors.Is(err, kvstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := g.Allows(labels); err != nil {
		return join.Errorf(join.CodeForbidden, "%v (the node's join token decides its labels: make one with 'meshctl token create --allow-labels ...')", err)
	}
	return nil
}

// AllocateCIDR implements join.NodeServices. The caller's cluster has a
// record (the token that admitted it made it); a node may neither register
// a cluster nor change one, so an id or pool the record does not have is
// refused, naming both, rather than addressing the node outside its
// cluster's pool.
func (s nodeServices) AllocateCIDR(ctx context.Context, c join.Caller, req join.CIDRRequest) (netip.Prefix, error) {
	if req.Claim.IsValid() {
		return s.claimCIDR(ctx, c, req.Claim)
	}
	kv := s.a.cp.kv
	spec, legacy, err := clusterSpec(c.Cluster, req.ClusterID, req.MeshPool)
	if err != nil {
		return netip.Prefix{}, join.Errorf(join.CodeInvalid, "%v", err)
	}
	cl, err := kv.GetCluster(ctx, c.Cluster)
	if errors.Is(err, kvstore.ErrNotFound) {
		return netip.Prefix{}, join.Errorf(join.CodeInvalid, "cluster %q has no record, and a node cannot register one: on the first node, 'meshctl token create --cluster %s' registers it with a free id and mesh pool; then join with that token", c.Cluster, c.Cluster)
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("reading cluster %s: %w", c.Cluster, err)
	}
	if legacy && spec.Matches(cl) != nil {
		// The pool meshctl used to write into every configuration asks
		// for nothing: the record decides.
		spec.MeshPool = netip.Prefix{}
	}
	if err := spec.Matches(cl); err != nil {
		return netip.Prefix{}, join.Errorf(join.CodeInvalid, "node %s/%s: %v (the node's clusterID (--cluster-id) and ipam.meshPool (--mesh-pool) must be the record's, or left out)", c.Cluster, c.Node, err)
	}
	cidr, err := kv.AllocateNodeCIDR(ctx, c.Cluster, c.Node, req.PrefixLength)
	if errors.Is(err, kvstore.ErrInvalidConfig) || errors.Is(err, kvstore.ErrPoolExhausted) || errors.Is(err, kvstore.ErrInvalidKey) {
		return netip.Prefix{}, join.Errorf(join.CodeInvalid, "%v", err)
	}
	return cidr, err
}

// claimCIDR registers a Kubernetes node's podCIDR as its CIDR, if the
// node's token granted a range that holds it. A compromised node can so
// claim only free ranges inside its grant, never one another node holds.
func (s nodeServices) claimCIDR(ctx context.Context, c join.Caller, cidr netip.Prefix) (netip.Prefix, error) {
	g, err := s.a.cp.kv.GetGrant(ctx, c.Cluster, c.Node)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("reading the grant of %s/%s: %w", c.Cluster, c.Node, err)
	}
	if !prefixWithin(cidr, g.PodCIDRs) {
		if len(g.PodCIDRs) == 0 {
			return netip.Prefix{}, join.Errorf(join.CodeForbidden, "node %s/%s may not claim %s: its token admits no Kubernetes nodes (create the token with --pod-cidrs covering the cluster CIDR)", c.Cluster, c.Node, cidr)
		}
		return netip.Prefix{}, join.Errorf(join.CodeForbidden, "node %s/%s may not claim %s: its token allows pod CIDRs inside %v only", c.Cluster, c.Node, cidr, g.PodCIDRs)
	}
	got, err := s.a.cp.kv.ClaimNodeCIDR(ctx, c.Cluster, c.Node, cidr)
	if errors.Is(err, kvstore.ErrInvalidConfig) || errors.Is(err, kvstore.ErrOverlap) || errors.Is(err, kvstore.ErrNotFound) {
		return netip.Prefix{}, join.Errorf(join.CodeInvalid, "%v", err)
	}
	return got, err
}

// prefixWithin reports whether p lies inside one of ranges.
func prefixWithin(p netip.Prefix, ranges []netip.Prefix) bool {
	for _, r := range ranges {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// ReleaseCIDR implements join.NodeServices; kvstore refuses another
// node's CIDR.
func (s nodeServices) ReleaseCIDR(ctx context.Context, c join.Caller, cidr netip.Prefix) error {
	err := s.a.cp.kv.ReleaseNodeCIDR(ctx, c.Cluster, c.Node, cidr)
	if errors.Is(err, kvstore.ErrNotOwner) {
		return join.Errorf(join.CodeForbidden, "%v", err)
	}
	return err
}

// meshCA is the CA the cluster's etcd (embedded or existing) trusts for
// clients: the join service signs node certificates with it, so joined
// nodes can reach etcd.
func (a *Agent) meshCA() (*pki.CA, error) {
	if a.cp.files.CAKeyFile == "" {
		return nil, api.Errorf(api.CodeNotSupported, "tokens need admin rights and the mesh CA, which this node does not hold: create tokens on the cluster's seed (where `meshctl up` ran, or the agent given --etcd-ca-key on an existing etcd)")
	}
	return pki.LoadCAFiles(a.cp.files.CAFile, a.cp.files.CAKeyFile)
}

// serveJoin runs the join service on the seed (next to the embedded etcd,
// or on the agent given etcd.caKeyFile).
func (a *Agent) serveJoin(ctx context.Context) error {
	run := a.goRun
	ca, err := a.meshCA()
	if err != nil {
		return err
	}
	ca.NodeValidity = a.cfg.Join.NodeCertValidity.D()
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
		Admitter: admitter{a.cp.kv}, Services: nodeServices{a}, Clusters: clusterMesh{a},
		CheckCertificate: a.peers.revocations.checkCert,
		Admin:            a.adminAPI(),
	})
	if err != nil {
		return err
	}
	a.ensureKnownNodeUsers(ctx)
	l, err := net.Listen("tcp", a.cfg.Join.Listen)
	if err != nil {
		return fmt.Errorf("join service: listening on %s: %w", a.cfg.Join.Listen, err)
	}
	a.joinSrv = srv
	a.joinHosts.Store(&hosts)
	// Serve returns nil once Shutdown stopped it.
	run("join service", func(context.Context) error { return srv.Serve(l) })
	a.log.Info("join service listening", "listen", a.cfg.Join.Listen, "advertise", adv)
	return nil
}

// ensureKnownNodeUsers gives every node the mesh already knows (by its
// CIDR allocation or its record) an etcd user, so nodes that joined before
// authentication was turned on keep working after the seed's upgrade.
// Best effort: a failure is logged, the node can join again.
func (a *Agent) ensureKnownNodeUsers(ctx context.Context) {
	seen := map[[2]string]bool{{a.cfg.Cluster, a.cfg.NodeName}: true}
	ensure := func(cluster, node string) {
		if seen[[2]string{cluster, node}] {
			return
		}
		seen[[2]string{cluster, node}] = true
		// A revoked node's records may reappear (written by an admin
		// client); it gets no user back.
		if a.peers.isRevoked(cluster, node) {
			return
		}
		if err := a.cp.kv.EnsureNodeUser(ctx, cluster, node); err != nil {
			a.log.Warn("giving a known node its etcd user", "node", cluster+"/"+node, "err", err)
		}
	}
	allocs, err := kvstore.List(ctx, a.cp.kv, kvstore.IPAMPrefix, kvstore.DecodeIPAM)
	if err != nil {
		a.log.Warn("listing CIDR allocations for node users", "err", err)
	}
	for _, al := range allocs {
		ensure(al.Cluster, al.Node)
	}
	nodes, err := kvstore.List(ctx, a.cp.kv, kvstore.NodesPrefix, kvstore.DecodeNode)
	if err != nil {
		a.log.Warn("listing nodes for node users", "err", err)
	}
	for _, n := range nodes {
		ensure(n.Cluster, n.Name)
	}
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
	allow, err := grant.Parse(req.AllowLabels)
	if err != nil {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "--allow-labels: %v", err)
	}
	podCIDRs, err := parsePodCIDRs(req.PodCIDRs)
	if err != nil {
		return api.CreatedToken{}, err
	}
	cl, created, err := a.tokenCluster(ctx, cluster, req.ClusterID, req.MeshPool, podCIDRs)
	if err != nil {
		return api.CreatedToken{}, err
	}
	t, secret, err := a.cp.kv.CreateToken(ctx, kvstore.TokenSpec{Cluster: cluster, Labels: labels.Strings(), TTL: ttl, MaxUses: maxUses, AllowLabels: grant.Strings(allow), PodCIDRs: podCIDRs}, time.Now())
	if err != nil {
		return api.CreatedToken{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	jt := join.Token{Server: a.cfg.JoinAdvertise(), ID: t.ID, Secret: secret, CAHash: ca.Fingerprint()}
	if err := jt.Validate(); err != nil {
		return api.CreatedToken{}, fmt.Errorf("the join service address %q cannot go into a token (set --join-advertise): %w", a.cfg.JoinAdvertise(), err)
	}
	return api.CreatedToken{Token: apiToken(t), JoinToken: jt.String(), ClusterID: cl.ID, MeshPool: cl.MeshPool.String(), ClusterCreated: created}, nil
}

// parsePodCIDRs parses a Kubernetes token's pod CIDRs.
func parsePodCIDRs(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil || p != p.Masked() {
			return nil, api.Errorf(api.CodeInvalid, "--pod-cidrs: %q is not a CIDR in canonical form (e.g. 100.96.0.0/16, the Kubernetes cluster CIDR)", s)
		}
		out = append(out, p)
	}
	return out, nil
}

// tokenCluster returns the record of the token's cluster, creating it for
// a cluster that has none: the nodes a token admits find their cluster's
// id and pool there, and a node's credential may not register one. A new
// cluster gets the id and pool asked for or free ones; an existing one
// must not be asked for others. A Kubernetes token's pod CIDRs become the
// cluster's (kvstore refuses ranges overlapping any cluster's), so the
// nodes it admits can claim their podCIDRs.
func (a *Agent) tokenCluster(ctx context.Context, cluster string, id int, pool string, podCIDRs []netip.Prefix) (kvstore.Cluster, bool, error) {
	spec := kvstore.ClusterSpec{Name: cluster, ID: id, PodCIDRs: podCIDRs}
	if pool != "" {
		p, err := netip.ParsePrefix(pool)
		if err != nil || p != p.Masked() {
			return kvstore.Cluster{}, false, api.Errorf(api.CodeInvalid, "--mesh-pool: %q is not a CIDR in canonical form (e.g. 100.65.0.0/16, inside %s)", pool, kvstore.MeshRangeV4)
		}
		spec.MeshPool = p
	}
	cl, created, err := a.cp.kv.EnsureCluster(ctx, spec)
	switch {
	case kvstore.IsPermissionDenied(err):
		return kvstore.Cluster{}, false, needAdmin("creating tokens")
	case errors.Is(err, kvstore.ErrConflict), errors.Is(err, kvstore.ErrOverlap), errors.Is(err, kvstore.ErrInvalidConfig),
		errors.Is(err, kvstore.ErrInvalidKey), errors.Is(err, kvstore.ErrInvalidRecord),
		errors.Is(err, kvstore.ErrPoolExhausted), errors.Is(err, kvstore.ErrClusterIDsExhausted):
		return kvstore.Cluster{}, false, api.Errorf(api.CodeInvalid, "cluster %s: %v", cluster, err)
	case err != nil:
		return kvstore.Cluster{}, false, fmt.Errorf("reading or creating cluster %s: %w", cluster, err)
	}
	if created {
		a.log.Info("token created a cluster", "cluster", cl.Name, "id", cl.ID, "meshPool", cl.MeshPool)
		return cl, true, nil
	}
	changed := false
	for _, p := range podCIDRs {
		if !slices.Contains(cl.PodCIDRs, p) {
			cl.PodCIDRs = append(cl.PodCIDRs, p)
			changed = true
		}
	}
	if changed {
		if err := cl.Validate(); err != nil {
			return kvstore.Cluster{}, false, api.Errorf(api.CodeInvalid, "--pod-cidrs: %v", err)
		}
		if err := a.cp.kv.PutCluster(ctx, cl); err != nil {
			if kvstore.IsPermissionDenied(err) {
				return kvstore.Cluster{}, false, needAdmin("creating Kubernetes tokens")
			}
			return kvstore.Cluster{}, false, api.Errorf(api.CodeInvalid, "--pod-cidrs: %v", err)
		}
	}
	return cl, false, nil
}

// Tokens implements api.TokenManager.
func (a *Agent) Tokens(ctx context.Context) ([]api.Token, error) {
	ts, err := a.cp.kv.ListTokens(ctx)
	if kvstore.IsPermissionDenied(err) {
		return nil, needAdmin("listing tokens")
	}
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
	if kvstore.IsPermissionDenied(err) {
		return needAdmin("revoking tokens")
	}
	if errors.Is(err, kvstore.ErrNotFound) || errors.Is(err, kvstore.ErrTokenUnknown) {
		return api.Errorf(api.CodeNotFound, "no token %q (see `meshctl token list`)", id)
	}
	return err
}

func apiToken(t kvstore.Token) api.Token {
	return api.Token{ID: t.ID, Cluster: t.Cluster, Labels: identity.LabelMap(t.Labels), CreatedAt: t.Created, ExpiresAt: t.Expires, Uses: t.Uses, MaxUses: t.MaxUses, Revoked: t.Revoked, AllowLabels: t.AllowLabels, PodCIDRs: prefixStrings(t.PodCIDRs)}
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}
