// Command clusters measures what connected clusters cost one cluster's
// etcd, with the mirror (kvstore/mirror, the default) against direct mode,
// for several numbers of simulated clusters.
//
// One remote cluster's etcd (a real etcd process, so that its CPU time and
// /metrics are its own) holds realistic records of one cluster: nodes,
// endpoints spread over them and identities of its range. N-1 other
// clusters consume it, each with A simulated agents:
//
//   - mirror mode: each consumer runs one mirror (mirror.Mirror) reading the
//     remote etcd and writing its local etcd; its agents watch the local
//     etcd. The consumers' local etcds are namespaces of one local etcd
//     process (the mirror prefix is named after the remote cluster, so they
//     would collide otherwise);
//   - direct mode: each of the (N-1)×A agents watches the remote etcd with
//     its own connection.
//
// A simulated agent is what the agent adds for a connected cluster: one
// member of each of its node, endpoint and identity multi-source caches
// (kvstore.MultiCache), as agent/remoteclusters.go configures them. After
// every agent has synced, a churn phase updates endpoint records of the
// remote cluster at a fixed rate; the program measures, per mode and N, the
// watchers and watch streams on the remote etcd, its CPU time during the
// churn, the time from each write to the remote etcd until every agent's
// cache holds it, and the local etcd's cost in mirror mode. A baseline run
// does the same churn with no consumer: the remote etcd's CPU for the
// writes alone and the put latency, the least any propagation can take.
//
// Run it with `make bench-clusters` (no root needed; it needs Debian's
// etcd-server package or -etcd).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/identity"
)

// defaults is the full run: under about 5 minutes on 2 cores. The churn
// rate is what this machine sustains with 310 simulated agents in direct
// mode: at 100 updates/s their own decoding (about 30,000 events/s in
// this one process) and the remote etcd's fan-out saturate 2 shared CPUs,
// and propagation then measures the backlog of the simulation, not Weft.
func defaults() config {
	return config{
		Clusters: []int{2, 8, 32}, Agents: 10,
		Nodes: 50, Endpoints: 500, Identities: 100,
		Rate: 20, Churn: 20 * time.Second,
		Settle: time.Second, Drain: 15 * time.Second, SyncLimit: 2 * time.Minute,
		Modes: []mode{modeMirror, modeDirect}, Baseline: true, Etcd: "etcd",
	}
}

// quick is a smoke run of a few seconds per case.
func quick(c config) config {
	c.Clusters = []int{2, 4}
	c.Agents = 3
	c.Nodes, c.Endpoints, c.Identities = 5, 50, 10
	c.Rate, c.Churn = 50, 3*time.Second
	return c
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-clusters:", err)
		os.Exit(2)
	}
	if _, err := exec.LookPath(cfg.Etcd); err != nil {
		fmt.Fprintf(os.Stderr, "bench-clusters: no etcd binary %q: install Debian's etcd-server package or pass -etcd PATH\n", cfg.Etcd)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Progress = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	start := time.Now()
	load0 := loadAvg()
	results, err := run(ctx, cfg)
	machine := machineState(cfg, load0, loadAvg(), time.Since(start))
	if len(results) > 0 {
		report(os.Stdout, cfg, machine, results)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-clusters:", err)
		os.Exit(1)
	}
}

