package bpf

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkProgRun measures the per-packet cost of the workload ingress
// program through BPF_PROG_RUN (the kernel times the runs), with 10, 1,000
// and 10,000 policy entries and 100,000 ipcache entries. The cost must not
// grow with the number of entries: policy and endpoints are hash lookups,
// the ipcache one LPM trie lookup of a /128 key.
// Reported as ns/pkt.
func BenchmarkProgRun(b *testing.B) {
	const ipcacheEntries = 100_000
	for _, entries := range []int{10, 1000, 10000} {
		d := openTestDatapath(b, Config{DropEventsPerSecond: 1, DropEventsBurst: 1})
		baseState(b, d, Endpoint{ID: 1, Identity: idA, IngressEnforced: true})
		for i := range ipcacheEntries {
			p := netip.AddrFrom4([4]byte{100, 96 + byte(i>>16), byte(i >> 8), byte(i)})
			must(b, d.UpsertIPCache(netip.PrefixFrom(p, 32), uint32(256+i%entries), 0))
		}
		pol := map[PolicyKey]Verdict{}
		for i := range entries - 1 {
			pol[PolicyKey{Direction: Ingress, Identity: uint32(256 + i), Protocol: 6, Port: uint16(10000 + i), PortPrefixLen: 16}] = Allow
		}
		must(b, d.SetPolicy(1, pol, nil))
		must(b, d.SetPolicy(1, map[PolicyKey]Verdict{{Direction: Ingress, Identity: idB, Protocol: 6, Port: 80, PortPrefixLen: 16}: Allow}, nil))

		cases := []struct {
			name string
			pkt  pkt
			want uint32
		}{
			// Policy is consulted (four lookups) and says no.
			{"policy-denied", tcp(addrC, addrA, 40000, 80, tcpSYN), retDrop},
			// The connection is tracked: one conntrack lookup.
			{"established", tcp(addrB, addrA, 40000, 80, tcpACK), retPass},
		}
		for _, c := range cases {
			b.Run(fmt.Sprintf("%s/policy=%d/ipcache=%d", c.name, entries, ipcacheEntries), func(b *testing.B) {
				data := c.pkt.bytes()
				if got := runProg(b, d, toWL, data); got != c.want {
					b.Fatalf("program returned %#x, want %#x", got, c.want)
				}
				b.ResetTimer()
				ret, per, err := d.objs.WeftToWl.Benchmark(data, b.N, nil)
				if err != nil {
					b.Fatal(err)
				}
				if ret != c.want {
					b.Fatalf("program returned %#x, want %#x", ret, c.want)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
			})
		}
		d.Close()
	}
}
