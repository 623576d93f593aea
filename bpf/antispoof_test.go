package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/weftmesh/weft/internal/testutil"
)

// Interfaces of the anti-spoofing cases. Only ifindex values: a test run's
// ingress_ifindex names no real device.
const (
	ifWG       = 42 // the node's WireGuard device
	ifUnderlay = 77 // the node's underlay interface
	ifVethD    = 5  // the veth of local workload D

	addrD        = "100.64.1.11"  // local workload D, endpoint 4, identity idD
	addrUnderA   = "198.18.1.10"  // a mesh node's underlay address
	addrUnderB   = "198.18.2.10"  // this node's underlay address
	addrUnderX   = "198.18.1.99"  // an underlay address of no mesh node
	addrCIDRPeer = "198.51.100.7" // in a policy's CIDR: a node-local identity
	idD          = 1004
	wgPort       = 51833
)

// spoofState is what every anti-spoofing case shares: the WireGuard
// device's ifindex, a second local workload D behind its own veth, the
// host endpoint with its mesh identity in the ipcache, and a CIDR peer.
func spoofState(t testing.TB, d *Datapath) {
	t.Helper()
	must(t, d.updateSettings(func(s *datapathSettings) { s.WgIfindex = ifWG }))
	must(t, d.upsertEndpoint(netip.MustParseAddr(addrD), Endpoint{ID: 4, Identity: idD}, ifVethD))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrD+"/32"), idD, 0))
	must(t, d.UpsertEndpoint(netip.MustParseAddr(addrHost), Endpoint{ID: 9, Identity: 700, Host: true}))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrHost+"/32"), 700, 0))
	must(t, d.UpsertIPCache(netip.MustParsePrefix("198.51.100.0/24"), CIDRIdentityBase+5, 0))
}

func strictState(t testing.TB, d *Datapath) {
	t.Helper()
	spoofState(t, d)
	must(t, d.SetStrict(true, wgPort))
	must(t, d.UpsertUnderlayNode(netip.MustParseAddr(addrUnderA)))
}

