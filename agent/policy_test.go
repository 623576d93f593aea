package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
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
	t  *testing.T
	r  *policyReconciler
	dp *bpftest.Datapath
}

func newPolicyHarness(t *testing.T) *policyHarness {
	dp := bpftest.New()
	rev := int64(0)
	r := newPolicyReconciler(dp, func() int64 { rev++; return rev }, slog.New(slog.DiscardHandler), func(string, time.Time) {})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.run(ctx)
	return &policyHarness{t: t, r: r, dp: dp}
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
	h.r.policyEvent(ev)
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
