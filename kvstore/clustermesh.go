package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/pki"
)

// Connected clusters (docs/clusters.md). Each cluster keeps its own etcd;
// connecting two gives each a read-only etcd user in the other's etcd,
// named ClusterUser(<reader>), whose role (RemoteClusterRole) reads only
// the records a remote cluster needs of this one: its cluster record,
// nodes, endpoints, identities, grants and revocations. Never tokens,
// policies, IPAM or the connections' own credentials.
//
// The connection to a remote cluster is stored at clustermesh/<remote>
// (RemoteCluster): where its etcd is, its CA and the client credential for
// it. The prefix is admin only, since it holds that credential; agents
// learn about remote clusters from the mirror (MirrorPrefix), which the
// seed's mirror writes.

// ClusterMeshPrefix holds the connections to remote clusters.
const ClusterMeshPrefix = Prefix + "clustermesh/"

// RemoteClustersPrefix holds what agents read of each connection,
// remoteclusters/<cluster> (RemoteClusterView): the remote's name, id,
// ranges and mode, and only in direct mode the read-only credential the
// agents watch the remote etcd with. Written with its clustermesh/ record
// by the admin; read by every node.
const RemoteClustersPrefix = Prefix + "remoteclusters/"

// RemoteClusterViewKey is remoteclusters/<cluster>.
func RemoteClusterViewKey(cluster string) string {
	return RemoteClustersPrefix + mustName("cluster", cluster)
}

// MirrorsPrefix holds the mirrors of remote clusters' records,
// mirror/<cluster>/<key below Prefix>: written by this cluster's seed,
// read by its agents.
const MirrorsPrefix = Prefix + "mirror/"

// ClusterMeshKey is clustermesh/<cluster>.
func ClusterMeshKey(cluster string) string { return ClusterMeshPrefix + mustName("cluster", cluster) }

// ClusterUser is the etcd user (and role) a remote cluster reads this
// cluster's etcd as: the common name of the credential it was given.
func ClusterUser(reader string) string { return "cluster:" + reader }

// ParseClusterUser is the inverse of ClusterUser.
func ParseClusterUser(user string) (string, bool) {
	name, ok := strings.CutPrefix(user, "cluster:")
	if !ok || ValidateName("cluster", name) != nil {
		return "", false
	}
	return name, true
}

// Connection modes: how this cluster's agents learn a remote cluster's
// records.
const (
	// ModeMirror: this cluster's seed copies them into the local etcd
	// (MirrorPrefix); agents watch only their own etcd, and the remote etcd
	// sees one watcher per connected cluster.
	ModeMirror = "mirror"
	// ModeDirect: every agent watches the remote etcd itself (small meshes).
	ModeDirect = "direct"
	// ModePushed: the remote cluster cannot be reached (its etcd is behind
	// NAT) and its own seed pushes its records into this etcd's mirror
	// prefix; agents read them there as in mirror mode.
	ModePushed = "pushed"
)

// MaxEtcdEndpoints bounds a remote cluster's endpoint list.
const MaxEtcdEndpoints = 16

// RemoteCluster is clustermesh/<cluster>: a connection to another
// cluster's etcd.
type RemoteCluster struct {
	Version  int            `json:"version"`
	Name     string         `json:"name"`
	ID       int            `json:"id"`
	MeshPool netip.Prefix   `json:"meshPool"`
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	// JoinServer is the remote's join service (host:port), told when this
	// side disconnects.
	JoinServer string `json:"joinServer"`
	// EtcdEndpoints are the remote etcd's client URLs (https).
	EtcdEndpoints []string `json:"etcdEndpoints"`
	// CACert (PEM) verifies the remote etcd's server certificate.
	CACert string `json:"caCert"`
	// Cert and Key (PEM) are the client credential the remote cluster
	// issued for this one: etcd user ClusterUser(<this cluster>).
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// Mode is ModeMirror, ModeDirect or ModePushed.
	Mode string `json:"mode"`
	// Push: this side pushes its own records into the remote's etcd
	// (this side is the one behind NAT), besides reading the remote's.
	Push      bool      `json:"push,omitempty"`
	Connected time.Time `json:"connected"`
}