var spoofCases = []progCase{
	{
		// The loaded program's IDENTITY_CIDR_BASE is identity's
		// CIDRIdentityBase: the highest number of cluster 4095 is a mesh
		// identity (a spoofed source), the first CIDR identity is not.
		name:     "identities of every cluster are mesh identities, CIDR identities are not",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup: func(t testing.TB, d *Datapath) {
			spoofState(t, d)
			must(t, d.UpsertIPCache(netip.MustParsePrefix("100.64.200.1/32"), CIDRIdentityBase-1, 0))
			must(t, d.UpsertIPCache(netip.MustParsePrefix("100.64.200.2/32"), 5<<16|256, 0))
			must(t, d.UpsertIPCache(netip.MustParsePrefix("198.51.101.1/32"), CIDRIdentityBase, 0))
		},
		steps: []step{
			{hook: fromUL, pkt: udp("100.64.200.1", addrUnderB, 1, 2), want: retDrop, reason: ReasonSpoofedSource,
				event: &Event{Type: EventDrop, Reason: ReasonSpoofedSource, Direction: Ingress, SrcIdentity: CIDRIdentityBase - 1, DstIdentity: IdentityWorld, SrcPort: 1, DstPort: 2, Protocol: 17}},
			{hook: fromUL, pkt: udp("100.64.200.2", addrUnderB, 1, 2), want: retDrop, reason: ReasonSpoofedSource},
			{hook: fromUL, pkt: udp("198.51.101.1", addrUnderB, 1, 2), want: retPass},
		},
	},
	{
		name:     "spoofed mesh source from the underlay is dropped",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    spoofState,
		steps: []step{
			{hook: fromUL, pkt: udp(addrB, addrA, 5000, 5353), want: retDrop, reason: ReasonSpoofedSource,
				event: &Event{Type: EventDrop, Reason: ReasonSpoofedSource, Direction: Ingress, SrcIdentity: idB, DstIdentity: idA, SrcPort: 5000, DstPort: 5353, Protocol: 17}},
			{hook: fromUL, pkt: echo(addrB, addrUnderB, 8, 1), want: retDrop, reason: ReasonSpoofedSource},
			{hook: fromUL, pkt: tcp(addrC, addrUnderB, 40000, 22, tcpSYN), want: retDrop, reason: ReasonSpoofedSource}, // a /24 of the ipcache
			{hook: fromUL, pkt: udp(addrB6, addrUnderB, 1, 2), raw: nil, want: retDrop, reason: ReasonSpoofedSource},
			{hook: fromUL3, pkt: l3(udp(addrB, addrA, 5000, 5353)), want: retDrop, reason: ReasonSpoofedSource},
		},
	},
	{
		name:     "mesh destination from the underlay is dropped",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    spoofState,
		steps: []step{
			// The host endpoint's mesh IP: on the underlay it would be
			// delivered without the WireGuard device's programs.
			{hook: fromUL, pkt: tcp(addrUnderA, addrHost, 40000, 22, tcpSYN), want: retDrop, reason: ReasonSpoofedSource,
				event: &Event{Type: EventDrop, Reason: ReasonSpoofedSource, Direction: Ingress, SrcIdentity: IdentityWorld, DstIdentity: 700, SrcPort: 40000, DstPort: 22, Protocol: 6}},
			{hook: fromUL, pkt: udp(addrWorld, addrA, 1, 2), want: retDrop, reason: ReasonSpoofedSource},
			// A non-first fragment has no ports but its addresses count.
			{hook: fromUL, pkt: udp(addrUnderA, addrA, 1, 2), raw: func(b []byte) []byte { b[14+6] = 0x20; b[14+7] = 0x10; return b }, want: retDrop, reason: ReasonSpoofedSource},
		},
	},
	{
		name:     "everything else on the underlay passes untouched",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    spoofState,
		steps: []step{
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, wgPort, wgPort), want: retPass}, // WireGuard
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 40000, 51834, tcpSYN), want: retPass},
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 40000, 22, tcpSYN), want: retPass}, // not strict
			{hook: fromUL, pkt: tcp(addrCIDRPeer, addrUnderB, 40000, 443, tcpSYN), want: retPass},
			{hook: fromUL, pkt: echo(addrWorld, addrUnderB, 8, 3), want: retPass},
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 1, 2), raw: func(b []byte) []byte { b[14] = 0x44; return b }, want: retPass},              // broken: the stack's business
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 1, 2), raw: func(b []byte) []byte { b[12], b[13] = 0x08, 0x06; return b }, want: retPass}, // ARP
			{hook: fromUL3, pkt: l3(udp(addrUnderA, addrUnderB, wgPort, wgPort)), want: retPass},
		},
	},
	{
		name:     "workload sending another local workload's address is dropped",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    spoofState,
		steps: []step{
			// The test run's packets come from the loopback device, A's
			// interface: D lives behind another one.
			{hook: fromWL, pkt: udp(addrD, addrB, 1, 2), want: retDrop, reason: ReasonSpoofedSource,
				event: &Event{Type: EventDrop, Reason: ReasonSpoofedSource, Direction: Egress, EndpointID: 0, SrcIdentity: idD, DstIdentity: idB, SrcPort: 1, DstPort: 2, Protocol: 17}},
			{hook: fromWL, pkt: udp(addrHost, addrB, 1, 2), want: retDrop, reason: ReasonSpoofedSource}, // the node's own
			{hook: fromWL, pkt: udp(addrB, addrC, 1, 2), want: retDrop, reason: ReasonSpoofedSource},    // a remote workload's
			{hook: fromWL, pkt: udp("100.64.1.99", addrB, 1, 2), want: retDrop, reason: ReasonInvalidSource},
			{hook: fromWL, pkt: udp(addrA, addrB, 1, 2), want: retPass},
		},
	},
	{
		name:     "packet to a workload from the underlay with a mesh source is dropped",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy:   map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB}: Allow, {Direction: Ingress, Identity: IdentityWorld}: Allow},
		setup:    spoofState,
		steps: []step{
			{hook: toWL, iif: ifUnderlay, pkt: tcp(addrB, addrA, 40000, 5432, tcpSYN), want: retDrop, reason: ReasonSpoofedSource,
				event: &Event{Type: EventDrop, Reason: ReasonSpoofedSource, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 5432, Protocol: 6}},
			{hook: toWL, iif: ifUnderlay, pkt: echo(addrB, addrA, 8, 9), want: retDrop, reason: ReasonSpoofedSource},
			{hook: toWL, iif: ifUnderlay, pkt: udp(addrD, addrA, 1, 2), want: retDrop, reason: ReasonSpoofedSource}, // a local one's, from elsewhere
			{hook: toWL, iif: ifVethD + 1, pkt: udp(addrD, addrA, 1, 2), want: retDrop, reason: ReasonSpoofedSource},
			// The world stays the world: policy judges it.
			{hook: toWL, iif: ifUnderlay, pkt: tcp(addrWorld, addrA, 40000, 5432, tcpSYN), want: retPass},
		},
	},
	{
		name:     "packet to a workload through the WireGuard device or its source's veth passes",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy:   map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB}: Allow, {Direction: Ingress, Identity: idD}: Allow},
		setup:    spoofState,
		steps: []step{
			{hook: toWL, iif: ifWG, pkt: tcp(addrB, addrA, 40000, 5432, tcpSYN), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 5432, Protocol: 6}},
			{hook: toWL, iif: ifVethD, pkt: udp(addrD, addrA, 1, 2), want: retPass},
			{hook: toWL, pkt: udp(addrHost, addrA, 1, 2), want: retDrop, reason: ReasonPolicyDefault}, // sent by the node: policy judges
			// A forged packet of the established connection is dropped
			// all the same: the check comes before conntrack.
			{hook: toWL, iif: ifUnderlay, pkt: tcp(addrB, addrA, 40000, 5432, tcpACK), want: retDrop, reason: ReasonSpoofedSource},
			{hook: toWL, iif: ifWG, pkt: tcp(addrB, addrA, 40000, 5432, tcpACK), want: retPass},
		},
	},
	{
		name:     "strict mode drops plaintext between mesh nodes but WireGuard, join and etcd",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    strictState,
		steps: []step{
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, wgPort, wgPort), want: retPass},
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 40000, wgPort), want: retPass},
			// Relayed WireGuard (to the relay, to a relay client) and the
			// direct-path check (docs/nat.md).
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 51839, 51838), want: retPass},
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 51838, 51839), want: retPass},
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 51840, 51840), want: retPass},
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 40000, 51834, tcpSYN), want: retPass},
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 40000, 2379, tcpSYN), want: retPass},
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 2380, 40000, tcpSYN|tcpACK), want: retPass}, // a reply
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 2379, 40000, tcpACK), want: retPass},
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 40000, 22, tcpSYN), want: retDrop, reason: ReasonUnencrypted,
				event: &Event{Type: EventDrop, Reason: ReasonUnencrypted, Direction: Ingress, SrcIdentity: IdentityWorld, DstIdentity: IdentityWorld, SrcPort: 40000, DstPort: 22, Protocol: 6}},
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 40000, 53), want: retDrop, reason: ReasonUnencrypted},
			{hook: fromUL, pkt: udp(addrUnderA, addrUnderB, 51838, 53), want: retDrop, reason: ReasonUnencrypted},
			// A control port as source opens nothing.
			{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 2379, 22, tcpSYN), want: retDrop, reason: ReasonUnencrypted},
			{hook: fromUL, pkt: echo(addrUnderA, addrUnderB, 8, 3), want: retDrop, reason: ReasonUnencrypted},
			{hook: fromUL, pkt: echo(addrUnderA, addrUnderB, 3, 0), want: retPass}, // fragmentation needed
			// Not a mesh node: strict mode is about the mesh only.
			{hook: fromUL, pkt: tcp(addrUnderX, addrUnderB, 40000, 22, tcpSYN), want: retPass},
			// Spoofing is judged first.
			{hook: fromUL, pkt: udp(addrB, addrUnderB, wgPort, wgPort), want: retDrop, reason: ReasonSpoofedSource},
		},
	},
	{
		name:     "strict mode off again",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup: func(t testing.TB, d *Datapath) {
			strictState(t, d)
			must(t, d.SetStrict(false, wgPort))
		},
		steps: []step{{hook: fromUL, pkt: tcp(addrUnderA, addrUnderB, 40000, 22, tcpSYN), want: retPass}},
	},
}

