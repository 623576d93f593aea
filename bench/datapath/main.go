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
		duration = flag.Duration("duration", time.Second, "length of one connection-rate measurement")
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
	err := b.run(ctx, sizes, *rounds, *duration, *tput)
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
// the connection (no TIME_WAIT to exhaust ports), and returns connections
// per second.
func (b *bench) connRate(ctx context.Context, d time.Duration) (float64, error) {
	var n, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	errc := make(chan error, b.workers)
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
	start := time.Now()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return 0, err
		}
	}
	if f := failed.Load(); f > 0 {
		return 0, fmt.Errorf("%d connections failed: the filter does not allow the benchmark's traffic", f)
	}
	return float64(n.Load()) / time.Since(start).Seconds(), ctx.Err()
}

// weft loads the datapath with entries policy entries on B's ingress (the
// one allowing A added last) and attaches it to both veths.
func (b *bench) weft(entries int) (*bpf.Datapath, error) {
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
	if err := inNetns(b.node, func() error {
		return errors.Join(d.AttachWorkload("hA"), d.AttachWorkload("hB"))
	}); err != nil {
		return fail(err)
	}
	return d, nil
}

func (b *bench) unweft(d *bpf.Datapath) error { return inNetns(b.node, d.Remove) }

// nft installs in B an input chain of the same size: established first,
// then one `ip saddr @set tcp dport P accept` rule per identity-port pair,
// the one matching A last.
func (b *bench) nft(entries int) error {
	var sb strings.Builder
	sb.WriteString("table inet weftbench {\n")
	for i := range entries {
		addr := fmt.Sprintf("10.%d.%d.%d", (i>>16)&255, (i>>8)&255, i&255)
		if i == entries-1 {
			addr = addrA
		}
		fmt.Fprintf(&sb, "  set id%d { type ipv4_addr; elements = { %s } }\n", i, addr)
	}
	sb.WriteString("  chain input {\n    type filter hook input priority 0; policy drop;\n    ct state established,related accept\n")
	for i := range entries {
		if i == entries-1 {
			fmt.Fprintf(&sb, "    ip saddr @id%d tcp dport { %d, %d } accept\n", i, connPort, iperfPt)
		} else {
			fmt.Fprintf(&sb, "    ip saddr @id%d tcp dport %d accept\n", i, 10000+i%50000)
		}
	}
	sb.WriteString("  }\n}\n")
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

func (b *bench) unnft() error { return b.exec(b.b, "nft", "delete", "table", "inet", "weftbench") }

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

func (b *bench) run(ctx context.Context, sizes []int, rounds int, dur, tput time.Duration) error {
	if err := b.setup(); err != nil {
		return err
	}
	ln, err := b.server()
	if err != nil {
		return err
	}
	defer ln.Close()

	type scenario struct {
		name         string
		on, off      func() error
		rates, ratio []float64
	}
	var scen []*scenario
	for _, n := range sizes {
		var d *bpf.Datapath
		scen = append(scen, &scenario{name: fmt.Sprintf("Weft, %d policy entries", n),
			on:  func() (err error) { d, err = b.weft(n); return err },
			off: func() error { return b.unweft(d) }})
	}
	for _, n := range sizes {
		scen = append(scen, &scenario{name: fmt.Sprintf("nftables, %d rules", n),
			on: func() error { return b.nft(n) }, off: b.unnft})
	}
	// Warm up (caches, conntrack, the scheduler) before anything counts.
	if _, err := b.connRate(ctx, dur); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	// Each filtered measurement is paired with an unfiltered one taken next
	// to it, and the ratio of the pair is what counts: on a shared machine
	// the load of the moment moves both alike. The scenarios' order rotates
	// from round to round and every other round measures the filter first,
	// so neither a slow phase of the machine nor the order within a pair
	// favours one setup.
	const settle = time.Second
	time.Sleep(settle)
	var baseRates []float64
	for r := range rounds {
		for i := range scen {
			s := scen[(i+r)%len(scen)]
			var base, rate float64
			measureBase := func() (err error) {
				base, err = b.connRate(ctx, dur)
				if err != nil {
					return fmt.Errorf("no filtering: %w", err)
				}
				return nil
			}
			if r%2 == 0 {
				if err := measureBase(); err != nil {
					return err
				}
			}
			if err := s.on(); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			rate, err := b.connRate(ctx, dur)
			offErr := s.off()
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if offErr != nil {
				return fmt.Errorf("%s: removing: %w", s.name, offErr)
			}
			// Let deferred kernel work of the teardown (freeing a large
			// nftables table, RCU callbacks) finish before the next
			// measurement.
			time.Sleep(settle)
			if r%2 == 1 {
				if err := measureBase(); err != nil {
					return err
				}
			}
			baseRates = append(baseRates, base)
			s.rates = append(s.rates, rate)
			s.ratio = append(s.ratio, rate/base)
			fmt.Fprintf(os.Stderr, "round %d: %-28s %8.0f conn/s (no filtering next to it: %8.0f) %.2fx\n", r+1, s.name, rate, base, rate/base)
		}
	}
	fmt.Printf("\n### New TCP connections per second (%d rounds of %v, %d clients; ratio: median of per-pair ratios)\n\n", rounds, dur, b.workers)
	fmt.Println("| Filter | conn/s (median) | vs no filtering | per-pair ratios (min–max) |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| no filtering | %.0f | 1.00x | |\n", median(baseRates))
	for _, s := range scen {
		lo, hi := spread(s.ratio)
		fmt.Printf("| %s | %.0f | %.2fx | %.2fx–%.2fx |\n", s.name, median(s.rates), median(s.ratio), lo, hi)
	}
	if tput <= 0 {
		return nil
	}
	var plain, weft, over []float64
	n := sizes[len(sizes)-1]
	for r := range rounds {
		// As above: every other pair measures with the programs first.
		var g0, g1 float64
		withWeft := func() error {
			d, err := b.weft(n)
			if err != nil {
				return err
			}
			g1, err = b.iperf(tput)
			return errors.Join(err, b.unweft(d))
		}
		if r%2 == 1 {
			if err := withWeft(); err != nil {
				return err
			}
		}
		g0, err := b.iperf(tput)
		if err != nil {
			return err
		}
		if r%2 == 0 {
			if err := withWeft(); err != nil {
				return err
			}
		}
		plain, weft, over = append(plain, g0), append(weft, g1), append(over, (g0-g1)/g0*100)
		fmt.Fprintf(os.Stderr, "throughput: %.2f Gbit/s plain, %.2f Gbit/s with Weft (%.1f%%)\n", g0, g1, (g0-g1)/g0*100)
	}
	lo, hi := spread(over)
	fmt.Printf("\n### TCP throughput (iperf3, one stream, %d pairs of %v runs; overhead: median of per-pair overheads)\n\n", rounds, tput)
	fmt.Println("| Setup | Gbit/s (median) | overhead | per-pair overheads (min–max) |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| no programs | %.2f | | |\n", median(plain))
	fmt.Printf("| Weft programs, %d policy entries | %.2f | %.1f%% | %.1f%% – %.1f%% |\n", n, median(weft), median(over), lo, hi)
	return nil
}
