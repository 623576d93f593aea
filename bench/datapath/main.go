// Command datapath measures what Weft's eBPF datapath costs real traffic:
// new TCP connections per second and TCP throughput between two workload
// namespaces routed through a node namespace, without filtering, with
// Weft's programs and with an equivalent nftables chain. Every figure is a
// ratio against the unfiltered baseline measured in the same run. It needs
// root; it creates its own namespaces and removes them when it ends.
//
// With -summarize UNITS it instead reads `go test -bench` output on stdin
// and prints each benchmark's median and range for those units (run.sh uses
// it for the BPF_PROG_RUN and load benchmarks).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"github.com/weftmesh/weft/bpf"
)

const (
	addrA    = "100.64.1.2"
	addrB    = "100.64.2.2"
	connPort = 5001
	iperfPt  = 5201
	idA      = 1001
	idB      = 1002
)

func main() {
	var (
		duration = flag.Duration("duration", 2*time.Second, "time of one connection-rate measurement, filtered and again unfiltered")
		slices   = flag.Int("slices", 8, "alternating slices a connection-rate measurement is cut into, per side")
		rounds   = flag.Int("rounds", 7, "interleaved rounds; the median is reported")
		sizesArg = flag.String("sizes", "10,1000,10000", "policy sizes (entries / nftables rules)")
		workers  = flag.Int("workers", 4, "concurrent connecting clients")
		tput     = flag.Duration("throughput", 3*time.Second, "length of one iperf3 run (0 skips)")
		summ     = flag.String("summarize", "", "comma-separated units: summarize `go test -bench` output from stdin and exit")
	)
	flag.Parse()
	if *summ != "" {
		if err := summarize(os.Stdin, os.Stdout, strings.Split(*summ, ",")); err != nil {
			fmt.Fprintln(os.Stderr, "bench-datapath -summarize:", err)
			os.Exit(1)
		}
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-datapath needs root (namespaces, eBPF, nftables): sudo make bench-datapath")
		os.Exit(1)
	}
	var sizes []int
	for _, s := range strings.Split(*sizesArg, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "-sizes: %q is not a positive number\n", s)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}
	b := &bench{prefix: fmt.Sprintf("wbd%d", os.Getpid()), workers: *workers}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *rounds < 1 || *slices < 1 || *duration < time.Duration(*slices)*10*time.Millisecond {
		fmt.Fprintln(os.Stderr, "-rounds and -slices must be at least 1, and -duration at least 10ms per slice")
		os.Exit(2)
	}
	err := b.run(ctx, sizes, *rounds, *slices, *duration, *tput)
	b.teardown()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-datapath:", err)
		os.Exit(1)
	}
}

type bench struct {
	prefix     string
	node, a, b string
	workers    int
	created    []string
}

func (b *bench) ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (b *bench) exec(ns string, args ...string) error {
	if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return nil
}

