package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// policyCmdsSpec: three nodes on two sites, a workload on each.
func policyCmdsSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{
			{Name: "qseed", Workloads: []lab.WorkloadSpec{{Name: "qcache1"}}},
			{Name: "qweb", Workloads: []lab.WorkloadSpec{{Name: "qweb1"}}},
		}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "qdb", Workloads: []lab.WorkloadSpec{{Name: "qdb1"}}}}},
	}}
}

// dbFrom isolates app=db, taking 5432 from app=<client> only.
func dbFrom(client string) string {
	return fmt.Sprintf(`apiVersion: weft.dev/v1
kind: Policy
metadata: {name: qdb}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: %s}}]
      ports: [{port: 5432, protocol: TCP}]
  ingressDeny:
    - from: [{entities: [world]}]
`, client)
}

// TestPolicyApplyWait: `policy apply` returns once every node enforces
// the change (so traffic right after it sees the new verdict, every
// time), prints each node's time, and names a node whose agent is stopped,
// exiting 1. Also the other policy commands as a user sees them on a real
// mesh: list's entries, endpoints' view of other nodes, trace's rule and
// file:line, its exit status, --port any and entities.
func TestPolicyApplyWait(t *testing.T) {
	m := NewMesh(t, policyCmdsSpec())
	m.Up("qseed")
	m.Join("qweb", "")
	m.Join("qdb", "")
	m.AddWorkload("qcache1", "app=cache")
	m.AddWorkload("qweb1", "app=web")
	db := m.AddWorkload("qdb1", "app=db")
	m.Echo("qdb1", db, 5432)
	for _, from := range []string{"qweb1", "qcache1"} {
		testutil.Eventually(t, 60*time.Second, from+" reaches db before any policy", func() error {
			return m.Talk(from, "tcp", db, 5432, "hello")
		})
	}

	t.Run("traffic right after apply returns sees the new verdict", func(t *testing.T) {
		m := m.For(t)
		files := map[string]string{"web": writeFile(t, "db-web.yaml", dbFrom("web")), "cache": writeFile(t, "db-cache.yaml", dbFrom("cache"))}
		for i := 0; i < 6; i++ {
			allowed, denied := "web", "cache"
			if i%2 == 1 {
				allowed, denied = "cache", "web"
			}
			out := m.MustMeshctl("qseed", "policy", "apply", "-f", files[allowed])
			if !strings.Contains(out, "enforced on 3 of 3 nodes") {
				t.Fatalf("change %d: apply does not report every node enforcing:\n%s", i, out)
			}
			for _, n := range []string{"qseed", "qweb", "qdb"} {
				if !strings.Contains(out, "/"+n+" ") {
					t.Fatalf("change %d: apply output does not list %s:\n%s", i, n, out)
				}
			}
			// No waiting here: apply returned, so the datapath of qdb
			// already holds the change.
			if err := m.Talk("q"+allowed+"1", "tcp", db, 5432, "hello"); err != nil {
				t.Fatalf("change %d: right after apply, %s -> db:5432 is refused (%v); it is allowed now", i, allowed, err)
			}
			if err := m.Talk("q"+denied+"1", "tcp", db, 5432, "hello"); err == nil {
				t.Fatalf("change %d: right after apply, %s -> db:5432 still passes; it is denied now", i, denied)
			}
		}
		// -o json: the same, for scripts.
		var res api.ApplyPolicyResult
		m.JSON("qseed", &res, "policy", "apply", "-f", files["web"])
		if e := res.Enforcement; e == nil || !e.Complete || len(e.Nodes) != 3 || e.Revision == 0 {
			t.Fatalf("apply -o json: %+v", res)
		}
		for _, ne := range res.Enforcement.Nodes {
			if !ne.Enforced || ne.Revision < res.Revision {
				t.Fatalf("apply -o json: node %+v", ne)
			}
		}
	})

	t.Run("list, endpoints and trace", func(t *testing.T) {
		m := m.For(t)
		// qdb enforces the policy on its workload: entries there.
		var ps []api.PolicyState
		m.JSON("qdb", &ps, "policy", "list")
		if len(ps) != 1 || ps[0].Name != "qdb" || ps[0].Entries == 0 || ps[0].Entries > 10 || !strings.HasSuffix(ps[0].File, "db-web.yaml") || ps[0].Line != 1 {
			t.Fatalf("policy list on qdb: %+v; want qdb with its entries, applied from db-web.yaml at line 1", ps)
		}
		out := m.MustMeshctl("qseed", "endpoints")
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, db) && !strings.HasSuffix(strings.TrimSpace(line), " -") {
				t.Fatalf("qseed shows qdb's isolated endpoint as %q: only qdb knows, want -\n%s", line, out)
			}
		}
		if out := m.MustMeshctl("qdb", "endpoint", "list", "--local"); !strings.Contains(out, "ingress") {
			t.Fatalf("qdb does not show its own endpoint isolated:\n%s", out)
		}

		out, err := m.Meshctl("qseed", "policy", "trace", "--from", "world", "--to", "app=db", "--port", "5432")
		if err == nil {
			t.Fatalf("trace of a denied connection exited 0:\n%s", out)
		}
		if !strings.Contains(out, "world -> app=db on 5432/TCP: DENY") || !strings.Contains(out, "[qdb/ingressDeny[0] ") || !strings.Contains(out, "db-web.yaml:10]") {
			t.Fatalf("trace world -> db does not name the deny rule and its file:line:\n%s", out)
		}
		out = m.MustMeshctl("qseed", "policy", "trace", "--from", "app=web", "--to", "app=db,mesh:cluster=default", "--port", "5432/tcp")
		if !strings.Contains(out, "ALLOW") || !strings.Contains(out, "[qdb/ingress[0] ") {
			t.Fatalf("trace web -> db:\n%s", out)
		}
		if out, err := m.Meshctl("qseed", "policy", "trace", "--from", "app=web", "--to", "app=db", "--port", "any"); err == nil || !strings.Contains(out, "on ANY: DENY") {
			t.Fatalf("trace --port any (only 5432 is allowed): %v\n%s", err, out)
		}
		if out := m.MustMeshctl("qseed", "policy", "trace", "--from", "app=db", "--to", "host", "--port", "any"); !strings.Contains(out, "app=db -> host on ANY: ALLOW") {
			t.Fatalf("trace db -> host (no egress policy):\n%s", out)
		}
	})

	t.Run("a node whose agent is stopped is named and apply exits 1", func(t *testing.T) {
		m := m.For(t)
		if err := m.node("qweb").Proc.Stop(); err != nil {
			t.Logf("stopping qweb's agent: %v", err)
		}
		out, err := m.Meshctl("qseed", "policy", "apply", "-f", writeFile(t, "db-cache.yaml", dbFrom("cache")), "--timeout", "5s")
		if err == nil {
			t.Fatalf("apply with qweb's agent stopped exited 0:\n%s", out)
		}
		if !strings.Contains(out, "enforced on 2 of 3 nodes") || !hasLine(out, "/qweb ", " no ") ||
			!strings.Contains(out, "did not report them enforced within 5s") {
			t.Fatalf("apply does not name qweb as not enforcing:\n%s", out)
		}
		var res api.ApplyPolicyResult
		jout, _ := m.Meshctl("qseed", "policy", "apply", "-f", writeFile(t, "db-web.yaml", dbFrom("web")), "--timeout", "3s", "-o", "json")
		// Output and error are one stream here: the JSON comes first.
		if err := json.NewDecoder(strings.NewReader(jout)).Decode(&res); err != nil || res.Enforcement == nil || res.Enforcement.Complete {
			t.Fatalf("apply -o json with qweb down: %v\n%s", err, jout)
		}
		// The nodes that enforce it do, at once.
		if err := m.Talk("qweb1", "tcp", db, 5432, "hello"); err != nil {
			t.Fatalf("qweb1 -> db after the apply that qdb confirmed: %v", err)
		}
		// --wait=false returns at once, 0.
		if out, err := m.Meshctl("qseed", "policy", "apply", "-f", writeFile(t, "db-cache.yaml", dbFrom("cache")), "--wait=false"); err != nil || strings.Contains(out, "enforced on") {
			t.Fatalf("apply --wait=false: %v\n%s", err, out)
		}
	})
}

// hasLine reports whether a line of out contains every part.
func hasLine(out string, parts ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}
