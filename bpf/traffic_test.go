package bpf

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/weftmesh/weft/internal/testutil"
)

const (
	epA, epB = 1, 2
	tcpPort  = 8080
)

var allowAtoB = map[PolicyKey]Verdict{{Direction: Ingress, Identity: idA, Protocol: 6, Port: tcpPort, PortPrefixLen: 16}: Allow}

// setupTopo loads a datapath, registers both workloads (B deny-by-default
// on ingress) and attaches to both veths.
func setupTopo(t testing.TB, tp *topo, cfg Config) *Datapath {
	t.Helper()
	d, err := Open(cfg)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks a feature the datapath needs: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		inNetns(t, tp.node, func() {
			if err := d.Remove(); err != nil {
				t.Errorf("Remove: %v", err)
			}
		})
	})
	must(t, d.UpsertEndpoint(netip.MustParseAddr(topoA), Endpoint{ID: epA, Identity: idA}))
	must(t, d.UpsertEndpoint(netip.MustParseAddr(topoB), Endpoint{ID: epB, Identity: idB, IngressEnforced: true}))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(topoA+"/32"), idA, 0))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(topoB+"/32"), idB, 0))
	inNetns(t, tp.node, func() {
		must(t, d.AttachWorkload("hA"))
		must(t, d.AttachWorkload("hB"))
	})
	return d
}

func dial(t testing.TB, ns, addr string) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	// The timeout only bounds how long a dropped SYN is waited for.
	inNetns(t, ns, func() { c, err = net.DialTimeout("tcp", addr, 1500*time.Millisecond) })
	return c, err
}

func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// TestPolicyChangeWithRealTraffic: a policy change applies to the next new
// connection; an established connection keeps flowing until its
// connections are flushed (docs/datapath.md, "Established connections").
func TestPolicyChangeWithRealTraffic(t *testing.T) {
	tp := newTopo(t)
	d := setupTopo(t, tp, Config{Ephemeral: true})
	listen(t, tp.b, fmt.Sprintf("%s:%d", topoB, tcpPort))
	target := fmt.Sprintf("%s:%d", topoB, tcpPort)

	if c, err := dial(t, tp.a, target); err == nil {
		c.Close()
		t.Fatal("B is deny-by-default on ingress, yet A connected")
	}
	must(t, d.SetPolicy(epB, allowAtoB, nil))
	established, err := dial(t, tp.a, target)
	if err != nil {
		t.Fatalf("connecting after the allow rule: %v", err)
	}
	defer established.Close()
	must(t, roundTrip(established, "before"))

	// Revoke: the next new connection is dropped...
	must(t, d.SetPolicy(epB, nil, []PolicyKey{{Direction: Ingress, Identity: idA, Protocol: 6, Port: tcpPort, PortPrefixLen: 16}}))
	if c, err := dial(t, tp.a, target); err == nil {
		c.Close()
		t.Fatal("new connection succeeded after the allow rule was removed")
	}
	// ...while the established one keeps working.
	if err := roundTrip(established, "still here"); err != nil {
		t.Fatalf("established connection broke on a policy change: %v", err)
	}
	// Flushing B's connections cuts it.
	n, err := d.FlushConnections(netip.MustParseAddr(topoB))
	must(t, err)
	if n == 0 {
		t.Fatal("FlushConnections found no tracked connection of B")
	}
	if err := roundTrip(established, "cut"); err == nil {
		t.Fatal("established connection still works after its connections were flushed")
	}
	// A deny rule wins over a renewed allow.
	both := map[PolicyKey]Verdict{}
	for k, v := range allowAtoB {
		both[k] = v
	}
	both[PolicyKey{Direction: Ingress, Identity: idA}] = Deny
	must(t, d.SetPolicy(epB, both, nil))
	if c, err := dial(t, tp.a, target); err == nil {
		c.Close()
		t.Fatal("connection succeeded despite a deny rule")
	}
	must(t, d.SetPolicy(epB, nil, []PolicyKey{{Direction: Ingress, Identity: idA}}))
	c, err := dial(t, tp.a, target)
	if err != nil {
		t.Fatalf("connecting after the deny rule was removed: %v", err)
	}
	c.Close()
}

