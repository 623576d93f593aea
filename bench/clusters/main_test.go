package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the whole benchmark small: 3 clusters (one remote, two
// consumers) of 2 agents, both modes and the baseline, and holds the
// figures to what the topology implies: the watches on the remote etcd
// are the mirrors' (mirror mode) or every agent's (direct), and every
// update reaches every agent.
func TestSmoke(t *testing.T) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not installed (Debian package etcd-server)")
	}
	cfg := defaults()
	cfg.Clusters, cfg.Agents = []int{3}, 2
	cfg.Nodes, cfg.Endpoints, cfg.Identities = 3, 12, 4
	// 12 endpoints at 40/s: each record changes every 0.3 s, so a mirror
	// may well copy two updates of one record as one (the tracker counts
	// the older one as held).
	cfg.Rate, cfg.Churn, cfg.Settle, cfg.Drain = 40, time.Second, 0, 10*time.Second
	cfg.SyncLimit = 30 * time.Second
	cfg.Etcd = bin
	cfg.Progress = t.Logf
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rs, err := run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 {
		t.Fatalf("%d results, want baseline, mirror and direct", len(rs))
	}
	consumers, agents := 2, 2
	want := map[mode]struct{ watchers, streams, localWatchers, localStreams int }{
		modeNone: {0, 0, 0, 0},
		// One connection per mirror, one watch per kind it copies; the
		// agents watch their local etcd, each on its own connection.
		modeMirror: {consumers * mirrorWatches, consumers, consumers * agents * agentWatches, consumers * agents},
		modeDirect: {consumers * agents * agentWatches, consumers * agents, 0, 0},
	}
	for _, r := range rs {
		w := want[r.Mode]
		if r.RemoteWatchers != w.watchers || r.RemoteStreams != w.streams {
			t.Errorf("%s: remote etcd has %d watchers on %d streams, want %d on %d", r.Mode, r.RemoteWatchers, r.RemoteStreams, w.watchers, w.streams)
		}
		// The local etcd also holds each mirror's own connection, which
		// writes but does not watch.
		if r.LocalWatchers != w.localWatchers || r.LocalStreams != w.localStreams {
			t.Errorf("%s: local etcd has %d watchers on %d streams, want %d on %d", r.Mode, r.LocalWatchers, r.LocalStreams, w.localWatchers, w.localStreams)
		}
		if r.Updates != 40 || r.Missing != 0 || len(r.Prop) != 40 || len(r.Put) != 40 {
			t.Errorf("%s: %d updates, %d missing, %d propagated, %d put; want all 40", r.Mode, r.Updates, r.Missing, len(r.Prop), len(r.Put))
		}
		if p50, p99 := quantile(r.Prop, 0.5), quantile(r.Prop, 0.99); p50 <= 0 || p99 < p50 {
			t.Errorf("%s: propagation p50 %v, p99 %v", r.Mode, p50, p99)
		}
		if r.RemoteCPU <= 0 || r.RemoteRSS <= 0 {
			t.Errorf("%s: remote etcd CPU %.2f s, RSS %.0f MiB: not measured", r.Mode, r.RemoteCPU, r.RemoteRSS)
		}
		if (r.Mode == modeMirror) != (r.LocalRSS > 0) {
			t.Errorf("%s: local etcd RSS %.0f MiB", r.Mode, r.LocalRSS)
		}
	}
	var out bytes.Buffer
	report(&out, cfg, "test machine", rs)
	for _, s := range []string{"| 3 | mirror | 4 | 12 | 2 |", "| 3 | direct | 4 | 12 | 4 |", "Mirror / direct, same run:", "| 3 | 1.00 | 0.50 |"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

// TestTrackerCoalesced: an agent that gets a newer update of a record
// without the older ones (a mirror copied only the newest) holds them all;
// an update is complete when every agent holds it, not before.
func TestTrackerCoalesced(t *testing.T) {
	tr := newTracker(10, 3, 2) // updates 0..9 over 3 records: record 1 gets 1, 4, 7
	a, b := tr.newAgent(), tr.newAgent()
	a.saw(7)
	for _, s := range []int{1, 4, 7} {
		if got := tr.count[s].Load(); got != 1 {
			t.Errorf("update %d held by %d agents after a saw 7, want 1", s, got)
		}
	}
	a.saw(4) // older than what a holds: no double count
	if got := tr.count[4].Load(); got != 1 {
		t.Errorf("update 4 counted %d times", got)
	}
	b.saw(1)
	if tr.done[1].Load() == 0 || tr.done[4].Load() != 0 {
		t.Errorf("after b saw 1: update 1 done %v (want yes), update 4 done %v (want no)", tr.done[1].Load() != 0, tr.done[4].Load() != 0)
	}
	b.saw(99) // out of range: ignored
	for s := range 10 {
		if s%3 != 1 {
			a.saw(s)
			b.saw(s)
		}
	}
	b.saw(7)
	select {
	case <-tr.complete:
	default:
		t.Fatalf("not complete with every update held by both agents (left %d)", tr.left.Load())
	}
}

func TestUpdateSeq(t *testing.T) {
	for name, want := range map[string]int{"pod-3-s17": 17, "pod-3-s0": 0} {
		if got, ok := updateSeq(name); !ok || got != want {
			t.Errorf("updateSeq(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
	for _, name := range []string{"pod-3", "pod-3-s", "pod-3-sx", "pod-3-s-1"} {
		if _, ok := updateSeq(name); ok {
			t.Errorf("updateSeq(%q) found an update", name)
		}
	}
	if got, _ := updateSeq(endpointName(5, 42)); got != 42 {
		t.Errorf("endpointName(5, 42) carries %d", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// A name with a space and a parenthesis; utime 250, stime 50 ticks.
	line := "1234 (etcd (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 1000 200\n"
	got, err := parseStatCPU([]byte(line))
	if err != nil || got != 3.0 {
		t.Fatalf("parseStatCPU = %v, %v; want 3 s", got, err)
	}
	if _, err := parseStatCPU([]byte("1234 (etcd) S 1")); err == nil {
		t.Error("a short line was accepted")
	}
	self, err := procCPU("self")
	if err != nil || self < 0 {
		t.Errorf("procCPU(self) = %v, %v", self, err)
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP etcd_debugging_mvcc_watcher_total Total number of watchers.
# TYPE etcd_debugging_mvcc_watcher_total gauge
etcd_debugging_mvcc_watcher_total 42
etcd_debugging_mvcc_watch_stream_total 7
etcd_debugging_mvcc_watcher_total_other{x="y"} 1
`
	names := []string{"etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total"}
	m, err := parseMetrics(bufio.NewScanner(strings.NewReader(text)), names)
	if err != nil || m[names[0]] != 42 || m[names[1]] != 7 {
		t.Fatalf("parseMetrics = %v, %v", m, err)
	}
	if _, err := parseMetrics(bufio.NewScanner(strings.NewReader("up 1\n")), names); err == nil || !strings.Contains(err.Error(), "no metric etcd_debugging_mvcc_watcher_total") {
		t.Errorf("a missing metric: %v", err)
	}
}

func TestFlags(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil || len(cfg.Clusters) != 3 || cfg.Clusters[2] != 32 || cfg.Agents != 10 || cfg.updates() != 400 {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
	cfg, err = parseFlags([]string{"-quick", "-agents", "5"}, io.Discard)
	if err != nil || cfg.Agents != 5 || cfg.Endpoints != 50 || cfg.Churn != 3*time.Second || len(cfg.Clusters) != 2 {
		t.Fatalf("-quick -agents 5: %+v, %v", cfg, err)
	}
	for args, want := range map[string]string{
		"-clusters 1":             "want 2-256",
		"-clusters 2,x":           `"x" is not a number`,
		"-modes mirror,relay":     `"relay" is no mode`,
		"-nodes 2 -endpoints 600": "at most 250 per node",
		"-agents 0":               "want 1-100",
		"-rate 1 -churn 500ms":    "no update",
		"extra":                   "unexpected arguments",
	} {
		_, err := parseFlags(strings.Fields(args), io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", args, err, want)
		}
	}
}
