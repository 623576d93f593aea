package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// countingWG and countingRoutes count the writes Reconcile makes, so a
// test can assert that an unchanged input writes nothing.
type countingWG struct {
	wgClient
	writes int
}

func (c *countingWG) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.writes++
	return c.wgClient.ConfigureDevice(name, cfg)
}

type countingRoutes struct {
	routeTable
	writes int
}

func (c *countingRoutes) Add(p netip.Prefix) error { c.writes++; return c.routeTable.Add(p) }
func (c *countingRoutes) Del(p netip.Prefix) error { c.writes++; return c.routeTable.Del(p) }

func countWrites(tun *Tunnel) (*countingWG, *countingRoutes) {
	w := &countingWG{wgClient: tun.wg}
	r := &countingRoutes{routeTable: tun.rt}
	tun.wg, tun.rt = w, r
	return w, r
}

// twoNodes is a lab with two public nodes running Weft tunnels that peer
// with each other (a: 100.64.0.1, b: 100.64.0.2).
type pair struct {
	lab          *lab.Lab
	ans, bns     string
	a, b         *Tunnel
	aPeer, bPeer Peer
}

func twoNodes(t *testing.T) *pair {
	t.Helper()
	l := labtest.Generate(t, 2, 1, false)
	na, nb := l.Node("site1-n1"), l.Node("site2-n1")
	a := openNode(t, na.Netns, "a", "100.64.0.1/32")
	b := openNode(t, nb.Netns, "b", "100.64.0.2/32")
	aPeer := Peer{PublicKey: a.PublicKey().String(), Endpoint: na.Underlay.String() + ":51833", AllowedIPs: pfx("100.64.0.1/32")}
	bPeer := Peer{PublicKey: b.PublicKey().String(), Endpoint: nb.Underlay.String() + ":51833", AllowedIPs: pfx("100.64.0.2/32")}
	reconcile(t, a, bPeer)
	reconcile(t, b, aPeer)
	return &pair{l, na.Netns, nb.Netns, a, b, aPeer, bPeer}
}

// weftRoutes lists the routes the tunnel owns, as `ip route` shows them.
func weftRoutes(t *testing.T, ns string, tun *Tunnel) []string {
	t.Helper()
	out := run(t, ns, "ip", "route", "show", "dev", tun.Name(), "proto", "87")
	var rs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rs = append(rs, f[0])
		}
	}
	slices.Sort(rs)
	return rs
}

func TestReconcile(t *testing.T) {
	p := twoNodes(t)
	ans, a, bPeer := p.ans, p.a, p.bPeer
	mustPing(t, ans, "100.64.0.2")
	if got := weftRoutes(t, ans, a); !slices.Equal(got, []string{"100.64.0.2"}) {
		t.Fatalf("routes via %s: %v; want [100.64.0.2]", a.Name(), got)
	}
	// `wg` (wireguard-tools) reads the userspace device through its UAPI socket.
	if out := run(t, ans, "wg", "show", a.Name(), "allowed-ips"); !strings.Contains(out, bPeer.PublicKey) || !strings.Contains(out, "100.64.0.2/32") {
		t.Fatalf("wg show %s: %s", a.Name(), out)
	}

	t.Run("same input twice writes nothing", func(t *testing.T) {
		w, r := countWrites(a)
		reconcile(t, a, bPeer)
		reconcile(t, a, bPeer)
		if w.writes != 0 || r.writes != 0 {
			t.Fatalf("identical reconcile wrote %d device configs and %d routes; want none", w.writes, r.writes)
		}
		// And the first change writes exactly once.
		moved := bPeer
		moved.Keepalive = 10e9
		reconcile(t, a, moved)
		reconcile(t, a, moved)
		if w.writes != 1 || r.writes != 0 {
			t.Fatalf("keepalive change wrote %d configs and %d routes; want 1 and 0", w.writes, r.writes)
		}
	})

	t.Run("changing allowed prefixes moves routes", func(t *testing.T) {
		p := bPeer
		p.AllowedIPs = pfx("100.64.0.2/32", "100.70.1.0/24")
		reconcile(t, a, p)
		if got := weftRoutes(t, ans, a); !slices.Equal(got, []string{"100.64.0.2", "100.70.1.0/24"}) {
			t.Fatalf("routes after adding a prefix: %v", got)
		}
		p.AllowedIPs = pfx("100.70.2.0/24")
		reconcile(t, a, p)
		if got := weftRoutes(t, ans, a); !slices.Equal(got, []string{"100.70.2.0/24"}) {
			t.Fatalf("routes after replacing the prefixes: %v", got)
		}
		if st := peerStatus(t, a, bPeer.PublicKey); !slices.Equal(st.AllowedIPs, pfx("100.70.2.0/24")) {
			t.Fatalf("allowed IPs on the device: %v", st.AllowedIPs)
		}
		mustNotPing(t, ans, "100.64.0.2")
		reconcile(t, a, bPeer)
		mustPing(t, ans, "100.64.0.2")
	})

	t.Run("removing a peer removes its route and stops its traffic", func(t *testing.T) {
		reconcile(t, a)
		if got := weftRoutes(t, ans, a); len(got) != 0 {
			t.Fatalf("routes after removing the peer: %v", got)
		}
		if out := run(t, ans, "wg", "show", a.Name(), "peers"); strings.TrimSpace(out) != "" {
			t.Fatalf("peers after removal: %q", out)
		}
		mustNotPing(t, ans, "100.64.0.2")
		reconcile(t, a, bPeer)
		mustPing(t, ans, "100.64.0.2")
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		other, _ := wgtypes.GeneratePrivateKey()
		ok2 := Peer{PublicKey: other.PublicKey().String(), Endpoint: "198.18.9.9:51833", AllowedIPs: pfx("100.64.0.9/32")}
		before := run(t, ans, "wg", "show", a.Name(), "dump")
		beforeRoutes := weftRoutes(t, ans, a)
		w, r := countWrites(a)
		cases := []struct {
			name  string
			peers []Peer
			want  string
		}{
			{"bad key", []Peer{bPeer, {PublicKey: "not-a-key", AllowedIPs: pfx("100.64.0.9/32")}}, "not a base64"},
			{"overlap", []Peer{bPeer, {PublicKey: ok2.PublicKey, AllowedIPs: pfx("100.64.0.0/24")}}, "overlaps 100.64.0.2/32"},
			{"bad endpoint", []Peer{bPeer, {PublicKey: ok2.PublicKey, Endpoint: "weft.example:51833", AllowedIPs: ok2.AllowedIPs}}, "not ip:port"},
			{"port 0", []Peer{bPeer, {PublicKey: ok2.PublicKey, Endpoint: "198.18.9.9:0", AllowedIPs: ok2.AllowedIPs}}, "port 0"},
			{"host bits", []Peer{bPeer, {PublicKey: ok2.PublicKey, AllowedIPs: pfx("100.64.1.1/24")}}, "did you mean 100.64.1.0/24"},
			{"own key", []Peer{bPeer, {PublicKey: a.PublicKey().String(), AllowedIPs: ok2.AllowedIPs}}, "own public key"},
		}
		for _, c := range cases {
			err := a.Reconcile(context.Background(), c.peers)
			if !errors.Is(err, ErrInvalidPeer) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: got %v; want an ErrInvalidPeer mentioning %q", c.name, err, c.want)
			}
		}
		if w.writes != 0 || r.writes != 0 {
			t.Errorf("refused input wrote %d configs and %d routes", w.writes, r.writes)
		}
		if after := run(t, ans, "wg", "show", a.Name(), "dump"); stripCounters(after) != stripCounters(before) {
			t.Errorf("device changed:\nbefore %s\nafter  %s", before, after)
		}
		if got := weftRoutes(t, ans, a); !slices.Equal(got, beforeRoutes) {
			t.Errorf("routes changed: %v -> %v", beforeRoutes, got)
		}
	})
}