// TestCountersAndDropEvents: counters match the pings sent and every drop
// arrives as an event naming both identities and the reason.
func TestCountersAndDropEvents(t *testing.T) {
	tp := newTopo(t)
	d := setupTopo(t, tp, Config{Ephemeral: true})
	events, err := d.Events()
	must(t, err)
	defer events.Close()

	const allowed, denied, pingBytes = 5, 4, 84 // 20 IP + 8 ICMP + 56 data
	must(t, d.SetPolicy(epB, map[PolicyKey]Verdict{{Direction: Ingress, Identity: idA, Protocol: 1}: Allow}, nil))
	if sent, got := ping(t, tp.a, topoB, allowed, "0.05"); sent != allowed || got != allowed {
		t.Fatalf("allowed pings: %d sent, %d received", sent, got)
	}
	must(t, d.ClearPolicy(epB))
	if _, got := ping(t, tp.a, topoB, denied, "0.05"); got != 0 {
		t.Fatalf("denied pings: %d replies", got)
	}

	m, err := d.Metrics()
	must(t, err)
	// Each allowed ping passes A's egress, B's ingress, B's egress and A's
	// ingress; each denied one A's egress, then is dropped at B's ingress.
	checks := []struct {
		dir     Direction
		dropped bool
		reason  DropReason
		packets uint64
	}{
		{Egress, false, ReasonNone, 2*allowed + denied},
		{Ingress, false, ReasonNone, 2 * allowed},
		{Ingress, true, ReasonPolicyDefault, denied},
	}
	for _, c := range checks {
		got := m.Get(c.dir, c.dropped, c.reason)
		if got.Packets != c.packets || got.Bytes != c.packets*pingBytes {
			t.Errorf("counter %s dropped=%v %s: %d packets %d bytes, want %d packets %d bytes",
				c.dir, c.dropped, c.reason, got.Packets, got.Bytes, c.packets, c.packets*pingBytes)
		}
	}
	var total uint64
	for _, c := range m.Counters {
		total += c.Packets
	}
	if want := uint64(4*allowed + 2*denied); total != want {
		t.Errorf("counters hold %d packets in all, want %d: %+v", total, want, m.Counters)
	}

	drops := 0
	events.SetDeadline(time.Now().Add(2 * time.Second))
	for drops < denied {
		ev, err := events.Read()
		if err != nil {
			t.Fatalf("after %d drop events: %v", drops, err)
		}
		if ev.Type != EventDrop {
			continue
		}
		drops++
		want := fmt.Sprintf("ep=%d src=%v/%d dst=%v/%d reason=%s proto=1", epB, topoA, idA, topoB, idB, ReasonPolicyDefault)
		got := fmt.Sprintf("ep=%d src=%v/%d dst=%v/%d reason=%s proto=%d", ev.EndpointID, ev.Src, ev.SrcIdentity, ev.Dst, ev.DstIdentity, ev.Reason, ev.Protocol)
		if got != want || ev.Direction != Ingress {
			t.Errorf("drop event %s (%s), want %s", got, ev.Direction, want)
		}
	}
}

