package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// policyFake is an agent's policy API with canned answers.
type policyFake struct {
	applied []api.ApplyPolicyRequest
	traced  []api.TraceRequest
	apply   api.ApplyPolicyResult
	trace   api.TraceResult
}

func (f *policyFake) Policies(context.Context) ([]api.PolicyState, error) {
	return []api.PolicyState{
		{Name: "db", Revision: 7, SelectedEndpoints: []string{"100.64.1.2"}, Entries: 2, File: "shop.yaml", Line: 10},
		{Name: "web", Revision: 7, SelectedEndpoints: []string{}, Entries: 0},
	}, nil
}
func (f *policyFake) GetPolicy(context.Context, string) (api.Policy, error) { return api.Policy{}, nil }
func (f *policyFake) ApplyPolicy(_ context.Context, r api.ApplyPolicyRequest) (api.ApplyPolicyResult, error) {
	f.applied = append(f.applied, r)
	return f.apply, nil
}
func (f *policyFake) DeletePolicy(context.Context, string) error { return nil }
func (f *policyFake) TracePolicy(_ context.Context, r api.TraceRequest) (api.TraceResult, error) {
	f.traced = append(f.traced, r)
	return f.trace, nil
}

func startPolicyFake(t *testing.T) (*policyFake, string) {
	t.Helper()
	f := &policyFake{}
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.Backend{Policies: f}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return f, path
}

// runStatus runs meshctl as the binary does: what it prints and its exit
// status.
func runStatus(t *testing.T, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	status = ExitStatus(err, &errOut)
	return out.String(), errOut.String(), status
}

const policyDoc = "apiVersion: weft.dev/v1\nkind: Policy\nmetadata:\n  name: db\nspec:\n  endpointSelector: {}\n  ingress:\n  - ports:\n    - port: 5432\n"

// apply waits by default (30 s), prints each node's time, and exits 1
// naming the nodes that did not enforce in time; --wait=false does not
// wait; -o json carries the same.
func TestPolicyApplyWait(t *testing.T) {
	f, sock := startPolicyFake(t)
	file := filepath.Join(t.TempDir(), "db.yaml")
	os.WriteFile(file, []byte(policyDoc), 0o644)
	f.apply = api.ApplyPolicyResult{
		Policies: []api.AppliedPolicy{{Name: "db", Action: "updated", Revision: 12}},
		Revision: 12,
		Enforcement: &api.PolicyEnforcement{Revision: 12, Complete: true, Timeout: api.Duration(30 * time.Second), Nodes: []api.NodeEnforcement{
			{Node: "seed", Cluster: "east", Enforced: true, Revision: 12, Took: api.Duration(3 * time.Millisecond)},
			{Node: "vm-1", Cluster: "east", Enforced: true, Revision: 12, Took: api.Duration(41 * time.Millisecond)},
		}},
	}
	out, errOut, status := runStatus(t, "policy", "apply", "--socket", sock, "-f", file)
	want := "policy db updated (revision 12)\n" +
		"enforced on 2 of 2 nodes (revision 12):\n" +
		"NODE       ENFORCED  TOOK  ERROR\n" +
		"east/seed  yes       3ms   -\n" +
		"east/vm-1  yes       41ms  -\n"
	if status != 0 || out != want || errOut != "" {
		t.Fatalf("apply: status %d, stderr %q, output:\n%s\nwant:\n%s", status, errOut, out, want)
	}
	if w := time.Duration(f.applied[0].Wait); w != defaultPolicyWait {
		t.Fatalf("apply waited %v, want the default %v", w, defaultPolicyWait)
	}

	// A node that did not: named in the table and on stderr, status 1.
	f.apply.Enforcement.Complete = false
	f.apply.Enforcement.Timeout = api.Duration(5 * time.Second)
	f.apply.Enforcement.Nodes[1] = api.NodeEnforcement{Node: "vm-1", Cluster: "east", Error: "no answer from its agent: connection refused"}
	out, errOut, status = runStatus(t, "policy", "apply", "--socket", sock, "-f", file, "--timeout", "5s")
	if status != 1 || !strings.Contains(out, "enforced on 1 of 2 nodes") || !strings.Contains(out, "east/vm-1  no        -     no answer from its agent: connection refused") {
		t.Fatalf("apply with a node missing: status %d, output:\n%s", status, out)
	}
	if !strings.Contains(errOut, "1 of 2 nodes did not report them enforced within 5s: east/vm-1") {
		t.Fatalf("stderr %q does not name the node", errOut)
	}
	if w := time.Duration(f.applied[1].Wait); w != 5*time.Second {
		t.Fatalf("--timeout 5s waited %v", w)
	}
	out, _, status = runStatus(t, "policy", "apply", "--socket", sock, "-f", file, "-o", "json")
	var res api.ApplyPolicyResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || status != 1 || res.Enforcement == nil || res.Enforcement.Nodes[1].Error == "" {
		t.Fatalf("-o json: status %d, %v:\n%s", status, err, out)
	}

	// --wait=false returns once stored.
	f.apply.Enforcement = nil
	out, _, status = runStatus(t, "policy", "apply", "--socket", sock, "-f", file, "--wait=false")
	if status != 0 || out != "policy db updated (revision 12)\n" || f.applied[3].Wait != 0 {
		t.Fatalf("--wait=false: status %d, sent wait %v, output %q", status, f.applied[3].Wait, out)
	}
	if _, errOut, status := runStatus(t, "policy", "apply", "--socket", sock, "-f", file, "--timeout", "0s"); status != UsageExitCode || !strings.Contains(errOut, "--timeout") {
		t.Fatalf("--timeout 0: status %d, %q", status, errOut)
	}
}

