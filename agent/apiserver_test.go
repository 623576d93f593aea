package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

const webPolicy = `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - ports: [{port: 443, protocol: TCP}]
`

func TestAPIApplyPolicyIsAllOrNothing(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	n := newTestNode(t, srv, "p1", 5)
	n.start(t)
	ctx := context.Background()
	kv := kvstoretest.Connect(t, srv, nil)

	// A file whose second document is invalid writes nothing.
	bad := dbPolicy + "---\n" + strings.Replace(webPolicy, "port: 443", "port: 70000", 1)
	if _, err := n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "both.yaml", Document: bad}); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "both.yaml") {
		t.Fatalf("applying a file with a bad document = %v, want invalid naming the file", err)
	}
	if _, err := kv.GetPolicy(ctx, "db"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("the valid document of a refused file was written: %v", err)
	}
	// The same name twice is refused.
	if _, err := n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "dup.yaml", Document: dbPolicy + "---\n" + dbPolicy}); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "names must be unique") {
		t.Fatalf("a duplicated policy = %v", err)
	}

	// A good file: both created, in one transaction (one revision).
	res, err := n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "both.yaml", Document: dbPolicy + "---\n" + webPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Policies) != 2 || res.Policies[0].Action != "created" || res.Policies[1].Action != "created" || res.Policies[0].Revision != res.Policies[1].Revision {
		t.Fatalf("apply = %+v, want both created at one revision", res.Policies)
	}
	// Again, with one changed: unchanged and updated.
	res, err = n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "both.yaml", Document: dbPolicy + "---\n" + strings.Replace(webPolicy, "443", "8443", 1)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Policies[0].Action != "unchanged" || res.Policies[1].Action != "updated" {
		t.Fatalf("re-apply = %+v, want unchanged and updated", res.Policies)
	}
	got, err := n.client.GetPolicy(ctx, "web")
	if err != nil || !strings.Contains(got.Document, "8443") {
		t.Fatalf("get = %+v, %v", got, err)
	}

	// Trace answers from the compiled policies, once the agent's compiler
	// has them (the cache delivers them asynchronously).
	testutil.Eventually(t, 10*time.Second, "db's policy to isolate it in trace", func() error {
		tr, err := n.client.TracePolicy(ctx, api.TraceRequest{From: map[string]string{"app": "cache"}, To: map[string]string{"app": "db"}, Port: 5432})
		if err != nil || tr.Verdict == "allow" || !tr.Ingress.Enforced {
			return fmt.Errorf("trace cache -> db:5432 = %+v, %v", tr, err)
		}
		return nil
	})
	tr, err := n.client.TracePolicy(ctx, api.TraceRequest{From: map[string]string{"app": "web"}, To: map[string]string{"app": "db"}, Port: 5432, Protocol: "tcp"})
	if err != nil || tr.Verdict != "allow" || !tr.Ingress.Enforced || len(tr.Ingress.Policies) != 1 || tr.Ingress.Policies[0] != "db" {
		t.Fatalf("trace web -> db:5432 = %+v, %v; want allowed by db", tr, err)
	}
	if _, err := n.client.TracePolicy(ctx, api.TraceRequest{From: map[string]string{"app": "web"}, Protocol: "gre"}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("trace with protocol gre = %v, want invalid", err)
	}

	if err := n.client.DeletePolicy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := n.client.DeletePolicy(ctx, "web"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("deleting twice = %v, want not found", err)
	}
	if _, err := n.client.GetPolicy(ctx, "web"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("get of a deleted policy = %v, want not found", err)
	}
}

func TestAPIViewsOfTheMesh(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "v1", 6)
	b := newTestNode(t, srv, "v2", 7)
	a.cfg.Labels = map[string]string{"app": "db"}
	a.start(t)
	b.start(t)
	ctx := context.Background()
	testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
		nodes, err := a.client.Nodes(ctx)
		if err != nil {
			return err
		}
		if len(nodes) != 2 || !nodes[0].Self || nodes[0].Name != "v1" || nodes[0].Labels["vm:app"] != "db" || nodes[1].Self {
			return fmt.Errorf("nodes = %+v", nodes)
		}
		return nil
	})
	testutil.Eventually(t, 10*time.Second, "v1's identity with its endpoint", func() error {
		ids, err := a.client.Identities(ctx)
		if err != nil {
			return err
		}
		var sawHost, sawDB bool
		for _, id := range ids {
			sawHost = sawHost || (id.Reserved && id.ID == 1)
			sawDB = sawDB || (!id.Reserved && id.Endpoints == 1 && strings.Contains(strings.Join(id.Labels, ","), "vm:app=db"))
		}
		if !sawHost || !sawDB {
			return fmt.Errorf("identities = %+v, want the reserved ones and v1's", ids)
		}
		return nil
	})
	st, err := a.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Etcd.Reachable || st.Tunnel.Kind != "memory" || !st.Datapath.Attached || st.Node != "v1" {
		t.Fatalf("status = %+v", st)
	}
	h, err := a.client.Health(ctx)
	if err != nil || !h.OK {
		t.Fatalf("health = %+v, %v", h, err)
	}
	// This node holds no CA: tokens are refused with where to make them.
	if _, err := a.client.CreateToken(ctx, api.TokenRequest{}); !errors.Is(err, api.ErrNotSupported) {
		t.Fatalf("create token without the CA = %v", err)
	}
}
