package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
)

// The remote cluster every consumer connects to.
const (
	remoteName = "remote"
	remoteID   = 1
)

// records are one cluster's records as its agents write them: its cluster
// record, nodes with a /24 pod CIDR each, endpoints spread over the nodes
// with identities of the cluster's range (identity.ClusterRange).
type records struct {
	cluster    kvstore.Cluster
	nodes      []kvstore.Node
	endpoints  []kvstore.Endpoint
	identities []kvstore.Identity
}

// makeRecords builds nodes, endpoints and identities records of the
// remote cluster (checked by the caller: nodes ≤ 250, endpoints ≤ 250 per
// node, identities within the range).
func makeRecords(nodes, endpoints, identities int) (records, error) {
	lo, _, err := identity.ClusterRange(remoteID)
	if err != nil {
		return records{}, err
	}
	r := records{cluster: kvstore.Cluster{
		Name: remoteName, ID: remoteID,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		MeshPool: netip.MustParsePrefix("100.65.0.0/16"),
	}}
	for i := range identities {
		r.identities = append(r.identities, kvstore.Identity{
			ID: uint32(lo) + uint32(i), Labels: identityLabels(i),
		})
	}
	for i := range nodes {
		key := make([]byte, 32)
		key[0], key[1], key[31] = byte(i), byte(i>>8), 0xee
		r.nodes = append(r.nodes, kvstore.Node{
			Name: nodeName(i), Cluster: remoteName,
			Endpoints:    []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), 51833)},
			WGPublicKey:  base64.StdEncoding.EncodeToString(key),
			CIDRs:        []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)},
			MeshIP:       netip.AddrFrom4([4]byte{100, 65, byte(i), 1}),
			Labels:       []string{"k8s:kubernetes.io/hostname=" + nodeName(i), "k8s:topology.kubernetes.io/zone=zone-" + strconv.Itoa(i%3)},
			AgentVersion: "bench",
		})
	}
	for j := range endpoints {
		n := j % nodes
		r.endpoints = append(r.endpoints, kvstore.Endpoint{
			IP:       netip.AddrFrom4([4]byte{10, 1, byte(n), byte(2 + j/nodes)}),
			Identity: uint32(lo) + uint32(j%identities),
			Labels:   identityLabels(j % identities),
			Name:     endpointName(j, -1),
			Cluster:  remoteName, Node: nodeName(n),
			NamedPorts: []kvstore.NamedPort{{Name: "http", Protocol: "TCP", Port: 8080}},
		})
	}
	return r, nil
}

func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// identityLabels is the label set of the i-th identity (and its endpoints).
func identityLabels(i int) []string {
	return []string{
		"k8s:app=app-" + strconv.Itoa(i),
		"k8s:io.kubernetes.pod.namespace=ns-" + strconv.Itoa(i%10),
		"mesh:cluster=" + remoteName,
	}
}

// endpointName carries the churn update an endpoint record is at: the
// name changes, nothing a receiving agent would refuse does. seq < 0 is the
// record as first written.
func endpointName(j, seq int) string {
	if seq < 0 {
		return "pod-" + strconv.Itoa(j)
	}
	return "pod-" + strconv.Itoa(j) + "-s" + strconv.Itoa(seq)
}

// updateSeq is the churn update an endpoint's name carries, false for an
// endpoint as first written (or a name not of this benchmark).
func updateSeq(name string) (int, bool) {
	i := strings.LastIndex(name, "-s")
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(name[i+2:])
	return n, err == nil && n >= 0
}

// write puts every record into etcd, 100 per transaction.
func (r records) write(ctx context.Context, kv clientv3.KV) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := kv.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	add := func(key string, rec kvstore.Record) error {
		data, err := kvstore.Encode(rec)
		if err != nil {
			return fmt.Errorf("encoding %s: %w", key, err)
		}
		ops = append(ops, clientv3.OpPut(key, string(data)))
		if len(ops) == 100 {
			return flush()
		}
		return nil
	}
	if err := add(kvstore.ClusterKey(remoteName), &r.cluster); err != nil {
		return err
	}
	for i := range r.identities {
		if err := add(kvstore.IdentityIDKey(r.identities[i].ID), &r.identities[i]); err != nil {
			return err
		}
	}
	for i := range r.nodes {
		if err := add(r.nodes[i].Key(), &r.nodes[i]); err != nil {
			return err
		}
	}
	for i := range r.endpoints {
		if err := add(r.endpoints[i].Key(), &r.endpoints[i]); err != nil {
			return err
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("writing the remote cluster's records: %w", err)
	}
	return nil
}
