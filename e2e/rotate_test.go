package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// rotateSpec: the seed and the rotating node on site 1, a peer on site 2
// and one behind NAT on site 3, each with a workload.
func rotateSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "vm1", Workloads: []lab.WorkloadSpec{{Name: "web"}}}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "vm2", Workloads: []lab.WorkloadSpec{{Name: "db"}}}}},
		{Name: "site3", NAT: true, Nodes: []lab.NodeSpec{{Name: "vm4", Workloads: []lab.WorkloadSpec{{Name: "cache"}}}}},
	}}
}

type rotateResult struct {
	OldPublicKey string `json:"oldPublicKey"`
	NewPublicKey string `json:"newPublicKey"`
	Took         string `json:"took"`
	Peers        []struct {
		Node      string `json:"node"`
		Installed bool   `json:"installed"`
		Handshake bool   `json:"handshake"`
		Error     string `json:"error"`
	} `json:"peers"`
}

var pingStatsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestRotate rotates the key of a node while its workload is pinged from
// two sites (one behind NAT), pings the others, and streams TCP to one:
// the TCP stream continues, at most a ping or two of 750 per stream is
// lost (see the comment at the check), and afterwards every peer knows the
// node by its new key only, in the agent's view and in `wg show`.
func TestRotate(t *testing.T) {
	m := NewMesh(t, rotateSpec())
	m.Up("seed")
	for _, n := range []string{"vm1", "vm2", "vm4"} {
		m.Join(n, "")
	}
	ips := map[string]string{
		"web":   m.AddWorkload("web", "app=web"),
		"db":    m.AddWorkload("db", "app=db"),
		"cache": m.AddWorkload("cache", "app=cache"),
	}
	m.Echo("db", ips["db"], 7000)
	for _, pair := range [][2]string{{"web", "db"}, {"db", "web"}, {"cache", "web"}} {
		testutil.Eventually(t, 30*time.Second, pair[0]+" -> "+pair[1], func() error {
			return pingOnce(m, pair[0], ips[pair[1]])
		})
	}
	oldKey := publicKey(t, m, "vm1")

	// Traffic through the rotation: 50 pings a second for 15 s each way
	// (ping waits for the last reply, so a lost packet is a real loss),
	// and a TCP stream web -> db that checks every echoed byte.
	const count = 750
	var pings []*lab.Process
	for _, pair := range [][2]string{{"web", "db"}, {"db", "web"}, {"cache", "web"}} {
		p, err := m.Lab.Start(m.Lab.Workload(pair[0]).Netns, "ping-"+pair[0]+"-"+pair[1],
			"ping", "-n", "-q", "-i", "0.02", "-c", strconv.Itoa(count), "-W", "2", ips[pair[1]])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Stop() })
		pings = append(pings, p)
	}
	stream := startStream(t, m, "web", net.JoinHostPort(ips["db"], "7000"))
	time.Sleep(2 * time.Second)

	var res rotateResult
	m.JSON("vm1", &res, "rotate-key")
	t.Logf("rotate-key: old %s new %s took %s peers %+v", res.OldPublicKey, res.NewPublicKey, res.Took, res.Peers)
	for _, p := range pings {
		if !p.Running() {
			t.Fatalf("%s finished before the rotation did: make the ping longer; output:\n%s", p.Name, p.Output())
		}
	}
	if res.OldPublicKey != oldKey || res.NewPublicKey == "" || res.NewPublicKey == oldKey {
		t.Fatalf("rotate-key reported old %q new %q; the node's key was %q", res.OldPublicKey, res.NewPublicKey, oldKey)
	}
	if len(res.Peers) != 3 {
		t.Errorf("rotate-key reported %d peers, want 3 (seed, vm2, vm4): %+v", len(res.Peers), res.Peers)
	}
	for _, p := range res.Peers {
		if !p.Installed || !p.Handshake {
			t.Errorf("peer %s: installed=%v handshake=%v error=%q", p.Node, p.Installed, p.Handshake, p.Error)
		}
	}

	for _, p := range pings {
		select {
		case <-p.Done():
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not finish", p.Name)
		}
		out := p.Output()
		sm := pingStatsRE.FindStringSubmatch(out)
		if sm == nil {
			t.Fatalf("%s: no statistics in its output:\n%s", p.Name, out)
		}
		t.Logf("%s across the rotation: %s sent, %s received", p.Name, sm[1], sm[2])
		sent, _ := strconv.Atoi(sm[1])
		received, _ := strconv.Atoi(sm[2])
		// Known gap (docs/tunnel.md, "Hitless key rotation"): a peer
		// accepts the rotating node's packets under the new key only once
		// its tunnel has moved the node's prefixes to that key, one poll
		// after the first handshake; packets of that instant are dropped.
		// Runs so far lost 0 or 1 ping per stream. More than maxLost means
		// traffic stopped for longer than that window.
		const maxLost = 2
		if sent != count || sent-received > maxLost {
			t.Errorf("%s lost %d pings across the rotation (at most %d expected): %s", p.Name, sent-received, maxLost, strings.TrimSpace(out))
		}
	}
	n, err := stream.stop()
	if err != nil {
		t.Errorf("the TCP stream broke during the rotation after %d bytes: %v", n, err)
	}
	t.Logf("TCP stream web -> db: %d bytes echoed and checked", n)

	t.Run("every node knows the new key only", func(t *testing.T) {
		m := m.For(t)
		if got := publicKey(t, m, "vm1"); got != res.NewPublicKey {
			t.Errorf("vm1's device has key %s, want %s", got, res.NewPublicKey)
		}
		for _, node := range []string{"seed", "vm2", "vm4"} {
			testutil.Eventually(t, 30*time.Second, node+" retires vm1's old key", func() error {
				var st struct {
					Peers []struct {
						Node      string `json:"node"`
						PublicKey string `json:"publicKey"`
					} `json:"peers"`
				}
				m.JSON(node, &st, "status")
				seen := false
				for _, p := range st.Peers {
					if p.PublicKey == oldKey {
						return fmt.Errorf("status still shows a peer with vm1's old key")
					}
					seen = seen || (p.Node == "vm1" && p.PublicKey == res.NewPublicKey)
				}
				if !seen {
					return fmt.Errorf("status shows no peer vm1 with the new key: %+v", st.Peers)
				}
				var nodes []struct {
					Name      string `json:"name"`
					PublicKey string `json:"publicKey"`
				}
				m.JSON(node, &nodes, "nodes")
				for _, n := range nodes {
					if n.Name == "vm1" && n.PublicKey != res.NewPublicKey {
						return fmt.Errorf("its record of vm1 has key %s", n.PublicKey)
					}
				}
				keys := wgPeers(t, m, node)
				if strings.Contains(keys, oldKey) {
					return fmt.Errorf("wg show still lists the old key %s:\n%s", oldKey, keys)
				}
				if !strings.Contains(keys, res.NewPublicKey) {
					return fmt.Errorf("wg show does not list the new key %s:\n%s", res.NewPublicKey, keys)
				}
				return nil
			})
		}
	})

	t.Run("traffic flows after the rotation", func(t *testing.T) {
		m := m.For(t)
		for _, pair := range [][2]string{{"web", "db"}, {"db", "web"}, {"cache", "web"}, {"web", "cache"}} {
			if err := pingOnce(m, pair[0], ips[pair[1]]); err != nil {
				t.Errorf("%s -> %s: %v", pair[0], pair[1], err)
			}
		}
		if err := m.Talk("web", "tcp", ips["db"], 7000, "after-rotation"); err != nil {
			t.Error(err)
		}
	})

	t.Run("a second rotation in a row", func(t *testing.T) {
		m := m.For(t)
		var again rotateResult
		m.JSON("vm1", &again, "rotate-key")
		if again.OldPublicKey != res.NewPublicKey || again.NewPublicKey == res.NewPublicKey {
			t.Errorf("second rotation: old %s new %s, want old %s and a fresh key", again.OldPublicKey, again.NewPublicKey, res.NewPublicKey)
		}
		if err := pingOnce(m, "db", ips["web"]); err != nil {
			t.Error(err)
		}
	})
}

