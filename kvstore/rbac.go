package kvstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Least privilege on etcd (docs/security.md). With authentication on,
// etcd takes a client certificate's common name as its user name when no
// password is given. The mesh's admin certificate is CN=root (the etcd root
// user); every joined node's certificate is CN=node:<cluster>/<node>, whose
// user has a role of the same name that may write only the node's own keys
// and read what an agent needs, never tokens. Writes etcd roles cannot
// scope (new identities, IPAM, clusters, the gossip key, tokens, policies)
// are the admin's: nodes ask the seed's service for the node-side ones.

// ErrPermissionDenied is wrapped by every error of this package that etcd
// refused for the credential's role (rpctypes.ErrPermissionDenied and the
// other authentication refusals), so callers can tell "you may not" from
// "etcd is down" with errors.Is.
var ErrPermissionDenied = errors.New("kvstore: permission denied by etcd")

// AdminUser is the etcd user of the mesh's admin certificate (its CN).
const AdminUser = "root"

// GrantsPrefix holds the label grants of joined nodes: grants/<c>/<n>,
// written by the join service (admin) and read by every agent.
const GrantsPrefix = Prefix + "grants/"

// GrantKey is grants/<cluster>/<node>.
func GrantKey(cluster, node string) string {
	return GrantsPrefix + mustName("cluster", cluster) + "/" + mustName("node", node)
}

// NodeUser is the etcd user (and role) of a node: the common name the join
// service puts in its certificate (agent/join.NodeCommonName).
func NodeUser(cluster, node string) string { return "node:" + cluster + "/" + node }

// ParseNodeUser is the inverse of NodeUser; ok is false for any other
// name (the admin, or a name that is not a valid cluster/node pair).
func ParseNodeUser(user string) (cluster, node string, ok bool) {
	rest, found := strings.CutPrefix(user, "node:")
	if !found {
		return "", "", false
	}
	cluster, node, found = strings.Cut(rest, "/")
	if !found || ValidateName("cluster", cluster) != nil || ValidateName("node", node) != nil {
		return "", "", false
	}
	return cluster, node, true
}

// Operation is what a request does to a key or range.
type Operation int

// The operations etcd's roles distinguish.
const (
	OpRead Operation = iota
	OpWrite
)

func (o Operation) String() string {
	if o == OpWrite {
		return "write"
	}
	return "read"
}

// Permission is one grant of a role: the single key Key when RangeEnd is
// empty, else the range [Key, RangeEnd) as etcd has it (a prefix p is
// [p, clientv3.GetPrefixRangeEnd(p))).
type Permission struct {
	Key, RangeEnd string
	Write         bool // read and write; false is read only
}

// Role is a set of permissions; Admin allows everything (etcd's root role).
type Role struct {
	Name  string
	Admin bool
	Perms []Permission
}

func prefixPerm(p string, write bool) Permission {
	return Permission{Key: p, RangeEnd: clientv3.GetPrefixRangeEnd(p), Write: write}
}

// AdminRole is the root role.
func AdminRole() Role { return Role{Name: AdminUser, Admin: true} }

// NodeRole computes the etcd role of node in cluster: read-write on its own
// keys (nodes/<c>/<n> exactly, endpoints/<c>/<n>/ and identities/refs/<c>/<n>/),
// read-only on what an agent lists and watches (revoked/ and the remote
// clusters' mirrors included), nothing on tokens/ or clustermesh/.
func NodeRole(cluster, node string) (Role, error) {
	if err := ValidateName("cluster", cluster); err != nil {
		return Role{}, err
	}
	if err := ValidateName("node", node); err != nil {
		return Role{}, err
	}
	perms := []Permission{
		{Key: NodeKey(cluster, node), Write: true},
		prefixPerm(EndpointsNodePrefix(cluster, node), true),
		prefixPerm(IdentityRefsNodePrefix(cluster, node), true),
		// The bare prefix key: the connection check and Ping read it.
		{Key: Prefix},
		{Key: GossipKeyKey},
	}
	// revoked/ is read so every agent refuses revoked nodes; never
	// written, so a node cannot lift (or forge) a revocation.
	for _, p := range []string{ClustersPrefix, NodesPrefix, IPAMPrefix, IdentityIDPrefix, IdentityLabelsPrefix, EndpointsPrefix, PoliciesPrefix, GrantsPrefix, RevokedPrefix, MirrorsPrefix, RemoteClustersPrefix} {
		perms = append(perms, prefixPerm(p, false))
	}
	return Role{Name: NodeUser(cluster, node), Perms: perms}, nil
}

// Authorize decides whether role may do op on the range [key, rangeEnd)
// (rangeEnd empty: the single key), as etcd decides it: the range must be
// covered by the union of the role's permissions that allow op.
func Authorize(r Role, key, rangeEnd string, op Operation) bool {
	if r.Admin {
		return true
	}
	if rangeEnd == "" {
		for _, p := range r.Perms {
			if op == OpWrite && !p.Write {
				continue
			}
			if p.RangeEnd == "" && key == p.Key || p.RangeEnd != "" && key >= p.Key && (p.RangeEnd == "\x00" || key < p.RangeEnd) {
				return true
			}
		}
		return false
	}
	if rangeEnd != "\x00" && rangeEnd <= key {
		return false // an empty or inverted range: etcd refuses it anyway
	}
	// Sweep the allowing intervals in order, extending the covered prefix
	// of [key, rangeEnd) until it reaches rangeEnd or a gap shows.
	type iv struct{ lo, hi string } // hi "\x00": unbounded
	var ivs []iv
	for _, p := range r.Perms {
		if op == OpWrite && !p.Write {
			continue
		}
		if p.RangeEnd == "" {
			ivs = append(ivs, iv{p.Key, p.Key + "\x00"}) // the single key is [k, k+"\x00")
		} else {
			ivs = append(ivs, iv{p.Key, p.RangeEnd})
		}
	}
	slices.SortFunc(ivs, func(a, b iv) int { return strings.Compare(a.lo, b.lo) })
	covered := key
	for _, v := range ivs {
		if v.lo > covered {
			break
		}
		if v.hi == "\x00" {
			return true
		}
		if v.hi > covered {
			covered = v.hi
		}
		if rangeEnd != "\x00" && covered >= rangeEnd {
			return true
		}
	}
	return false
}

// IsPermissionDenied reports whether err is etcd refusing the credential.
func IsPermissionDenied(err error) bool {
	return errors.Is(err, ErrPermissionDenied)
}

// authDenials are the etcd errors that mean "this credential may not",
// never "etcd is unavailable".
var authDenials = []error{
	rpctypes.ErrPermissionDenied, rpctypes.ErrGRPCPermissionDenied,
	rpctypes.ErrUserNotFound, rpctypes.ErrGRPCUserNotFound,
	rpctypes.ErrAuthFailed, rpctypes.ErrGRPCAuthFailed,
	rpctypes.ErrUserEmpty, rpctypes.ErrGRPCUserEmpty,
	rpctypes.ErrRoleNotGranted, rpctypes.ErrGRPCRoleNotGranted,
}

// permissionError keeps etcd's error and adds ErrPermissionDenied.
type permissionError struct{ err error }

func (e *permissionError) Error() string {
	return ErrPermissionDenied.Error() + " (this credential's etcd role does not allow it; an admin credential does): " + e.err.Error()
}
func (e *permissionError) Unwrap() []error { return []error{ErrPermissionDenied, e.err} }

// mapAuthError wraps etcd's authorization refusals in ErrPermissionDenied.
func mapAuthError(err error) error {
	if err == nil || errors.Is(err, ErrPermissionDenied) {
		return err
	}
	for _, d := range authDenials {
		if errors.Is(err, d) {
			return &permissionError{err: err}
		}
	}
	// The gRPC status form, when the client did not convert it.
	if strings.Contains(err.Error(), "etcdserver: permission denied") {
		return &permissionError{err: err}
	}
	// Every KV call goes through here: etcd not answering is named too.
	return mapUnavailable(err)
}