func (*RemoteCluster) recordKind() string   { return "remote cluster" }
func (r *RemoteCluster) versionField() *int { return &r.Version }

// Cluster is the remote's cluster record as this cluster knows it (what
// the overlap checks compare).
func (r RemoteCluster) Cluster() Cluster {
	return Cluster{Version: RecordVersion, Name: r.Name, ID: r.ID, MeshPool: r.MeshPool, PodCIDRs: r.PodCIDRs}
}

// RemoteClusterView is remoteclusters/<cluster>.
type RemoteClusterView struct {
	Version  int            `json:"version"`
	Name     string         `json:"name"`
	ID       int            `json:"id"`
	MeshPool netip.Prefix   `json:"meshPool"`
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	Mode     string         `json:"mode"`
	// Direct is set in direct mode only: how agents reach the remote etcd.
	Direct *DirectAccess `json:"direct,omitempty"`
}

// DirectAccess is the remote etcd and the read-only credential for it.
type DirectAccess struct {
	EtcdEndpoints []string `json:"etcdEndpoints"`
	CACert        string   `json:"caCert"`
	Cert          string   `json:"cert"`
	Key           string   `json:"key"`
}

func (*RemoteClusterView) recordKind() string   { return "remote cluster view" }
func (v *RemoteClusterView) versionField() *int { return &v.Version }

// Cluster is the remote's cluster part.
func (v RemoteClusterView) Cluster() Cluster {
	return Cluster{Version: RecordVersion, Name: v.Name, ID: v.ID, MeshPool: v.MeshPool, PodCIDRs: v.PodCIDRs}
}

// Validate checks the cluster part, the mode and, in direct mode only, the
// access.
func (v RemoteClusterView) Validate() error {
	if err := v.Cluster().Validate(); err != nil {
		return err
	}
	switch {
	case (v.Mode == ModeMirror || v.Mode == ModePushed) && v.Direct == nil:
	case v.Mode == ModeDirect && v.Direct != nil:
		d := v.Direct
		r := RemoteCluster{Name: v.Name, ID: v.ID, MeshPool: v.MeshPool, PodCIDRs: v.PodCIDRs, EtcdEndpoints: d.EtcdEndpoints,
			CACert: d.CACert, Cert: d.Cert, Key: d.Key, Mode: ModeDirect}
		return r.Validate()
	default:
		return invalid("remote cluster view", "%s: mode %q with%s direct access", v.Name, v.Mode, map[bool]string{true: "", false: "out"}[v.Direct != nil])
	}
	return nil
}

// View is what agents may read of r.
func (r RemoteCluster) View() RemoteClusterView {
	v := RemoteClusterView{Version: RecordVersion, Name: r.Name, ID: r.ID, MeshPool: r.MeshPool, PodCIDRs: r.PodCIDRs, Mode: r.Mode}
	if r.Mode == ModeDirect {
		v.Direct = &DirectAccess{EtcdEndpoints: r.EtcdEndpoints, CACert: r.CACert, Cert: r.Cert, Key: r.Key}
	}
	return v
}

// RemoteClusterViewDecoder decodes a remoteclusters/ value and checks its
// key.
func RemoteClusterViewDecoder(key string, data []byte) (RemoteClusterView, error) {
	v, err := decode[RemoteClusterView](data)
	if err != nil {
		return v, err
	}
	if want := RemoteClusterViewKey(v.Name); key != want {
		return v, fmt.Errorf("%w: remote cluster %s stored at %s (want %s)", ErrInvalidRecord, v.Name, key, want)
	}
	return v, nil
}

