package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/mirror"
	"github.com/weftmesh/weft/pki"
)

// mode is how consuming clusters read the remote cluster.
type mode string

const (
	// modeMirror: one mirror per consuming cluster reads the remote etcd
	// and writes the local one; that cluster's agents watch the local etcd.
	modeMirror mode = "mirror"
	// modeDirect: every agent of every consuming cluster watches the
	// remote etcd itself.
	modeDirect mode = "direct"
	// modeNone is the baseline: the same churn with no consumer at all.
	modeNone mode = "baseline"
)

// Watches per consumer on the remote etcd: the mirror's kinds (nodes,
// cluster record, endpoints, identities, revocations, grants: see
// kvstore/mirror) and an agent's members (nodes, endpoints, identities: see
// agent/remoteclusters.go). The smoke test holds the measured counts to them.
const (
	mirrorWatches = 6
	agentWatches  = 3
)

// config of a benchmark run (flags in main.go).
type config struct {
	Clusters   []int // simulated clusters: one remote and N-1 consumers
	Agents     int   // agents per consuming cluster
	Nodes      int
	Endpoints  int
	Identities int
	Rate       int // churn updates per second
	Churn      time.Duration
	Settle     time.Duration // pause between sync and the churn
	Drain      time.Duration // longest wait for the last updates after the churn
	SyncLimit  time.Duration // longest wait for every agent to sync
	Modes      []mode
	Baseline   bool
	Etcd       string // etcd binary
	Log        *slog.Logger
	// Progress, when set, receives one line per step.
	Progress func(format string, args ...any)
}

func (c config) updates() int { return int(float64(c.Rate) * c.Churn.Seconds()) }

// result is what one run measured.
type result struct {
	Mode     mode
	Clusters int // N: consumers are N-1
	Agents   int // agents per consumer

	RemoteWatchers, RemoteStreams int // on the remote etcd, after sync
	LocalWatchers, LocalStreams   int // mirror mode: the consumers' (shared) local etcd
	SyncTime                      time.Duration
	RemoteSyncCPU                 float64 // remote etcd CPU s from connect to synced
	Window                        time.Duration
	RemoteCPU, LocalCPU, SelfCPU  float64 // CPU s in the churn window
	RemoteRSS, LocalRSS           float64 // MiB after the churn
	HeapMiB                       float64 // this process's heap for the consumers, after sync
	Updates, Missing              int
	Prop                          []time.Duration // sorted
	Put                           []time.Duration // sorted
}

// env is what every run shares: the certificates and scratch space.
type env struct {
	cfg   config
	dir   string
	files pki.Files
	tc    *tls.Config
}

func newEnv(cfg config) (*env, error) {
	dir, err := os.MkdirTemp("", "weft-bench-clusters-")
	if err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	files, err := pki.EnsureBundle(dir+"/pki", []string{"127.0.0.1", "localhost"})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("certificates: %w", err)
	}
	tc, err := clientTLS(files)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &env{cfg: cfg, dir: dir, files: files, tc: tc}, nil
}

func (e *env) close() { _ = os.RemoveAll(e.dir) }

func (e *env) progress(format string, args ...any) {
	if e.cfg.Progress != nil {
		e.cfg.Progress(format, args...)
	}
}

