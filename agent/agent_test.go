package agent

import (
	"log/slog"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/policy"
)

func TestEndpointIDIsOffsetInCIDR(t *testing.T) {
	cidr := netip.MustParsePrefix("100.64.7.0/24")
	for _, c := range []struct {
		ip   string
		want uint32
	}{{"100.64.7.1", 1}, {"100.64.7.2", 2}, {"100.64.7.254", 254}} {
		if got := endpointID(cidr, netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("endpointID(%s) = %d, want %d", c.ip, got, c.want)
		}
	}
}

func TestHostIfaceNameIsStableShortAndDistinct(t *testing.T) {
	a, b := hostIfaceName("wl-demo-web"), hostIfaceName("wl-demo-db")
	if a == b {
		t.Fatalf("two namespaces got the same interface name %q", a)
	}
	if a != hostIfaceName("wl-demo-web") {
		t.Fatal("interface name is not stable")
	}
	if len(a) > 15 || !strings.HasPrefix(a, "wl") {
		t.Fatalf("interface name %q: want wl..., at most 15 bytes", a)
	}
}

func TestDiffPolicyWritesOnlyTheDifference(t *testing.T) {
	k := func(id identity.NumericIdentity, port uint16) policy.Key {
		return policy.Key{Direction: policy.Ingress, Identity: id, Protocol: 6, Port: port, PortPrefixLen: 16}
	}
	cur := policy.EndpointPolicy{IngressEnforced: true, Entries: map[policy.Key]policy.Verdict{
		k(256, 80): policy.Allow, k(257, 80): policy.Allow, k(258, 22): policy.Deny,
	}}
	want := policy.EndpointPolicy{IngressEnforced: true, Entries: map[policy.Key]policy.Verdict{
		k(256, 80): policy.Allow, k(258, 22): policy.Allow, k(259, 443): policy.Allow,
	}}
	d := diffPolicy(cur, want)
	if len(d.Upsert) != 2 || d.Upsert[k(258, 22)] != policy.Allow || d.Upsert[k(259, 443)] != policy.Allow {
		t.Fatalf("upserts = %v, want the changed verdict and the new entry only", d.Upsert)
	}
	if len(d.Delete) != 1 || d.Delete[0] != k(257, 80) {
		t.Fatalf("deletes = %v, want only the entry that went away", d.Delete)
	}
	if !d.IngressEnforced || d.EgressEnforced {
		t.Fatalf("flags = %v/%v, want the wanted ones", d.IngressEnforced, d.EgressEnforced)
	}
}

// fakeEndpoints is an endpoint cache for resyncNode.
type fakeEndpoints []kvstore.Endpoint

func (f fakeEndpoints) Get(key string) (kvstore.Endpoint, bool) {
	for _, e := range f {
		if e.Key() == key {
			return e, true
		}
	}
	return kvstore.Endpoint{}, false
}

func (f fakeEndpoints) Range(fn func(string, kvstore.Endpoint) bool) {
	for _, e := range f {
		if !fn(e.IP.String(), e) {
			return
		}
	}
}

func TestIPCacheFollowsEndpointEvents(t *testing.T) {
	dp := bpftest.New()
	owned := func(cluster, node string) ([]netip.Prefix, bool) {
		return []netip.Prefix{netip.MustParsePrefix("100.64.1.0/24")}, node == "n1"
	}
	r := newIPCacheReconciler(dp, owned, fakeEndpoints(nil), slog.New(slog.DiscardHandler))
	ep := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.1.2"), Identity: 300, Cluster: "c", Node: "n1"}
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: ep})
	if dp.IPCache()[netip.MustParsePrefix("100.64.1.2/32")] != 300 {
		t.Fatalf("ipcache = %v after add", dp.IPCache())
	}
	moved := ep
	moved.IP = netip.MustParseAddr("100.64.1.3")
	moved.Identity = 301
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventUpdate, Value: moved, Old: ep})
	if ipc := dp.IPCache(); ipc[netip.MustParsePrefix("100.64.1.2/32")] != 0 || ipc[netip.MustParsePrefix("100.64.1.3/32")] != 301 {
		t.Fatalf("ipcache = %v after the endpoint moved", ipc)
	}
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventDelete, Old: moved})
	if len(dp.IPCache()) != 0 {
		t.Fatalf("ipcache = %v after delete, want empty", dp.IPCache())
	}
}

