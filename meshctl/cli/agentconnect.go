package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// statusReader is what waitConnected reads: the agent's status, whose
// peers carry the handshake times `meshctl status` shows.
type statusReader interface {
	Status(ctx context.Context) (api.Status, error)
}

// connectWait is how join and up wait, once the agent is ready, for the
// node to reach the mesh: a completed WireGuard handshake with at least
// one peer. Being ready says the agent runs; only a handshake says the
// node is not cut off.
type connectWait struct {
	cl      statusReader
	out     io.Writer
	timeout time.Duration
	// firstNode: the first node of a new mesh has no peers, and nothing
	// to wait for.
	firstNode bool
	// exited, when not nil, is closed if a foreground agent exits.
	exited <-chan struct{}
	// poll and report are the polling and progress intervals (tests
	// shorten them).
	poll, report time.Duration
}

func newConnectWait(cl statusReader, out io.Writer, timeout time.Duration, firstNode bool, p *agentProc) *connectWait {
	w := &connectWait{cl: cl, out: out, timeout: timeout, firstNode: firstNode, poll: 200 * time.Millisecond, report: 5 * time.Second}
	if p != nil {
		w.exited = p.exited
	}
	return w
}

// errCutOff marks the error of a node that reached no peer in time.
var errCutOff = errors.New("this node is cut off")

// run waits. It returns nil once a peer completed a handshake (or when
// there is no peer to wait for on a first node), and an error wrapping
// errCutOff, which says what might be wrong, when the bound passes.
func (w *connectWait) run(ctx context.Context) error {
	if w.timeout <= 0 {
		return nil
	}
	start := time.Now()
	deadline := time.NewTimer(w.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(w.poll)
	defer tick.Stop()
	var (
		st         api.Status
		lastErr    error
		announced  bool
		lastReport = start
	)
	for {
		s, err := w.cl.Status(ctx)
		if err == nil {
			st, lastErr = s, nil
			if p, ok := handshaken(st.Peers); ok {
				fmt.Fprintf(w.out, "Connected: WireGuard handshake with %s%s after %s.\n", p.Node, viaEndpoint(p), time.Since(start).Round(time.Millisecond))
				return nil
			}
			if w.firstNode && len(st.Peers) == 0 {
				fmt.Fprintln(w.out, "No other node has joined yet: there is no peer to wait for (--wait).")
				return nil
			}
		} else {
			lastErr = err
		}
		if !announced {
			fmt.Fprintf(w.out, "Waiting up to %s for a WireGuard handshake with a peer (--wait)...\n", w.timeout)
			announced = true
		}
		if time.Since(lastReport) >= w.report {
			lastReport = time.Now()
			fmt.Fprintf(w.out, "  %s: no handshake yet; %s\n", time.Since(start).Round(time.Second), peerSummary(st.Peers, lastErr))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.exited:
			return errors.New("the agent exited while waiting for a handshake")
		case <-deadline.C:
			return w.cutOff(st, lastErr)
		case <-tick.C:
		}
	}
}

// handshaken returns a peer that completed a handshake.
func handshaken(peers []api.Peer) (api.Peer, bool) {
	for _, p := range peers {
		if !p.LastHandshake.IsZero() {
			return p, true
		}
	}
	return api.Peer{}, false
}

func viaEndpoint(p api.Peer) string {
	if p.Endpoint == "" {
		return ""
	}
	return " (" + p.Endpoint + ")"
}

// peerSummary is one progress line's worth of peers: at most four named.
func peerSummary(peers []api.Peer, err error) string {
	if err != nil {
		return "the agent does not answer: " + err.Error()
	}
	if len(peers) == 0 {
		return "no peers known yet"
	}
	names := make([]string, 0, len(peers))
	for _, p := range peers {
		at := p.Endpoint
		if at == "" {
			at = "no endpoint"
		}
		names = append(names, p.Node+" at "+at)
	}
	sort.Strings(names)
	more := ""
	if len(names) > 4 {
		more = fmt.Sprintf(" and %d more", len(names)-4)
		names = names[:4]
	}
	return fmt.Sprintf("%d peers (%s%s), none answered", len(peers), strings.Join(names, ", "), more)
}

// cutOff says plainly that the node reached nobody, and what commonly
// causes it.
func (w *connectWait) cutOff(st api.Status, lastErr error) error {
	if lastErr != nil {
		return fmt.Errorf("%w: the agent stopped answering while waiting for a handshake (%v): 'meshctl status' and the agent's log say more", errCutOff, lastErr)
	}
	port := st.Tunnel.ListenPort
	if len(st.Peers) == 0 {
		return fmt.Errorf("%w: after %s this node knows no other node, so it has no WireGuard peer: the node records did not reach it from etcd (%s); "+
			"'meshctl status' shows whether etcd is reachable (see docs/join.md, \"The node is cut off\")",
			errCutOff, w.timeout, strings.Join(st.Etcd.Endpoints, ", "))
	}
	return fmt.Errorf("%w: no WireGuard handshake with any of its %d peers after %s (%s). "+
		"Likely causes: UDP port %d blocked by a firewall here, on the peers or between them; "+
		"a NAT in front of this node that drops the peers' replies (a node behind NAT must start the handshake: check its keepalive); "+
		"the seed or the peers unreachable at the addresses they announce (--advertise-address, --underlay-endpoints). "+
		"The agent keeps running and keeps trying; 'meshctl status' shows the handshakes (see docs/join.md, \"The node is cut off\")",
		errCutOff, len(st.Peers), w.timeout, strings.TrimSuffix(peerSummary(st.Peers, nil), ", none answered"), port)
}

// waitAfterStart runs --wait for the agent on socket. In the foreground a
// node that is cut off is reported and the agent keeps running under
// meshctl (returning would stop it); elsewhere the error is the command's.
func waitAfterStart(ctx context.Context, c interface {
	Duration(string) time.Duration
	Bool(string) bool
}, out, errOut io.Writer, socket string, p *agentProc, firstNode bool) error {
	err := newConnectWait(api.NewClient(socket), out, c.Duration("wait"), firstNode, p).run(ctx)
	if err == nil || !c.Bool("foreground") {
		return err
	}
	if errors.Is(err, errCutOff) {
		fmt.Fprintf(errOut, "warning: %v\n", err)
		return nil
	}
	// Ctrl-C or SIGTERM while waiting: the signal went to meshctl, so it
	// is passed on; waitForeground then waits for the agent to exit.
	if ctx.Err() != nil && p != nil && p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	return nil
}
