package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/internal/names"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/policy"
)

func labels(t *testing.T, ss ...string) identity.Labels {
	t.Helper()
	l, err := identity.ParseLabels(ss, identity.SourceVM)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// policyHarness runs a policy reconciler on an in-memory datapath.
type policyHarness struct {
	t   *testing.T
	r   *policyReconciler
	dp  *bpftest.Datapath
	rev atomic.Int64 // the store's revision: one per write
}

func newPolicyHarness(t *testing.T) *policyHarness {
	dp := bpftest.New()
	h := &policyHarness{t: t, dp: dp}
	h.r = newPolicyReconciler(dp, func() int64 { return h.rev.Load() }, slog.New(slog.DiscardHandler), func(string, time.Time) {})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go h.r.run(ctx)
	return h
}

func (h *policyHarness) identity(kind kvstore.EventKind, id identity.NumericIdentity, ls ...string) {
	ev := kvstore.Event[allocator.Identity]{Kind: kind}
	ident := allocator.Identity{ID: id, Labels: labels(h.t, ls...)}
	if kind == kvstore.EventDelete {
		ev.Old = ident
	} else {
		ev.Value = ident
	}
	h.r.identityEvent(ev)
}

func (h *policyHarness) policy(kind kvstore.EventKind, name, doc string) {
	ev := kvstore.Event[kvstore.Policy]{Kind: kind}
	p := kvstore.Policy{Name: name, Document: doc}
	if kind == kvstore.EventDelete {
		ev.Old = p
	} else {
		ev.Value = p
	}
	// As the cache does: one revision per write, its event, then the
	// notice that everything up to it was delivered.
	rev := h.rev.Add(1)
	h.r.policyEvent(ev)
	h.r.policiesDelivered(rev)
}

// sync waits until the loop has applied everything queued so far.
func (h *policyHarness) sync() {
	h.t.Helper()
	if err := h.r.do(context.Background(), func() {}); err != nil {
		h.t.Fatal(err)
	}
}

// ingress returns the endpoint's ingress TCP entries by peer identity and
// port.
func (h *policyHarness) ingress(epID uint32) map[string]bpf.Verdict {
	m, _ := h.dp.Policy(epID)
	out := map[string]bpf.Verdict{}
	for k, v := range m {
		if k.Direction == bpf.Ingress {
			out[fmt.Sprintf("%d/%d", k.Identity, k.Port)] = v
		}
	}
	return out
}

const dbPolicy = `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]
`

func TestPolicyReconcilerAppliesOnlyDeltas(t *testing.T) {
	h := newPolicyHarness(t)
	db := netip.MustParseAddr("100.64.1.2")
	h.identity(kvstore.EventAdd, 300, "app=db")
	h.identity(kvstore.EventAdd, 301, "app=web")
	h.identity(kvstore.EventAdd, 302, "app=cache")
	if err := h.r.addLocal(context.Background(), localEndpoint{ID: 2, IP: db, Identity: 300, Labels: labels(t, "app=db")}); err != nil {
		t.Fatal(err)
	}
	if ep, ok := h.dp.Endpoint(db); !ok || ep.IngressEnforced || ep.Identity != 300 {
		t.Fatalf("before any policy the endpoint is %+v, %v; want it open with identity 300", ep, ok)
	}

	h.policy(kvstore.EventAdd, "db", dbPolicy)
	h.sync()
	if ep, _ := h.dp.Endpoint(db); !ep.IngressEnforced || ep.EgressEnforced {
		t.Fatalf("with an ingress policy the endpoint is %+v; want ingress enforced only", ep)
	}
	if got := h.ingress(2); len(got) != 1 || got["301/5432"] != bpf.Allow {
		t.Fatalf("ingress entries = %v, want only web (301) on 5432", got)
	}
	h.dp.Writes()

	// A new identity the policy selects adds exactly its entry.
	h.identity(kvstore.EventAdd, 303, "app=web", "team=blue")
	h.sync()
	if w := h.dp.Writes(); len(w) != 1 {
		t.Fatalf("a new web identity wrote %v, want one entry", w)
	}
	if got := h.ingress(2); got["303/5432"] != bpf.Allow {
		t.Fatalf("ingress entries = %v, want the new web identity allowed", got)
	}
	// An identity the policy does not select writes nothing.
	h.identity(kvstore.EventAdd, 304, "app=cache", "team=red")
	h.sync()
	if w := h.dp.Writes(); len(w) != 0 {
		t.Fatalf("an unselected identity wrote %v", w)
	}
	// A removed identity takes its entry with it.
	h.identity(kvstore.EventDelete, 301, "app=web")
	h.sync()
	if got := h.ingress(2); len(got) != 1 || got["303/5432"] != bpf.Allow {
		t.Fatalf("after removing 301 ingress entries = %v", got)
	}

	// Deleting the policy opens the endpoint again and clears its entries.
	h.policy(kvstore.EventDelete, "db", "")
	h.sync()
	if ep, _ := h.dp.Endpoint(db); ep.IngressEnforced {
		t.Fatal("the endpoint stays enforced after its only policy went")
	}
	if got := h.ingress(2); len(got) != 0 {
		t.Fatalf("entries left after the policy went: %v", got)
	}
}

func TestPolicyReconcilerSkipsBadRecords(t *testing.T) {
	h := newPolicyHarness(t)
	db := netip.MustParseAddr("100.64.1.2")
	h.identity(kvstore.EventAdd, 301, "app=web")
	if err := h.r.addLocal(context.Background(), localEndpoint{ID: 2, IP: db, Identity: 300, Labels: labels(t, "app=db")}); err != nil {
		t.Fatal(err)
	}
	h.policy(kvstore.EventAdd, "db", dbPolicy)
	h.sync()
	h.dp.Writes()
	// Written around meshctl: a document that does not parse, and one
	// stored under another name. Both are skipped; db stays enforced.
	h.policy(kvstore.EventUpdate, "db", "spec: [")
	h.policy(kvstore.EventAdd, "other", dbPolicy)
	h.sync()
	if w := h.dp.Writes(); len(w) != 0 {
		t.Fatalf("bad records wrote %v", w)
	}
	if got := h.ingress(2); got["301/5432"] != bpf.Allow {
		t.Fatalf("the good policy's entries went: %v", got)
	}
	_, applied := h.r.localSnapshot()
	if _, ok := applied["other"]; ok {
		t.Fatal("a misnamed policy is reported as applied")
	}
}

func TestPolicyReconcilerCIDRIdentities(t *testing.T) {
	h := newPolicyHarness(t)
	doc := `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: egress}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress:
    - to: [{cidr: 198.18.5.0/24}]
`
	h.policy(kvstore.EventAdd, "egress", doc)
	h.sync()
	ipc := h.dp.IPCache()
	id, ok := ipc[netip.MustParsePrefix("198.18.5.0/24")]
	if !ok || identity.NumericIdentity(id) < cidrIdentityBase {
		t.Fatalf("ipcache = %v: the policy's CIDR has no node-local identity", ipc)
	}
	h.policy(kvstore.EventDelete, "egress", "")
	h.sync()
	if _, ok := h.dp.IPCache()[netip.MustParsePrefix("198.18.5.0/24")]; ok {
		t.Fatal("the CIDR identity stays after the only policy naming it went")
	}
}

func TestPolicyReconcilerRestartDiffsAgainstPinnedEntries(t *testing.T) {
	h := newPolicyHarness(t)
	db := netip.MustParseAddr("100.64.1.2")
	h.identity(kvstore.EventAdd, 301, "app=web")
	h.policy(kvstore.EventAdd, "db", dbPolicy)
	ep := localEndpoint{ID: 2, IP: db, Identity: 300, Labels: labels(t, "app=db")}
	if err := h.r.addLocal(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	// A restarted agent: a new reconciler on the same (pinned) maps
	// rewrites no entry that is already right.
	r2 := newPolicyReconciler(h.dp, func() int64 { return 1 }, slog.New(slog.DiscardHandler), func(string, time.Time) {})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r2.run(ctx)
	h2 := &policyHarness{t: t, r: r2, dp: h.dp}
	h2.identity(kvstore.EventAdd, 301, "app=web")
	h2.policy(kvstore.EventAdd, "db", dbPolicy)
	h2.sync()
	h.dp.Writes()
	if err := r2.addLocal(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	for _, w := range h.dp.Writes() {
		if w != "endpoint "+db.String() {
			t.Fatalf("the restarted reconciler wrote %q; want only the endpoint flags", w)
		}
	}
}

// ENTRIES of `meshctl policy list`: the entries each policy produces on
// this node, which the agent used to leave at 0.
func TestPolicyListCountsEntries(t *testing.T) {
	h := newPolicyHarness(t)
	db := netip.MustParseAddr("100.64.1.2")
	h.identity(kvstore.EventAdd, 300, "app=db")
	h.identity(kvstore.EventAdd, 301, "app=web")
	h.identity(kvstore.EventAdd, 303, "app=web", "team=blue")
	if err := h.r.addLocal(context.Background(), localEndpoint{ID: 2, IP: db, Identity: 300, Labels: labels(t, "app=db")}); err != nil {
		t.Fatal(err)
	}
	h.policy(kvstore.EventAdd, "db", dbPolicy)
	h.policy(kvstore.EventAdd, "web", strings.ReplaceAll(dbPolicy, "db", "web"))
	h.sync()
	_, entries, err := h.r.policyNames(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held, _ := h.dp.Policy(2)
	if entries["db"] != 2 || entries["db"] != len(held) || entries["web"] != 0 {
		t.Fatalf("entries = %v, the endpoint holds %d; want db 2 (web's two identities on 5432), web 0 (selects nothing here)", entries, len(held))
	}
}

// The reconciler reports the newest policy revision it has written to
// the datapath, and wakes whoever waits for it.
func TestPolicyReconcilerReportsEnforcedRevision(t *testing.T) {
	h := newPolicyHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if rev, _, _ := h.r.waitEnforced(ctx, 1); rev != 0 {
		t.Fatalf("enforced revision before any policy = %d", rev)
	}
	done := make(chan int64, 1)
	go func() {
		rev, _, _ := h.r.waitEnforced(context.Background(), 1)
		done <- rev
	}()
	h.policy(kvstore.EventAdd, "db", dbPolicy) // the harness's revisions count from 1
	select {
	case rev := <-done:
		if rev < 1 {
			t.Fatalf("woken at revision %d", rev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiter was not woken by the enforced policy")
	}
	// A file of two policies is one revision: after its first policy the
	// revision is not enforced yet; after the cache says the revision is
	// delivered, it is.
	rev := h.rev.Add(1)
	h.r.policyEvent(kvstore.Event[kvstore.Policy]{Kind: kvstore.EventAdd, Value: kvstore.Policy{Name: "web", Document: webPolicy}})
	h.sync()
	if got, _, _ := h.r.waitEnforced(ctx, rev); got >= rev {
		t.Fatalf("enforced %d after the first of two policies of revision %d", got, rev)
	}
	h.r.policyEvent(kvstore.Event[kvstore.Policy]{Kind: kvstore.EventUpdate, Value: kvstore.Policy{Name: "db", Document: dbPolicy}})
	h.r.policiesDelivered(rev)
	h.sync()
	if got, _, _ := h.r.waitEnforced(context.Background(), rev); got != rev {
		t.Fatalf("enforced %d after both policies of revision %d", got, rev)
	}
	// A record that does not compile is reported, not enforced silently.
	h.policy(kvstore.EventAdd, "broken", "kind: Policy\n")
	h.sync()
	_, _, failed := h.r.waitEnforced(context.Background(), 0)
	if failed["broken"] == "" {
		t.Fatalf("failed = %v, want broken named", failed)
	}
	h.policy(kvstore.EventDelete, "broken", "")
	h.sync()
	if _, _, failed := h.r.waitEnforced(context.Background(), 0); len(failed) != 0 {
		t.Fatalf("failed after deleting it = %v", failed)
	}
}

// twoDocs is a file of two policies: db starts on line 10, its deny
// rule is on line 19.
const twoDocs = webPolicy + "---\n" + `# the database
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]
  ingressDeny:
    - from: [{entities: [world]}]
`

// A file is applied whole or not at all, with real etcd: a second
// document the store would refuse (a 100-character name, a document
// larger than a record holds) is refused at parse time as invalid,
// naming the file, the document and the rule, and the first one is not
// written. Before, the name passed the parser and the user was told
// "temporarily unavailable".
func TestApplyPolicyBadSecondDocumentLeavesTheFirstUnapplied(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	n := newTestNode(t, srv, "p1", 7)
	n.start(t)
	ctx := context.Background()
	kv := kvstoretest.Connect(t, srv, nil)
	for _, c := range []struct {
		what, second string
		want         []string
	}{
		{"a 100-character name", strings.Replace(dbPolicy, "name: db", "name: "+strings.Repeat("d", 100), 1),
			[]string{"shop.yaml:11:", "document 2: ", "100 characters long", names.Rule}},
		{"a document larger than a record", dbPolicy + "# " + strings.Repeat("x", kvstore.MaxPolicyDocument) + "\n",
			[]string{"shop.yaml:9:", "document 2: ", "split it into several policies"}},
	} {
		_, err := n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "shop.yaml", Document: webPolicy + "---\n" + c.second})
		if !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("%s: apply = %v, want invalid", c.what, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", c.what, err, w)
			}
		}
		if _, err := kv.GetPolicy(ctx, "web"); !errors.Is(err, kvstore.ErrNotFound) {
			t.Fatalf("%s: the first document was written: %v", c.what, err)
		}
	}
	if policy.MaxDocumentBytes != kvstore.MaxPolicyDocument {
		t.Fatalf("the parser bounds documents at %d bytes, the store at %d: one rule", policy.MaxDocumentBytes, kvstore.MaxPolicyDocument)
	}
}

// apply --wait returns once every node reports the stored revision
// enforced, with each node's time; a node that cannot be asked is named
// and the enforcement is incomplete. A trace names the rule by the file
// and line it was applied from.
func TestApplyPolicyWaitsForEnforcement(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	n := newTestNode(t, srv, "p1", 8)
	n.start(t)
	ctx := context.Background()

	res, err := n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "shop.yaml", Document: twoDocs, Wait: api.Duration(20 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	e := res.Enforcement
	if e == nil || !e.Complete || e.Revision != res.Revision || res.Revision == 0 || len(e.Nodes) != 1 {
		t.Fatalf("apply --wait = %+v (enforcement %+v), want complete at the stored revision on one node", res, e)
	}
	if ne := e.Nodes[0]; ne.Node != "p1" || !ne.Enforced || ne.Revision < res.Revision || ne.Took <= 0 {
		t.Fatalf("node p1: %+v", ne)
	}
	// Right after it returned, the datapath's compiler has the policies:
	// the trace sees them, and names the file and line.
	tr, err := n.client.TracePolicy(ctx, api.TraceRequest{From: map[string]string{"reserved:world": ""}, To: map[string]string{"app": "db"}, Port: 5432, Protocol: "TCP"})
	if err != nil {
		t.Fatal(err)
	}
	if r := tr.Ingress.Rule; tr.Verdict != "deny" || r == nil || r.Policy != "db" || r.Section != "ingressDeny" || r.Index != 0 || r.File != "shop.yaml" || r.Line != 19 {
		t.Fatalf("trace world -> db = %+v (rule %+v), want denied by db/ingressDeny[0] at shop.yaml:19", tr, tr.Ingress.Rule)
	}
	rev, err := n.client.PolicyRevision(ctx, res.Revision, time.Second)
	if err != nil || rev.Revision < res.Revision || rev.Node != "p1" {
		t.Fatalf("policy revision = %+v, %v", rev, err)
	}
	// Asking for a revision not reached answers after the wait.
	start := time.Now()
	rev, err = n.client.PolicyRevision(ctx, res.Revision+1000, 300*time.Millisecond)
	if err != nil || rev.Revision >= res.Revision+1000 {
		t.Fatalf("policy revision for a future revision = %+v, %v", rev, err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatal("the long poll did not end with its wait")
	}
	ps, err := n.client.Policies(ctx)
	if err != nil || len(ps) != 2 || ps[0].Name != "db" || ps[0].File != "shop.yaml" || ps[0].Line != 10 {
		t.Fatalf("policies = %+v, %v; want db applied from shop.yaml:10", ps, err)
	}

	// A second node this agent cannot ask (the test agents run without
	// the agent-to-agent API): named, and the wait is incomplete.
	m := newTestNode(t, srv, "p2", 9)
	m.start(t)
	testutil.Eventually(t, 10*time.Second, "p1 to see p2's record", func() error {
		nodes, err := n.client.Nodes(ctx)
		if err != nil || len(nodes) != 2 {
			return fmt.Errorf("nodes %+v, %v", nodes, err)
		}
		return nil
	})
	res, err = n.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "shop.yaml", Document: strings.Replace(twoDocs, "443", "8443", 1), Wait: api.Duration(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	e = res.Enforcement
	if e == nil || e.Complete || len(e.Nodes) != 2 {
		t.Fatalf("enforcement = %+v, want incomplete over two nodes", e)
	}
	if p1, p2 := e.Nodes[0], e.Nodes[1]; !p1.Enforced || p2.Node != "p2" || p2.Enforced || p2.Error == "" {
		t.Fatalf("nodes = %+v, want p1 enforced and p2 named with why", e.Nodes)
	}
}

// TestTraceNotesControlPorts: a trace of an agent control port says that
// between nodes' own mesh addresses it passes whatever the verdict; other
// ports, and the right port with the wrong protocol, carry no note.
func TestTraceNotesControlPorts(t *testing.T) {
	for _, c := range []struct {
		port  uint16
		proto uint8
		note  bool
	}{{51835, 6, true}, {51835, 17, false}, {51836, 17, true}, {51836, 6, true}, {51837, 17, true}, {51837, 6, false}, {51835, 0, true}, {5432, 6, false}, {0, 0, false}} {
		if got := controlPortNote(c.port, c.proto); (got != "") != c.note {
			t.Errorf("port %d proto %d: note %q, want one: %v", c.port, c.proto, got, c.note)
		}
	}
}

// TestApplyPolicyBoundsTheWait: a wait the agent would hold for hours is
// refused before anything is written.
func TestApplyPolicyBoundsTheWait(t *testing.T) {
	a := &Agent{}
	_, err := a.ApplyPolicy(context.Background(), api.ApplyPolicyRequest{Filename: "db.yaml", Document: dbPolicy, Wait: api.Duration(time.Hour)})
	if err == nil || !strings.Contains(err.Error(), "give at most 5m0s") {
		t.Fatalf("apply with a one-hour wait: %v", err)
	}
}