// TestAntiSpoofing runs named packet cases for every anti-spoofing and
// strict-mode rule (docs/datapath.md, "Anti-spoofing").
func TestAntiSpoofing(t *testing.T) {
	for _, tc := range spoofCases {
		t.Run(tc.name, func(t *testing.T) { runProgCase(t, tc) })
	}
}

func TestIsMeshIdentity(t *testing.T) {
	for id, want := range map[uint32]bool{0: false, 1: true, 2: false, 3: false, 4: true, 5: false, 6: true, 255: false,
		256: true, 70000: true, CIDRIdentityBase - 1: true, CIDRIdentityBase: false, CIDRIdentityBase + 9: false} {
		if got := IsMeshIdentity(id); got != want {
			t.Errorf("IsMeshIdentity(%d) = %v, want %v", id, got, want)
		}
	}
}

// TestUnderlayNodes: the strict-mode table keeps what it is given.
func TestUnderlayNodes(t *testing.T) {
	d := openTestDatapath(t, Config{})
	a, b := netip.MustParseAddr(addrUnderA), netip.MustParseAddr("2001:db8::7")
	must(t, d.UpsertUnderlayNode(a))
	must(t, d.UpsertUnderlayNode(b))
	must(t, d.DeleteUnderlayNode(a))
	must(t, d.DeleteUnderlayNode(a))
	got, err := d.UnderlayNodes()
	must(t, err)
	if len(got) != 1 || got[0] != b {
		t.Fatalf("underlay nodes %v, want [%v]", got, b)
	}
}

