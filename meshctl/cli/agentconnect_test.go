package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// scriptedStatus answers Status from a list, repeating the last one.
type scriptedStatus struct {
	mu    sync.Mutex
	steps []api.Status
	calls int
}

func (s *scriptedStatus) Status(context.Context) (api.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := min(s.calls, len(s.steps)-1)
	s.calls++
	return s.steps[i], nil
}

func waitWith(st *scriptedStatus, timeout time.Duration, first bool) (*connectWait, *bytes.Buffer) {
	var out bytes.Buffer
	w := newConnectWait(st, &out, timeout, first, nil)
	w.poll, w.report = time.Millisecond, 5*time.Millisecond
	return w, &out
}

func TestConnectWait(t *testing.T) {
	seedNever := api.Peer{Node: "seed", Endpoint: "198.18.1.10:51833"}
	seedDone := seedNever
	seedDone.LastHandshake = time.Now()
	tunnel := api.TunnelStatus{ListenPort: 51833}

	t.Run("returns once a peer handshakes", func(t *testing.T) {
		st := &scriptedStatus{steps: []api.Status{{Tunnel: tunnel}, {Tunnel: tunnel, Peers: []api.Peer{seedNever}}, {Tunnel: tunnel, Peers: []api.Peer{seedDone}}}}
		w, out := waitWith(st, time.Minute, false)
		if err := w.run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "Waiting up to 1m0s for a WireGuard handshake") || !strings.Contains(out.String(), "Connected: WireGuard handshake with seed (198.18.1.10:51833)") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("a first node without peers has nothing to wait for", func(t *testing.T) {
		w, out := waitWith(&scriptedStatus{steps: []api.Status{{Tunnel: tunnel}}}, time.Minute, true)
		if err := w.run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "No other node has joined yet: there is no peer to wait for") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("a node no peer answers is cut off, and told why that might be", func(t *testing.T) {
		w, out := waitWith(&scriptedStatus{steps: []api.Status{{Tunnel: tunnel, Peers: []api.Peer{seedNever, {Node: "vm-2"}}}}}, 50*time.Millisecond, false)
		err := w.run(context.Background())
		if !errors.Is(err, errCutOff) {
			t.Fatalf("run: %v", err)
		}
		for _, want := range []string{"this node is cut off: no WireGuard handshake with any of its 2 peers after 50ms", "seed at 198.18.1.10:51833, vm-2 at no endpoint",
			"UDP port 51833 blocked", "NAT", "'meshctl status'"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		if !strings.Contains(out.String(), "no handshake yet; 2 peers (seed at 198.18.1.10:51833, vm-2 at no endpoint), none answered") {
			t.Errorf("no progress line:\n%s", out)
		}
	})
	t.Run("a joined node that learns no peer says so", func(t *testing.T) {
		w, _ := waitWith(&scriptedStatus{steps: []api.Status{{Tunnel: tunnel, Etcd: api.EtcdStatus{Endpoints: []string{"https://198.18.1.10:2379"}}}}}, 20*time.Millisecond, false)
		err := w.run(context.Background())
		if !errors.Is(err, errCutOff) || !strings.Contains(err.Error(), "knows no other node") || !strings.Contains(err.Error(), "https://198.18.1.10:2379") {
			t.Errorf("run: %v", err)
		}
	})
	t.Run("--wait 0 returns at once", func(t *testing.T) {
		st := &scriptedStatus{steps: []api.Status{{}}}
		w, out := waitWith(st, 0, false)
		if err := w.run(context.Background()); err != nil || st.calls != 0 || out.Len() != 0 {
			t.Errorf("run: %v, %d status calls, output %q", err, st.calls, out)
		}
	})
}

func TestLogTail(t *testing.T) {
	dir := t.TempDir()
	p := dir + "/agent.log"
	var b strings.Builder
	for i := range 30 {
		b.WriteString("line " + string(rune('a'+i%26)) + "\n")
	}
	if err := writeFileString(p, b.String()); err != nil {
		t.Fatal(err)
	}
	got := logTail(p, 0, 3)
	if got != "  line b\n  line c\n  line d" {
		t.Errorf("logTail = %q", got)
	}
	if logTail(p, int64(b.Len()), 3) != "" || logTail(dir+"/missing", 0, 3) != "" {
		t.Error("logTail of nothing new or of a missing file is not empty")
	}
}

func writeFileString(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }
