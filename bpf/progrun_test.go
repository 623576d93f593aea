package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/weftmesh/weft/internal/testutil"
)

// Return codes of the programs (tc/TCX): pass on, or drop.
const (
	retPass = ^uint32(0) // TC_ACT_UNSPEC / TCX_NEXT
	retDrop = 2          // TC_ACT_SHOT / TCX_DROP
)

// Addresses of the BPF_PROG_RUN cases. The packets exist only in the
// kernel's test run; nothing is sent anywhere.
const (
	addrA     = "100.64.1.10" // local endpoint 1, identity 1001
	addrB     = "100.64.2.20" // remote peer, identity 1002
	addrC     = "100.64.3.30" // remote peer, identity 1003
	addrWorld = "203.0.113.5" // in no ipcache prefix
	addrHost  = "100.64.9.1"  // the node's host endpoint 9, identity 1
	addrA6    = "2001:db8:1::10"
	addrB6    = "2001:db8:2::20"
	idA       = 1001
	idB       = 1002
	idC       = 1003
)

func openTestDatapath(t testing.TB, cfg Config) *Datapath {
	t.Helper()
	testutil.Privileged(t)
	cfg.Ephemeral = true
	d, err := Open(cfg)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks a feature the datapath needs: %v", err)
	}
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// baseState registers endpoint A (and A6), the host endpoint and the
// ipcache entries every case shares.
func baseState(t testing.TB, d *Datapath, a Endpoint) {
	t.Helper()
	// A lives behind the interface the kernel's test run gives every
	// packet (the loopback device), as a workload behind its veth.
	must(t, d.upsertEndpoint(netip.MustParseAddr(addrA), a, loIfindex))
	must(t, d.upsertEndpoint(netip.MustParseAddr(addrA6), a, loIfindex))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrA+"/32"), idA, 0))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrB+"/32"), idB, 0))
	must(t, d.UpsertIPCache(netip.MustParsePrefix("100.64.3.0/24"), idC, 0))
	must(t, d.UpsertIPCache(netip.MustParsePrefix("2001:db8:2::/64"), idB, 0))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type hook int

const (
	fromWL hook = iota
	toWL
	fromDev
	toDev
	fromUL  // an underlay interface (Ethernet)
	fromUL3 // an underlay interface without an Ethernet header
)

func (d *Datapath) prog(h hook) *ebpf.Program {
	switch h {
	case fromWL:
		return d.objs.WeftFromWl
	case toWL:
		return d.objs.WeftToWl
	case fromDev:
		return d.objs.WeftFromDev
	case fromUL:
		return d.objs.WeftFromUnderlay
	case fromUL3:
		return d.objs.WeftFromUnderlay3
	}
	return d.objs.WeftToDev
}

func runProg(t testing.TB, d *Datapath, h hook, data []byte) uint32 {
	t.Helper()
	return runProgFrom(t, d, h, data, 0)
}

// loIfindex is the interface of every packet of the kernel's test run
// (skb->ifindex): the loopback device.
const loIfindex = 1

// skbContext is the head of struct __sk_buff, up to the fields a test run
// may set that the programs read: the test run refuses the others unless
// zero.
type skbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex                                                                        uint32
	Ifindex                                                                               uint32
}

// runProgFrom runs a packet that entered the node through interface iif
// (skb->ingress_ifindex; 0: sent by the node itself).
func runProgFrom(t testing.TB, d *Datapath, h hook, data []byte, iif uint32) uint32 {
	t.Helper()
	opts := &ebpf.RunOptions{Data: data}
	if iif != 0 {
		opts.Context = skbContext{IngressIfindex: iif}
	}
	ret, err := d.prog(h).Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_RUN of %d bytes: %v", len(data), err)
	}
	return ret
}

// step is one packet through one hook and what must come of it.
type step struct {
	hook hook
	pkt  pkt
	raw  func([]byte) []byte // optional mangling of the rendered packet
	// iif is the interface the packet entered the node through (0: the
	// node sent it): ifWG, ifUnderlay, or a veth of tc.setup's endpoints.
	iif    uint32
	want   uint32
	reason DropReason // when want == retDrop
	// event, when set, is the event this packet must produce.
	event *Event
}

