package kvstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/weftmesh/weft/identity"
)

// ErrRefused is wrapped by the refusal of a record that a remote cluster
// may not provide: another cluster's, or a kind no cluster shares.
var ErrRefused = errors.New("kvstore: record refused")

// CheckRemote says whether the remote cluster named cluster, with id
// clusterID, may provide the record v (already decoded and checked against
// its key) at key, a key of the schema. A cluster speaks only for itself:
//
//   - clusters/<cluster> exactly, with its own id;
//   - nodes/<cluster>/…, endpoints/<cluster>/…, grants/<cluster>/…,
//     revoked/<cluster>/…: its own nodes' records;
//   - identities/id/<n> for n in its range (identity.NumericIdentity.InCluster);
//   - an endpoint's identity must be one of its own or a reserved one.
//
// Everything else (tokens, policies, IPAM, identity labels and references,
// the connections, another cluster's records) is refused, wrapping
// ErrRefused with what was wrong.
func CheckRemote(cluster string, clusterID int, key string, v any) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s from cluster %s (id %d): %s", ErrRefused, key, cluster, clusterID, fmt.Sprintf(format, args...))
	}
	pk, err := ParseKey(key)
	if err != nil {
		return refuse("%v", err)
	}
	switch pk.Kind {
	case "clusters", "nodes", "endpoints", "grants", "revoked":
		if pk.Cluster != cluster {
			return refuse("a record of cluster %s: a cluster provides only its own", pk.Cluster)
		}
	case "identities/id":
		if !identity.NumericIdentity(pk.ID).InCluster(clusterID) {
			return refuse("identity %d is outside the cluster's range (cluster id %d)", pk.ID, identity.NumericIdentity(pk.ID).ClusterID())
		}
	default:
		return refuse("%s records are not shared between clusters", pk.Kind)
	}
	switch r := v.(type) {
	case Cluster:
		if r.ID != clusterID {
			return refuse("its cluster record says id %d, it was connected as id %d (reconnect it with its id)", r.ID, clusterID)
		}
	case Endpoint:
		n := identity.NumericIdentity(r.Identity)
		if !n.IsReserved() && !n.InCluster(clusterID) {
			return refuse("endpoint %s has identity %d, not one of the cluster's", r.IP, r.Identity)
		}
	}
	return nil
}

// AcceptRemote is CheckRemote as the Accept of a MultiCache member that
// reads a remote cluster's records (directly or through its mirror).
func AcceptRemote[T any](cluster string, clusterID int) func(key string, v T) error {
	mustName("cluster", cluster)
	return func(key string, v T) error { return CheckRemote(cluster, clusterID, key, v) }
}

// MirrorStatus is mirror/<cluster>/status: how the mirror of a remote
// cluster stands, written by the mirror (kvstore/mirror) and read by
// `meshctl cluster status`. Updated is rewritten at least every
// HeartbeatSeconds, so a reader tells a stopped mirror from a quiet one.
type MirrorStatus struct {
	Version   int    `json:"version"`
	Cluster   string `json:"cluster"`
	ClusterID int    `json:"clusterID"`
	// Synced: the mirror listed every prefix of the remote and the local
	// copy equals it (as of Revision).
	Synced bool `json:"synced"`
	// Connected: the remote etcd answered last time it was asked.
	Connected bool `json:"connected"`
	// Revision of the remote etcd the copy had caught up with at its last
	// write.
	Revision int64 `json:"revision"`
	// Counts of the records copied, by kind.
	Counts MirrorCounts `json:"counts"`
	// Skipped counts remote values that did not decode; Refused, records
	// the remote may not provide (CheckRemote); both since the mirror
	// started.
	Skipped int64 `json:"skipped"`
	Refused int64 `json:"refused"`
	// LastError is the newest error, of the remote ("remote: …") or of
	// writing locally ("local: …"), kept after recovery with its time.
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	// LastChangeAt is when the mirror last wrote or deleted a record.
	LastChangeAt time.Time `json:"lastChangeAt,omitzero"`
	// Updated is when this status was written; HeartbeatSeconds how often
	// it is at least.
	Updated          time.Time `json:"updated"`
	HeartbeatSeconds int       `json:"heartbeatSeconds"`
}

// MirrorCounts are the records of a mirror, by kind.
type MirrorCounts struct {
	Clusters    int `json:"clusters"`
	Nodes       int `json:"nodes"`
	Endpoints   int `json:"endpoints"`
	Identities  int `json:"identities"`
	Revocations int `json:"revocations"`
	Grants      int `json:"grants"`
}

func (*MirrorStatus) recordKind() string   { return "mirror status" }
func (m *MirrorStatus) versionField() *int { return &m.Version }

// Validate checks the name, the id and the counters.
func (m MirrorStatus) Validate() error {
	if err := ValidateName("cluster", m.Cluster); err != nil {
		return fmt.Errorf("%w: mirror status: %w", ErrInvalidRecord, err)
	}
	if m.ClusterID < 1 || m.ClusterID > MaxClusterID {
		return invalid("mirror status", "%s: cluster id %d out of range, must be 1..%d", m.Cluster, m.ClusterID, MaxClusterID)
	}
	c := m.Counts
	if m.Revision < 0 || m.Skipped < 0 || m.Refused < 0 || m.HeartbeatSeconds < 0 ||
		c.Clusters < 0 || c.Nodes < 0 || c.Endpoints < 0 || c.Identities < 0 || c.Revocations < 0 || c.Grants < 0 {
		return invalid("mirror status", "%s: negative revision or count", m.Cluster)
	}
	if m.Updated.IsZero() {
		return invalid("mirror status", "%s: no updated time", m.Cluster)
	}
	return nil
}

// Stale reports whether the status is older than three heartbeats at now:
// its mirror has stopped (or cannot write), whatever the status says.
func (m MirrorStatus) Stale(now time.Time) bool {
	hb := time.Duration(max(m.HeartbeatSeconds, 1)) * time.Second
	return now.Sub(m.Updated) > 3*hb
}

// DecodeMirrorStatus decodes a mirror/<cluster>/status value.
func DecodeMirrorStatus(data []byte) (MirrorStatus, error) { return decode[MirrorStatus](data) }

// GetMirrorStatus reads mirror/<cluster>/status; ErrNotFound when no
// mirror of cluster has written one.
func (c *Client) GetMirrorStatus(ctx context.Context, cluster string) (MirrorStatus, error) {
	if err := ValidateName("cluster", cluster); err != nil {
		return MirrorStatus{}, err
	}
	st, _, err := Get(ctx, c, MirrorStatusKey(cluster), DecodeMirrorStatus)
	if err != nil {
		return st, err
	}
	if st.Cluster != cluster {
		return st, fmt.Errorf("%w: %s holds the status of cluster %s", ErrInvalidRecord, MirrorStatusKey(cluster), st.Cluster)
	}
	return st, nil
}
