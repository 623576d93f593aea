package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/relay"
)

// natSpec: two public sites (the seed's and another), a relay's public
// site, two sites behind endpoint-independent NAT and two behind
// symmetric NAT, one node each; every NAT'd node has a workload. The
// stranger is a lab host on the relay's site that never joins.
func natSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "pub1", Nodes: []lab.NodeSpec{{Name: "p1"}}},
		{Name: "pub2", Nodes: []lab.NodeSpec{{Name: "p2"}}},
		{Name: "rly", Nodes: []lab.NodeSpec{{Name: "relay"}, {Name: "stranger"}}},
		{Name: "eim1", NATKind: lab.NATEIM, Nodes: []lab.NodeSpec{{Name: "e1", Workloads: []lab.WorkloadSpec{{Name: "we1"}}}}},
		{Name: "eim2", NATKind: lab.NATEIM, Nodes: []lab.NodeSpec{{Name: "e2", Workloads: []lab.WorkloadSpec{{Name: "we2"}}}}},
		{Name: "sym1", NATKind: lab.NATSymmetric, Nodes: []lab.NodeSpec{{Name: "s1", Workloads: []lab.WorkloadSpec{{Name: "ws1"}}}}},
		{Name: "sym2", NATKind: lab.NATSymmetric, Nodes: []lab.NodeSpec{{Name: "s2", Workloads: []lab.WorkloadSpec{{Name: "ws2"}}}}},
	}}
}

// joinWith runs `meshctl join` with extra join flags and waits until the
// agent is healthy.
func (m *Mesh) joinWith(name string, extra ...string) {
	m.t.Helper()
	n := m.newNode(name)
	args := append([]string{filepath.Join(binDir, "meshctl"), "join", m.Token, "--name", name}, extra...)
	args = append(args, m.procFlags(n)...)
	args = append(args, m.agentFlags(n)...)
	p, err := m.Lab.Start(n.Lab.Netns, "agent-"+name, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	n.Proc = p
	m.waitOutput(p, regexp.MustCompile(`(?i)agent .*(ready|running)|Joined the mesh`), 60*time.Second, "meshctl join on "+name)
	testutil.Eventually(m.t, 60*time.Second, "the agent on "+name+" answering", func() error {
		if r := m.meshctlRun(name, "status", "-o", "json"); r.stdout == "" {
			return fmt.Errorf("exit %d: %s", r.code, r.stderr)
		}
		return nil
	})
}

// peerPath reads the path `meshctl status` shows from one node to another.
func (m *Mesh) peerPath(from, to string) string {
	var st struct {
		Peers []api.Peer `json:"peers"`
	}
	m.JSON(from, &st, "status")
	for _, p := range st.Peers {
		if p.Node == to {
			return p.Path
		}
	}
	return ""
}

// pcap runs tcpdump in a namespace until stop is called, which returns
// the packets' summary lines for filter and the raw capture.
func (m *Mesh) pcap(ns, name, filter string) (stop func() (lines []string, raw []byte)) {
	m.t.Helper()
	file := filepath.Join(m.t.TempDir(), name+".pcap")
	p, err := m.Lab.Start(ns, "tcpdump-"+name, "tcpdump", "--immediate-mode", "-i", "any", "-U", "-s", "0", "-w", file)
	if err != nil {
		m.t.Fatal(err)
	}
	m.waitOutput(p, regexp.MustCompile(`listening on`), 30*time.Second, "tcpdump to attach in "+ns)
	return func() ([]string, []byte) {
		time.Sleep(300 * time.Millisecond) // the last packets reach the file (-U)
		_ = p.Stop()
		raw, err := os.ReadFile(file)
		if err != nil {
			m.t.Fatal(err)
		}
		out, err := hostCmd("tcpdump", "-nn", "-r", file, filter)
		if err != nil {
			m.t.Fatalf("reading the capture: %v: %s", err, out)
		}
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if packetLine.MatchString(l) {
				lines = append(lines, l)
			}
		}
		return lines, raw
	}
}

// pingGaps pings to from from every interval until stop is closed and
// returns the longest run of unanswered pings, as time.
func (m *Mesh) pingGaps(from, to string, interval time.Duration, stop <-chan struct{}) <-chan time.Duration {
	out := make(chan time.Duration, 1)
	go func() {
		var longest time.Duration
		var lostSince time.Time
		for {
			select {
			case <-stop:
				if !lostSince.IsZero() {
					longest = max(longest, time.Since(lostSince))
				}
				out <- longest
				return
			case <-time.After(interval):
			}
			r := m.meshctlRun(from, "ping", to, "--count", "1", "--timeout", "400ms")
			switch {
			case r.code == 0 && !lostSince.IsZero():
				longest = max(longest, time.Since(lostSince))
				lostSince = time.Time{}
			case r.code != 0 && lostSince.IsZero():
				lostSince = time.Now()
			}
		}
	}()
	return out
}