type progCase struct {
	name     string
	endpoint Endpoint
	policy   map[PolicyKey]Verdict
	setup    func(t testing.TB, d *Datapath)
	steps    []step
	ports    ControlPorts // the datapath's control ports; zero: the defaults
}

func tcp(src, dst string, sport, dport uint16, flags uint8) pkt {
	return pkt{src: src, dst: dst, proto: 6, sport: sport, dport: dport, tcpFlags: flags}
}

func udp(src, dst string, sport, dport uint16) pkt {
	return pkt{src: src, dst: dst, proto: 17, sport: sport, dport: dport}
}

func echo(src, dst string, typ uint8, id uint16) pkt {
	proto := uint8(1)
	if netip.MustParseAddr(src).Is6() {
		proto = 58
	}
	return pkt{src: src, dst: dst, proto: proto, icmpType: typ, echoID: id}
}

func l3(p pkt) pkt { p.l3 = true; return p }

var progCases = []progCase{
	{
		name:     "allow by identity and port",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy:   map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB, Protocol: 6, Port: 80, PortPrefixLen: 16}: Allow},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 80, Protocol: 6}},
			{hook: toWL, pkt: tcp(addrB, addrA, 40001, 81, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
			{hook: toWL, pkt: tcp(addrC, addrA, 40002, 80, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "allow on any port",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy:   map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB, Protocol: 6}: Allow},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 4242, tcpSYN), want: retPass},
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 1, tcpSYN), want: retPass},
			{hook: toWL, pkt: udp(addrB, addrA, 40000, 53), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "port prefix covers a range",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		// 8000-8255: the top 8 bits of the port.
		policy: map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB, Protocol: 17, Port: 0x1f00, PortPrefixLen: 8}: Allow},
		steps: []step{
			{hook: toWL, pkt: udp(addrB, addrA, 5000, 0x1f00), want: retPass},
			{hook: toWL, pkt: udp(addrB, addrA, 5000, 0x1fff), want: retPass},
			{hook: toWL, pkt: udp(addrB, addrA, 5000, 0x2000), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "deny beats allow",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy: map[PolicyKey]Verdict{
			{Direction: Ingress}: Allow, // every peer, every protocol
			{Direction: Ingress, Identity: idB, Protocol: 6, Port: 22, PortPrefixLen: 16}: Deny,
		},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 22, tcpSYN), want: retDrop, reason: ReasonPolicyDeny,
				event: &Event{Type: EventDrop, Reason: ReasonPolicyDeny, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 22, Protocol: 6}},
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retPass},
			{hook: toWL, pkt: tcp(addrC, addrA, 40000, 22, tcpSYN), want: retPass},
		},
	},
	{
		name:     "deny applies even where the direction is not enforced",
		endpoint: Endpoint{ID: 1, Identity: idA},
		policy:   map[PolicyKey]Verdict{{Direction: Egress, Identity: idC}: Deny},
		steps: []step{
			{hook: fromWL, pkt: udp(addrA, addrC, 5000, 53), want: retDrop, reason: ReasonPolicyDeny},
			{hook: fromWL, pkt: udp(addrA, addrB, 5000, 53), want: retPass},
		},
	},
	{
		name:     "unknown source is the world identity",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy:   map[PolicyKey]Verdict{{Direction: Ingress, Identity: IdentityWorld, Protocol: 6, Port: 443, PortPrefixLen: 16}: Allow},
		steps: []step{
			{hook: toWL, pkt: tcp(addrWorld, addrA, 40000, 443, tcpSYN), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 1, SrcIdentity: IdentityWorld, DstIdentity: idA, SrcPort: 40000, DstPort: 443, Protocol: 6}},
			{hook: toWL, pkt: tcp(addrC, addrA, 40000, 443, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "endpoint without policy is allowed",
		endpoint: Endpoint{ID: 1, Identity: idA},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retPass},
			{hook: fromWL, pkt: udp(addrA, addrWorld, 5000, 53), want: retPass},
			{hook: toWL, pkt: echo(addrC, addrA, 8, 7), want: retPass},
		},
	},
	{
		name:     "enforced endpoint without a matching rule drops",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true, EgressEnforced: true},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retDrop, reason: ReasonPolicyDefault,
				event: &Event{Type: EventDrop, Reason: ReasonPolicyDefault, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 80, Protocol: 6}},
			{hook: fromWL, pkt: tcp(addrA, addrB, 40000, 80, tcpSYN), want: retDrop, reason: ReasonPolicyDefault,
				event: &Event{Type: EventDrop, Reason: ReasonPolicyDefault, Direction: Egress, EndpointID: 1, SrcIdentity: idA, DstIdentity: idB, SrcPort: 40000, DstPort: 80, Protocol: 6}},
		},
	},
	{
		name:     "reply of an allowed connection passes, a new connection the other way drops",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		steps: []step{
			{hook: fromWL, pkt: tcp(addrA, addrB, 40000, 80, tcpSYN), want: retPass},
			{hook: toWL, pkt: tcp(addrB, addrA, 80, 40000, tcpSYN|tcpACK), want: retPass},
			{hook: fromWL, pkt: tcp(addrA, addrB, 40000, 80, tcpACK), want: retPass},
			{hook: toWL, pkt: tcp(addrB, addrA, 80, 40000, tcpACK), want: retPass},
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
			{hook: toWL, pkt: tcp(addrB, addrA, 80, 40001, tcpACK), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "closed connection is judged again",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		setup: func(t testing.TB, d *Datapath) {
			must(t, d.SetPolicy(1, map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB, Protocol: 6, Port: 80, PortPrefixLen: 16}: Allow}, nil))
		},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retPass},
			{hook: fromWL, pkt: tcp(addrA, addrB, 80, 40000, tcpSYN|tcpACK), want: retPass},
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpRST), want: retPass},
			// A new SYN on the same ports after the RST is a new
			// connection: still allowed by the rule, and counted as new.
			{hook: toWL, pkt: tcp(addrB, addrA, 40000, 80, tcpSYN), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 80, Protocol: 6}},
		},
	},
	{
		name:     "ICMP echo and reply",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true, EgressEnforced: true},
		policy:   map[PolicyKey]Verdict{{Direction: Egress, Identity: idB, Protocol: 1}: Allow},
		steps: []step{
			{hook: fromWL, pkt: echo(addrA, addrB, 8, 77), want: retPass},
			{hook: toWL, pkt: echo(addrB, addrA, 0, 77), want: retPass},
			{hook: toWL, pkt: echo(addrB, addrA, 0, 78), want: retDrop, reason: ReasonPolicyDefault},
			{hook: toWL, pkt: echo(addrB, addrA, 8, 77), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromWL, pkt: echo(addrA, addrC, 8, 77), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "IPv6",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		policy: map[PolicyKey]Verdict{
			{Direction: Ingress, Identity: idB, Protocol: 6, Port: 80, PortPrefixLen: 16}: Allow,
			{Direction: Ingress, Identity: idB, Protocol: 58}:                             Allow,
		},
		steps: []step{
			{hook: toWL, pkt: tcp(addrB6, addrA6, 40000, 80, tcpSYN), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 1, SrcIdentity: idB, DstIdentity: idA, SrcPort: 40000, DstPort: 80, Protocol: 6}},
			{hook: fromWL, pkt: tcp(addrA6, addrB6, 80, 40000, tcpSYN|tcpACK), want: retPass},
			{hook: toWL, pkt: tcp(addrB6, addrA6, 40000, 81, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
			{hook: toWL, pkt: echo(addrB6, addrA6, 128, 5), want: retPass},
			{hook: fromWL, pkt: echo(addrA6, addrB6, 129, 5), want: retPass},
			// Neighbour solicitation keeps working whatever the policy.
			{hook: toWL, pkt: echo("fe80::1", addrA6, 135, 0), want: retPass},
			{hook: toWL, pkt: tcp("2001:db8:99::1", addrA6, 40000, 80, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "L3 device judges only the host endpoint",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		setup: func(t testing.TB, d *Datapath) {
			must(t, d.UpsertEndpoint(netip.MustParseAddr(addrHost), Endpoint{ID: 9, Identity: IdentityHost, IngressEnforced: true, Host: true}))
			must(t, d.SetPolicy(9, map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB, Protocol: 17, Port: 53, PortPrefixLen: 16}: Allow}, nil))
		},
		steps: []step{
			{hook: fromDev, pkt: l3(udp(addrB, addrHost, 5000, 53)), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 9, SrcIdentity: idB, DstIdentity: IdentityHost, SrcPort: 5000, DstPort: 53, Protocol: 17, L3: true}},
			{hook: toDev, pkt: l3(udp(addrHost, addrB, 53, 5000)), want: retPass},
			{hook: fromDev, pkt: l3(udp(addrB, addrHost, 5000, 54)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(tcp(addrB6, addrA6, 1, 2, tcpSYN)), want: retPass}, // workload A: judged at its veth
			{hook: toDev, pkt: l3(udp(addrWorld, addrB, 1, 2)), want: retPass},         // not the host endpoint's address
		},
	},
	{
		name:     "L2 and L3 variants of one packet",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true, Host: true},
		steps: []step{
			{hook: toWL, pkt: udp(addrB, addrA, 1, 2), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(udp(addrB, addrA, 1, 2)), want: retDrop, reason: ReasonPolicyDefault},
			// An L3 packet given to the L2 program is not IP to it.
			{hook: toWL, pkt: l3(udp(addrB, addrA, 1, 2)), want: retPass},
		},
	},
	{
		name:     "truncated and malformed packets drop",
		endpoint: Endpoint{ID: 1, Identity: idA},
		steps: []step{
			// (The kernel's test run refuses Ethernet frames too short for
			// the IP header they announce, so the truncated header is an
			// L3 packet.)
			{hook: fromDev, pkt: l3(udp(addrB, addrA, 1, 2)), raw: func(b []byte) []byte { return b[:16] }, want: retDrop, reason: ReasonMalformed,
				event: &Event{Type: EventDrop, Reason: ReasonMalformed, Direction: Ingress, L3: true}},
			{hook: toWL, pkt: udp(addrB, addrA, 1, 2), raw: func(b []byte) []byte { b[14] = 0x44; return b }, want: retDrop, reason: ReasonMalformed},
			{hook: toWL, pkt: udp(addrB, addrA, 1, 2), raw: func(b []byte) []byte { b[14] = 0x65; return b }, want: retDrop, reason: ReasonMalformed},
			{hook: toWL, pkt: udp(addrB, addrA, 1, 2), raw: func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 200); return b }, want: retDrop, reason: ReasonMalformed},
			{hook: toWL, pkt: tcp(addrB, addrA, 1, 2, tcpSYN), raw: func(b []byte) []byte {
				binary.BigEndian.PutUint16(b[16:], 20+10)
				return b[:14+20+10]
			}, want: retDrop, reason: ReasonMalformed},
			{hook: toWL, pkt: tcp(addrB, addrA, 1, 2, tcpSYN), raw: func(b []byte) []byte { b[14+20+12] = 2 << 4; return b }, want: retDrop, reason: ReasonMalformed},
			{hook: toWL, pkt: tcp(addrB6, addrA6, 1, 2, tcpSYN), raw: func(b []byte) []byte { return b[:14+40+8] }, want: retDrop, reason: ReasonMalformed},
			{hook: fromDev, pkt: l3(udp(addrB, addrA, 1, 2)), raw: func(b []byte) []byte { b[0] = 0x55; return b }, want: retDrop, reason: ReasonMalformed},
			{hook: toWL, pkt: udp(addrB, addrA, 1, 2), raw: func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+6:], 100); return b }, want: retDrop, reason: ReasonFragment},
			{hook: fromWL, pkt: udp("100.64.1.99", addrB, 1, 2), want: retDrop, reason: ReasonInvalidSource,
				event: &Event{Type: EventDrop, Reason: ReasonInvalidSource, Direction: Egress, SrcIdentity: IdentityWorld, SrcPort: 1, DstPort: 2, Protocol: 17}},
			{hook: toWL, pkt: udp("224.0.0.5", addrA, 1, 2), want: retDrop, reason: ReasonInvalidSource},
			{hook: toWL, pkt: udp(addrB, addrA, 1, 2), want: retPass},
		},
	},
}

