package bpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// baselineObject is the datapath as it was before anti-spoofing (layout 1,
// commit efcded8): the "before" of BenchmarkAntiSpoofing.
const baselineObject = "testdata/datapath_layout1_bpfel.o"

// baseline is that object loaded with the same state as a test datapath.
type baseline struct {
	coll *ebpf.Collection
}

func loadBaseline(b *testing.B) *baseline {
	b.Helper()
	raw, err := os.ReadFile(baselineObject)
	must(b, err)
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(raw))
	must(b, err)
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		b.Fatalf("loading the baseline object: %v", loadError(err))
	}
	b.Cleanup(coll.Close)
	return &baseline{coll: coll}
}

func (bl *baseline) upsertEndpoint(b *testing.B, addr string, ep Endpoint) {
	b.Helper()
	var flags uint32
	if ep.IngressEnforced {
		flags |= epIngressEnforced
	}
	v := make([]byte, 12) // layout 1: {ep_id, identity, flags}
	binary.NativeEndian.PutUint32(v[0:], ep.ID)
	binary.NativeEndian.PutUint32(v[4:], ep.Identity)
	binary.NativeEndian.PutUint32(v[8:], flags)
	k := netip.MustParseAddr(addr).As16()
	must(b, bl.coll.Maps["endpoints"].Update(k[:], v, ebpf.UpdateAny))
}

func (bl *baseline) upsertIPCache(b *testing.B, p netip.Prefix, id uint32) {
	b.Helper()
	k, err := prefixKey(p)
	must(b, err)
	must(b, bl.coll.Maps["ipcache"].Update(&k, &datapathIpcacheValue{Identity: id}, ebpf.UpdateAny))
}

func (bl *baseline) setPolicy(b *testing.B, epID uint32, pol map[PolicyKey]Verdict) {
	b.Helper()
	var mask uint32
	for k, v := range pol {
		mk := policyMapKey(epID, k)
		must(b, bl.coll.Maps["policy"].Update(&mk, &datapathPolicyValue{Verdict: uint8(v)}, ebpf.UpdateAny))
		mask |= 1 << k.PortPrefixLen
	}
	must(b, bl.coll.Maps["policy_meta"].Update(epID, &datapathPolicyMeta{PrefixMask: mask}, ebpf.UpdateAny))
}

// perPacket runs data through prog n times in the kernel (one test run)
// and returns the mean time per packet. Wall-clock around the one
// syscall: cilium/ebpf's Benchmark cannot pass a context, and the
// ingress interface is in the context; n is large enough that the
// syscall's fixed cost disappears.
func perPacket(b *testing.B, prog *ebpf.Program, data []byte, iif uint32, n int, want uint32) time.Duration {
	b.Helper()
	opts := &ebpf.RunOptions{Data: data, Repeat: uint32(n)}
	if iif != 0 {
		opts.Context = skbContext{IngressIfindex: iif}
	}
	t0 := time.Now()
	ret, err := prog.Run(opts)
	d := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	if ret != want {
		b.Fatalf("program returned %#x, want %#x", ret, want)
	}
	return d / time.Duration(n)
}