func pingOnce(m *Mesh, from, ip string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := m.Lab.Exec(ctx, m.Lab.Workload(from).Netns, "ping", "-n", "-c", "1", "-W", "1", ip)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", ip, from, err, out)
	}
	return nil
}

// publicKey is the key of a node's WireGuard device, as `wg show` says.
func publicKey(t testing.TB, m *Mesh, node string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := m.Lab.Exec(ctx, m.Lab.Node(node).Netns, "wg", "show", m.wgName(node), "public-key")
	if err != nil {
		t.Fatalf("wg show on %s: %v: %s", node, err, out)
	}
	return strings.TrimSpace(string(out))
}

// wgPeers is `wg show <device> peers` on a node: one public key a line.
func wgPeers(t testing.TB, m *Mesh, node string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := m.Lab.Exec(ctx, m.Lab.Node(node).Netns, "wg", "show", m.wgName(node), "peers")
	if err != nil {
		t.Fatalf("wg show on %s: %v: %s", node, err, out)
	}
	return string(out)
}

// tcpStream writes numbered lines to an echo server and checks each echo.
type tcpStream struct {
	conn  net.Conn
	done  chan struct{}
	mu    sync.Mutex
	bytes int64
	err   error
	quit  chan struct{}
}

func startStream(t *testing.T, m *Mesh, from, addr string) *tcpStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := m.Lab.Dial(ctx, m.Lab.Workload(from).Netns, "tcp", addr)
	if err != nil {
		t.Fatalf("dialing %s from %s: %v", addr, from, err)
	}
	s := &tcpStream{conn: c, done: make(chan struct{}), quit: make(chan struct{})}
	t.Cleanup(func() { c.Close() })
	go s.run()
	return s
}

func (s *tcpStream) run() {
	defer close(s.done)
	buf := make([]byte, 4096)
	for i := 0; ; i++ {
		select {
		case <-s.quit:
			return
		default:
		}
		msg := []byte(fmt.Sprintf("%08d %s\n", i, strings.Repeat("x", 1000)))
		// Generous deadlines: a retransmission is fine, a stall is not.
		_ = s.conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.conn.Write(msg); err != nil {
			s.fail(fmt.Errorf("write %d: %w", i, err))
			return
		}
		if _, err := io.ReadFull(s.conn, buf[:len(msg)]); err != nil {
			s.fail(fmt.Errorf("read %d: %w", i, err))
			return
		}
		if string(buf[:len(msg)]) != string(msg) {
			s.fail(fmt.Errorf("echo %d differs", i))
			return
		}
		s.mu.Lock()
		s.bytes += int64(len(msg))
		s.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *tcpStream) fail(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// stop ends the stream and returns the bytes echoed and the first error.
func (s *tcpStream) stop() (int64, error) {
	close(s.quit)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes, s.err
}