func TestProgRun(t *testing.T) {
	for _, tc := range progCases {
		t.Run(tc.name, func(t *testing.T) { runProgCase(t, tc) })
	}
}

// runProgCase runs one case's steps on a fresh datapath and checks the
// verdicts, the events named and the drop counters.
func runProgCase(t *testing.T, tc progCase) {
	t.Helper()
	d := openTestDatapath(t, Config{DropEventsPerSecond: 1000, DropEventsBurst: 1000, ControlPorts: tc.ports})
	baseState(t, d, tc.endpoint)
	if tc.policy != nil {
		must(t, d.SetPolicy(tc.endpoint.ID, tc.policy, nil))
	}
	if tc.setup != nil {
		tc.setup(t, d)
	}
	events, err := d.Events()
	must(t, err)
	defer events.Close()

	wantDrops := map[[2]uint8]uint64{}
	for i, s := range tc.steps {
		data := s.pkt.bytes()
		if s.raw != nil {
			data = s.raw(data)
		}
		got := runProgFrom(t, d, s.hook, data, s.iif)
		if got != s.want {
			t.Fatalf("step %d (%+v): program returned %#x, want %#x", i, s.pkt, got, s.want)
		}
		if s.want == retDrop {
			dir := Ingress // the underlay programs' too
			if s.hook == fromWL || s.hook == toDev {
				dir = Egress
			}
			wantDrops[[2]uint8{uint8(dir), uint8(s.reason)}]++
		}
		if s.event != nil {
			checkEvent(t, i, events, *s.event)
		}
	}
	m, err := d.Metrics()
	must(t, err)
	for _, c := range m.Counters {
		if !c.Dropped {
			continue
		}
		k := [2]uint8{uint8(c.Direction), uint8(c.Reason)}
		if c.Packets != wantDrops[k] {
			t.Errorf("drop counter %s/%s = %d, want %d", c.Direction, c.Reason, c.Packets, wantDrops[k])
		}
		delete(wantDrops, k)
	}
	for k, n := range wantDrops {
		t.Errorf("drop counter %s/%s missing, want %d", Direction(k[0]), DropReason(k[1]), n)
	}
}

// checkEvent reads events until one of the wanted type arrives and compares
// the fields the case names.
func checkEvent(t *testing.T, step int, r *EventReader, want Event) {
	t.Helper()
	r.SetDeadline(time.Now().Add(2 * time.Second))
	for {
		got, err := r.Read()
		if err != nil {
			t.Fatalf("step %d: no %s event: %v", step, want.Type, err)
		}
		if got.Type != want.Type || got.Reason != want.Reason {
			continue
		}
		if got.Direction != want.Direction || got.EndpointID != want.EndpointID ||
			got.SrcIdentity != want.SrcIdentity || got.DstIdentity != want.DstIdentity ||
			got.SrcPort != want.SrcPort || got.DstPort != want.DstPort || got.Protocol != want.Protocol || got.L3 != want.L3 ||
			got.NodeControl != want.NodeControl {
			t.Fatalf("step %d: event\n got %v\nwant %v", step, got, want)
		}
		if time.Since(got.Time).Abs() > time.Minute {
			t.Errorf("step %d: event time %v is not about now", step, got.Time)
		}
		return
	}
}