// TestPinnedLayoutMigration: pins of layout 1, whose endpoint values have
// no ifindex, are migrated in place: an upgraded agent keeps every
// endpoint (the old programs keep enforcing until replaced) and the pins
// say layout 2 afterwards.
func TestPinnedLayoutMigration(t *testing.T) {
	testutil.Privileged(t)
	cfg := Config{Scope: fmt.Sprintf("test-migrate-%d", os.Getpid())}
	d, err := Open(cfg)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks a feature the datapath needs: %v", err)
	}
	must(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join(DefaultPinRoot, cfg.Scope)) })
	must(t, d.Close())

	// Make the pins what a layout-1 agent left: its endpoints map (12-byte
	// values) with one workload, and the version.
	dir := filepath.Join(DefaultPinRoot, cfg.Scope)
	must(t, os.Remove(filepath.Join(dir, "endpoints")))
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "endpoints", Type: ebpf.Hash, KeySize: 16, ValueSize: 12, MaxEntries: 4096})
	must(t, err)
	key := netip.MustParseAddr(addrA).As16()
	must(t, old.Update(key[:], []byte{7, 0, 0, 0, 0xe9, 3, 0, 0, 1, 0, 0, 0}, ebpf.UpdateAny)) // ep 7, identity 1001, ingress enforced
	must(t, old.Pin(filepath.Join(dir, "endpoints")))
	old.Close()
	meta, err := ebpf.LoadPinnedMap(filepath.Join(dir, metaMap), nil)
	must(t, err)
	must(t, meta.Update(uint32(0), uint32(1), ebpf.UpdateAny))
	meta.Close()

	d2, err := Open(cfg)
	if err != nil {
		t.Fatalf("opening layout-1 pins: %v", err)
	}
	defer d2.Close()
	var v datapathEndpointValue
	must(t, d2.objs.Endpoints.Lookup(datapathEndpointKey{Addr: key}, &v))
	if v != (datapathEndpointValue{EpId: 7, Identity: idA, Flags: epIngressEnforced}) {
		t.Errorf("migrated endpoint %+v, want ep 7 identity %d ingress enforced, no ifindex", v, idA)
	}
	if got, err := checkLayout(dir); err != nil || got != layoutVersion {
		t.Errorf("layout after the migration: %d (%v), want %d", got, err, layoutVersion)
	}
	// The upgraded agent writes its endpoints again as usual.
	must(t, d2.UpsertEndpoint(netip.MustParseAddr(addrA), Endpoint{ID: 7, Identity: idA}))
}