// setup builds node, client (a) and server (b) namespaces; veth ends are
// created directly inside them.
func (b *bench) setup() error {
	b.node, b.a, b.b = b.prefix+"-node", b.prefix+"-a", b.prefix+"-b"
	for _, ns := range []string{b.node, b.a, b.b} {
		if err := b.ip("netns", "add", ns); err != nil {
			return err
		}
		b.created = append(b.created, ns)
		if err := b.ip("-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	for _, w := range []struct{ ns, host, subnet string }{{b.a, "hA", "100.64.1"}, {b.b, "hB", "100.64.2"}} {
		steps := [][]string{
			{"link", "add", w.host, "netns", b.node, "type", "veth", "peer", "name", "eth0", "netns", w.ns},
			{"-n", b.node, "addr", "add", w.subnet + ".1/24", "dev", w.host},
			{"-n", b.node, "link", "set", w.host, "up"},
			{"-n", w.ns, "addr", "add", w.subnet + ".2/24", "dev", "eth0"},
			{"-n", w.ns, "link", "set", "eth0", "up"},
			{"-n", w.ns, "route", "add", "default", "via", w.subnet + ".1"},
		}
		for _, s := range steps {
			if err := b.ip(s...); err != nil {
				return err
			}
		}
	}
	if err := b.exec(b.node, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	return b.exec(b.a, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
}

func (b *bench) teardown() {
	for _, ns := range b.created {
		_ = b.ip("netns", "del", ns)
	}
}

// inNetns runs fn on an OS thread inside the named network namespace.
func inNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, err) // thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

// server accepts and closes at once: a connection costs a handshake and
// a teardown, nothing else.
func (b *bench) server() (net.Listener, error) {
	var ln net.Listener
	err := inNetns(b.b, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(addrB, strconv.Itoa(connPort)))
		return err
	})
	if err != nil {
		return nil, err
	}
	for range 2 {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	return ln, nil
}

// connRate runs workers that connect, wait for the server's FIN and reset
// the connection (no TIME_WAIT to exhaust ports), and returns how many
// connections they completed and in how long.
func (b *bench) connRate(ctx context.Context, d time.Duration) (int64, time.Duration, error) {
	var n, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	errc := make(chan error, b.workers)
	start := time.Now()
	for range b.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- inNetns(b.a, func() error {
				dialer := net.Dialer{Timeout: time.Second}
				buf := make([]byte, 1)
				for time.Now().Before(deadline) && ctx.Err() == nil {
					c, err := dialer.Dial("tcp", net.JoinHostPort(addrB, strconv.Itoa(connPort)))
					if err != nil {
						failed.Add(1)
						continue
					}
					_, _ = c.Read(buf)
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					n.Add(1)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	for err := range errc {
		if err != nil {
			return 0, 0, err
		}
	}
	if f := failed.Load(); f > 0 {
		return 0, 0, fmt.Errorf("%d connections failed: the filter does not allow the benchmark's traffic", f)
	}
	return n.Load(), elapsed, ctx.Err()
}

// filter is a setup under test. setup and teardown are slow (loading
// programs, installing a rule set) and happen once per round; enable and
// disable are quick (attaching the loaded programs, a jump to the loaded
// chain), so a measurement can alternate between filtered and unfiltered
// many times.
type filter struct {
	name            string
	setup, teardown func() error
	enable, disable func() error
}

// weft returns the filter of Weft's programs with entries policy entries
// on B's ingress (the one allowing A added last), attached to both veths.
func (b *bench) weft(entries int) *filter {
	var d *bpf.Datapath
	f := &filter{name: fmt.Sprintf("Weft, %d policy entries", entries)}
	f.setup = func() (err error) { d, err = b.loadWeft(entries); return err }
	f.teardown = func() error { return inNetns(b.node, d.Remove) }
	f.enable = func() error {
		return inNetns(b.node, func() error { return errors.Join(d.AttachWorkload("hA"), d.AttachWorkload("hB")) })
	}
	f.disable = func() error {
		return inNetns(b.node, func() error { return errors.Join(d.Detach("hA"), d.Detach("hB")) })
	}
	return f
}

func (b *bench) loadWeft(entries int) (*bpf.Datapath, error) {
	d, err := bpf.Open(bpf.Config{Ephemeral: true, PolicyEntries: uint32(entries + 16), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*bpf.Datapath, error) {
		_ = inNetns(b.node, d.Remove)
		return nil, err
	}
	for _, e := range []struct {
		addr string
		ep   bpf.Endpoint
	}{{addrA, bpf.Endpoint{ID: 1, Identity: idA}}, {addrB, bpf.Endpoint{ID: 2, Identity: idB, IngressEnforced: true}}} {
		a := netip.MustParseAddr(e.addr)
		if err := d.UpsertEndpoint(a, e.ep); err != nil {
			return fail(err)
		}
		if err := d.UpsertIPCache(netip.PrefixFrom(a, 32), e.ep.Identity, 0); err != nil {
			return fail(err)
		}
	}
	pol := map[bpf.PolicyKey]bpf.Verdict{}
	for i := range entries - 1 {
		pol[bpf.PolicyKey{Direction: bpf.Ingress, Identity: uint32(256 + i), Protocol: 6, Port: uint16(10000 + i%50000), PortPrefixLen: 16}] = bpf.Allow
	}
	if err := d.SetPolicy(2, pol, nil); err != nil {
		return fail(err)
	}
	last := map[bpf.PolicyKey]bpf.Verdict{}
	for _, port := range []uint16{connPort, iperfPt} {
		last[bpf.PolicyKey{Direction: bpf.Ingress, Identity: idA, Protocol: 6, Port: port, PortPrefixLen: 16}] = bpf.Allow
	}
	if err := d.SetPolicy(2, last, nil); err != nil {
		return fail(err)
	}
	return d, nil
}

// nft returns the filter of an nftables rule set of the same size in B:
// established connections accepted first, then one `ip saddr @set tcp
// dport P accept` rule per identity-port pair, the one matching A last,
// then drop. The per-pair rules are loaded once (setup; 10,000 of them take
// seconds); enabling hooks a base chain that holds the established rule and
// jumps to them, disabling removes that chain. The established rule lives
// in the base chain so that, disabled, no rule uses connection tracking
// and the kernel stops tracking connections in B: the unfiltered side is
// truly unfiltered.
func (b *bench) nft(entries int) *filter {
	return &filter{
		name:     fmt.Sprintf("nftables, %d rules", entries),
		setup:    func() error { return b.loadNft(entries) },
		teardown: func() error { return b.exec(b.b, "nft", "delete", "table", "inet", "weftbench") },
		enable: func() error {
			return b.exec(b.b, "nft", "add chain inet weftbench input { type filter hook input priority 0; policy accept; }; "+
				"add rule inet weftbench input ct state established,related accept; "+
				"add rule inet weftbench input jump rules")
		},
		disable: func() error {
			return b.exec(b.b, "nft", "flush chain inet weftbench input; delete chain inet weftbench input")
		},
	}
}

func (b *bench) loadNft(entries int) error {
	var sb strings.Builder
	sb.WriteString("table inet weftbench {\n")
	for i := range entries {
		addr := fmt.Sprintf("10.%d.%d.%d", (i>>16)&255, (i>>8)&255, i&255)
		if i == entries-1 {
			addr = addrA
		}
		fmt.Fprintf(&sb, "  set id%d { type ipv4_addr; elements = { %s } }\n", i, addr)
	}
	sb.WriteString("  chain rules {\n")
	for i := range entries {
		if i == entries-1 {
			fmt.Fprintf(&sb, "    ip saddr @id%d tcp dport { %d, %d } accept\n", i, connPort, iperfPt)
		} else {
			fmt.Fprintf(&sb, "    ip saddr @id%d tcp dport %d accept\n", i, 10000+i%50000)
		}
	}
	sb.WriteString("    drop\n  }\n}\n")
	f, err := os.CreateTemp("", "weft-bench-*.nft")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := io.WriteString(f, sb.String()); err != nil {
		return err
	}
	f.Close()
	return b.exec(b.b, "nft", "-f", f.Name())
}

// iperf returns the received throughput in Gbit/s.
func (b *bench) iperf(d time.Duration) (float64, error) {
	srv := exec.Command("ip", "netns", "exec", b.b, "iperf3", "-s", "-1", "-B", addrB, "-p", strconv.Itoa(iperfPt))
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	type result struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	var res result
	var lastErr error
	for range 20 { // the server needs a moment to listen
		time.Sleep(200 * time.Millisecond)
		out, err := exec.Command("ip", "netns", "exec", b.a, "iperf3", "-c", addrB, "-p", strconv.Itoa(iperfPt),
			"-t", strconv.Itoa(int(d.Seconds())), "-J").Output()
		res = result{}
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			lastErr = fmt.Errorf("iperf3: %v: %s", errors.Join(err, jerr), out)
			continue
		}
		if res.Error != "" || res.End.SumReceived.BitsPerSecond == 0 {
			lastErr = fmt.Errorf("iperf3: %s", res.Error)
			continue
		}
		lastErr = nil
		break
	}
	if lastErr != nil {
		return 0, lastErr
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// median of xs; of an even count, the mean of the middle two.
func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// spread is the smallest and largest of xs.
func spread(xs []float64) (lo, hi float64) {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[0], s[len(s)-1]
}

// pairRate measures the connection rate with f enabled and disabled in
// slices alternating between the two (the first slice alternates from
// round to round), and returns both rates. Alternating in short slices
// means a burst of other work on the machine hits both sides alike.
func (b *bench) pairRate(ctx context.Context, f *filter, round, slices int, dur time.Duration) (on, off float64, err error) {
	var n [2]int64
	var t [2]time.Duration
	slice := dur / time.Duration(slices)
	for i := range 2 * slices {
		filtered := (i+round)%2 == 0
		if filtered {
			err = f.enable()
		}
		if err != nil {
			return 0, 0, fmt.Errorf("%s: enabling: %w", f.name, err)
		}
		k, el, err := b.connRate(ctx, slice)
		if filtered {
			err = errors.Join(err, f.disable())
		}
		if err != nil {
			return 0, 0, fmt.Errorf("%s (filtered %v): %w", f.name, filtered, err)
		}
		side := 1
		if filtered {
			side = 0
		}
		n[side] += k
		t[side] += el
	}
	return float64(n[0]) / t[0].Seconds(), float64(n[1]) / t[1].Seconds(), nil
}

func (b *bench) run(ctx context.Context, sizes []int, rounds, slices int, dur, tput time.Duration) error {
	if err := b.setup(); err != nil {
		return err
	}
	ln, err := b.server()
	if err != nil {
		return err
	}
	defer ln.Close()

	type scenario struct {
		*filter
		rates, base, ratio []float64
	}
	var scen []*scenario
	for _, n := range sizes {
		scen = append(scen, &scenario{filter: b.weft(n)})
	}
	for _, n := range sizes {
		scen = append(scen, &scenario{filter: b.nft(n)})
	}
	// Warm up (caches, conntrack, the scheduler) before anything counts.
	if _, _, err := b.connRate(ctx, dur); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	// Every filtered rate is measured together with an unfiltered one, in
	// alternating slices (pairRate), and the ratio of the pair is what
	// counts. The scenarios' order rotates from round to round.
	const settle = time.Second
	for r := range rounds {
		for i := range scen {
			s := scen[(i+r)%len(scen)]
			if err := s.setup(); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			on, off, err := b.pairRate(ctx, s.filter, r, slices, dur)
			if terr := s.teardown(); err == nil && terr != nil {
				err = fmt.Errorf("%s: removing: %w", s.name, terr)
			}
			if err != nil {
				return err
			}
			// Let deferred kernel work of the teardown (freeing a large
			// nftables table, RCU callbacks) finish before the next pair.
			time.Sleep(settle)
			s.rates, s.base, s.ratio = append(s.rates, on), append(s.base, off), append(s.ratio, on/off)
			fmt.Fprintf(os.Stderr, "round %d: %-28s %8.0f conn/s (no filtering, alternating with it: %8.0f) %.2fx\n", r+1, s.name, on, off, on/off)
		}
	}
	var baseRates []float64
	for _, s := range scen {
		baseRates = append(baseRates, s.base...)
	}
	fmt.Printf("\n### New TCP connections per second (%d rounds; each pair %v filtered and %v unfiltered in %d alternating slices each; %d clients)\n\n",
		rounds, dur, dur, slices, b.workers)
	fmt.Println("| Filter | conn/s (median) | vs no filtering (median of per-round ratios) | per-round ratios (min–max) |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| no filtering | %.0f | 1.00x | |\n", median(baseRates))
	for _, s := range scen {
		lo, hi := spread(s.ratio)
		fmt.Printf("| %s | %.0f | %.2fx | %.2fx–%.2fx |\n", s.name, median(s.rates), median(s.ratio), lo, hi)
	}
	if tput <= 0 {
		return nil
	}
	return b.throughput(rounds, sizes[len(sizes)-1], tput)
}

// throughput measures iperf3 with and without Weft's programs (entries
// policy entries), loaded once and attached for every other run; every
// other round starts with the programs attached.
func (b *bench) throughput(rounds, entries int, d time.Duration) (err error) {
	f := b.weft(entries)
	if err := f.setup(); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.teardown()) }()
	var plain, weft, over []float64
	for r := range rounds {
		var g [2]float64 // with, without
		for i := range 2 {
			filtered := (i+r)%2 == 1
			if filtered {
				if err := f.enable(); err != nil {
					return err
				}
			}
			v, err := b.iperf(d)
			if filtered {
				err = errors.Join(err, f.disable())
			}
			if err != nil {
				return err
			}
			if filtered {
				g[0] = v
			} else {
				g[1] = v
			}
		}
		o := (g[1] - g[0]) / g[1] * 100
		plain, weft, over = append(plain, g[1]), append(weft, g[0]), append(over, o)
		fmt.Fprintf(os.Stderr, "throughput: %.2f Gbit/s plain, %.2f Gbit/s with Weft (%.1f%%)\n", g[1], g[0], o)
	}
	lo, hi := spread(over)
	fmt.Printf("\n### TCP throughput (iperf3, one stream, %d pairs of %v runs; overhead: median of per-pair overheads)\n\n", rounds, d)
	fmt.Println("| Setup | Gbit/s (median) | overhead | per-pair overheads (min–max) |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| no programs | %.2f | | |\n", median(plain))
	fmt.Printf("| Weft programs, %d policy entries | %.2f | %.1f%% | %.1f%% – %.1f%% |\n", entries, median(weft), median(over), lo, hi)
	return nil
}
