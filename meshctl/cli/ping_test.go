package cli

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// pinger answers for b, never for c, and knows no other node.
type pinger struct {
	mu   sync.Mutex
	reqs []api.PingRequest
}

func (p *pinger) Ping(_ context.Context, req api.PingRequest) (api.PingResult, error) {
	p.mu.Lock()
	p.reqs = append(p.reqs, req)
	n := len(p.reqs)
	p.mu.Unlock()
	switch req.Target {
	case "b", "100.64.2.1":
		return api.PingResult{Node: "b", Cluster: "lab", MeshIP: "100.64.2.1", Path: "direct", Endpoint: "198.18.0.3:51833", OK: true, RTT: api.Duration(time.Duration(n) * 1200 * time.Microsecond)}, nil
	case "c":
		return api.PingResult{Node: "c", Cluster: "lab", MeshIP: "100.64.3.1", Path: "direct", Endpoint: "198.18.0.4:51833", Error: "no answer within 2s",
			Why: "no WireGuard handshake with lab/c since it was added 1m0s ago: its UDP endpoint 198.18.0.4:51833 does not answer"}, nil
	}
	return api.PingResult{}, api.Errorf(api.CodeNotFound, "no node %q in the mesh (`meshctl nodes` lists them)", req.Target)
}

func TestPingPrintsThePathAndEachRoundTrip(t *testing.T) {
	p := &pinger{}
	sock := serveHealth(t, &healthAgent{health: reached}, p)
	out, _, err := runApp(t, "ping", "b", "--socket", sock, "-c", "2", "--interval", "10ms")
	if err != nil {
		t.Fatal(err)
	}
	want := "pong from b (100.64.2.1) direct via 198.18.0.3:51833 in 1.2ms\n" +
		"pong from b (100.64.2.1) direct via 198.18.0.3:51833 in 2.4ms\n" +
		"2 probes sent, 2 answered; round trip min/avg/max 1.2ms/1.8ms/2.4ms\n"
	if out != want {
		t.Errorf("ping b:\n%s\nwant\n%s", out, want)
	}
	if len(p.reqs) != 2 || p.reqs[0].Timeout != api.Duration(2*time.Second) || p.reqs[0].Since.IsZero() {
		t.Errorf("requests: %+v", p.reqs)
	}
	out, _, err = runApp(t, "--socket", sock, "-o", "json", "ping", "-c", "1", "100.64.2.1")
	var v pingView
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Sent != 1 || v.Answered != 1 || v.Probes[0].Endpoint != "198.18.0.3:51833" {
		t.Errorf("ping -o json: %v\n%s", err, out)
	}
}

func TestPingSaysWhyNoAnswerCame(t *testing.T) {
	sock := serveHealth(t, &healthAgent{health: reached}, &pinger{})
	out, _, err := runApp(t, "ping", "c", "--socket", sock, "-c", "2", "--interval", "1ms")
	if err == nil || err.Error() != "no answer from lab/c: no WireGuard handshake with lab/c since it was added 1m0s ago: its UDP endpoint 198.18.0.4:51833 does not answer" {
		t.Errorf("ping c: %v", err)
	}
	if !strings.Contains(out, "no answer from c (100.64.3.1) direct via 198.18.0.4:51833 within 2s\n") || !strings.Contains(out, "2 probes sent, 0 answered\n") {
		t.Errorf("ping c output:\n%s", out)
	}
	if _, _, err := runApp(t, "ping", "zz", "--socket", sock); err == nil || !strings.Contains(err.Error(), `no node "zz" in the mesh`) {
		t.Errorf("ping an unknown node: %v", err)
	}
}