// parseFlags reads the flags over the defaults; -quick replaces the
// defaults of the flags not given.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := defaults()
	fs := flag.NewFlagSet("bench-clusters", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		clusters   = fs.String("clusters", "2,8,32", "numbers of simulated clusters, comma separated: one remote cluster and N-1 consuming it")
		agents     = fs.Int("agents", cfg.Agents, "simulated agents per consuming cluster")
		nodes      = fs.Int("nodes", cfg.Nodes, "nodes of the remote cluster (1-250)")
		endpoints  = fs.Int("endpoints", cfg.Endpoints, "endpoints of the remote cluster, spread over its nodes")
		identities = fs.Int("identities", cfg.Identities, "identities of the remote cluster's range")
		rate       = fs.Int("rate", cfg.Rate, "churn: endpoint updates per second")
		churn      = fs.Duration("churn", cfg.Churn, "churn: how long to update")
		settle     = fs.Duration("settle", cfg.Settle, "pause between every agent synced and the churn")
		drain      = fs.Duration("drain", cfg.Drain, "longest wait after the churn for the last updates to reach every agent")
		modes      = fs.String("modes", "mirror,direct", "modes to measure, comma separated: mirror, direct")
		baseline   = fs.Bool("baseline", cfg.Baseline, "measure the churn with no consumer first (the remote etcd's own cost)")
		etcd       = fs.String("etcd", cfg.Etcd, "etcd server binary (3.4 or newer)")
		quickRun   = fs.Bool("quick", false, "a smoke run: 2 and 4 clusters, 3 agents, small records, 3 s of churn (flags given explicitly still apply)")
		verbose    = fs.Bool("v", false, "log the mirrors' and caches' diagnostics")
	)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q (all options are flags)", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quickRun {
		q := quick(cfg)
		if !set["clusters"] {
			*clusters = joinInts(q.Clusters)
		}
		pick := func(name string, p *int, v int) {
			if !set[name] {
				*p = v
			}
		}
		pick("agents", agents, q.Agents)
		pick("nodes", nodes, q.Nodes)
		pick("endpoints", endpoints, q.Endpoints)
		pick("identities", identities, q.Identities)
		pick("rate", rate, q.Rate)
		if !set["churn"] {
			*churn = q.Churn
		}
	}
	var err error
	if cfg.Clusters, err = parseInts(*clusters); err != nil {
		return cfg, fmt.Errorf("-clusters: %w", err)
	}
	cfg.Modes = nil
	for _, m := range strings.Split(*modes, ",") {
		switch mode(strings.TrimSpace(m)) {
		case modeMirror:
			cfg.Modes = append(cfg.Modes, modeMirror)
		case modeDirect:
			cfg.Modes = append(cfg.Modes, modeDirect)
		default:
			return cfg, fmt.Errorf("-modes: %q is no mode: use mirror, direct or both (mirror,direct)", m)
		}
	}
	cfg.Agents, cfg.Nodes, cfg.Endpoints, cfg.Identities = *agents, *nodes, *endpoints, *identities
	cfg.Rate, cfg.Churn, cfg.Settle, cfg.Drain = *rate, *churn, *settle, *drain
	cfg.Baseline, cfg.Etcd = *baseline, *etcd
	if *verbose {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg, cfg.validate()
}

func (c config) validate() error {
	lo, hi, err := identity.ClusterRange(remoteID)
	if err != nil {
		return err
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(len(c.Clusters) > 0, "-clusters: give at least one number of clusters")
	for _, n := range c.Clusters {
		check(n >= 2 && n <= 256, "-clusters: %d clusters: want 2-256 (one remote cluster and at least one consuming it)", n)
	}
	check(len(c.Modes) > 0, "-modes: give at least one mode")
	check(c.Agents >= 1 && c.Agents <= 100, "-agents %d: want 1-100 per consuming cluster", c.Agents)
	check(c.Nodes >= 1 && c.Nodes <= 250, "-nodes %d: want 1-250 (one /24 of 10.1.0.0/16 each)", c.Nodes)
	check(c.Endpoints >= 1 && c.Endpoints <= 250*c.Nodes, "-endpoints %d: want 1-%d (at most 250 per node)", c.Endpoints, 250*c.Nodes)
	check(c.Identities >= 1 && c.Identities <= int(hi-lo)+1, "-identities %d: want 1-%d (the cluster's range)", c.Identities, int(hi-lo)+1)
	check(c.Rate >= 1 && c.Rate <= 5000, "-rate %d: want 1-5000 updates per second", c.Rate)
	check(c.Churn >= 100*time.Millisecond, "-churn %v: want at least 100ms", c.Churn)
	check(c.updates() >= 1, "-rate × -churn gives no update: raise either")
	check(c.Settle >= 0 && c.Drain > 0, "-settle must not be negative and -drain must be positive")
	return errors.Join(errs...)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not a number: want a list such as 2,8,32", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(ns []int) string {
	var s []string
	for _, n := range ns {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ",")
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func machineState(cfg config, load0, load1 string, took time.Duration) string {
	ver := "unknown"
	if out, err := exec.Command(cfg.Etcd, "--version").Output(); err == nil {
		ver = strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "etcd Version: ")
	}
	return fmt.Sprintf("%d CPUs, %s, etcd %s (separate processes, TLS with client certificates, fsync on), load average %s at the start and %s at the end, run took %v",
		runtime.NumCPU(), runtime.Version(), ver, load0, load1, took.Round(time.Second))
}