// Validate checks every field: the cluster part as Cluster.Validate does,
// https endpoints, PEM blocks that parse, and a key that matches the
// certificate.
func (r RemoteCluster) Validate() error {
	if err := r.Cluster().Validate(); err != nil {
		return err
	}
	if err := ValidateEtcdEndpoints(r.EtcdEndpoints); err != nil {
		return invalid("remote cluster", "%s: %v", r.Name, err)
	}
	if _, err := pki.ParseCertPEM([]byte(r.CACert)); err != nil {
		return invalid("remote cluster", "%s: caCert: %v", r.Name, err)
	}
	if _, err := tls.X509KeyPair([]byte(r.Cert), []byte(r.Key)); err != nil {
		return invalid("remote cluster", "%s: cert and key: %v", r.Name, err)
	}
	if r.Mode != ModeMirror && r.Mode != ModeDirect && r.Mode != ModePushed {
		return invalid("remote cluster", "%s: mode %q, must be %s, %s or %s", r.Name, r.Mode, ModeMirror, ModeDirect, ModePushed)
	}
	if r.Push && r.Mode == ModePushed {
		return invalid("remote cluster", "%s: both sides cannot push", r.Name)
	}
	return nil
}

// ValidateEtcdEndpoints checks a list of etcd client URLs: 1 to
// MaxEtcdEndpoints https URLs with a host and port and nothing else.
func ValidateEtcdEndpoints(eps []string) error {
	if len(eps) == 0 || len(eps) > MaxEtcdEndpoints {
		return fmt.Errorf("%d etcd endpoints, want 1..%d", len(eps), MaxEtcdEndpoints)
	}
	for _, e := range eps {
		u, err := url.Parse(e)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("etcd endpoint %q is not https://host:port", e)
		}
	}
	return nil
}

// DecodeRemoteCluster decodes a clustermesh/ value.
func DecodeRemoteCluster(data []byte) (RemoteCluster, error) { return decode[RemoteCluster](data) }

// ClusterConflict says why clusters a and b cannot be in one mesh (the same
// name or id, or overlapping ranges, each named), or nil.
func ClusterConflict(a, b Cluster) error {
	if a.Name == b.Name {
		return fmt.Errorf("%w: both clusters are named %q; cluster names must be unique in a mesh", ErrConflict, a.Name)
	}
	if a.ID == b.ID {
		return fmt.Errorf("%w: cluster %q and cluster %q both have id %d; cluster ids must be unique in a mesh", ErrConflict, a.Name, b.Name, a.ID)
	}
	for _, x := range append([]netip.Prefix{a.MeshPool}, a.PodCIDRs...) {
		for _, y := range append([]netip.Prefix{b.MeshPool}, b.PodCIDRs...) {
			if x.Overlaps(y) {
				return fmt.Errorf("%w: cluster %q range %s overlaps cluster %q range %s; connected clusters need disjoint ranges", ErrOverlap, a.Name, x, b.Name, y)
			}
		}
	}
	return nil
}

// RemoteClusterRole is the etcd role of remote cluster reader in this
// etcd, whose cluster is local: read only, on what the reader's mirror or
// agents list and watch of local.
func RemoteClusterRole(reader, local string) (Role, error) {
	if err := ValidateName("cluster", reader); err != nil {
		return Role{}, err
	}
	if err := ValidateName("cluster", local); err != nil {
		return Role{}, err
	}
	c := local + "/"
	perms := []Permission{
		{Key: Prefix}, // the connection check reads the bare prefix key
		{Key: ClusterKey(local)},
		prefixPerm(NodesPrefix+c, false),
		prefixPerm(EndpointsPrefix+c, false),
		// Identity numbers are not zero padded, so a cluster's range is not
		// a key range: the whole prefix. An etcd of one cluster holds only
		// that cluster's identities.
		prefixPerm(IdentityIDPrefix, false),
		prefixPerm(GrantsPrefix+c, false),
		prefixPerm(RevokedPrefix+c, false),
	}
	return Role{Name: ClusterUser(reader), Perms: perms}, nil
}

// PushingClusterRole is RemoteClusterRole for a remote cluster that
// cannot be reached and pushes its own records here: it may also write
// mirror/<reader>/, and nothing else.
func PushingClusterRole(reader, local string) (Role, error) {
	r, err := RemoteClusterRole(reader, local)
	if err != nil {
		return r, err
	}
	r.Perms = append(r.Perms, prefixPerm(MirrorPrefix(reader), true))
	return r, nil
}

