package bpf

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Addresses of the node-control cases: the local node's host endpoint is
// addrHost (endpoint 9, a VM's label identity), isolated both ways.
const (
	addrNodeB   = "100.64.2.1" // node B's own mesh address: flagged IPCacheNode
	addrNodeB6  = "2001:db8:2::1"
	addrHost6   = "2001:db8:9::1"
	idHostVM    = 1009 // the local VM's label identity (app=db)
	idNodeB     = 1012 // node B's label identity
	portAPI     = 51835
	portGossip  = 51836
	portProbe   = 51837
	portPostgre = 5432
)

// nodeControlState: node B's own address is a node address; addrB (a
// workload on node B, identity idB) is not. The local host endpoint is
// isolated: ingress only from idB on 5432, egress nothing.
func nodeControlState(t testing.TB, d *Datapath) {
	t.Helper()
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrNodeB+"/32"), idNodeB, IPCacheNode))
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrNodeB6+"/128"), idNodeB, IPCacheNode))
	// The node's own address is a node address in its own ipcache too.
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrHost+"/32"), idHostVM, IPCacheNode))
	host := Endpoint{ID: 9, Identity: idHostVM, IngressEnforced: true, EgressEnforced: true, Host: true}
	must(t, d.UpsertEndpoint(netip.MustParseAddr(addrHost), host))
	must(t, d.UpsertEndpoint(netip.MustParseAddr(addrHost6), host))
	must(t, d.SetPolicy(9, map[PolicyKey]Verdict{
		{Direction: Ingress, Identity: idB, Protocol: 6, Port: portPostgre, PortPrefixLen: 16}: Allow,
	}, nil))
}

func controlEvent(dir Direction, src, dst uint32, sport, dport uint16, proto uint8) *Event {
	return &Event{Type: EventNewConn, Direction: dir, EndpointID: 9, SrcIdentity: src, DstIdentity: dst,
		SrcPort: sport, DstPort: dport, Protocol: proto, L3: true, NodeControl: true}
}

var nodeControlCases = []progCase{
	{
		name:     "agent ports between node addresses pass an isolated host endpoint",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    nodeControlState,
		steps: []step{
			// B's agent asks this node's agent-to-agent API.
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portAPI, tcpSYN)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, 40000, portAPI, 6)},
			{hook: toDev, pkt: l3(tcp(addrHost, addrNodeB, portAPI, 40000, tcpSYN|tcpACK)), want: retPass},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portAPI, tcpACK)), want: retPass},
			// Gossip, both protocols, and a health probe with its echo.
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, portGossip, portGossip)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, portGossip, portGossip, 17)},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40001, portGossip, tcpSYN)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, 40001, portGossip, 6)},
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, 40002, portProbe)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, 40002, portProbe, 17)},
			{hook: toDev, pkt: l3(udp(addrHost, addrNodeB, portProbe, 40002)), want: retPass},
			// This node's agent reaches B's, although its egress is
			// isolated too; B's answer is a reply.
			{hook: toDev, pkt: l3(tcp(addrHost, addrNodeB, 40003, portAPI, tcpSYN)), want: retPass,
				event: controlEvent(Egress, idHostVM, idNodeB, 40003, portAPI, 6)},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, portAPI, 40003, tcpSYN|tcpACK)), want: retPass},
			{hook: toDev, pkt: l3(udp(addrHost, addrNodeB, 40004, portProbe)), want: retPass,
				event: controlEvent(Egress, idHostVM, idNodeB, 40004, portProbe, 17)},
			// (Gossip from 51836 to 51836: the answer to B's datagram.)
			{hook: toDev, pkt: l3(udp(addrHost, addrNodeB, portGossip, portGossip)), want: retPass},
			// IPv6 node addresses alike.
			{hook: fromDev, pkt: l3(tcp(addrNodeB6, addrHost6, 40005, portAPI, tcpSYN)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, 40005, portAPI, 6)},
		},
	},
	{
		name:     "everything else between the same addresses is still judged by policy",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    nodeControlState,
		steps: []step{
			// Another port of the node address.
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, 22, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault,
				event: &Event{Type: EventDrop, Reason: ReasonPolicyDefault, Direction: Ingress, EndpointID: 9, SrcIdentity: idNodeB, DstIdentity: idHostVM, SrcPort: 40000, DstPort: 22, Protocol: 6, L3: true}},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portPostgre, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portAPI+3, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portAPI-1, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			// A control port with the other protocol: the API is TCP only,
			// the probes UDP only.
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, 40000, portAPI)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portProbe, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			// A control port as the source does not open the others.
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, portAPI, 22, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, portGossip, 53)), want: retDrop, reason: ReasonPolicyDefault},
			// Pings are not control traffic.
			{hook: fromDev, pkt: l3(echo(addrNodeB, addrHost, 8, 1)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: toDev, pkt: l3(tcp(addrHost, addrNodeB, 40000, 22, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			// The workload the policy allows still gets in, by policy.
			{hook: fromDev, pkt: l3(tcp(addrB, addrHost, 40000, portPostgre, tcpSYN)), want: retPass,
				event: &Event{Type: EventNewConn, Direction: Ingress, EndpointID: 9, SrcIdentity: idB, DstIdentity: idHostVM, SrcPort: 40000, DstPort: portPostgre, Protocol: 6, L3: true}},
		},
	},
	{
		name:     "a workload address on a control port is judged by policy",
		endpoint: Endpoint{ID: 1, Identity: idA, IngressEnforced: true},
		setup: func(t testing.TB, d *Datapath) {
			nodeControlState(t, d)
			// A workload with the very identity of node B: the flag, not
			// the identity, makes a node address.
			must(t, d.UpsertIPCache(netip.MustParsePrefix("100.64.2.30/32"), idNodeB, 0))
		},
		steps: []step{
			{hook: fromDev, pkt: l3(tcp(addrB, addrHost, 40000, portAPI, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault,
				event: &Event{Type: EventDrop, Reason: ReasonPolicyDefault, Direction: Ingress, EndpointID: 9, SrcIdentity: idB, DstIdentity: idHostVM, SrcPort: 40000, DstPort: portAPI, Protocol: 6, L3: true}},
			{hook: fromDev, pkt: l3(udp("100.64.2.30", addrHost, 40000, portProbe)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(udp(addrWorld, addrHost, portGossip, portGossip)), want: retDrop, reason: ReasonPolicyDefault},
			// This node's agent cannot reach a workload's port 51835.
			{hook: toDev, pkt: l3(tcp(addrHost, addrB, 40000, portAPI, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			// Node B's address to a local workload (its veth): the
			// exception is the host endpoint's only.
			{hook: toWL, pkt: tcp(addrNodeB, addrA, 40000, portAPI, tcpSYN), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
	{
		name:     "a deny rule does not cut control traffic",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup: func(t testing.TB, d *Datapath) {
			nodeControlState(t, d)
			must(t, d.SetPolicy(9, map[PolicyKey]Verdict{{Direction: Ingress, Identity: idNodeB}: Deny}, nil))
		},
		steps: []step{
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portAPI, tcpSYN)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, 40000, portAPI, 6)},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, 8080, tcpSYN)), want: retDrop, reason: ReasonPolicyDeny},
		},
	},
	{
		name:     "a node address off the tunnel is spoofed, control port or not",
		endpoint: Endpoint{ID: 1, Identity: idA},
		setup:    nodeControlState,
		steps: []step{
			// A stranger on the underlay forging node B's address to reach
			// this node's agent: dropped at the underlay, before the host
			// stack could deliver it around the mesh device.
			{hook: fromUL, pkt: tcp(addrNodeB, addrHost, 40000, portAPI, tcpSYN), want: retDrop, reason: ReasonSpoofedSource},
			{hook: fromUL3, pkt: l3(udp(addrNodeB, addrHost, portGossip, portGossip)), want: retDrop, reason: ReasonSpoofedSource},
			{hook: fromUL, pkt: udp(addrWorld, addrHost, 40000, portProbe), want: retDrop, reason: ReasonSpoofedSource},
			// A local workload sending with node B's address.
			{hook: fromWL, pkt: tcp(addrNodeB, addrHost, 40000, portAPI, tcpSYN), want: retDrop, reason: ReasonSpoofedSource},
		},
	},
	{
		name:     "the control ports come from the configuration",
		endpoint: Endpoint{ID: 1, Identity: idA},
		ports:    ControlPorts{API: 6001, Gossip: 6002, Probe: 6003},
		setup:    nodeControlState,
		steps: []step{
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, 6001, tcpSYN)), want: retPass,
				event: controlEvent(Ingress, idNodeB, idHostVM, 40000, 6001, 6)},
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, 6002, 6002)), want: retPass},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, 6002, tcpSYN)), want: retPass},
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, 40000, 6003)), want: retPass},
			{hook: fromDev, pkt: l3(tcp(addrNodeB, addrHost, 40000, portAPI, tcpSYN)), want: retDrop, reason: ReasonPolicyDefault},
			{hook: fromDev, pkt: l3(udp(addrNodeB, addrHost, 40000, portProbe)), want: retDrop, reason: ReasonPolicyDefault},
		},
	},
}

