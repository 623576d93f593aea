package kvstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// gossipKeyLen is the size of the mesh gossip key in bytes.
const gossipKeyLen = 32

// gossipKeyRecord is the value at GossipKeyKey. It is decoded leniently
// (no version check), exactly as the agent did before the key joined the
// schema, so every mesh that has one keeps reading it.
type gossipKeyRecord struct {
	Version int    `json:"version"`
	Key     string `json:"key"`
}

// GossipKey returns the mesh's gossip key (32 bytes), creating it if this
// is the first agent to need it. Creating and reading are one transaction
// (create if absent, else read), so agents starting at the same moment all
// end up with the same key. A stored value that does not decode, or is not
// 32 bytes, is an error telling the operator how to repair it: the key is
// never silently replaced, which would split the mesh.
func (c *Client) GossipKey(ctx context.Context) ([]byte, error) {
	// Read first: a node's etcd role may read the key but not create it
	// (etcd checks both branches of a transaction), and the seed created
	// it before any node joined.
	rctx, cancel := c.reqCtx(ctx)
	got, err := c.kv.Get(rctx, GossipKeyKey)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("reading the mesh gossip key %s: %w", GossipKeyKey, err)
	}
	if len(got.Kvs) > 0 {
		return decodeGossipKey(got.Kvs[0].Value)
	}
	fresh := make([]byte, gossipKeyLen)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("generating a mesh gossip key: %w", err)
	}
	val, err := json.Marshal(gossipKeyRecord{Version: RecordVersion, Key: base64.StdEncoding.EncodeToString(fresh)})
	if err != nil {
		return nil, fmt.Errorf("encoding the mesh gossip key: %w", err)
	}
	rctx, cancel = c.reqCtx(ctx)
	defer cancel()
	resp, err := c.kv.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(GossipKeyKey), "=", 0)).
		Then(clientv3.OpPut(GossipKeyKey, string(val))).
		Else(clientv3.OpGet(GossipKeyKey)).Commit()
	if err != nil {
		return nil, fmt.Errorf("reading the mesh gossip key %s: %w", GossipKeyKey, err)
	}
	if resp.Succeeded {
		c.log.Info("created the mesh gossip key", "key", GossipKeyKey)
		return fresh, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("the mesh gossip key %s vanished while reading it: retry", GossipKeyKey)
	}
	return decodeGossipKey(kvs[0].Value)
}

func decodeGossipKey(value []byte) ([]byte, error) {
	var rec gossipKeyRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, fmt.Errorf("the mesh gossip key %s does not decode (%v): delete it and restart the agents", GossipKeyKey, err)
	}
	k, err := base64.StdEncoding.DecodeString(rec.Key)
	if err != nil || len(k) != gossipKeyLen {
		return nil, fmt.Errorf("the mesh gossip key %s is not 32 bytes of base64: delete it and restart the agents", GossipKeyKey)
	}
	return k, nil
}
