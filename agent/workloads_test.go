package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
)

// workloadHarness is a netns source over fakes: veths, allocator, records,
// datapath, with the real policy reconciler and endpoint manager.
type workloadHarness struct {
	src     *netnsSource
	veths   *fakeVeths
	alloc   *fakeAllocator
	records *fakeRecords
	dp      *bpftest.Datapath
	dir     string
}

func newWorkloadHarness(t *testing.T, dir string) *workloadHarness {
	t.Helper()
	h := &workloadHarness{veths: newFakeVeths(), alloc: newFakeAllocator(), records: newFakeRecords(), dp: bpftest.New(), dir: dir}
	log := slog.New(slog.DiscardHandler)
	pol := newPolicyReconciler(h.dp, func() int64 { return 1 }, log, func(string, time.Time) {})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go pol.run(ctx)
	eps := &endpointManager{cluster: "c", node: "n1", alloc: h.alloc, policy: pol, dp: h.dp, records: h.records, log: log}
	a := &Agent{cfg: &config.Config{Cluster: "c"}}
	h.src = newNetnsSource(dir, func() (netip.Prefix, netip.Addr) {
		return netip.MustParsePrefix("100.64.3.0/24"), netip.MustParseAddr("100.64.3.1")
	}, func() int { return 1420 }, a.workloadLabels, h.veths, h.dp, eps, log)
	return h
}

func TestWorkloadAddRemove(t *testing.T) {
	h := newWorkloadHarness(t, t.TempDir())
	ctx := context.Background()
	h.veths.add("wl-web")
	w, err := h.src.add(ctx, api.EndpointSpec{Netns: "wl-web", Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	// The first free address after the mesh IP, its identity, its record,
	// its policy entry and the datapath on its veth.
	if w.IP != netip.MustParseAddr("100.64.3.2") || w.ID != 2 || !identity.NumericIdentity(w.Identity).InCluster(1) {
		t.Fatalf("workload = %+v", w)
	}
	rec, ok := h.records.endpoint("100.64.3.2")
	if !ok || rec.Identity != uint32(w.Identity) || rec.Node != "n1" || rec.Cluster != "c" || rec.Name != "wl-web" {
		t.Fatalf("endpoint record = %+v, %v", rec, ok)
	}
	if !strings.Contains(strings.Join(rec.Labels, ","), "mesh:cluster=c") {
		t.Fatalf("record labels %v lack the cluster label", rec.Labels)
	}
	if ep, ok := h.dp.Endpoint(w.IP); !ok || ep.Identity != uint32(w.Identity) || ep.Host {
		t.Fatalf("datapath endpoint = %+v, %v", ep, ok)
	}
	if !h.dp.Attached(w.HostIface) {
		t.Fatalf("datapath not attached to %s", w.HostIface)
	}

	// Adding it again with the same labels is a no-op; other labels conflict.
	again, err := h.src.add(ctx, api.EndpointSpec{Netns: "wl-web", Labels: map[string]string{"app": "web"}})
	if err != nil || again.IP != w.IP {
		t.Fatalf("second add = %+v, %v", again, err)
	}
	if _, err := h.src.add(ctx, api.EndpointSpec{Netns: "wl-web", Labels: map[string]string{"app": "db"}}); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("relabelling add = %v, want a conflict", err)
	}
	if h.veths.plumbs("wl-web") != 1 {
		t.Fatalf("plumbed %d times, want once", h.veths.plumbs("wl-web"))
	}

	if err := h.src.remove(ctx, "wl-web"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.records.endpoint("100.64.3.2"); ok {
		t.Fatal("the endpoint record stays after remove")
	}
	if _, ok := h.dp.Endpoint(w.IP); ok {
		t.Fatal("the datapath endpoint stays after remove")
	}
	if refs := h.alloc.references(); len(refs) != 0 {
		t.Fatalf("identity references left after remove: %v", refs)
	}
	if !h.veths.unplumbed("wl-web") {
		t.Fatal("the veth stays after remove")
	}
	if err := h.src.remove(ctx, "wl-web"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("removing twice = %v, want not found", err)
	}
}

func TestWorkloadAddRefusesBadInputAndChangesNothing(t *testing.T) {
	h := newWorkloadHarness(t, t.TempDir())
	ctx := context.Background()
	h.veths.add("wl-ok")
	for _, c := range []struct {
		spec api.EndpointSpec
		want string
	}{
		{api.EndpointSpec{}, "netns is required"},
		{api.EndpointSpec{Netns: "Bad_Name"}, "not a valid workload name"},
		{api.EndpointSpec{Netns: "wl-missing"}, "not found (create it with `ip netns add wl-missing`)"},
		{api.EndpointSpec{Netns: "wl-ok", Labels: map[string]string{"mesh:kind": "vm"}}, "reserved for labels Weft sets itself"},
	} {
		_, err := h.src.add(ctx, c.spec)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("add(%+v) = %v, want invalid: %q", c.spec, err, c.want)
		}
	}
	if keys := h.records.keys(); len(keys) != 0 || h.veths.plumbs("wl-ok") != 0 {
		t.Fatalf("refused adds changed something: records %v", keys)
	}
}

func TestWorkloadFailedPlumbingReleasesTheIdentity(t *testing.T) {
	h := newWorkloadHarness(t, t.TempDir())
	h.veths.add("wl-web")
	h.veths.fail = errors.New("no veth for you")
	_, err := h.src.add(context.Background(), api.EndpointSpec{Netns: "wl-web", Labels: map[string]string{"app": "web"}})
	if err == nil || !strings.Contains(err.Error(), "connecting namespace wl-web: no veth for you") {
		t.Fatalf("add = %v", err)
	}
	if refs := h.alloc.references(); len(refs) != 0 {
		t.Fatalf("a failed add keeps identity references %v", refs)
	}
	if keys := h.records.keys(); len(keys) != 0 {
		t.Fatalf("a failed add wrote records %v", keys)
	}
	if len(h.src.list()) != 0 {
		t.Fatal("a failed add is listed as a workload")
	}
}

func TestWorkloadRestore(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	h := newWorkloadHarness(t, dir)
	for _, ns := range []string{"wl-a", "wl-b", "wl-c"} {
		h.veths.add(ns)
		if _, err := h.src.add(ctx, api.EndpointSpec{Netns: ns, Labels: map[string]string{"app": ns}}); err != nil {
			t.Fatal(err)
		}
	}
	// The agent restarts; meanwhile wl-b's namespace was deleted.
	h2 := newWorkloadHarness(t, dir)
	h2.veths.add("wl-a")
	h2.veths.add("wl-c")
	h2.veths.add("wl-new")
	declared := []config.Workload{{Netns: "wl-new", Labels: map[string]string{"app": "new"}}, {Netns: "wl-a", Labels: map[string]string{"app": "wl-a"}}}
	if err := h2.src.restore(ctx, declared); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range h2.src.list() {
		names = append(names, w.Name+"@"+w.IP.String())
	}
	// wl-a and wl-c keep their addresses; wl-new takes the lowest free one
	// (wl-b's); wl-a's declaration matches the restored one.
	if got := strings.Join(names, " "); got != "wl-a@100.64.3.2 wl-c@100.64.3.4 wl-new@100.64.3.3" {
		t.Fatalf("restored workloads: %s", got)
	}
	for _, ip := range []string{"100.64.3.2", "100.64.3.3", "100.64.3.4"} {
		if _, ok := h2.records.endpoint(ip); !ok {
			t.Errorf("no endpoint record for %s after restore", ip)
		}
	}
	// The state file lists what runs now.
	data, err := os.ReadFile(filepath.Join(dir, workloadStateFile))
	if err != nil || strings.Contains(string(data), "wl-b") || !strings.Contains(string(data), "wl-new") {
		t.Fatalf("state file after restore: %s, %v", data, err)
	}
}

func TestWorkloadRestoreSurvivesACorruptStateFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, workloadStateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newWorkloadHarness(t, dir)
	h.veths.add("wl-new")
	if err := h.src.restore(context.Background(), []config.Workload{{Netns: "wl-new"}}); err != nil {
		t.Fatalf("restore with a corrupt state file: %v", err)
	}
	if ws := h.src.list(); len(ws) != 1 || ws[0].Name != "wl-new" {
		t.Fatalf("workloads = %+v", ws)
	}
}