// TestNATTraversal: two endpoint-independent NATs connect directly (their
// routers carry no relay traffic between them); two symmetric NATs
// connect through the relay, which sees only ciphertext; a silent cut
// between two public sites fails over to the relay with at most 5 s of
// ping loss and returns to direct after the heal; a host that is no mesh
// node gets nothing through the relay.
func TestNATTraversal(t *testing.T) {
	m := NewMesh(t, natSpec())
	m.Up("p1")
	m.joinWith("relay", "--relay")
	for _, n := range []string{"p2", "e1", "e2", "s1", "s2"} {
		m.joinWith(n)
	}
	ips := map[string]string{}
	for _, w := range []string{"we1", "we2", "ws1", "ws2"} {
		ips[w] = m.AddWorkload(w, "app="+w)
		m.Echo(w, ips[w], 8080)
	}
	relayIP := m.Lab.Node("relay").Underlay.String()
	ctx := context.Background()

	t.Run("endpoint-independent NATs connect directly", func(t *testing.T) {
		m := m.For(t)
		e2WAN := m.Lab.Router("eim2").WANAddr.String()
		testutil.Eventually(t, 90*time.Second, "e1 reaching e2 directly at its NAT's address", func() error {
			if err := m.Talk("we1", "tcp", ips["we2"], 8080, "hello"); err != nil {
				return err
			}
			if p := m.peerPath("e1", "e2"); !strings.HasPrefix(p, "direct "+e2WAN+":") {
				return fmt.Errorf("e1's path to e2 is %q, want direct %s:PORT (e2's NAT)", p, e2WAN)
			}
			if p := m.peerPath("e2", "e1"); !strings.HasPrefix(p, "direct ") {
				return fmt.Errorf("e2's path to e1 is %q", p)
			}
			return nil
		})
		// The routers carry the pair's WireGuard directly, and no relayed
		// data of the pair: relay DATA messages (0xf4) naming e2 (to the
		// relay) or coming from it (to e1). e1's relayed traffic with the
		// symmetric-NAT nodes passes here too, and is not counted.
		id := relay.NodeID("default", "e2")
		filter := fmt.Sprintf("udp and host %s and udp[8] = 0xf4 and udp[12:4] = 0x%x and udp[16:4] = 0x%x",
			relayIP, binary.BigEndian.Uint32(id[:4]), binary.BigEndian.Uint32(id[4:]))
		stop := m.pcap(m.Lab.Router("eim1").Netns, "eim1-router", filter)
		for i := range 20 {
			if err := m.Talk("we1", "tcp", ips["we2"], 8080, fmt.Sprintf("direct-%d", i)); err != nil {
				t.Fatalf("e1 -> e2: %v", err)
			}
		}
		relayed, raw := stop()
		if len(relayed) > 0 {
			t.Fatalf("e1's router carried %d relayed data packets while e1 and e2 talk directly:\n%s", len(relayed), strings.Join(relayed, "\n"))
		}
		if len(raw) < 2000 {
			t.Fatalf("the capture on e1's router holds %d bytes: it missed the traffic", len(raw))
		}
	})

	t.Run("symmetric NATs connect through the relay, which sees only ciphertext", func(t *testing.T) {
		m := m.For(t)
		testutil.Eventually(t, 120*time.Second, "s1 reaching s2 through the relay", func() error {
			if err := m.Talk("ws1", "tcp", ips["ws2"], 8080, "hello"); err != nil {
				return err
			}
			if p := m.peerPath("s1", "s2"); p != "relay via default/relay" {
				return fmt.Errorf("s1's path to s2 is %q, want relay via default/relay", p)
			}
			return nil
		})
		stop := m.pcap(m.Lab.Node("relay").Netns, "relay", "udp port 51838 and udp[8] = 0xf4")
		marker := "WEFT-RELAY-PLAINTEXT-51c9"
		for range 10 {
			for _, nw := range []string{"tcp", "udp"} {
				if err := m.Talk("ws1", nw, ips["ws2"], 8080, marker); err != nil {
					t.Fatalf("s1 -> s2 over %s: %v", nw, err)
				}
				if err := m.Talk("ws2", nw, ips["ws1"], 8080, marker); err != nil {
					t.Fatalf("s2 -> s1 over %s: %v", nw, err)
				}
			}
		}
		relayed, raw := stop()
		if len(relayed) < 40 {
			t.Fatalf("the relay forwarded %d data packets for 40 exchanges: the pair does not go through it", len(relayed))
		}
		if bytes.Contains(raw, []byte(marker)) {
			t.Fatal("the relay's capture holds the plaintext marker: relayed traffic is not encrypted end to end")
		}
	})

	t.Run("a host that is no mesh node cannot use the relay", func(t *testing.T) {
		m := m.For(t)
		stranger := m.Lab.Node("stranger")
		pc, err := m.Lab.ListenPacket(stranger.Netns, "udp", stranger.Underlay.String()+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		to := &net.UDPAddr{IP: net.ParseIP(relayIP), Port: 51838}
		stop := m.pcap(m.Lab.Node("s2").Netns, "s2", "udp")
		marker := "WEFT-STRANGER-7d1a"
		// A made-up ticket, then data for s2 shaped like a WireGuard
		// transport message.
		register := append([]byte{0xf1, 1, 0, 0}, bytes.Repeat([]byte{0x42}, 16)...)
		id := relay.NodeID("default", "s2")
		data := append([]byte{0xf4, 1, 0, 0}, id[:]...)
		data = append(data, 4, 0, 0, 0)
		data = append(data, bytes.Repeat([]byte(marker), 8)...)
		for range 20 {
			_, _ = pc.WriteTo(register, to)
			_, _ = pc.WriteTo(data, to)
			time.Sleep(20 * time.Millisecond)
		}
		// The relay answers a stranger at most with UNKNOWN (4 bytes, 0xf5).
		buf := make([]byte, 2048)
		_ = pc.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				break
			}
			if n != 4 || buf[0] != 0xf5 {
				t.Fatalf("the relay answered a stranger with %d bytes %x", n, buf[:min(n, 16)])
			}
		}
		_, raw := stop()
		if bytes.Contains(raw, []byte(marker)) {
			t.Fatal("s2 received the stranger's packets through the relay")
		}
	})

	t.Run("a silent cut fails over to the relay and back", func(t *testing.T) {
		m := m.For(t)
		testutil.Eventually(t, 60*time.Second, "p1 reaching p2 directly", func() error {
			if p := m.peerPath("p1", "p2"); !strings.HasPrefix(p, "direct ") {
				return fmt.Errorf("path %q", p)
			}
			return nil
		})
		stopPing := make(chan struct{})
		gaps := m.pingGaps("p1", "p2", 250*time.Millisecond, stopPing)
		time.Sleep(2 * time.Second)
		if err := m.Lab.Cut(ctx, "pub1", "pub2"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Lab.Heal(context.Background(), "pub1", "pub2") })
		cut := time.Now()
		testutil.Eventually(t, 15*time.Second, "p1's path to p2 moving to the relay", func() error {
			if p := m.peerPath("p1", "p2"); p != "relay via default/relay" {
				return fmt.Errorf("path %q", p)
			}
			return nil
		})
		t.Logf("p1 -> p2 on the relay %v after the cut", time.Since(cut).Round(100*time.Millisecond))
		time.Sleep(5 * time.Second)
		if err := m.Lab.Heal(ctx, "pub1", "pub2"); err != nil {
			t.Fatal(err)
		}
		healed := time.Now()
		testutil.Eventually(t, 60*time.Second, "p1's path to p2 back to direct", func() error {
			if p := m.peerPath("p1", "p2"); !strings.HasPrefix(p, "direct ") {
				return fmt.Errorf("path %q", p)
			}
			return m.Talk("we1", "tcp", ips["we2"], 8080, "still") // the rest of the mesh is fine
		})
		t.Logf("p1 -> p2 direct again %v after the heal", time.Since(healed).Round(100*time.Millisecond))
		time.Sleep(2 * time.Second)
		close(stopPing)
		if g := <-gaps; g > 5*time.Second {
			t.Fatalf("pings from p1 to p2 went unanswered for %v around the cut, want at most 5s", g.Round(100*time.Millisecond))
		} else {
			t.Logf("longest ping loss around the cut and the heal: %v", g.Round(100*time.Millisecond))
		}
		var st struct {
			Peers []api.Peer `json:"peers"`
		}
		m.JSON("p1", &st, "status")
		for _, p := range st.Peers {
			if p.Node == "p2" && (p.PathChanges < 2 || p.PathSince.Before(healed)) {
				t.Fatalf("p1's status for p2: %d path changes, last at %v; want 2 or more, the last after the heal", p.PathChanges, p.PathSince)
			}
		}
	})
}