// run measures the baseline (if asked) and every mode at every N.
func run(ctx context.Context, cfg config) ([]result, error) {
	e, err := newEnv(cfg)
	if err != nil {
		return nil, err
	}
	defer e.close()
	var out []result
	if cfg.Baseline {
		r, err := e.runOne(ctx, modeNone, 1)
		if err != nil {
			return out, fmt.Errorf("baseline: %w", err)
		}
		out = append(out, r)
	}
	for _, n := range cfg.Clusters {
		for _, m := range cfg.Modes {
			r, err := e.runOne(ctx, m, n)
			if err != nil {
				return out, fmt.Errorf("%s mode, %d clusters: %w", m, n, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// source is a kvstore.Source of any KV and Watcher, e.g. a namespaced one.
type source struct {
	kv clientv3.KV
	w  clientv3.Watcher
}

func (s source) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return s.kv.Get(ctx, key, opts...)
}

func (s source) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	return s.w.Watch(ctx, key, opts...)
}

// agent is a simulated agent's view of the remote cluster: the three
// multi-source caches the agent adds a connected cluster's member to,
// configured as agent/remoteclusters.go does.
type agent struct {
	nodes      *kvstore.MultiCache[kvstore.Node]
	endpoints  *kvstore.MultiCache[kvstore.Endpoint]
	identities *kvstore.MultiCache[kvstore.Identity]
}

// startAgent adds the members reading the remote cluster through src: its
// own etcd's mirror prefix (mirror mode) or the remote etcd (direct).
func startAgent(ctx context.Context, m mode, src kvstore.Source, view *agentView, log *slog.Logger) (*agent, error) {
	member := "cluster:" + remoteName
	prefix := func(p string) string { return p }
	var keyMap func(string) (string, bool)
	probe := time.Duration(0) // direct: the default probe of a remote etcd
	if m == modeMirror {
		prefix = func(p string) string {
			return kvstore.MirrorPrefix(remoteName) + strings.TrimPrefix(p, kvstore.Prefix)
		}
		keyMap = kvstore.MirrorKeyMap(remoteName)
		probe = -1 // the local etcd: the agent's own health check covers it
	}
	a := &agent{}
	var err error
	if a.nodes, err = kvstore.NewMultiCache(kvstore.MultiCacheConfig[kvstore.Node]{Name: "nodes", Decode: kvstore.NodeDecoder, Logger: log}); err != nil {
		return nil, err
	}
	if a.endpoints, err = kvstore.NewMultiCache(kvstore.MultiCacheConfig[kvstore.Endpoint]{
		Name: "endpoints", Decode: kvstore.EndpointDecoder, Logger: log,
		OnEvent: func(ev kvstore.Event[kvstore.Endpoint]) {
			if ev.Kind == kvstore.EventDelete {
				return
			}
			if seq, ok := updateSeq(ev.Value.Name); ok {
				view.saw(seq)
			}
		},
	}); err != nil {
		return nil, err
	}
	if a.identities, err = kvstore.NewMultiCache(kvstore.MultiCacheConfig[kvstore.Identity]{Name: "identities", Decode: kvstore.IdentityDecoder, Logger: log}); err != nil {
		return nil, err
	}
	err = errors.Join(
		a.nodes.Add(ctx, kvstore.MemberConfig[kvstore.Node]{
			Name: member, Source: src, Prefix: prefix(kvstore.NodesPrefix + remoteName + "/"), KeyMap: keyMap, ProbeInterval: probe,
			Accept: kvstore.AcceptRemote[kvstore.Node](remoteName, remoteID),
		}),
		a.endpoints.Add(ctx, kvstore.MemberConfig[kvstore.Endpoint]{
			Name: member, Source: src, Prefix: prefix(kvstore.EndpointsPrefix + remoteName + "/"), KeyMap: keyMap, ProbeInterval: probe,
			Accept: kvstore.AcceptRemote[kvstore.Endpoint](remoteName, remoteID),
		}),
		a.identities.Add(ctx, kvstore.MemberConfig[kvstore.Identity]{
			Name: member, Source: src, Prefix: prefix(kvstore.IdentityIDPrefix), KeyMap: keyMap, ProbeInterval: probe,
			Accept: kvstore.AcceptRemote[kvstore.Identity](remoteName, remoteID),
		}),
	)
	if err != nil {
		a.close()
		return nil, fmt.Errorf("adding the agent's members: %w", err)
	}
	return a, nil
}

func (a *agent) close() {
	a.nodes.Close()
	a.endpoints.Close()
	a.identities.Close()
}

func (a *agent) synced(r records) bool {
	return a.nodes.Len() == len(r.nodes) && a.endpoints.Len() == len(r.endpoints) && a.identities.Len() == len(r.identities)
}

// runOne measures mode m with n simulated clusters: the remote one and n-1
// consumers of it.
func (e *env) runOne(ctx context.Context, m mode, n int) (res result, err error) {
	cfg := e.cfg
	res = result{Mode: m, Clusters: n, Agents: cfg.Agents}
	consumers := n - 1
	if m == modeNone {
		res.Agents = 0
	}
	totalAgents := consumers * res.Agents
	e.progress("%s, %d clusters (%d consumers × %d agents): starting etcd", m, n, consumers, res.Agents)

	// Stopped last, after every client of them is closed.
	var procs []*etcdProc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	tag := fmt.Sprintf("%s-%d", m, n)
	remote, err := startEtcd(ctx, cfg.Etcd, e.dir, "remote-"+tag, e.files, e.tc)
	if err != nil {
		return res, err
	}
	procs = append(procs, remote)
	var local *etcdProc
	if m == modeMirror {
		if local, err = startEtcd(ctx, cfg.Etcd, e.dir, "local-"+tag, e.files, e.tc); err != nil {
			return res, err
		}
		procs = append(procs, local)
	}

	var clients []*clientv3.Client
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}()
	connect := func(p *etcdProc) (*clientv3.Client, error) {
		c, err := dial(ctx, p.clientURL, e.tc)
		if err == nil {
			clients = append(clients, c)
		}
		return c, err
	}
	writer, err := connect(remote)
	if err != nil {
		return res, err
	}
	recs, err := makeRecords(cfg.Nodes, cfg.Endpoints, cfg.Identities)
	if err != nil {
		return res, err
	}
	if err := recs.write(ctx, writer); err != nil {
		return res, err
	}
	tr := newTracker(cfg.updates(), cfg.Endpoints, totalAgents)

	// The consumers: started together, as when n-1 clusters connect at
	// once, each with its own connections.
	cctx, cancel := context.WithCancel(ctx)
	var agents []*agent
	var wg sync.WaitGroup
	defer func() {
		cancel()
		for _, a := range agents {
			a.close()
		}
		wg.Wait()
	}()
	log := cfg.Log
	heap0 := heapMiB()
	cpu0, err := remote.cpuSeconds()
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	for c := range consumers {
		var agentSrc func() (kvstore.Source, error)
		switch m {
		case modeMirror:
			// Each consumer's etcd is a namespace of the one local etcd:
			// the mirror prefix is named after the remote cluster, the same
			// in every consumer.
			ns := fmt.Sprintf("consumer/c%d/", c+2)
			rc, err := connect(remote)
			if err != nil {
				return res, err
			}
			lc, err := connect(local)
			if err != nil {
				return res, err
			}
			mr, err := mirror.New(mirror.Config{
				Cluster: remoteName, ClusterID: remoteID, Logger: log,
				Remote: source{kv: rc.KV, w: rc.Watcher},
				Local:  namespace.NewKV(lc.KV, ns),
			})
			if err != nil {
				return res, err
			}
			wg.Add(1)
			go func() { defer wg.Done(); _ = mr.Run(cctx) }()
			agentSrc = func() (kvstore.Source, error) {
				ac, err := connect(local)
				if err != nil {
					return nil, err
				}
				return source{kv: namespace.NewKV(ac.KV, ns), w: namespace.NewWatcher(ac.Watcher, ns)}, nil
			}
		case modeDirect:
			agentSrc = func() (kvstore.Source, error) {
				ac, err := connect(remote)
				if err != nil {
					return nil, err
				}
				return source{kv: ac.KV, w: ac.Watcher}, nil
			}
		}
		for range res.Agents {
			src, err := agentSrc()
			if err != nil {
				return res, err
			}
			a, err := startAgent(cctx, m, src, tr.newAgent(), log)
			if err != nil {
				return res, err
			}
			agents = append(agents, a)
		}
	}
	if err := waitSynced(ctx, agents, recs, cfg.SyncLimit); err != nil {
		return res, err
	}
	res.SyncTime = time.Since(t0)
	cpu1, err := remote.cpuSeconds()
	if err != nil {
		return res, err
	}
	res.RemoteSyncCPU = cpu1 - cpu0
	res.HeapMiB = max(heapMiB()-heap0, 0)
	e.progress("  %d agents synced in %v; settling %v", totalAgents, res.SyncTime.Round(time.Millisecond), cfg.Settle)
	if err := sleep(ctx, cfg.Settle); err != nil {
		return res, err
	}

	// A cache is synced once it has listed; its watch is created just
	// after, and a mirror's watches of prefixes no agent reads need not be
	// in yet: give them until the counts the topology implies, or 10 s.
	wantRemote, wantLocal := consumers*res.Agents*agentWatches, 0
	if m == modeMirror {
		wantRemote, wantLocal = consumers*mirrorWatches, consumers*res.Agents*agentWatches
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if res.RemoteWatchers, res.RemoteStreams, err = remote.watches(ctx); err != nil {
			return res, err
		}
		if local != nil {
			if res.LocalWatchers, res.LocalStreams, err = local.watches(ctx); err != nil {
				return res, err
			}
		}
		if (res.RemoteWatchers == wantRemote && res.LocalWatchers == wantLocal) || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return res, err
		}
	}

	// The churn window: from the first update to the last one being in
	// every agent's cache (or the drain limit).
	e.progress("  churn: %d updates at %d/s", tr.n, cfg.Rate)
	rc0, lc0, sc0, err := cpus(remote, local)
	if err != nil {
		return res, err
	}
	w0 := time.Now()
	if err := tr.churn(ctx, writer, recs, cfg.Rate); err != nil {
		return res, err
	}
	select {
	case <-tr.complete:
	case <-time.After(cfg.Drain):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.Window = time.Since(w0)
	rc1, lc1, sc1, err := cpus(remote, local)
	if err != nil {
		return res, err
	}
	res.RemoteCPU, res.LocalCPU, res.SelfCPU = rc1-rc0, lc1-lc0, sc1-sc0
	if res.RemoteRSS, err = remote.rssMiB(); err != nil {
		return res, err
	}
	if local != nil {
		if res.LocalRSS, err = local.rssMiB(); err != nil {
			return res, err
		}
	}
	res.Updates = tr.n
	res.Prop, res.Put, res.Missing = tr.latencies()
	e.progress("  done: remote %d watchers, CPU %.2f s; p50 %v, %d of %d updates missing",
		res.RemoteWatchers, res.RemoteCPU, quantile(res.Prop, 0.5).Round(10*time.Microsecond), res.Missing, res.Updates)
	return res, nil
}

// cpus reads the CPU times of remote, local (0 when nil) and this process.
func cpus(remote, local *etcdProc) (r, l, self float64, err error) {
	if r, err = remote.cpuSeconds(); err != nil {
		return
	}
	if local != nil {
		if l, err = local.cpuSeconds(); err != nil {
			return
		}
	}
	self, err = procCPU("self")
	return
}

func waitSynced(ctx context.Context, agents []*agent, r records, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		waiting := 0
		for _, a := range agents {
			if !a.synced(r) {
				waiting++
			}
		}
		if waiting == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents did not get the remote cluster's records within %v", waiting, len(agents), limit)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// heapMiB is the live heap after a collection.
func heapMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}