func TestWorkloadReallocateAfterALostIdentity(t *testing.T) {
	h := newWorkloadHarness(t, t.TempDir())
	ctx := context.Background()
	h.veths.add("wl-web")
	w, err := h.src.add(ctx, api.EndpointSpec{Netns: "wl-web", Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	lost := w.Identity
	// The allocator forgot the label set (collected while the lease was
	// lost): the workload gets a fresh identity and record.
	h.alloc.mu.Lock()
	delete(h.alloc.ids, labels(t, w.Labels...).String())
	h.alloc.mu.Unlock()
	h.src.reallocate(ctx, lost)
	rec, _ := h.records.endpoint(w.IP.String())
	if rec == nil || identity.NumericIdentity(rec.Identity) == lost {
		t.Fatalf("record after reallocation = %+v, want a new identity (lost %d)", rec, lost)
	}
}

func TestWorkloadRestoreSkipsAWorkloadWithBadSavedLabels(t *testing.T) {
	dir := t.TempDir()
	state := `[{"name":"wl-bad","netns":"wl-bad","ip":"100.64.3.2","id":2,"hostIface":"wlx","labels":["vm:=nokey"]},
{"name":"wl-ok","netns":"wl-ok","ip":"100.64.3.3","id":3,"hostIface":"wly","labels":["vm:app=ok"]}]`
	if err := os.WriteFile(filepath.Join(dir, workloadStateFile), []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newWorkloadHarness(t, dir)
	h.veths.add("wl-bad")
	h.veths.add("wl-ok")
	if err := h.src.restore(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if ws := h.src.list(); len(ws) != 1 || ws[0].Name != "wl-ok" {
		t.Fatalf("restored %+v, want only wl-ok", ws)
	}
	if h.veths.plumbs("wl-bad") != 0 || len(h.alloc.references()) != 1 {
		t.Fatalf("the bad workload was plumbed or holds an identity: %v", h.alloc.references())
	}
}