// TestUnderlayProgramOnRealTraffic: attached to an interface of a
// namespace as the node's underlay, with TCX or tc, the program drops real
// packets whose source is a mesh address and lets the others through; it
// survives the Go side closing (pinned link, tc filter) and Remove takes it
// away.
func TestUnderlayProgramOnRealTraffic(t *testing.T) {
	for _, mode := range []struct {
		name string
		mode AttachMode
	}{{"tcx", AttachAuto}, {"tc", AttachTC}} {
		t.Run(mode.name, func(t *testing.T) { underlayOnRealTraffic(t, mode.mode) })
	}
}

func underlayOnRealTraffic(t *testing.T, mode AttachMode) {
	tp := newTopo(t)
	cfg := Config{Scope: fmt.Sprintf("test-underlay-%d", os.Getpid()), Attach: mode}
	d, err := Open(cfg)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks a feature the datapath needs: %v", err)
	}
	must(t, err)
	t.Cleanup(func() { inNetns(t, tp.node, func() { _ = d.Remove() }) })
	// A's address is a mesh address arriving on the "underlay" hA.
	must(t, d.UpsertIPCache(netip.MustParsePrefix(topoA+"/32"), idA, 0))
	inNetns(t, tp.node, func() { must(t, d.AttachUnderlay("hA")) })
	if _, got := ping(t, tp.a, "100.64.1.1", 3, "0.05"); got != 0 {
		t.Fatalf("pings with a mesh source from the underlay: %d replies, want none", got)
	}
	m, err := d.Metrics()
	must(t, err)
	if c := m.Get(Ingress, true, ReasonSpoofedSource); c.Packets != 3 {
		t.Errorf("spoofed-source drops = %d, want 3 (%+v)", c.Packets, m.Counters)
	}
	// The same address outside the mesh (the world) passes untouched.
	must(t, d.DeleteIPCache(netip.MustParsePrefix(topoA+"/32")))
	if _, got := ping(t, tp.a, "100.64.1.1", 2, "0.05"); got != 2 {
		t.Fatalf("pings from a world address: %d of 2 replies", got)
	}
	must(t, d.UpsertIPCache(netip.MustParsePrefix(topoA+"/32"), idA, 0))
	must(t, d.Close())
	if _, got := ping(t, tp.a, "100.64.1.1", 2, "0.05"); got != 0 {
		t.Fatalf("with the agent gone, the pinned underlay program let %d pings through", got)
	}
	d2, err := Open(cfg)
	must(t, err)
	inNetns(t, tp.node, func() { must(t, d2.Remove()) })
	if _, got := ping(t, tp.a, "100.64.1.1", 2, "0.05"); got != 2 {
		t.Fatalf("after Remove: %d of 2 replies", got)
	}
}