// ensureRole creates (or completes) role and the certificate user of the
// same name. Idempotent; admin only.
func (c *Client) ensureRole(ctx context.Context, role Role) error {
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.etcd.RoleAdd(rctx, role.Name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("creating etcd role %s: %w", role.Name, mapAuthError(err))
	}
	for _, p := range role.Perms {
		pt := clientv3.PermissionType(authpb.READ)
		if p.Write {
			pt = clientv3.PermissionType(authpb.READWRITE)
		}
		if _, err := c.etcd.RoleGrantPermission(rctx, role.Name, p.Key, p.RangeEnd, pt); err != nil {
			return fmt.Errorf("granting %s on %q to etcd role %s: %w", authpb.Permission_Type(pt), p.Key, role.Name, mapAuthError(err))
		}
	}
	if _, err := c.etcd.UserAddWithOptions(rctx, role.Name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("creating etcd user %s: %w", role.Name, mapAuthError(err))
	}
	if _, err := c.etcd.UserGrantRole(rctx, role.Name, role.Name); err != nil {
		return fmt.Errorf("granting role %s to etcd user %s: %w", role.Name, role.Name, mapAuthError(err))
	}
	return nil
}

// removeRole deletes the user and role name; absent ones are not an error.
func (c *Client) removeRole(ctx context.Context, name string) error {
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.etcd.UserDelete(rctx, name); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("deleting etcd user %s: %w", name, mapAuthError(err))
	}
	if _, err := c.etcd.RoleDelete(rctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return fmt.Errorf("deleting etcd role %s: %w", name, mapAuthError(err))
	}
	return nil
}

// EnsureClusterUser creates the read-only etcd user of remote cluster
// reader (RemoteClusterRole; with push, PushingClusterRole). Idempotent;
// admin only.
func (c *Client) EnsureClusterUser(ctx context.Context, reader, local string, push bool) error {
	role, err := RemoteClusterRole(reader, local)
	if push {
		role, err = PushingClusterRole(reader, local)
	}
	if err != nil {
		return err
	}
	return c.ensureRole(ctx, role)
}

// RemoveClusterUser deletes remote cluster reader's etcd user and role:
// its credential reads nothing any more.
func (c *Client) RemoveClusterUser(ctx context.Context, reader string) error {
	if err := ValidateName("cluster", reader); err != nil {
		return err
	}
	return c.removeRole(ctx, ClusterUser(reader))
}

// PutRemoteCluster stores a connection after checking it against this
// etcd's clusters and the other connections (ErrConflict or ErrOverlap,
// naming both sides). The check and the write are one transaction, so two
// connections made at once cannot overlap.
func (c *Client) PutRemoteCluster(ctx context.Context, r RemoteCluster) error {
	data, err := Encode(&r)
	if err != nil {
		return err
	}
	view := r.View()
	viewData, err := Encode(&view)
	if err != nil {
		return err
	}
	key := ClusterMeshKey(r.Name)
	for {
		rctx, cancel := c.reqCtx(ctx)
		resp, err := c.kv.Txn(rctx).Then(
			clientv3.OpGet(ClustersPrefix, clientv3.WithPrefix()),
			clientv3.OpGet(ClusterMeshPrefix, clientv3.WithPrefix()),
		).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("reading clusters and connections: %w", err)
		}
		for i, rr := range resp.Responses {
			for _, kv := range rr.GetResponseRange().Kvs {
				if string(kv.Key) == key {
					continue
				}
				var other Cluster
				if i == 0 {
					other, err = DecodeCluster(kv.Value)
				} else {
					var o RemoteCluster
					o, err = DecodeRemoteCluster(kv.Value)
					other = o.Cluster()
				}
				if err != nil {
					c.log.Warn("skipping value that does not decode", "key", string(kv.Key), "err", err)
					continue
				}
				if err := ClusterConflict(r.Cluster(), other); err != nil {
					return err
				}
			}
		}
		rev := resp.Header.Revision
		rctx, cancel = c.reqCtx(ctx)
		tresp, err := c.kv.Txn(rctx).If(
			clientv3.Compare(clientv3.ModRevision(ClustersPrefix), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.ModRevision(ClusterMeshPrefix), "<", rev+1).WithPrefix(),
		).Then(clientv3.OpPut(key, string(data)), clientv3.OpPut(RemoteClusterViewKey(r.Name), string(viewData))).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("writing %s: %w", key, err)
		}
		if tresp.Succeeded {
			return nil
		}
	}
}

