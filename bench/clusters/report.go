package main

import (
	"fmt"
	"io"
	"time"
)

// report prints the results as Markdown tables (the form of
// docs/benchmarks.md).
func report(w io.Writer, cfg config, machine string, rs []result) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("Connected clusters: one remote cluster (%d nodes, %d endpoints, %d identities) consumed by N-1 clusters of %d agents each;",
		cfg.Nodes, cfg.Endpoints, cfg.Identities, cfg.Agents)
	p("churn %d endpoint updates/s for %v; propagation = write to the remote etcd until every agent's cache holds it.", cfg.Rate, cfg.Churn)
	p("Machine: %s.", machine)
	p("")

	var base *result
	for i := range rs {
		if rs[i].Mode == modeNone {
			base = &rs[i]
		}
	}
	p("Remote etcd (the one cluster's):")
	p("")
	p("| N | mode | agents | watchers | watch streams | CPU s, churn | ms per update | vs baseline | CPU s, connect+sync | RSS MiB |")
	p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		vs := "1.00"
		if base != nil && r.Mode != modeNone {
			vs = ratio(r.RemoteCPU, base.RemoteCPU)
		}
		p("| %d | %s | %d | %d | %d | %.2f | %.1f | %s | %.2f | %.0f |", r.Clusters, r.Mode, (r.Clusters-1)*r.Agents,
			r.RemoteWatchers, r.RemoteStreams, r.RemoteCPU, 1000*r.RemoteCPU/float64(max(r.Updates, 1)), vs, r.RemoteSyncCPU, r.RemoteRSS)
	}
	p("")
	p("Propagation (a put answered is the baseline's figure):")
	p("")
	p("| N | mode | p50 | p99 | max | put p50 | complete | all agents synced after |")
	p("|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		sync := ms(r.SyncTime)
		if r.Mode == modeNone {
			sync = "–" // no agent
		}
		p("| %d | %s | %s | %s | %s | %s | %d/%d | %s |", r.Clusters, r.Mode,
			ms(quantile(r.Prop, 0.5)), ms(quantile(r.Prop, 0.99)), ms(quantile(r.Prop, 1)), ms(quantile(r.Put, 0.5)),
			r.Updates-r.Missing, r.Updates, sync)
	}
	p("")
	p("Consumers' side (mirror mode: the N-1 local etcds are one process here; per consumer = total/(N-1)):")
	p("")
	p("| N | mode | local etcd watchers (per consumer) | local etcd CPU s, churn | etcd CPU s, remote+local | this process CPU s, churn | heap MiB |")
	p("|---:|---|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		if r.Mode == modeNone {
			continue
		}
		lw := "–"
		if r.Mode == modeMirror {
			lw = fmt.Sprintf("%d (%d)", r.LocalWatchers, r.LocalWatchers/max(r.Clusters-1, 1))
		}
		p("| %d | %s | %s | %.2f | %.2f | %.2f | %.0f |", r.Clusters, r.Mode, lw, r.LocalCPU, r.RemoteCPU+r.LocalCPU, r.SelfCPU, r.HeapMiB)
	}
	p("")
	pairs := map[int][2]*result{}
	var ns []int
	for i := range rs {
		r := &rs[i]
		pr, seen := pairs[r.Clusters]
		switch r.Mode {
		case modeMirror:
			pr[0] = r
		case modeDirect:
			pr[1] = r
		default:
			continue
		}
		if !seen {
			ns = append(ns, r.Clusters)
		}
		pairs[r.Clusters] = pr
	}
	header := false
	for _, n := range ns {
		m, d := pairs[n][0], pairs[n][1]
		if m == nil || d == nil {
			continue
		}
		if !header {
			p("Mirror / direct, same run:")
			p("")
			p("| N | remote watchers | remote streams | remote CPU | remote CPU above baseline | etcd CPU, remote+local | p50 | p99 |")
			p("|---:|---:|---:|---:|---:|---:|---:|---:|")
			header = true
		}
		above := "–"
		if base != nil {
			above = ratio(m.RemoteCPU-base.RemoteCPU, d.RemoteCPU-base.RemoteCPU)
		}
		p("| %d | %s | %s | %s | %s | %s | %s | %s |", n,
			ratio(float64(m.RemoteWatchers), float64(d.RemoteWatchers)), ratio(float64(m.RemoteStreams), float64(d.RemoteStreams)),
			ratio(m.RemoteCPU, d.RemoteCPU), above, ratio(m.RemoteCPU+m.LocalCPU, d.RemoteCPU+d.LocalCPU),
			ratio(float64(quantile(m.Prop, 0.5)), float64(quantile(d.Prop, 0.5))),
			ratio(float64(quantile(m.Prop, 0.99)), float64(quantile(d.Prop, 0.99))))
	}
}

func ratio(a, b float64) string {
	if b <= 0 || a < 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func ms(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}