func TestNodeControl(t *testing.T) {
	for _, tc := range nodeControlCases {
		t.Run(tc.name, func(t *testing.T) { runProgCase(t, tc) })
	}
}

func TestIPCacheNodeFlag(t *testing.T) {
	d := openTestDatapath(t, Config{})
	must(t, d.UpsertIPCache(netip.MustParsePrefix(addrNodeB+"/32"), idNodeB, IPCacheNode))
	must(t, d.UpsertIPCache(netip.MustParsePrefix("100.64.2.0/24"), idB, 0))
	for _, c := range []struct {
		addr      string
		id, flags uint32
	}{
		{addrNodeB, idNodeB, IPCacheNode},
		{"100.64.2.7", idB, 0}, // inside the node's CIDR: not the node
		{addrWorld, IdentityWorld, 0},
	} {
		id, flags, err := d.LookupIPCache(netip.MustParseAddr(c.addr))
		if err != nil || id != c.id || flags != c.flags {
			t.Errorf("LookupIPCache(%s) = %d, %#x, %v; want %d, %#x", c.addr, id, flags, err, c.id, c.flags)
		}
	}
	for _, c := range []struct {
		prefix string
		flags  uint32
		want   string
	}{
		{"100.64.3.0/24", IPCacheNode, "only a single address"},
		{"100.64.3.1/32", 2, "unknown flags"},
	} {
		err := d.UpsertIPCache(netip.MustParsePrefix(c.prefix), idC, c.flags)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("UpsertIPCache(%s, flags %#x) = %v, want an error saying %q", c.prefix, c.flags, err, c.want)
		}
	}
}

func TestEventNodeControlFlag(t *testing.T) {
	for _, flags := range []uint8{0, eventNodeControl} {
		ev, err := decodeEvent(encodeEvent(t, datapathEvent{Type: uint8(EventNewConn), Family: 4, Flags: flags}), time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if ev.NodeControl != (flags != 0) {
			t.Errorf("event flags %#x decoded as NodeControl=%v", flags, ev.NodeControl)
		}
	}
}