// GetRemoteCluster reads clustermesh/<name>.
func (c *Client) GetRemoteCluster(ctx context.Context, name string) (RemoteCluster, error) {
	if err := ValidateName("cluster", name); err != nil {
		return RemoteCluster{}, err
	}
	r, _, err := Get(ctx, c, ClusterMeshKey(name), DecodeRemoteCluster)
	return r, err
}

// ListRemoteClusters reads every connection, sorted by name; values that do
// not decode are logged and left out.
func (c *Client) ListRemoteClusters(ctx context.Context) ([]RemoteCluster, error) {
	m, err := List(ctx, c, ClusterMeshPrefix, DecodeRemoteCluster)
	if err != nil {
		return nil, err
	}
	out := make([]RemoteCluster, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b RemoteCluster) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DeleteRemoteCluster removes the connection to name and everything its
// mirror wrote (MirrorPrefix(name)) in one transaction; absent is not an
// error.
func (c *Client) DeleteRemoteCluster(ctx context.Context, name string) error {
	if err := ValidateName("cluster", name); err != nil {
		return err
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	_, err := c.kv.Txn(rctx).Then(
		clientv3.OpDelete(ClusterMeshKey(name)),
		clientv3.OpDelete(RemoteClusterViewKey(name)),
		clientv3.OpDelete(MirrorsPrefix+name+"/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return fmt.Errorf("deleting the connection to cluster %s: %w", name, err)
	}
	return nil
}

// RemoteClusterDecoder decodes a clustermesh/ value and checks its key.
func RemoteClusterDecoder(key string, data []byte) (RemoteCluster, error) {
	r, err := DecodeRemoteCluster(data)
	if err != nil {
		return r, err
	}
	if want := ClusterMeshKey(r.Name); key != want {
		return r, fmt.Errorf("%w: connection to %s stored at %s (want %s)", ErrInvalidRecord, r.Name, key, want)
	}
	return r, nil
}

// RemoteAccess is how to reach a remote cluster's etcd read-only.
type RemoteAccess struct {
	Endpoints              []string
	CAPEM, CertPEM, KeyPEM []byte
	RequestTimeout         time.Duration
	Logger                 *slog.Logger
}

// NewRemoteClient makes a client of a remote cluster's etcd. Unlike New it
// does not wait for the etcd to answer: a remote cluster down when this
// one starts is retried by its caches and mirror, whose status shows it.
func NewRemoteClient(ctx context.Context, ra RemoteAccess) (*Client, error) {
	if err := ValidateEtcdEndpoints(ra.Endpoints); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	ca, err := pki.ParseCertPEM(ra.CAPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: the remote CA: %w", ErrInvalidConfig, err)
	}
	pair, err := tls.X509KeyPair(ra.CertPEM, ra.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: the remote credential: %w", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	log := ra.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ec, err := clientv3.New(clientv3.Config{
		Endpoints: ra.Endpoints,
		TLS:       &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		Context:   ctx,
		Logger:    nopZap(),
		// Keepalives notice a dead remote during long watches.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		PermitWithoutStream:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(ra.Endpoints, ","), err)
	}
	t := ra.RequestTimeout
	if t <= 0 {
		t = DefaultRequestTimeout
	}
	return wrap(ec, t, log), nil
}

// KV is the client's key-value interface (with permission errors mapped),
// for writers such as the mirror.
func (c *Client) KV() clientv3.KV { return c.kv }

// DeleteMirror removes everything under MirrorPrefix(cluster) (a stopped
// mirror's leftovers); admin only.
func (c *Client) DeleteMirror(ctx context.Context, cluster string) error {
	if err := ValidateName("cluster", cluster); err != nil {
		return err
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.kv.Delete(rctx, MirrorPrefix(cluster), clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("deleting the mirror of cluster %s: %w", cluster, err)
	}
	return nil
}