// trace: --port any, entities, the rule with its file:line, exit 1 on
// deny with the verdict printed, and a missing flag as one line.
func TestPolicyTrace(t *testing.T) {
	f, sock := startPolicyFake(t)
	f.trace = api.TraceResult{Verdict: "deny",
		Egress: api.TraceStep{Verdict: "allow", Reason: "world is not a mesh endpoint: no egress policy applies"},
		Ingress: api.TraceStep{Verdict: "deny", Enforced: true, Reason: "denied by a deny rule (deny wins over allow)", Policies: []string{"db"},
			Rule: &api.TraceRule{Policy: "db", Section: "ingressDeny", Index: 0, File: "shop.yaml", Line: 19}},
	}
	out, errOut, status := runStatus(t, "policy", "trace", "--socket", sock, "--from", "world", "--to", "app=db,mesh:cluster=east", "--port", "any")
	want := "world -> app=db,mesh:cluster=east on ANY: DENY\n" +
		"  egress:  allow (not enforced) world is not a mesh endpoint: no egress policy applies\n" +
		"  ingress: deny  (enforced) denied by a deny rule (deny wins over allow) [db/ingressDeny[0] shop.yaml:19]\n"
	if status != 1 || out != want || errOut != "" {
		t.Fatalf("trace deny: status %d, stderr %q, output:\n%s\nwant:\n%s", status, errOut, out, want)
	}
	r := f.traced[0]
	if _, ok := r.From["reserved:world"]; !ok || len(r.From) != 1 || r.Protocol != "ANY" || r.Port != 0 || r.To["mesh:cluster"] != "east" {
		t.Fatalf("sent %+v", r)
	}
	for _, side := range []string{"host", "remote-node", "reserved:remote-node"} {
		if _, _, status := runStatus(t, "policy", "trace", "--socket", sock, "--from", "app=web", "--to", side, "--port", "22"); status != 1 {
			t.Errorf("trace to %s: status %d", side, status)
		}
	}
	if r := f.traced[len(f.traced)-1]; len(r.To) != 1 || r.To["reserved:remote-node"] != "" {
		t.Errorf("reserved:remote-node sent as %v", r.To)
	}
	// -o json: the verdict and the rule, and still status 1.
	out, _, status = runStatus(t, "policy", "trace", "--socket", sock, "--from", "world", "--to", "app=db", "--port", "5432", "-o", "json")
	var res api.TraceResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || status != 1 || res.Ingress.Rule == nil || res.Ingress.Rule.Line != 19 {
		t.Fatalf("-o json: status %d, %v:\n%s", status, err, out)
	}
	f.trace.Verdict = "allow"
	if _, _, status := runStatus(t, "policy", "trace", "--socket", sock, "--from", "app=web", "--to", "app=db", "--port", "5432/tcp"); status != 0 {
		t.Fatalf("trace allow: status %d", status)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", "mesh", "--to", "app=db", "--port", "5432"}, `"mesh" is a class of peers`},
		{[]string{"--from", "reserved:nope", "--to", "app=db", "--port", "5432"}, `no reserved identity "nope"`},
		{[]string{"--from", "app=web", "--to", "app=db", "--port", "5432/any"}, "write --port any"},
	} {
		_, errOut, status := runStatus(t, append([]string{"policy", "trace", "--socket", sock}, c.args...)...)
		if status != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: status %d, %q; want %q", c.args, status, errOut, c.want)
		}
	}
	// A missing flag: one line and a hint, not the whole help.
	_, errOut, status = runStatus(t, "policy", "trace", "--socket", sock, "--from", "app=web")
	if status != UsageExitCode || errOut != "meshctl policy trace: missing the flags --to, --port\nSee 'meshctl policy trace --help'.\n" {
		t.Fatalf("missing flags: status %d, stderr %q", status, errOut)
	}
}

// list shows each policy's entries here and where it was applied from.
func TestPolicyListShowsEntriesAndSource(t *testing.T) {
	_, sock := startPolicyFake(t)
	out, _, status := runStatus(t, "policy", "list", "--socket", sock)
	want := "NAME  REVISION  SELECTS HERE  ENTRIES  APPLIED FROM\n" +
		"db    7         100.64.1.2    2        shop.yaml:10\n" +
		"web   7         -             0        -\n"
	if status != 0 || out != want {
		t.Fatalf("list: status %d, output:\n%s\nwant:\n%s", status, out, want)
	}
}

// An agent older than --wait refuses the request's wait field as a whole
// (it writes nothing); apply then applies without waiting and says so.
func TestPolicyApplyAgainstAnAgentWithoutWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Filename, Document string } // what the old agent knows
		body, _ := io.ReadAll(r.Body)
		bodies = append(bodies, string(body))
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": "decoding the request body: " + err.Error(), "code": "invalid"})
			return
		}
		json.NewEncoder(w).Encode(api.ApplyPolicyResult{Policies: []api.AppliedPolicy{{Name: "db", Action: "created", Revision: 3}}, Revision: 3})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	file := filepath.Join(t.TempDir(), "db.yaml")
	os.WriteFile(file, []byte(policyDoc), 0o644)
	out, errOut, status := runStatus(t, "policy", "apply", "--socket", path, "-f", file)
	if status != 0 || !strings.Contains(out, "policy db created (revision 3)") || !strings.Contains(errOut, "the agent is older than 'policy apply --wait'") {
		t.Fatalf("apply against an old agent: status %d\n%s%s", status, out, errOut)
	}
	if len(bodies) != 2 || !strings.Contains(bodies[0], `"wait"`) || strings.Contains(bodies[1], `"wait"`) {
		t.Fatalf("requests: %q; want one with wait, then one without", bodies)
	}
}