func TestIPCacheRefusesEndpointsOutsideTheirNode(t *testing.T) {
	dp := bpftest.New()
	prefixes := map[string][]netip.Prefix{"n1": {netip.MustParsePrefix("100.64.1.0/24")}}
	owned := func(cluster, node string) ([]netip.Prefix, bool) { p, ok := prefixes[node]; return p, ok }
	// n1 claims an address of n2's CIDR; n2's endpoint comes before n2's record.
	spoof := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.2.9"), Identity: 666, Cluster: "c", Node: "n1"}
	early := kvstore.Endpoint{IP: netip.MustParseAddr("100.64.2.2"), Identity: 300, Cluster: "c", Node: "n2"}
	r := newIPCacheReconciler(dp, owned, fakeEndpoints{spoof, early}, slog.New(slog.DiscardHandler))
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: spoof})
	r.event(kvstore.Event[kvstore.Endpoint]{Kind: kvstore.EventAdd, Value: early})
	if len(dp.IPCache()) != 0 {
		t.Fatalf("ipcache = %v: a spoofed or not-yet-owned address got an identity", dp.IPCache())
	}
	prefixes["n2"] = []netip.Prefix{netip.MustParsePrefix("100.64.2.0/24")}
	r.resyncNode("c", "n2")
	if ipc := dp.IPCache(); len(ipc) != 1 || ipc[netip.MustParsePrefix("100.64.2.2/32")] != 300 {
		t.Fatalf("ipcache = %v after n2's record arrived, want only n2's own endpoint", ipc)
	}
}

func TestApplyDeltaNeverOpensAGap(t *testing.T) {
	// Becoming enforced: allow entries must be in the map before the
	// endpoint flips to deny-by-default, and stale entries go last.
	dp := bpftest.New()
	r := &policyReconciler{dp: dp}
	old := policy.Key{Direction: policy.Ingress, Identity: 300, Protocol: 6, Port: 80, PortPrefixLen: 16}
	ep := &localEndpoint{ID: 2, IP: netip.MustParseAddr("100.64.1.2"), policy: policy.EndpointPolicy{Entries: map[policy.Key]policy.Verdict{old: policy.Allow}}}
	nk := policy.Key{Direction: policy.Ingress, Identity: 301, Protocol: 6, Port: 5432, PortPrefixLen: 16}
	d := policy.Delta{IngressEnforced: true, Upsert: map[policy.Key]policy.Verdict{nk: policy.Allow}, Delete: []policy.Key{old}}
	if err := r.applyDelta(ep, d, false); err != nil {
		t.Fatal(err)
	}
	want := []string{"policy+ " + toBPFKey(nk).String(), "endpoint 100.64.1.2", "policy- " + toBPFKey(old).String()}
	if got := dp.Writes(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("write order = %v, want %v", got, want)
	}
	if e, _ := dp.Endpoint(ep.IP); !e.IngressEnforced || len(ep.policy.Entries) != 1 {
		t.Fatalf("endpoint state after delta: %+v, entries %v", e, ep.policy.Entries)
	}
	// The same delta again changes no flag: no endpoint rewrite.
	if err := r.applyDelta(ep, policy.Delta{IngressEnforced: true}, false); err != nil {
		t.Fatal(err)
	}
	if got := dp.Writes(); len(got) != 0 {
		t.Fatalf("an empty delta wrote %v", got)
	}
}

func TestWorkloadLabelsAddClusterAndRefuseMeshSources(t *testing.T) {
	a := &Agent{cfg: &config.Config{Cluster: "east"}}
	l, err := a.workloadLabels(map[string]string{"app": "web", "k8s:tier": "front"})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.String(); got != "k8s:tier=front,mesh:cluster=east,vm:app=web" {
		t.Fatalf("labels = %s", got)
	}
	for _, bad := range []string{"mesh:cluster", "reserved:host", "cidr:10.0.0.0/8"} {
		if _, err := a.workloadLabels(map[string]string{bad: "x"}); err == nil {
			t.Errorf("label %s accepted from a user", bad)
		}
	}
	h, err := a.hostLabels()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := h.Get("mesh:kind"); v != "vm" {
		t.Fatalf("host labels %s lack mesh:kind=vm", h)
	}
}

func TestFreeIPSkipsMeshIPWorkloadsAndAddsInFlight(t *testing.T) {
	cidr := netip.MustParsePrefix("100.64.9.0/30") // .1 mesh IP, .2 usable, .3 broadcast
	m := &netnsSource{addr: func() (netip.Prefix, netip.Addr) { return cidr, netip.MustParseAddr("100.64.9.1") }, wl: map[string]*workload{}, adding: map[string]netip.Addr{}}
	ip, err := m.freeIP()
	if err != nil || ip != netip.MustParseAddr("100.64.9.2") {
		t.Fatalf("freeIP = %v, %v; want 100.64.9.2", ip, err)
	}
	m.adding["wl-a"] = ip // another add is setting it up
	if ip, err := m.freeIP(); err == nil {
		t.Fatalf("freeIP handed out %v although the only address is being added", ip)
	}
}

func TestBPFScopeFitsEveryNameLength(t *testing.T) {
	if got := bpfScope("default", "vm.a1"); got != "default_vm-a1" {
		t.Fatalf("short scope = %q", got)
	}
	long := strings.Repeat("a", 63)
	s1, s2 := bpfScope(long, long), bpfScope(long, long[:62]+"b")
	if len(s1) > 64 || s1 == s2 || s1 != bpfScope(long, long) {
		t.Fatalf("long scopes %q / %q: want at most 64 characters, distinct and stable", s1, s2)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`).MatchString(s1) {
		t.Fatalf("scope %q is not a pin directory name bpffs takes", s1)
	}
}