// BenchmarkAntiSpoofing measures what anti-spoofing adds per packet: each
// case runs the same packet, with the same maps' contents (100,000 ipcache
// entries), through the programs before anti-spoofing (baselineObject) and
// now, alternating 15 times in one run, and reports the medians as
// ns/pkt-before and ns/pkt-after and their ratio (after/before). The
// underlay program is new: it has no before, and is reported on its own
// (ns/pkt-after) with a ratio against the established packet of the
// workload ingress program, the cheapest judged path.
// go test -run '^$' -bench BenchmarkAntiSpoofing -benchtime 200000x ./bpf/
func BenchmarkAntiSpoofing(b *testing.B) {
	// Many short rounds, before and after interleaved, so that a noisy
	// neighbour on the machine weighs on both alike.
	const ipcacheEntries, rounds = 100_000, 15
	d := openTestDatapath(b, Config{DropEventsPerSecond: 1, DropEventsBurst: 1})
	bl := loadBaseline(b)
	epA := Endpoint{ID: 1, Identity: idA, IngressEnforced: true}
	must(b, d.upsertEndpoint(netip.MustParseAddr(addrA), epA, loIfindex))
	bl.upsertEndpoint(b, addrA, epA)
	must(b, d.upsertEndpoint(netip.MustParseAddr(addrD), Endpoint{ID: 4, Identity: idD}, ifVethD))
	bl.upsertEndpoint(b, addrD, Endpoint{ID: 4, Identity: idD})
	ipc := map[netip.Prefix]uint32{
		netip.MustParsePrefix(addrA + "/32"):   idA,
		netip.MustParsePrefix(addrB + "/32"):   idB,
		netip.MustParsePrefix(addrD + "/32"):   idD,
		netip.MustParsePrefix("100.64.3.0/24"): idC,
	}
	for i := range ipcacheEntries {
		ipc[netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(i>>16), byte(i >> 8), byte(i)}), 32)] = uint32(256 + i%1000)
	}
	for p, id := range ipc {
		must(b, d.UpsertIPCache(p, id, 0))
		bl.upsertIPCache(b, p, id)
	}
	pol := map[PolicyKey]Verdict{
		{Direction: Ingress, Identity: idB, Protocol: 6, Port: 80, PortPrefixLen: 16}: Allow,
		{Direction: Ingress, Identity: idD, Protocol: 6, Port: 80, PortPrefixLen: 16}: Allow,
	}
	for i := range 8 {
		pol[PolicyKey{Direction: Ingress, Identity: uint32(256 + i), Protocol: 6, Port: uint16(10000 + i), PortPrefixLen: 16}] = Allow
	}
	must(b, d.SetPolicy(1, pol, nil))
	bl.setPolicy(b, 1, pol)
	must(b, d.updateSettings(func(s *datapathSettings) { s.WgIfindex = ifWG }))

	cases := []struct {
		name     string
		hook     hook
		baseline string // the baseline's program; "" when there is none
		pkt      pkt
		iif      uint32
		want     uint32
	}{
		// The most common packets: an established connection's, from the
		// tunnel and from a local workload's veth.
		{"to_wl/established/from-wireguard", toWL, "weft_to_wl", tcp(addrB, addrA, 40000, 80, tcpACK), ifWG, retPass},
		{"to_wl/established/from-local-veth", toWL, "weft_to_wl", tcp(addrD, addrA, 40000, 80, tcpACK), ifVethD, retPass},
		{"to_wl/policy-denied/from-wireguard", toWL, "weft_to_wl", tcp(addrC, addrA, 40000, 80, tcpSYN), ifWG, retDrop},
		{"from_wl/established", fromWL, "weft_from_wl", tcp(addrA, addrB, 80, 40000, tcpACK), 0, retPass},
		// What every underlay packet now pays: WireGuard's datagrams,
		// with and without strict mode.
		{"underlay/wireguard", fromUL, "", udp(addrUnderA, addrUnderB, wgPort, wgPort), 0, retPass},
		{"underlay/wireguard/strict", fromUL, "", udp(addrUnderA, addrUnderB, wgPort, wgPort), 0, retPass},
	}
	// The reference of the underlay cases: the established packet now.
	var reference time.Duration
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if c.name == "underlay/wireguard/strict" {
				must(b, d.SetStrict(true, wgPort))
				must(b, d.UpsertUnderlayNode(netip.MustParseAddr(addrUnderA)))
				defer func() { must(b, d.SetStrict(false, wgPort)) }()
			}
			data := c.pkt.bytes()
			now := d.prog(c.hook)
			var before *ebpf.Program
			if c.baseline != "" {
				before = bl.coll.Programs[c.baseline]
			}
			// Warm up: the first packet creates the connection.
			perPacket(b, now, data, c.iif, 1, c.want)
			if before != nil {
				perPacket(b, before, data, c.iif, 1, c.want)
			}
			var afters, befores []time.Duration
			b.ResetTimer()
			for range rounds {
				if before != nil {
					befores = append(befores, perPacket(b, before, data, c.iif, b.N, c.want))
				}
				afters = append(afters, perPacket(b, now, data, c.iif, b.N, c.want))
			}
			b.StopTimer()
			after := median(afters)
			b.ReportMetric(float64(after.Nanoseconds()), "ns/pkt-after")
			if c.name == "to_wl/established/from-wireguard" {
				reference = after
			}
			switch {
			case before != nil:
				bef := median(befores)
				b.ReportMetric(float64(bef.Nanoseconds()), "ns/pkt-before")
				b.ReportMetric(float64(after)/float64(bef), "after/before")
			case reference > 0:
				b.ReportMetric(float64(after)/float64(reference), "vs-to_wl-established")
			}
		})
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