// stripCounters drops the fields of `wg show dump` that traffic changes
// (handshake time, rx, tx).
func stripCounters(dump string) string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(dump), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 8 {
			f = append(f[:4], f[7])
		}
		out = append(out, strings.Join(f, "\t"))
	}
	return strings.Join(out, "\n")
}

// TestHelperDiesIsRestarted: if the userspace helper dies, the next
// reconcile starts a new one and restores peers and routes.
func TestHelperDiesIsRestarted(t *testing.T) {
	p := twoNodes(t)
	ans, a, bPeer := p.ans, p.a, p.bPeer
	mustPing(t, ans, "100.64.0.2")
	old := a.HelperPID()
	if a.Kind() != KindUserspace {
		t.Skip("kernel WireGuard in use: no helper")
	}
	if err := a.helper.stop(0); err != nil {
		t.Fatal(err)
	}
	reconcile(t, a, bPeer)
	if a.HelperPID() == old || a.HelperPID() == 0 {
		t.Fatalf("helper pid %d after restart (was %d)", a.HelperPID(), old)
	}
	mustPing(t, ans, "100.64.0.2")
}

// TestHelperKilledIsReplacedAtOnce: a SIGKILLed userspace helper is
// replaced by the upkeep loop as soon as it exits (its exit wakes the
// loop; the periodic reconcile here is an hour away), with peers and
// routes, and traffic flows again. The time it took is logged
// (docs/tunnel.md); the bound is only a hang guard.
func TestHelperKilledIsReplacedAtOnce(t *testing.T) {
	p := twoNodes(t)
	ans, a := p.ans, p.a
	if a.Kind() != KindUserspace {
		t.Skip("kernel WireGuard in use: no helper")
	}
	mustPing(t, ans, "100.64.0.2")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, time.Hour) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(100 * time.Millisecond) // the loop waits on the helper
	old := a.HelperPID()
	t0 := time.Now()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var replaced time.Duration
	testutil.Eventually(t, 10*time.Second, "a new helper with the peer", func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if pid := a.HelperPID(); pid == old || pid == 0 || len(st.Peers) != 1 {
			return fmt.Errorf("helper %d (was %d), %d peers", pid, old, len(st.Peers))
		}
		if replaced == 0 {
			replaced = time.Since(t0)
		}
		return nil
	})
	mustPing(t, ans, "100.64.0.2")
	t.Logf("helper %d killed: replaced (device, peer, routes) after %v, traffic after %v", old, replaced.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
}

// A helper an earlier agent started is not this process's child: its exit
// is seen through a pidfd.
func TestWatchPidSeesANonChildExit(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperProc{pid: cmd.Process.Pid} // no cmd, no done: as adopted
	gone := h.exitCh()
	select {
	case <-gone:
		t.Fatal("a running process was reported gone")
	case <-time.After(50 * time.Millisecond):
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the exit was not seen")
	}
}