// TestRestartFromPins: closing the Go side and opening again from the pins
// while a ping runs loses no ping, and policy stays enforced in between.
func TestRestartFromPins(t *testing.T) {
	testutil.Slow(t)
	tp := newTopo(t)
	cfg := Config{Scope: fmt.Sprintf("test-%d-%d", os.Getpid(), time.Now().UnixNano())}
	d := setupTopo(t, tp, cfg)
	must(t, d.SetPolicy(epB, map[PolicyKey]Verdict{{Direction: Ingress, Identity: idA, Protocol: 1}: Allow}, nil))
	listen(t, tp.b, fmt.Sprintf("%s:%d", topoB, tcpPort))

	type result struct{ sent, got int }
	done := make(chan result)
	go func() {
		s, g := ping(t, tp.a, topoB, 300, "0.01")
		done <- result{s, g}
	}()
	time.Sleep(500 * time.Millisecond) // let the ping get going

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// No Go process holds the datapath now: the pinned programs still
	// enforce B's policy.
	if c, err := dial(t, tp.a, fmt.Sprintf("%s:%d", topoB, tcpPort)); err == nil {
		c.Close()
		t.Fatal("with the agent gone, B's ingress policy was not enforced")
	}
	d2, err := Open(cfg)
	if err != nil {
		t.Fatalf("re-opening from pins: %v", err)
	}
	t.Cleanup(func() { inNetns(t, tp.node, func() { d2.Remove() }) })
	inNetns(t, tp.node, func() {
		must(t, d2.AttachWorkload("hA"))
		must(t, d2.AttachWorkload("hB"))
	})
	// The state is the pinned one.
	pol, err := d2.Policy(epB)
	must(t, err)
	if len(pol) != 1 {
		t.Errorf("policy after re-open: %v, want the one ICMP rule", pol)
	}
	r := <-done
	if r.sent != 300 || r.got != r.sent {
		t.Fatalf("ping across the restart: %d sent, %d received", r.sent, r.got)
	}
	// Exactly one program per hook: re-attaching replaced, not added.
	inNetns(t, tp.node, func() {
		ifc, err := net.InterfaceByName("hB")
		must(t, err)
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: at})
			must(t, err)
			if len(res.Programs) != 1 {
				t.Errorf("%v on hB: %d programs attached, want 1", at, len(res.Programs))
			}
		}
	})
	// Remove detaches: B is reachable on any port again.
	inNetns(t, tp.node, func() { must(t, d2.Remove()) })
	if _, err := os.Stat(filepath.Join(DefaultPinRoot, cfg.Scope)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after Remove: %v", err)
	}
	c, err := dial(t, tp.a, fmt.Sprintf("%s:%d", topoB, tcpPort))
	if err != nil {
		t.Fatalf("after Remove, B is still filtered: %v", err)
	}
	c.Close()
}

// TestTCFallback: the tc clsact path enforces the same policy and
// detaches cleanly.
func TestTCFallback(t *testing.T) {
	tp := newTopo(t)
	d := setupTopo(t, tp, Config{Ephemeral: true, Attach: AttachTC})
	if _, got := ping(t, tp.a, topoB, 2, "0.05"); got != 0 {
		t.Fatalf("tc-attached program did not drop: %d replies", got)
	}
	out, err := exec.Command("ip", "netns", "exec", tp.node, "tc", "filter", "show", "dev", "hB", "egress").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "weft_egress") {
		t.Fatalf("no weft tc filter on hB: %v: %s", err, out)
	}
	inNetns(t, tp.node, func() { must(t, d.Detach("hB")) })
	if _, got := ping(t, tp.a, topoB, 2, "0.05"); got != 2 {
		t.Fatalf("after Detach: %d of 2 replies", got)
	}
	inNetns(t, tp.node, func() {
		if err := d.Detach("hB"); !errors.Is(err, ErrNotAttached) {
			t.Errorf("second Detach: %v, want ErrNotAttached", err)
		}
	})
}

// TestPinnedLayout: a resized map is migrated with its entries; pins of
// another layout version are refused with ErrIncompatiblePins.
func TestPinnedLayout(t *testing.T) {
	testutil.Privileged(t)
	cfg := Config{Scope: fmt.Sprintf("test-layout-%d", os.Getpid()), IPCacheEntries: 1024}
	d, err := Open(cfg)
	must(t, err)
	t.Cleanup(func() { d.Remove() })
	must(t, d.UpsertIPCache(netip.MustParsePrefix("100.64.7.0/24"), 4242, 0))
	must(t, d.Close())

	cfg.IPCacheEntries = 2048
	d2, err := Open(cfg)
	if err != nil {
		t.Fatalf("re-opening with a bigger ipcache: %v", err)
	}
	id, err := d2.LookupIdentity(netip.MustParseAddr("100.64.7.9"))
	must(t, err)
	if id != 4242 {
		t.Errorf("ipcache entry after resize: identity %d, want 4242", id)
	}
	must(t, d2.Close())

	meta, err := ebpf.LoadPinnedMap(filepath.Join(DefaultPinRoot, cfg.Scope, metaMap), nil)
	must(t, err)
	must(t, meta.Update(uint32(0), layoutVersion+1, ebpf.UpdateAny))
	meta.Close()
	_, err = Open(cfg)
	if !errors.Is(err, ErrIncompatiblePins) {
		t.Fatalf("opening pins of another layout: %v, want ErrIncompatiblePins", err)
	}
	if !strings.Contains(err.Error(), "layout version") {
		t.Errorf("error does not say what is wrong: %v", err)
	}
}