// authKV maps the refusals of every KV call the helpers make.
type authKV struct{ clientv3.KV }

func (k authKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	r, err := k.KV.Put(ctx, key, val, opts...)
	return r, mapAuthError(err)
}

func (k authKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r, err := k.KV.Get(ctx, key, opts...)
	return r, mapAuthError(err)
}

func (k authKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	r, err := k.KV.Delete(ctx, key, opts...)
	return r, mapAuthError(err)
}

func (k authKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	r, err := k.KV.Do(ctx, op)
	return r, mapAuthError(err)
}

func (k authKV) Txn(ctx context.Context) clientv3.Txn { return authTxn{k.KV.Txn(ctx)} }

type authTxn struct{ clientv3.Txn }

func (t authTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { return authTxn{t.Txn.If(cs...)} }
func (t authTxn) Then(ops ...clientv3.Op) clientv3.Txn { return authTxn{t.Txn.Then(ops...)} }
func (t authTxn) Else(ops ...clientv3.Op) clientv3.Txn { return authTxn{t.Txn.Else(ops...)} }
func (t authTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	return r, mapAuthError(err)
}

// AuthEnabled reports whether etcd's authentication is on.
func (c *Client) AuthEnabled(ctx context.Context) (bool, error) {
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	st, err := c.etcd.AuthStatus(rctx)
	if err != nil {
		return false, fmt.Errorf("reading etcd's authentication status: %w", mapAuthError(err))
	}
	return st.Enabled, nil
}

// EnableAuth makes the root user (no password: the admin certificate with
// CN=root logs in as it) and turns etcd's authentication on. It is
// idempotent; with auth already on it changes nothing. The client must be
// the admin's: once auth is on, every other certificate needs a user.
func (c *Client) EnableAuth(ctx context.Context) error {
	// etcd before 3.5 has no AuthStatus: then every step below is made
	// idempotent instead, and AuthEnable on an enabled etcd is harmless.
	if on, err := c.AuthEnabled(ctx); err != nil && status.Code(errors.Unwrap(err)) != codes.Unimplemented && !strings.Contains(err.Error(), "Unimplemented") {
		return err
	} else if on {
		return nil
	}
	rctx, cancel := c.reqCtx(ctx)
	defer cancel()
	if _, err := c.etcd.RoleAdd(rctx, AdminUser); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("creating etcd role %s: %w", AdminUser, err)
	}
	if _, err := c.etcd.UserAddWithOptions(rctx, AdminUser, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("creating etcd user %s: %w", AdminUser, err)
	}
	if _, err := c.etcd.UserGrantRole(rctx, AdminUser, AdminUser); err != nil {
		return fmt.Errorf("granting role %s to user %s: %w", AdminUser, AdminUser, err)
	}
	if _, err := c.etcd.AuthEnable(rctx); err != nil {
		return fmt.Errorf("enabling etcd authentication: %w", err)
	}
	c.log.Info("etcd authentication enabled", "admin", AdminUser)
	return nil
}

// EnsureNodeUser creates (or completes) node's etcd user and role with the
// permissions NodeRole computes, so its certificate can reach etcd once
// authentication is on. Idempotent; admin only.
func (c *Client) EnsureNodeUser(ctx context.Context, cluster, node string) error {
	role, err := NodeRole(cluster, node)
	if err != nil {
		return err
	}
	return c.ensureRole(ctx, role)
}

// RemoveNodeUser deletes node's etcd user and role: its certificate can
// no longer read or write anything. Absent ones are not an error.
func (c *Client) RemoveNodeUser(ctx context.Context, cluster, node string) error {
	if err := ValidateName("cluster", cluster); err != nil {
		return err
	}
	if err := ValidateName("node", node); err != nil {
		return err
	}
	return c.removeRole(ctx, NodeUser(cluster, node))
}
