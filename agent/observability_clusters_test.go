package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// /v1/nodes marks the nodes a connected cluster's etcd provides as remote
// (meshctl leaves them out of --all-nodes and the connectivity test's
// workloads); a node of another cluster sharing this etcd is not remote,
// since its agent shares this cluster's CA and answers the relay.
func TestNodesMarksConnectedClustersNodesRemote(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	localKV := kvstoretest.Connect(t, kvstoretest.StartEmbedded(t), nil)
	remoteKV := kvstoretest.Connect(t, kvstoretest.StartEmbedded(t), nil)
	put := func(kv *kvstore.Client, cluster, name, meshIP string) {
		t.Helper()
		n := kvstore.Node{Version: kvstore.RecordVersion, Name: name, Cluster: cluster, MeshIP: netip.MustParseAddr(meshIP), WGPublicKey: testKey(t)}
		if err := kv.Put(ctx, n.Key(), &n); err != nil {
			t.Fatal(err)
		}
	}
	put(localKV, "a", "a1", "100.64.0.1")
	put(localKV, "west", "w1", "100.66.0.1") // shared mode: same etcd
	put(remoteKV, "b", "b1", "100.65.0.1")

	nodes, err := newView("nodes", kvstore.NodeDecoder, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer nodes.Close()
	for _, m := range []kvstore.MemberConfig[kvstore.Node]{
		{Name: localMember, Source: localKV.Source(), Prefix: kvstore.NodesPrefix, ProbeInterval: -1},
		{Name: remoteMember("b"), Source: remoteKV.Source(), Prefix: kvstore.NodesPrefix + "b/", ProbeInterval: -1},
	} {
		if err := nodes.Add(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := waitSynced(ctx, nodes.Synced(m.Name)); err != nil {
			t.Fatal(err)
		}
	}
	a := &Agent{cfg: &config.Config{Cluster: "a", NodeName: "a1"}, nodes: nodes}
	got, err := a.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]bool{"a/a1": {true, false}, "west/w1": {false, false}, "b/b1": {false, true}} // self, remote
	if len(got) != len(want) {
		t.Fatalf("nodes = %+v, want %d", got, len(want))
	}
	for _, n := range got {
		if w, ok := want[n.Cluster+"/"+n.Name]; !ok || w != [2]bool{n.Self, n.Remote} {
			t.Errorf("%s/%s: self %v remote %v, want %v", n.Cluster, n.Name, n.Self, n.Remote, w)
		}
	}
}
